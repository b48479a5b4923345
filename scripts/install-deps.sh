#!/usr/bin/env bash
# Installs what moed needs to build and test, through apt-get, when missing.
# Safe to run again: it installs nothing when everything is present.
set -euo pipefail
pkgs=(
    build-essential pkg-config clang libclang-rt-14-dev
    libjansson-dev libpcre2-dev libcmocka-dev
    libnuma-dev liburing-dev libinih-dev libmicrohttpd-dev
    libcurl4-openssl-dev libxxhash-dev libglpk-dev libsystemd-dev
    libreadline-dev   # moectl chat: line editing and history
    python3 python3-numpy
    python3-jsonschema   # structured output: outputs checked by the reference validator
    curl systemd   # the demo's curl --unix-socket; systemd-analyze verify in the tests
    haproxy        # tests/integration/test_replicas.py: two replicas behind etc/haproxy-moed.cfg
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
