#!/usr/bin/env bash
# The main job: install what is missing, build, and generate text with the
# bundled tiny model (a 14M-parameter Mixtral trained on Shakespeare).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
make -j"$(nproc)" >/dev/null
prompt="${1:-ROMEO:}"
echo "--- prompt: $prompt"
build/bin/moe-run --model models/tiny-moe --prompt "$prompt" --max-tokens 64 --temperature 0
echo
