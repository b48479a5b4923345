#!/usr/bin/env bash
# The main job: install what is missing, build, start moed on the bundled
# tiny model (a 14M-parameter Mixtral trained on Shakespeare) on a Unix
# socket, and ask it for text through curl and through moectl.
#
#   scripts/demo.sh [PROMPT]         default prompt "ROMEO:"
#   MOED_DEMO_KEEP=1 scripts/demo.sh    leave the daemon running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
make -j"$(nproc)" >/dev/null
prompt="${1:-ROMEO:}"

dir=$(mktemp -d /tmp/moed-demo-XXXXXX)
sock="$dir/moed.sock"
cat >"$dir/moed.ini" <<EOF
[daemon]
socket = $sock
watchdog = no
[model]
path = $PWD/models/tiny-moe
name = tiny-moe
[batching]
max_ctx = 512
[sampling]
temperature = 0.8
max_tokens = 64
EOF
# --socket as well: a MOED_SOCKET exported for moectl would set moed's socket too
build/bin/moed --config "$dir/moed.ini" --socket "$sock" 2>"$dir/moed.log" &
pid=$!
[ -n "${MOED_DEMO_KEEP:-}" ] || trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
    build/bin/moectl --socket "$sock" status >/dev/null 2>&1 && break
    sleep 0.1
done

echo "--- moed is serving models/tiny-moe on $sock"
echo "--- curl --unix-socket $sock http://localhost/v1/completions -d '{\"prompt\": \"$prompt\", ...}'"
curl -sS --unix-socket "$sock" http://localhost/v1/completions \
    -H 'Content-Type: application/json' \
    -d "{\"prompt\": $(printf '%s' "$prompt" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'), \"max_tokens\": 48, \"temperature\": 0}"
echo
echo "--- moectl --socket $sock generate '$prompt'   (streams tokens as they come)"
build/bin/moectl --socket "$sock" generate --max-tokens 64 --seed 7 "$prompt"
echo
if [ -n "${MOED_DEMO_KEEP:-}" ]; then
    echo "--- moed keeps running (pid $pid): MOED_SOCKET=$sock build/bin/moectl chat 'Hello'"
fi
