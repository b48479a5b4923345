#!/usr/bin/env bash
# make bench: every benchmark, one JSON object per line on stdout.
# The bench model (2.51 B parameters, Mixtral-shaped, f16) is generated on
# first use into $MOE_BENCH_DIR (default /tmp/moe-bench-model, ~9.4 GB for
# the GGUF and HF copies; about two minutes).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/build/bin}
dir=${MOE_BENCH_DIR:-/tmp/moe-bench-model}
py=${PYTHON:-/usr/bin/python3}
if [ ! -f "$dir/bench-f16.gguf" ] || [ ! -f "$dir/bench-hf/model.safetensors" ]; then
    echo "generating the bench model into $dir ..." >&2
    "$py" "$root/tests/bench/make_moe_model.py" --layers 16 --hidden 2048 --ffn 2816 --experts 8 \
        --top-k 2 --heads 16 --kv-heads 4 --vocab 32000 --ctx 4096 --dtype f16 --seed 1234 \
        --out "$dir/bench-f16.gguf" --hf-out "$dir/bench-hf" >&2
fi
label() { sed "s/^{/{\"bench\":\"$1\",/"; }
"$bin/moe-bench" ppl --model "$root/models/tiny-moe" --text "$root/data/tinyshakespeare.txt" \
    --start-char 1003788 | label tiny-moe-valid-ppl
"$bin/moe-bench" decode --model "$dir/bench-hf" --tokens 32 --prompt-tokens 64 | label bench-hf-f16-decode
"$bin/moe-bench" decode --model "$dir/bench-f16.gguf" --tokens 32 --prompt-tokens 64 | label bench-gguf-f16-decode
"$py" "$root/tests/bench/bench_serve.py" --model "$dir/bench-f16.gguf" --streams 8 --tokens 64 --bin "$bin"
# Packs of the bench model, cached beside it (q4 takes several minutes: its
# clipping search). No tokenizer, so qmoe is rounded to nearest (no calibration):
# speed does not depend on it. The synthetic experts are 99% zeros as ternary.
for f in bf16 q4 qmoe; do
    if [ ! -f "$dir/bench-$f.moe" ]; then
        "$bin/moe-pack" --model "$dir/bench-hf" --out "$dir/bench-$f.moe" --experts "$f" --dense bf16 \
            2>/dev/null | label "pack-bench-$f"
    fi
done
"$bin/moe-bench" decode-cmp --model "$dir/bench-bf16.moe" --model "$dir/bench-q4.moe" \
    --model "$dir/bench-qmoe.moe" --tokens 16 --rounds 3 | label pack-decode-bf16-q4-qmoe
"$bin/moe-bench" gemv --model "$dir/bench-qmoe.moe" | label expert-gemv
# issue 17: the same experts with the dense parts quantised too (re-packed
# from the packs above: experts copied bit for bit), and the QMoE GEMV at
# realistic zero fractions against gq4's, in one interleaved run
for f in q4 qmoe; do
    for d in q8 q4; do
        if [ ! -f "$dir/bench-$f-dense-$d.moe" ]; then
            "$bin/moe-pack" --model "$dir/bench-$f.moe" --out "$dir/bench-$f-dense-$d.moe" \
                --experts "$f" --dense "$d" 2>/dev/null | label "pack-bench-$f-dense-$d"
        fi
    done
done
"$bin/moe-bench" decode-cmp --model "$dir/bench-q4.moe" --model "$dir/bench-q4-dense-q8.moe" \
    --model "$dir/bench-q4-dense-q4.moe" --model "$dir/bench-qmoe.moe" \
    --model "$dir/bench-qmoe-dense-q8.moe" --model "$dir/bench-qmoe-dense-q4.moe" \
    --tokens 32 --prompt-tokens 64 --rounds 3 | label pack-decode-dense-formats
"$bin/moe-bench" gemv --rows 2816 --cols 2048 --formats gq4,qmoe-p0.85,qmoe-p0.9,qmoe-p0.99 \
    --batch 1,8,32 --rounds 3 | label qmoe-gemv-sparsity
# the same packs against llama.cpp and ik_llama.cpp (built once from their
# sdists into $MOE_ENGINES_DIR), one interleaved run
PYTHON="$py" bash "$root/tests/bench/engines.sh" "$bin" "$dir"
# issue 21: a Qwen3.6-shaped Gated DeltaNet hybrid, one GGUF, moed against llama.cpp
# (the converter needs torch: CONVERT_PYTHON names a Python that has it)
PYTHON="$py" bash "$root/tests/bench/hybrid_bench.sh" "$bin" "$dir"
# issue 18: automatic prefix caching on 8 users x 6 turns of chat, off against on,
# with a 75-token and a 1k-token shared system prompt
"$py" "$root/tests/bench/prefix_bench.py" --bin "$bin"
"$py" "$root/tests/bench/prefix_bench.py" --bin "$bin" --system-repeats 24 --max-position 4096
# issue 18: what constrained decoding costs per token, on the bench model's 32k vocabulary
"$py" "$root/tests/bench/structured_bench.py" --bin "$bin" --model "$dir/bench-q4.moe"
bash "$root/tests/quality/qmoe_quality.sh" "$bin"
# tiered expert memory: io_uring against sequential O_DIRECT, the tier at
# 100/50/25% against mmap in a memory cgroup (root and cgroup v1 only), and
# the tiny model's policies against Belady on its validation text
"$bin/moe-bench" io --model "$dir/bench-q4.moe" --seconds 2 | label tier-io
if [ "$(id -u)" = 0 ]; then
    TOKENS=32 PYTHON="$py" bash "$root/tests/bench/tier_bench.sh" "$bin" "$dir/bench-q4.moe" "$dir/bench-qmoe.moe"
fi
"$bin/moe-pack" --model "$root/models/tiny-moe" --out "$dir/tiny-q4.moe" --experts q4 >/dev/null 2>&1
"$bin/moe-bench" trace --model "$dir/tiny-q4.moe" --text "$root/data/tinyshakespeare.txt" \
    --start-char 1003788 --out "$dir/tiny-valid.trace" | label tiny-trace
"$bin/moe-bench" cache --trace "$dir/tiny-valid.trace" 2>/dev/null | label tier-cache
