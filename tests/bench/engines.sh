#!/usr/bin/env bash
# make bench, issue 17's tables: moed's low-bit packs against llama.cpp and
# ik_llama.cpp on the bench model, one interleaved run, 2 threads, tg32/pp64.
#
#   engines.sh BIN MODEL_DIR      (MODEL_DIR: bench-f16.gguf and the packs)
#
# The engines are built from the sources that the llama-cpp-python 0.3.36 and
# ik-llama-cpp-python 0.1.5 sdists vendor (newer than any other copy reachable
# here), into $MOE_ENGINES_DIR (default /tmp/moe-bench-engines), once:
# pip download, then cmake (about 5 minutes each on 2 cores). ik's sdist has
# no git metadata, so its common/build-info.cpp is written here. Set
# LLAMA_CPP_BIN / IK_LLAMA_BIN to directories with llama-bench and
# llama-quantize to use builds of your own. Without pip, cmake or a network
# the engines are skipped with a line saying why; moed's own rows still run.
#
# Output, one JSON object per line: every engine and pack per round
# (decode and prefill tok/s; moed's rows also carry the memory bandwidth
# moe-bench measured in the same round), then a summary with the medians of
# the per-round ratios moed / engine at matched bits.
set -uo pipefail
bin=$1
dir=$2
eng=${MOE_ENGINES_DIR:-/tmp/moe-bench-engines}
py=${PYTHON:-/usr/bin/python3}
rounds=${ROUNDS:-3}
mkdir -p "$eng"

skip() { echo "{\"bench\":\"engines\",\"skipped\":\"$1\"}"; }

# build NAME SDIST_SPEC SRC_SUBDIR: prints the bin directory, or fails
build() {
    local name=$1 spec=$2 sub=$3 out="$eng/$1"
    if [ -x "$out/build/bin/llama-bench" ] && [ -x "$out/build/bin/llama-quantize" ]; then
        echo "$out/build/bin"
        return 0
    fi
    command -v cmake >/dev/null || { echo "cmake not installed" >&2; return 1; }
    rm -rf "$out" && mkdir -p "$out"
    "$py" -m pip download --no-deps --no-binary :all: "$spec" -d "$out" >"$out/download.log" 2>&1 ||
        { echo "pip download $spec failed (see $out/download.log)" >&2; return 1; }
    tar -xzf "$out"/*.tar.gz -C "$out" || return 1
    local src
    src=$(ls -d "$out"/*/vendor/"$sub" 2>/dev/null | head -1)
    [ -n "$src" ] || { echo "$spec: no vendor/$sub" >&2; return 1; }
    if [ "$name" = ik_llama.cpp ] && [ ! -f "$src/common/build-info.cpp" ]; then
        cat >"$src/common/build-info.cpp" <<EOF
int LLAMA_BUILD_NUMBER = 0;
char const *LLAMA_COMMIT = "$spec-sdist";
char const *LLAMA_COMPILER = "$(cc --version | head -1)";
char const *LLAMA_BUILD_TARGET = "$(cc -dumpmachine)";
EOF
    fi
    cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF >"$out/build.log" 2>&1 &&
        cmake --build "$out/build" -j"$(nproc)" --target llama-bench llama-quantize \
            >>"$out/build.log" 2>&1 ||
        { echo "$name build failed (see $out/build.log)" >&2; return 1; }
    echo "$out/build/bin"
}

B=${LLAMA_CPP_BIN:-$(build llama.cpp llama-cpp-python==0.3.36 llama.cpp)} || B=
I=${IK_LLAMA_BIN:-$(build ik_llama.cpp ik-llama-cpp-python==0.1.5 ik_llama.cpp)} || I=
[ -n "$B" ] || skip "llama.cpp: not built"
[ -n "$I" ] || skip "ik_llama.cpp: not built"

# the engines' files, quantised from the same f16 GGUF once
quant() { # BIN TYPE OUT
    [ -f "$3" ] || "$1/llama-quantize" "$dir/bench-f16.gguf" "$3" "$2" 2 >/dev/null 2>&1 ||
        { rm -f "$3"; return 1; }
}
[ -n "$B" ] && { quant "$B" Q4_0 "$dir/bench-q4_0.gguf" && quant "$B" TQ2_0 "$dir/bench-tq2_0.gguf" ||
    { skip "llama-quantize failed"; B=; }; }
[ -n "$I" ] && { quant "$I" IQ2_BN "$dir/bench-iq2_bn.gguf" || { skip "ik llama-quantize failed"; I=; }; }

engine() { # ROUND NAME BIN FILE [ARGS]
    local r=$1 name=$2 b=$3 f=$4
    shift 4
    "$b/llama-bench" -m "$dir/$f" -t 2 -n 32 -p 64 -r 1 "$@" -o json 2>/dev/null |
        "$py" "$(dirname "$0")/llama_bench_row.py" engines "$r" "$name" "$f"
}
moed() { # ROUND PACK
    "$bin/moe-bench" decode --model "$dir/$2" --tokens 32 --prompt-tokens 64 2>/dev/null |
        "$py" -c "
import json, sys
x = json.load(sys.stdin)
print(json.dumps({'bench': 'engines', 'round': $1, 'engine': 'moed', 'model': '$2',
                  'decode_tok_s': x['decode_tok_s'], 'prefill_tok_s': x['prefill_tok_s'],
                  'bandwidth_gbs': x['bandwidth_gbs'], 'roofline_fraction': x['roofline_fraction']}))"
}

log=$(mktemp)
for r in $(seq 1 "$rounds"); do
    {
        [ -n "$I" ] && engine "$r" ik_llama.cpp "$I" bench-q4_0.gguf -rtr 1
        [ -n "$I" ] && engine "$r" ik_llama.cpp "$I" bench-iq2_bn.gguf -rtr 1
        [ -n "$B" ] && engine "$r" llama.cpp "$B" bench-q4_0.gguf
        [ -n "$B" ] && engine "$r" llama.cpp "$B" bench-tq2_0.gguf
        moed "$r" bench-q4-dense-q4.moe
        moed "$r" bench-qmoe-dense-q4.moe
        moed "$r" bench-qmoe-dense-q8.moe
    } | tee -a "$log"
done
"$py" - "$log" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for x in rows:
    by.setdefault(x["round"], {})[(x["engine"], x["model"])] = x
pairs = [("bench-q4-dense-q4.moe", "ik_llama.cpp", "bench-q4_0.gguf"),
         ("bench-q4-dense-q4.moe", "llama.cpp", "bench-q4_0.gguf"),
         ("bench-qmoe-dense-q4.moe", "ik_llama.cpp", "bench-iq2_bn.gguf"),
         ("bench-qmoe-dense-q4.moe", "llama.cpp", "bench-tq2_0.gguf"),
         ("bench-qmoe-dense-q8.moe", "llama.cpp", "bench-tq2_0.gguf")]
summary = {"bench": "engines-summary", "rounds": len(by), "ratios": []}
for pack, eng, f in pairs:
    for k in ("decode_tok_s", "prefill_tok_s"):
        v = [d[("moed", pack)][k] / d[(eng, f)][k] for d in by.values()
             if ("moed", pack) in d and (eng, f) in d and d[(eng, f)].get(k)]
        if v:
            summary["ratios"].append({"moed": pack, "engine": eng, "model": f,
                                      "what": k, "median_ratio": statistics.median(v),
                                      "per_round": v})
print(json.dumps(summary))
EOF
rm -f "$log"
