#!/usr/bin/env bash
# Online dynamic pruning on a trained model: tiny-moe as bf16 and as an
# mcmoe:2.5 pack, with ODP defaults fitted by moe-pack for 10% / 20% (the
# default) / 30% of expert activations removed on the training text, then
# measured on the validation text: activations removed and perplexity change
# against the same pack without pruning. One JSON line per pack and level.
#   bash tests/quality/odp_quality.sh [BIN]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/build/bin}
py=${PYTHON:-/usr/bin/python3}
text=$root/data/tinyshakespeare.txt
valid=1003788
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for fmt in bf16 mcmoe:2.5; do
    base=""
    for target in 0.1 0.2 0.3; do
        "$bin/moe-pack" --model "$root/models/tiny-moe" --out "$tmp/p.moe" --experts "$fmt" --dense bf16 \
            --calib "$text" --calib-end-char "$valid" --odp-target "$target" >/dev/null 2>&1
        [ -n "$base" ] || base=$("$bin/moe-bench" ppl --model "$tmp/p.moe" --text "$text" --start-char "$valid")
        odp=$("$bin/moe-bench" ppl --model "$tmp/p.moe" --text "$text" --start-char "$valid" --odp-beta pack)
        "$py" -c 'import json,sys; b=json.loads(sys.argv[3]); o=json.loads(sys.argv[4]); r=o["routing"];
print(json.dumps({"bench": "odp-quality", "experts": sys.argv[1], "odp_target": float(sys.argv[2]),
  "betas": r["odp_beta_per_layer"], "ppl_off": b["ppl"], "ppl_odp": o["ppl"],
  "ppl_change": o["ppl"] / b["ppl"] - 1, "activations_removed": r["activations_removed_fraction"],
  "removed_per_layer": r["odp_pruned_fraction_per_layer"]}))' "$fmt" "$target" "$base" "$odp"
    done
done
