#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every test that
# needs no GPU (unit + integration), then the unit tests again under
# AddressSanitizer + UBSan. Ends with the line "tests: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh || exit 1
jobs=$(nproc)
make -j"$jobs" all >/dev/null || exit 1
make -j"$jobs" check 2>&1 | tee build/check.log
rc_check=${PIPESTATUS[0]}
echo "== unit tests under SANITIZE=address,undefined"
make -j"$jobs" SANITIZE=address,undefined check-unit 2>&1 | tee build/check-san.log
rc_san=${PIPESTATUS[0]}
# one closing line for the whole run
p=$(grep -hoE '^tests: [0-9]+ passed' build/check.log build/check-san.log | awk '{s+=$2} END {print s+0}')
f=$(grep -hoE '[0-9]+ failed' build/check.log build/check-san.log | awk '{s+=$1} END {print s+0}')
[ "$rc_check" -ne 0 ] || [ "$rc_san" -ne 0 ] && [ "$f" -eq 0 ] && f=1
echo "$p passed, $f failed"
[ "$rc_check" -eq 0 ] && [ "$rc_san" -eq 0 ]
