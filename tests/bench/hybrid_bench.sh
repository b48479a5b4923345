#!/usr/bin/env bash
# make bench, issue 21: a Gated DeltaNet hybrid (the Qwen3.6-35B-A3B layer pattern and expert
# count, widths / 4: tests/bench/make_hybrid_model.py) as one Q8_0 GGUF written by llama.cpp's
# own converter, decoded and prefilled by moed and by llama.cpp in interleaved rounds
# (2 threads, tg32 / pp64), and by ik_llama.cpp where it is built (without -rtr: its
# run-time repack crashes on this architecture in the 0.1.5 sdist).
#
#   hybrid_bench.sh BIN DIR      (DIR: where the model and its GGUF are cached, ~7 GB)
#
# llama.cpp comes as in engines.sh: $LLAMA_CPP_BIN (llama-bench) and $LLAMA_CPP_SRC (the source
# tree with convert_hf_to_gguf.py and gguf-py), else the llama-cpp-python 0.3.36 sdist that
# engines.sh unpacked and built under $MOE_ENGINES_DIR. The converter runs with its
# pre-tokenizer check answered "qwen2" (the repository's Qwen tokenizer is a reduced copy whose
# hash llama.cpp does not know) and --no-mtp.
#
# Output, one JSON object per line: each engine per round, then the medians of moed / engine.
set -uo pipefail
bin=$1
dir=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
eng=${MOE_ENGINES_DIR:-/tmp/moe-bench-engines}
py=${PYTHON:-/usr/bin/python3}
conv_py=${CONVERT_PYTHON:-$py}
rounds=${ROUNDS:-3}
skip() { echo "{\"bench\":\"hybrid\",\"skipped\":\"$1\"}"; exit 0; }

B=${LLAMA_CPP_BIN:-$eng/llama.cpp/build/bin}
S=${LLAMA_CPP_SRC:-$(ls -d "$eng"/llama.cpp/*/vendor/llama.cpp 2>/dev/null | head -1)}
[ -x "$B/llama-bench" ] || skip "no llama-bench in $B (run engines.sh first or set LLAMA_CPP_BIN)"
[ -f "$S/convert_hf_to_gguf.py" ] || skip "no convert_hf_to_gguf.py (set LLAMA_CPP_SRC)"
I=${IK_LLAMA_BIN:-$eng/ik_llama.cpp/build/bin}
[ -x "$I/llama-bench" ] || I=

hf=$dir/hybrid-hf
gguf=$dir/hybrid-q8_0.gguf
if [ ! -f "$hf/model.safetensors" ]; then
    "$py" "$root/tests/bench/make_hybrid_model.py" --out "$hf" >&2 || skip "make_hybrid_model.py failed"
fi
if [ ! -f "$gguf" ]; then
    "$conv_py" - "$S" "$hf" --no-mtp --outtype q8_0 --outfile "$gguf" >&2 <<'EOF' || skip "the converter failed"
import runpy, sys
src = sys.argv[1]
sys.path.insert(0, src)
import conversion, conversion.base as base
if hasattr(conversion, "load_all_models"):
    conversion.load_all_models()
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
EOF
fi

engine() { # ROUND NAME BIN
    "$3/llama-bench" -m "$gguf" -t 2 -n 32 -p 64 -r 1 -o json 2>/dev/null |
        "$py" "$root/tests/bench/llama_bench_row.py" hybrid "$1" "$2" hybrid-q8_0.gguf
}

log=$(mktemp)
for r in $(seq 1 "$rounds"); do
    {
        engine "$r" llama.cpp "$B"
        [ -n "$I" ] && engine "$r" ik_llama.cpp "$I"
        "$bin/moe-bench" decode --model "$gguf" --tokens 32 --prompt-tokens 64 2>/dev/null | "$py" -c "
import json, sys
x = json.load(sys.stdin)
print(json.dumps({'bench': 'hybrid', 'round': $r, 'engine': 'moed',
                  'decode_tok_s': x['decode_tok_s'], 'prefill_tok_s': x['prefill_tok_s']}))"
    } | tee -a "$log"
done
"$py" - "$log" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for x in rows:
    by.setdefault(x["round"], {})[x["engine"]] = x
out = {"bench": "hybrid-summary", "model": "hybrid-q8_0.gguf", "rounds": len(by), "ratios": []}
for eng in ("llama.cpp", "ik_llama.cpp"):
    for k in ("decode_tok_s", "prefill_tok_s"):
        v = [d["moed"][k] / d[eng][k] for d in by.values()
             if "moed" in d and eng in d and d[eng].get(k)]
        if v:
            out["ratios"].append({"engine": eng, "what": k, "median_ratio": statistics.median(v),
                                  "per_round": v})
print(json.dumps(out))
EOF
rm -f "$log"
