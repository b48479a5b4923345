#!/usr/bin/env bash
# MC-MoE on a trained model: validation perplexity of tiny-moe with experts as
# bf16, uniform 1-, 2- and 3-bit GPTQ, and mcmoe at 1.5 / 2.0 / 2.5 / 3.0 bits on
# average: moe-pack's defaults (one budget for the model, cost = output loss),
# the paper's settings (+paper: a budget per layer, cost F * Wt^1.5 * L), and
# the defaults' widths shuffled among each layer's experts (+shuffleS: the
# same bytes without the statistics). All calibrated on the training text
# only. One JSON line per pack.
#   bash tests/quality/mcmoe_quality.sh [BIN] [FORMAT[+shuffleS] ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/build/bin}
shift || true
formats=("$@")
if [ ${#formats[@]} -eq 0 ]; then
    formats=(bf16 gptq1 gptq2 gptq3)
    for b in 1.5 2.0 2.5 3.0; do
        formats+=("mcmoe:$b" "mcmoe:$b+paper" "mcmoe:$b+shuffle1" "mcmoe:$b+shuffle2")
    done
fi
py=${PYTHON:-/usr/bin/python3}
text=$root/data/tinyshakespeare.txt
valid=1003788 # models/tiny-moe/reference.json: validation starts at this character
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for entry in "${formats[@]}"; do
    fmt=${entry%%+*}
    extra=()
    case "$entry" in
        *+shuffle*) extra=(--mcmoe-shuffle "${entry##*+shuffle}") ;;
        *+paper) extra=(--mcmoe-scope layer --mcmoe-cost paper) ;;
    esac
    pack=$("$bin/moe-pack" --model "$root/models/tiny-moe" --out "$tmp/p.moe" --experts "$fmt" --dense bf16 \
        --calib "$text" --calib-end-char "$valid" --odp-target 0 "${extra[@]}" 2>/dev/null)
    ppl=$("$bin/moe-bench" ppl --model "$tmp/p.moe" --text "$text" --start-char "$valid")
    "$py" -c 'import json,sys; p=json.loads(sys.argv[2]); q=json.loads(sys.argv[3]);
print(json.dumps({"bench": "mcmoe-quality", "experts": sys.argv[1], "ppl": q["ppl"],
  "expert_bits_per_weight": p["expert_bits_per_weight"], "expert_bytes": p["expert_bytes"]}))' \
        "$entry" "$pack" "$ppl"
done
