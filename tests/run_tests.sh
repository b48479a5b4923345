#!/usr/bin/env bash
# Runs the test programs and prints one closing line "N passed, N failed".
#   run_tests.sh unit DIR [GLOB]     every cmocka binary DIR/test_* (or DIR/test_GLOB)
# A program that exits 77 was skipped (the CUDA tests without a GPU); one
# that exits 0 without cmocka's summary counts as one passed test.
#   run_tests.sh integration DIR     every DIR/test_*.py (unittest) and DIR/test_*.sh
#   run_tests.sh all UNITDIR INTDIR  both
# Counts are individual test cases: cmocka's and unittest's own summaries.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
export MOE_ROOT="$root"
export BIN="${BIN:-$root/build/bin}"
case "$BIN" in /*) ;; *) BIN="$root/$BIN" ;; esac
PYTHON="${PYTHON:-/usr/bin/python3}"
passed=0 failed=0 skipped=0
failed_names=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT

count() { # $1 name, reads $log; adds to the totals
    local p f s
    if [ "$2" -eq 77 ]; then skipped=$((skipped + 1)); return; fi
    p=$(grep -aoE '^\[  PASSED  \] [0-9]+' "$log" | awk '{s+=$NF} END {print s+0}')
    f=$(grep -aoE '^\[  FAILED  \] [0-9]+' "$log" | awk '{s+=$NF} END {print s+0}')
    s=$(grep -aoE '^\[  SKIPPED \] [0-9]+' "$log" | awk '{s+=$NF} END {print s+0}')
    if grep -aqE '^Ran [0-9]+ tests?' "$log"; then # python unittest
        local ran fl er sk
        ran=$(grep -aoE '^Ran [0-9]+' "$log" | awk '{print $2}')
        fl=$(grep -aoE 'failures=[0-9]+' "$log" | tail -1 | cut -d= -f2)
        er=$(grep -aoE 'errors=[0-9]+' "$log" | tail -1 | cut -d= -f2)
        sk=$(grep -aoE 'skipped=[0-9]+' "$log" | tail -1 | cut -d= -f2)
        f=$(( ${fl:-0} + ${er:-0} )); s=${sk:-0}; p=$(( ran - f - s ))
    fi
    if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crashed before reporting
    if [ "$2" -eq 0 ] && [ $((p + f + s)) -eq 0 ]; then p=1; fi # a plain program
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    [ "$f" -gt 0 ] && failed_names+=("$1")
}

run_unit() {
    local t
    for t in "$1"/test_${2:-*}; do
        [ -x "$t" ] || continue
        echo "== $(basename "$t")"
        (cd "$root" && "$t") >"$log" 2>&1
        local rc=$?
        cat "$log"
        count "$(basename "$t")" $rc
    done
}

run_integration() {
    local t rc
    for t in "$1"/test_*.py "$1"/test_*.sh; do
        [ -f "$t" ] || continue
        echo "== $(basename "$t")"
        case "$t" in
        *.py) (cd "$root" && "$PYTHON" "$t" -v) >"$log" 2>&1 ;;
        *.sh) (cd "$root" && bash "$t") >"$log" 2>&1 ;;
        esac
        rc=$?
        cat "$log"
        count "$(basename "$t")" $rc
    done
}

case "${1:-}" in
unit) run_unit "$2" "${3:-}" ;;
integration) run_integration "$2" ;;
all) run_unit "$2" ""; run_integration "$3" ;;
*) echo "usage: $0 unit DIR | integration DIR | all UNITDIR INTDIR" >&2; exit 2 ;;
esac

[ ${#failed_names[@]} -gt 0 ] && echo "failing: ${failed_names[*]}"
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ $((passed + skipped)) -gt 0 ]
