#!/usr/bin/env bash
# Compression quality on a trained model: validation perplexity of tiny-moe
# (and of the same weights in the Qwen2-MoE layout) as bf16, q4, qmoe-rtn
# (ternary rounded to nearest) and qmoe (ternary GPTQ calibrated on the
# training text only). One JSON line per pack.
#   bash tests/quality/qmoe_quality.sh [BIN]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/build/bin}
py=${PYTHON:-/usr/bin/python3}
text=$root/data/tinyshakespeare.txt
valid=1003788 # models/tiny-moe/reference.json: validation starts at this character
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" "$root/tests/quality/tiny_as_qwen2_moe.py" --out "$tmp/qwen2" >&2
for model in tiny-moe qwen2; do
    src=$root/models/tiny-moe
    [ "$model" = qwen2 ] && src=$tmp/qwen2
    for fmt in bf16 q4 qmoe-rtn qmoe; do
        calib=()
        [ "$fmt" = qmoe ] && calib=(--calib "$text" --calib-end-char "$valid")
        pack=$("$bin/moe-pack" --model "$src" --out "$tmp/p.moe" --experts "$fmt" --dense bf16 "${calib[@]}" 2>/dev/null)
        ppl=$("$bin/moe-bench" ppl --model "$tmp/p.moe" --text "$text" --start-char "$valid")
        "$py" -c 'import json,sys; p=json.loads(sys.argv[3]); q=json.loads(sys.argv[4]);
print(json.dumps({"bench": "qmoe-quality", "model": sys.argv[1], "experts": sys.argv[2],
  "ppl": q["ppl"], "expert_bits_per_weight": p["expert_bits_per_weight"],
  "zero_fraction": p.get("zero_fraction"), "pack_bytes": p["pack_bytes"]}))' \
            "$model" "$fmt" "$pack" "$ppl"
    done
done
