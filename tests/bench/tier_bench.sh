#!/usr/bin/env bash
# Tiered expert memory against the page cache, one run per pack:
#   1. moe-bench tier: batch-1 decode with the experts in a host tier of 100%,
#      50% and 25% of the pack's expert bytes (O_DIRECT reads: the page cache
#      plays no part) and of the plainly mapped pack, in turn for 3 rounds;
#   2. the same pack served from its plain mapping (as llama.cpp does) inside a
#      memory cgroup (v1) at each budget, the median of 3 rounds as the tier's:
#      the limit is the memory a process decoding with the tier at that budget
#      holds while it decodes (the tier, the dense pages it touched, KV cache,
#      buffers: the largest cgroup usage over the last quarter of a run 4x as
#      long), so both modes get the same memory in all. Page cache dropped
#      before each run.
# One JSON line per measurement; needs root (cgroup, drop_caches).
#   bash tests/bench/tier_bench.sh BIN PACK [PACK ...]   (TOKENS=32 by default)
set -euo pipefail
bin=$1
shift
tokens=${TOKENS:-32}
py=${PYTHON:-/usr/bin/python3}
cgroot=/sys/fs/cgroup/memory
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for pack in "$@"; do
    sync
    echo 3 > /proc/sys/vm/drop_caches
    "$bin/moe-bench" tier --model "$pack" --budgets 100,50,25 --tokens "$tokens" --warmup 16 --rounds 3 \
        2>/dev/null | "$py" -c 'import json,sys; d=json.load(sys.stdin); d["bench"]="tier"; print(json.dumps(d))'
    sizes=$("$py" - "$pack" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb")
pre = f.read(64)
off, n = struct.unpack_from("<QQ", pre, 16)
f.seek(off)
h = json.loads(f.read(n))
experts = sum(e["size"] for e in h["experts"])
dense = sum(t["size"] for t in h["tensors"])
print(experts, dense)
PY
)
    read -r experts dense <<<"$sizes"
    [ -d "$cgroot" ] || { echo '{"bench":"tier-mmap","skipped":"no cgroup v1 memory controller"}'; continue; }
    # run CMD... in a fresh memory cgroup limited to $1 bytes (-1: none), page
    # cache dropped first, its stdout into file $2; sets $usage to the largest
    # cgroup usage over the run's last quarter (sampled every 0.25 s)
    in_cgroup() {
        local limit=$1 out=$2 cg=$cgroot/moe-tier-$$ pid samples=()
        shift 2
        mkdir "$cg"
        [ "$limit" = -1 ] || echo "$limit" > "$cg/memory.limit_in_bytes"
        sync
        echo 3 > /proc/sys/vm/drop_caches
        sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "$@" >"$out" 2>/dev/null &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            samples+=("$(cat "$cg/memory.usage_in_bytes")")
            sleep 0.25
        done
        wait "$pid" || echo '{"failed":true}' > "$out"
        rmdir "$cg" 2>/dev/null || true
        usage=$(printf '%s\n' 0 "${samples[@]:$((${#samples[@]} * 3 / 4))}" | sort -n | tail -1)
    }
    for pct in 100 50 25; do
        budget=$((experts * pct / 100))
        limit=-1
        tier_usage=0
        if [ "$pct" -lt 100 ]; then
            # what moed's tiered process holds once serving (dense pages, the
            # tier, KV, buffers; not the load's passing peak: binding a qmoe
            # pack reads every blob once), decoding 4x as long so that the
            # last quarter is long after the load: the memory the mapped pack
            # then gets
            in_cgroup -1 /dev/null "$bin/moe-bench" tier --model "$pack" --budgets "$pct" \
                --no-mapped --tokens $((4 * tokens)) --warmup 16 --rounds 1
            tier_usage=$usage
            limit=$usage
        fi
        in_cgroup "$limit" "$tmp" "$bin/moe-bench" decode-cmp --model "$pack" --tokens "$tokens" \
            --rounds 3 --prompt-tokens 16
        out=$(cat "$tmp")
        "$py" -c 'import json,sys; d=json.loads(sys.argv[1]);
r={"bench":"tier-mmap","model":sys.argv[2],"budget_percent":float(sys.argv[3]),
   "cgroup_limit_bytes":int(sys.argv[4]),"expert_budget_bytes":int(sys.argv[5]),
   "tiered_usage_bytes":int(sys.argv[6]),"dense_bytes":int(sys.argv[7])}
r["decode_tok_s"]=d["models"][0]["decode_tok_s"] if "models" in d else None
print(json.dumps(r))' "$out" "$pack" "$pct" "$limit" "$budget" "$tier_usage" "$dense"
    done
done
