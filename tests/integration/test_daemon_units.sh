#!/usr/bin/env bash
# The systemd side of moed:
#   - etc/moed.service and etc/moed.socket pass `systemd-analyze verify` (on
#     copies whose ExecStart= points at the built build/bin/moed, or /bin/true
#     when moed is not built: verify insists the binary exists) and the
#     offline security review; they keep the settings the daemon relies on;
#   - moed's command line: --version, --help, --check-config (0/1/2, and
#     a missing model path named), --dump-config == etc/moed.ini;
#   - a real moed on the bundled tiny model under a test NOTIFY_SOCKET:
#     STATUS=, READY=1 after the model loads, WATCHDOG=1 with WATCHDOG_USEC,
#     RELOADING=1 + MONOTONIC_USEC= then READY=1 on SIGHUP, a bad file kept
#     out, STOPPING=1 and exit 0 on SIGTERM; a socket-activated start
#     (LISTEN_FDS) serves; a model that cannot load exits 2.
# Each check prints one line; the summary is cmocka-style so that
# tests/run_tests.sh counts checks, skips included (a check that needs a
# tool this machine lacks is skipped with the reason, not failed).
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$root/build/bin}
case "$BIN" in /*) ;; *) BIN="$root/$BIN" ;; esac
PYTHON=${PYTHON:-/usr/bin/python3}
MOED="$BIN/moed"
tmp=$(mktemp -d /tmp/moed-units-XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT

npass=0 nfail=0 nskip=0
pass() { echo "[       OK ] $1"; npass=$((npass + 1)); }
fail() { echo "[  FAILED  ] $1: $2"; nfail=$((nfail + 1)); }
skip() { echo "[  SKIP    ] $1: $2"; nskip=$((nskip + 1)); }

# ---- unit files ------------------------------------------------------------------

mkdir -p "$tmp/units"
cp "$root/etc/moed.service" "$root/etc/moed.socket" "$tmp/units/"
if [ -x "$MOED" ]; then exe=$MOED; else exe=/bin/true; fi
if [ -x "$BIN/moectl" ]; then ctl=$BIN/moectl; else ctl=/bin/true; fi
sed -i "s|^ExecStart=/usr/local/bin/moed |ExecStart=$exe |; s|^ExecReload=/usr/local/bin/moectl |ExecReload=$ctl |" \
    "$tmp/units/moed.service"

if ! command -v systemd-analyze >/dev/null; then
    skip "systemd-analyze verify" "systemd-analyze is not installed"
    skip "systemd-analyze security" "systemd-analyze is not installed"
else
    # verify exits 0 on warnings such as unknown keys: any output is a failure
    out=$(cd "$tmp/units" && systemd-analyze verify ./moed.socket ./moed.service 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ -z "$out" ]; then
        pass "systemd-analyze verify moed.service moed.socket (ExecStart=$exe, ExecReload=$ctl)"
    elif echo "$out" | grep -qiE "Failed to (initialize|connect|create)|Permission denied.*(cgroup|/run/systemd)"; then
        skip "systemd-analyze verify" "not usable here: $(echo "$out" | head -1)"
    else
        fail "systemd-analyze verify" "rc=$rc: $out"
    fi
    out=$(cd "$tmp/units" && systemd-analyze security --offline=true --threshold=20 ./moed.service 2>&1)
    rc=$?
    if echo "$out" | grep -q "Overall exposure level"; then
        level=$(echo "$out" | grep "Overall exposure level" | sed 's/.*: //')
        if [ $rc -eq 0 ]; then pass "systemd-analyze security: $level"; else
            fail "systemd-analyze security" "exposure above 2.0: $level"; fi
    else
        skip "systemd-analyze security" "--offline not supported: $(echo "$out" | head -1)"
    fi
fi

# settings the daemon relies on
want_service=(Type=notify NotifyAccess=main "ExecStart=/usr/local/bin/moed --config /etc/moed/moed.ini"
    'ExecReload=/usr/local/bin/moectl --socket /run/moed/moed.sock --timeout 120 reload'
    WatchdogSec=30 DynamicUser=yes SupplementaryGroups=moed ProtectSystem=strict
    ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes RuntimeDirectory=moed
    RuntimeDirectoryMode=0755 RuntimeDirectoryPreserve=yes ReadOnlyPaths=-/var/lib/moed/models
    CapabilityBoundingSet= RestrictAddressFamilies=AF_UNIX MemoryDenyWriteExecute=yes
    LockPersonality=yes SystemCallFilter=@system-service)
missing=()
for w in "${want_service[@]}"; do grep -qxF -- "$w" "$root/etc/moed.service" || missing+=("$w"); done
for w in ListenStream=/run/moed/moed.sock SocketMode=0660 SocketGroup=moed Service=moed.service; do
    grep -qxF -- "$w" "$root/etc/moed.socket" || missing+=("moed.socket: $w")
done
[ "$(grep -c '^ListenStream=' "$root/etc/moed.socket")" = 1 ] || missing+=("one ListenStream=")
# the socket unit and the INI's default agree
grep -qxF "socket = /run/moed/moed.sock" "$root/etc/moed.ini" || missing+=("moed.ini socket")
grep -qxF "socket_group = auto" "$root/etc/moed.ini" || missing+=("moed.ini socket_group = auto")
# make install creates the group the units name, idempotently
grep -q "groupadd --system moed" "$root/Makefile" || missing+=("Makefile: groupadd --system moed")
if [ ${#missing[@]} -eq 0 ]; then pass "unit settings"; else fail "unit settings" "missing: ${missing[*]}"; fi

# ---- the command line ------------------------------------------------------------------

if [ ! -x "$MOED" ]; then
    skip "moed command line" "$MOED is not built"
    skip "moed under a test NOTIFY_SOCKET" "$MOED is not built"
    skip "moed socket-activated" "$MOED is not built"
    skip "moed while loading" "$MOED is not built"
    skip "moed with a model that cannot load" "$MOED is not built"
else
    errs=()
    [ "$("$MOED" --version)" = "moed 0.1.0" ] || errs+=("--version")
    "$MOED" --help | grep -q "^SYNOPSIS" || errs+=("--help")
    # the shipped file, with the model it names pointed at the bundled one
    out=$("$MOED" --check-config "$root/etc/moed.ini" --model "$root/models/tiny-moe" 2>&1); rc=$?
    [ $rc -eq 0 ] && [ "$out" = "$root/etc/moed.ini: OK" ] || errs+=("--check-config etc/moed.ini: $rc $out")
    # a model path that is not there is named
    out=$("$MOED" --check-config "$root/etc/moed.ini" --model "$tmp/no-model.gguf" 2>&1); rc=$?
    [ $rc -eq 1 ] && [ "$out" = "$root/etc/moed.ini: [model] path: $tmp/no-model.gguf: No such file or directory" ] ||
        errs+=("--check-config missing model: $rc $out")
    printf '[batching]\nmax_seqs = 4\nmax_queue = lots\n' >"$tmp/bad.ini"
    out=$("$MOED" --check-config "$tmp/bad.ini" 2>&1); rc=$?
    [ $rc -eq 1 ] && [ "$out" = "$tmp/bad.ini:3: [batching] max_queue: 'lots' is not an integer" ] ||
        errs+=("--check-config bad: $rc $out")
    "$MOED" --check-config "$tmp/none.ini" >/dev/null 2>&1; rc=$?
    [ $rc -eq 2 ] || errs+=("--check-config missing file: $rc")
    # (MOED_* variables set keys too: not in this comparison)
    env $(env | sed -n 's/^\(MOED_[A-Za-z0-9_]*\)=.*/-u \1/p') "$MOED" --dump-config |
        cmp -s - "$root/etc/moed.ini" || errs+=("--dump-config != etc/moed.ini")
    printf '[sampling]\ntemperature = 0.25\n' >"$tmp/t.ini"
    "$MOED" --dump-config --config "$tmp/t.ini" >"$tmp/dump.ini" && grep -qx "temperature = 0.25" "$tmp/dump.ini" &&
        "$MOED" --check-config "$tmp/dump.ini" -m "$root/models/tiny-moe" >/dev/null ||
        errs+=("--dump-config --config")
    "$MOED" --no-such-option >/dev/null 2>&1; [ $? -eq 2 ] || errs+=("bad option")
    if [ ${#errs[@]} -eq 0 ]; then pass "moed command line"; else fail "moed command line" "${errs[*]}"; fi

    # ---- a real daemon -------------------------------------------------------------------
    # listens on a datagram socket and prints each notification on one line
    cat >"$tmp/notify.py" <<'EOF'
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
out = open(sys.argv[2], "a", buffering=1)
while True:
    try:
        d = s.recv(4096).decode()
    except socket.timeout:
        break
    out.write(d.replace("\n", "|") + "\n")
EOF
    # waits until FILE has a line matching REGEX (seconds: $3)
    wait_for() {
        local i
        for ((i = 0; i < ${3:-10} * 20; i++)); do
            grep -qE "$2" "$1" 2>/dev/null && return 0
            sleep 0.05
        done
        return 1
    }
    http() { # SOCKET PATH [curl args]: prints the body, then the status on its own line
        local s=$1 p=$2
        shift 2
        curl -s -m 20 --unix-socket "$s" -w '\n%{http_code}\n' "$@" "http://moed$p"
    }
    cat >"$tmp/moed.ini" <<EOF
[daemon]
socket = $tmp/moed.sock
drain_timeout = 10
[model]
path = $root/models/tiny-moe
EOF
    "$PYTHON" "$tmp/notify.py" "$tmp/notify.sock" "$tmp/notify.log" &
    pids+=($!)
    for ((i = 0; i < 100; i++)); do [ -S "$tmp/notify.sock" ] && break; sleep 0.05; done
    NOTIFY_SOCKET="$tmp/notify.sock" WATCHDOG_USEC=1000000 "$MOED" --config "$tmp/moed.ini" \
        2>"$tmp/moed.log" &
    mpid=$!
    pids+=($mpid)
    errs=()
    wait_for "$tmp/notify.log" '^READY=1' 30 || errs+=("no READY=1")
    grep -q '^STATUS=Loading model' "$tmp/notify.log" || errs+=("no loading STATUS=")
    grep -q 'EXTEND_TIMEOUT_USEC=' "$tmp/notify.log" || errs+=("no EXTEND_TIMEOUT_USEC=")
    out=$(http "$tmp/moed.sock" /health)
    [ "$(echo "$out" | tail -1)" = 200 ] || errs+=("/health: $out")
    wait_for "$tmp/notify.log" '^WATCHDOG=1$' 5 || errs+=("no WATCHDOG=1")
    # a reloadable change, a restart-only change, then a bad file
    printf '[daemon]\nsocket = %s/moed.sock\ndrain_timeout = 10\n[model]\npath = %s/models/tiny-moe\n[batching]\nmax_seqs = 4\n[limits]\nmax_tokens = 1000\n' \
        "$tmp" "$root" >"$tmp/moed.ini"
    kill -HUP $mpid
    wait_for "$tmp/notify.log" '^RELOADING=1\|.*MONOTONIC_USEC=[0-9]+' 10 || errs+=("no RELOADING=1 + MONOTONIC_USEC")
    wait_for "$tmp/moed.log" 'needs restart: \[batching\] max_seqs' 10 || errs+=("no needs-restart report")
    grep -q 'reload: \[limits\] max_tokens = 1000 (was 4096)' "$tmp/moed.log" || errs+=("max_tokens not applied")
    [ "$(grep -c '^READY=1' "$tmp/notify.log")" -ge 2 ] || errs+=("no READY=1 after reload")
    printf '[limits]\nmax_tokens = 0\n' >>"$tmp/moed.ini"
    out=$(http "$tmp/moed.sock" /admin/reload -X POST)
    echo "$out" | grep -q "max_tokens: set twice" || errs+=("POST /admin/reload with a bad file: $out")
    out=$(http "$tmp/moed.sock" /v1/completions -d '{"prompt":"Once upon a time","max_tokens":4,"temperature":0}')
    [ "$(echo "$out" | tail -1)" = 200 ] || errs+=("completion after a bad reload: $out")
    kill -TERM $mpid
    wait $mpid
    rc=$?
    [ $rc -eq 0 ] || errs+=("exit status $rc after SIGTERM")
    grep -q '^STOPPING=1' "$tmp/notify.log" || errs+=("no STOPPING=1")
    [ -e "$tmp/moed.sock" ] && errs+=("socket left behind")
    if [ ${#errs[@]} -eq 0 ]; then pass "moed under a test NOTIFY_SOCKET"; else
        fail "moed under a test NOTIFY_SOCKET" "${errs[*]} (log: $(tr '\n' '|' <"$tmp/moed.log"))"; fi

    # ---- socket activation ----------------------------------------------------------------
    if command -v systemd-socket-activate >/dev/null; then
        printf '[daemon]\nsocket = %s/not-used.sock\n[model]\npath = %s/models/tiny-moe\n' \
            "$tmp" "$root" >"$tmp/act.ini"
        systemd-socket-activate -l "$tmp/act.sock" "$MOED" --config "$tmp/act.ini" \
            2>"$tmp/act.log" &
        apid=$!
        pids+=($apid)
        for ((i = 0; i < 100; i++)); do [ -S "$tmp/act.sock" ] && break; sleep 0.05; done
        errs=()
        out=$(http "$tmp/act.sock" /health) # the first connection starts moed
        for ((i = 0; i < 100; i++)); do
            [ "$(echo "$out" | tail -1)" = 200 ] && break
            sleep 0.1
            out=$(http "$tmp/act.sock" /health)
        done
        [ "$(echo "$out" | tail -1)" = 200 ] || errs+=("/health: $out")
        out=$(http "$tmp/act.sock" /v1/completions -d '{"prompt":"Hello","max_tokens":2}')
        [ "$(echo "$out" | tail -1)" = 200 ] || errs+=("completion: $out")
        grep -q "socket activation" "$tmp/act.log" || errs+=("did not use the passed socket")
        [ -e "$tmp/not-used.sock" ] && errs+=("bound [daemon] socket too")
        kill -TERM $apid
        wait $apid
        rc=$?
        [ $rc -eq 0 ] || errs+=("exit status $rc")
        if [ ${#errs[@]} -eq 0 ]; then pass "moed socket-activated"; else
            fail "moed socket-activated" "${errs[*]} (log: $(tr '\n' '|' <"$tmp/act.log"))"; fi
    else
        skip "moed socket-activated" "systemd-socket-activate is not installed"
    fi

    # ---- a load that takes forever: a FIFO named like a GGUF blocks the loader's open() ---
    mkfifo "$tmp/slow.gguf"
    printf '[daemon]\nsocket = %s/slow.sock\n[model]\npath = %s/slow.gguf\n' "$tmp" "$tmp" >"$tmp/slow.ini"
    : >"$tmp/notify.log"
    NOTIFY_SOCKET="$tmp/notify.sock" WATCHDOG_USEC=400000 "$MOED" --config "$tmp/slow.ini" \
        2>"$tmp/slow.log" &
    spid=$!
    pids+=($spid)
    errs=()
    # the main loop keeps extending the start timeout while the loader is stuck
    for ((i = 0; i < 200; i++)); do
        [ "$(grep -c 'EXTEND_TIMEOUT_USEC=' "$tmp/notify.log")" -ge 3 ] && break
        sleep 0.05
    done
    [ "$(grep -c 'EXTEND_TIMEOUT_USEC=' "$tmp/notify.log")" -ge 3 ] || errs+=("EXTEND_TIMEOUT_USEC not repeated")
    out=$(http "$tmp/slow.sock" /health)
    [ "$(echo "$out" | tail -1)" = 503 ] || errs+=("/health while loading: $out")
    grep -q '^READY=1' "$tmp/notify.log" && errs+=("READY=1 before the model loaded")
    kill -TERM $spid
    wait $spid
    rc=$?
    [ $rc -eq 0 ] || errs+=("exit status $rc")
    grep -q '^STOPPING=1' "$tmp/notify.log" || errs+=("no STOPPING=1")
    if [ ${#errs[@]} -eq 0 ]; then pass "moed: 503 and EXTEND_TIMEOUT_USEC while loading, SIGTERM mid-load"; else
        fail "moed while loading" "${errs[*]} (log: $(tr '\n' '|' <"$tmp/slow.log"))"; fi

    # ---- a model that cannot load ---------------------------------------------------------
    printf '[daemon]\nsocket = %s/fail.sock\n[model]\npath = %s/no-such-model\n' "$tmp" "$tmp" >"$tmp/fail.ini"
    timeout 30 "$MOED" --config "$tmp/fail.ini" 2>"$tmp/fail.log"
    rc=$?
    if [ $rc -eq 2 ] && grep -q "cannot load the model: .*no-such-model" "$tmp/fail.log"; then
        pass "moed with a model that cannot load exits 2"
    else
        fail "moed with a model that cannot load" "rc=$rc $(tr '\n' '|' <"$tmp/fail.log")"
    fi
fi

echo "[==========] $((npass + nfail + nskip)) check(s) run."
echo "[  PASSED  ] $npass test(s)."
[ $nskip -gt 0 ] && echo "[  SKIPPED ] $nskip test(s)."
[ $nfail -gt 0 ] && echo "[  FAILED  ] $nfail test(s)."
[ $nfail -eq 0 ]
