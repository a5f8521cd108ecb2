#!/usr/bin/env bash
# The daemon's throughput on a SoftHSM2 token loaded directly against the same token through
# `p11-kit server`, or against opencryptoki's soft token (issue #18), in rounds of direct, other,
# other, direct so that the machine's drift cancels. Each run starts a fresh token (and server,
# or pkcsslotd) and a production-config vecseald, and prints the load generator's median line
# and the HSM calls the daemon counted.
#
#   [VECSEAL_COMPARE_WITH=p11kit|opencryptoki] bench/load/compare_modules.sh [ROUNDS] [-- VECSEAL_LOAD_OPTIONS...]
#
# Needs the build (vecseald, vecseal_load), softhsm2-util, p11-kit and curl; runs as any user.
# opencryptoki needs root, no pkcsslotd running and an empty soft token store (or one the tests
# made), as the tests' fixture does (tests/pkcs11/support/softhsm_fixture.cc); it wipes the store
# after each run and leaves the fixture's marker.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${VECSEAL_BUILD_DIR:-$root/build}/bin"
rounds="${1:-6}"
shift || true
[ "${1:-}" = "--" ] && shift
load_options=("$@")
[ ${#load_options[@]} -gt 0 ] || load_options=(--transform permute --batch 1024 --dim 768
  --wire binary --connections 2 --duration 4 --warmup 1 --repetitions 1)
softhsm=/usr/lib/softhsm/libsofthsm2.so
other="${VECSEAL_COMPARE_WITH:-p11kit}"
ock_store=/var/lib/opencryptoki/swtok
ock_marker="$ock_store/.vecseal-test-fixture"
if [ "$other" = opencryptoki ]; then
  [ "$(id -u)" = 0 ] || { echo "opencryptoki: run as root (its paths are compiled in)" >&2; exit 1; }
  ! pgrep -x pkcsslotd >/dev/null || { echo "opencryptoki: a pkcsslotd runs; stop it" >&2; exit 1; }
  [ ! -e "$ock_store/NVTOK.DAT" ] || [ -e "$ock_marker" ] ||
    { echo "opencryptoki: $ock_store holds a token the tests did not make" >&2; exit 1; }
elif [ "$other" != p11kit ]; then
  echo "VECSEAL_COMPARE_WITH is p11kit or opencryptoki" >&2; exit 1
fi
client="$(dirname "$(readlink -f /usr/lib/*/pkcs11/p11-kit-client.so)")/p11-kit-client.so"
scratch="$(mktemp -d)"
trap 'pkill -P $$ 2>/dev/null || true; chattr -R -a "$scratch" 2>/dev/null || true; rm -rf "$scratch"' EXIT

slotd=""
# pkcsslotd has left when its pid is gone or a zombie (a container's PID 1 may not reap it).
stop_slotd() {
  [ -n "$slotd" ] || return 0
  kill -TERM "$slotd" 2>/dev/null || true
  for _ in $(seq 50); do
    ps -o stat= -p "$slotd" 2>/dev/null | grep -qv Z || break
    sleep 0.1
  done
  kill -KILL "$slotd" 2>/dev/null || true
  slotd=""
}

# A wiped soft token store (directories kept) and cache, and the tests' marker.
wipe_ock() {
  find "$ock_store" -mindepth 1 -type f -delete
  rm -f /dev/shm/var.lib.opencryptoki.swtok
  echo "made by vecseal's bench/load/compare_modules.sh pkcsslotd=-1" >"$ock_marker"
}

run() {  # MODE: direct | p11kit | opencryptoki
  local mode="$1" dir
  dir="$(mktemp -d "$scratch/$mode.XXXX")"
  mkdir -p "$dir/tokens" "$dir/audit" "$dir/run"
  chmod 700 "$dir/audit"
  printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\n' "$dir" >"$dir/softhsm2.conf"
  export SOFTHSM2_CONF="$dir/softhsm2.conf"
  [ "$mode" = opencryptoki ] ||
    softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null
  (umask 077 && echo 1234 >"$dir/pin")
  echo "{\"version\": 1, \"rules\": [{\"id\": \"bench\", \"callers\": {\"uid\": $(id -u)},
    \"keys\": [\"*\"], \"operations\": [\"keys.create\", \"encrypt\"]}]}" >"$dir/policy.json"
  local module="$softhsm" server=""
  if [ "$mode" = p11kit ]; then
    p11-kit server --foreground --provider "$softhsm" --name "$dir/p11.sock" \
      pkcs11:token=bench >"$dir/server.log" 2>&1 &
    server=$!
    until [ -S "$dir/p11.sock" ]; do sleep 0.1; done
    export P11_KIT_SERVER_ADDRESS="unix:path=$dir/p11.sock"
    module="$client"
  elif [ "$mode" = opencryptoki ]; then
    wipe_ock
    rm -f /run/pkcsslotd.pid /run/pkcsslotd.socket
    /usr/sbin/pkcsslotd
    until [ -S /run/pkcsslotd.socket ] && [ -s /run/pkcsslotd.pid ]; do sleep 0.1; done
    slotd="$(cat /run/pkcsslotd.pid)"
    trap stop_slotd EXIT  # run() runs in a subshell: stops it there if a step fails
    printf 'bench\n' | pkcsconf -I -c 3 -S 87654321 >/dev/null
    pkcsconf -P -c 3 -S 87654321 -n 5678 && pkcsconf -u -c 3 -S 5678 -n 1234
    module="$(dirname "$(readlink -f /usr/lib/*/opencryptoki/libopencryptoki.so.0)")/libopencryptoki.so.0"
  fi
  cat >"$dir/vecseald.json" <<JSON
{"socket": {"path": "$dir/run/vecseald.sock", "mode": "0600"},
 "pkcs11": {"module": "$module", "token_label": "bench", "pin": {"file": "$dir/pin"}},
 "policy": {"file": "$dir/policy.json"}, "audit": {"directory": "$dir/audit"}}
JSON
  "$bin/vecseald" --config "$dir/vecseald.json" 2>"$dir/daemon.log" &
  local daemon=$!
  until grep -qs event=ready "$dir/daemon.log"; do
    kill -0 "$daemon" 2>/dev/null || { cat "$dir/daemon.log" >&2; exit 1; }
    sleep 0.1
  done
  local line
  line="$("$bin/vecseal_load" --socket "$dir/run/vecseald.sock" --key bench "${load_options[@]}" |
          grep '^median')"
  local calls
  calls="$(curl -s --unix-socket "$dir/run/vecseald.sock" http://localhost/metrics |
           grep -E '^vecseal_hsm_calls_total\{function="C_(EncryptUpdate|Encrypt)"' |
           sed 's/.*function="\([A-Za-z_]*\)"} /\1=/' | tr '\n' ' ')"
  echo "$mode $line | $calls"
  kill -TERM "$daemon"; wait "$daemon" || true
  [ -z "$server" ] || { kill -TERM "$server"; wait "$server" 2>/dev/null || true; }
  pkill -f "p11-kit-remote.*pkcs11:token=bench" 2>/dev/null || true
  unset P11_KIT_SERVER_ADDRESS
  if [ -n "$slotd" ]; then
    stop_slotd
    wipe_ock
  fi
}

for round in $(seq "$rounds"); do
  for mode in direct "$other" "$other" direct; do
    echo "round $round $(run "$mode")"
  done
done
