#!/usr/bin/env bash
# Tiered expert memory against the page cache, one run per pack:
#   1. moe-bench tier: batch-1 decode with the experts in a host tier of 100%,
#      50% and 25% of the pack's expert bytes (O_DIRECT reads: the page cache
#      plays no part) and of the plainly mapped pack, in turn for 3 rounds;
#   2. the same pack served from its plain mapping (as llama.cpp does) inside a
#      memory cgroup (v1) at each budget: the limit is the memory a process
#      decoding with the tier at that budget holds while it decodes (the
#      tier, the dense pages it touched, KV cache, buffers: the largest cgroup
#      usage over the last quarter of a run 4x as long), so both modes get the same
#      memory in all. Page cache dropped before each run.
# One JSON line per measurement; needs root (cgroup, drop_caches).
#   bash tests/bench/tier_bench.sh BIN PACK [PACK ...]   (TOKENS=32 by default)
set -euo pipefail
bin=$1
shift
tokens=${TOKENS:-32}
py=${PYTHON:-/usr/bin/python3}
cgroot=/sys/fs/cgroup/memory
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
    # cache dropped first; prints the command's stdout
    in_cgroup() {
        local limit=$1 cg=$cgroot/moe-tier-$$
        shift
        mkdir "$cg"
        [ "$limit" = -1 ] || echo "$limit" > "$cg/memory.limit_in_bytes"
        sync
        echo 3 > /proc/sys/vm/drop_caches
        sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "$@" 2>/dev/null \
            || echo '{"failed":true}'
        rmdir "$cg" 2>/dev/null || true
    }
    for pct in 100 50 25; do
        budget=$((experts * pct / 100))
        limit=-1
        tier_usage=0
        if [ "$pct" -lt 100 ]; then
            # what moed's tiered process holds once serving (dense pages, the
            # tier, KV, buffers; not the load's passing peak: binding a qmoe
            # pack reads every blob once): the memory the mapped pack then gets
            cg=$cgroot/moe-tier-$$
            mkdir "$cg"
            sync
            echo 3 > /proc/sys/vm/drop_caches
            sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
                "$bin/moe-bench" tier --model "$pack" --budgets "$pct" --no-mapped \
                --tokens $((4 * tokens)) --warmup 16 --rounds 1 >/dev/null 2>&1 &
            pid=$!
            samples=()
            while kill -0 "$pid" 2>/dev/null; do
                samples+=("$(cat "$cg/memory.usage_in_bytes")")
                sleep 0.25
            done
            wait "$pid" || true
            rmdir "$cg" 2>/dev/null || true
            # the largest usage over the run's last quarter (decoding, long
            # after the load)
            tier_usage=$(printf '%s\n' "${samples[@]:$((${#samples[@]} * 3 / 4))}" | sort -n | tail -1)
            limit=$tier_usage
        fi
        out=$(in_cgroup "$limit" "$bin/moe-bench" decode-cmp --model "$pack" --tokens "$tokens" \
            --rounds 1 --prompt-tokens 16)
        "$py" -c 'import json,sys; d=json.loads(sys.argv[1]);
r={"bench":"tier-mmap","model":sys.argv[2],"budget_percent":float(sys.argv[3]),
   "cgroup_limit_bytes":int(sys.argv[4]),"expert_budget_bytes":int(sys.argv[5]),
   "tiered_usage_bytes":int(sys.argv[6]),"dense_bytes":int(sys.argv[7])}
r["decode_tok_s"]=d["models"][0]["decode_tok_s"] if "models" in d else None
print(json.dumps(r))' "$out" "$pack" "$pct" "$limit" "$budget" "$tier_usage" "$dense"
    done
done
