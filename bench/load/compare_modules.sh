#!/usr/bin/env bash
# The daemon's throughput on one SoftHSM2 token loaded directly and through `p11-kit server`
# (issue #18), in rounds of direct, p11-kit, p11-kit, direct so that the machine's drift cancels.
# Each run starts a fresh token, server and production-config vecseald, and prints the load
# generator's median line and the HSM calls the daemon counted.
#
#   bench/load/compare_modules.sh [ROUNDS] [-- VECSEAL_LOAD_OPTIONS...]
#
# Needs the build (vecseald, vecseal_load), softhsm2-util, p11-kit and curl; run as any user.
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
client="$(dirname "$(readlink -f /usr/lib/*/pkcs11/p11-kit-client.so)")/p11-kit-client.so"
scratch="$(mktemp -d)"
trap 'pkill -P $$ 2>/dev/null || true; chattr -R -a "$scratch" 2>/dev/null || true; rm -rf "$scratch"' EXIT

run() {  # MODE: direct | p11kit
  local mode="$1" dir
  dir="$(mktemp -d "$scratch/$mode.XXXX")"
  mkdir -p "$dir/tokens" "$dir/audit" "$dir/run"
  chmod 700 "$dir/audit"
  printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\n' "$dir" >"$dir/softhsm2.conf"
  export SOFTHSM2_CONF="$dir/softhsm2.conf"
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
}

for round in $(seq "$rounds"); do
  for mode in direct p11kit p11kit direct; do
    echo "round $round $(run "$mode")"
  done
done
