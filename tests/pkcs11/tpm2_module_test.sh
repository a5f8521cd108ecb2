#!/usr/bin/env bash
# tpm2-pkcs11 on a software TPM (issue #18, docs/hsm.md "Modules tested"): what vecseald --init
# reports on it, as the module table says. swtpm stands in for the TPM and tpm2-abrmd, on a
# private D-Bus, is the resource manager that tpm2_ptool needs (without it the TPM's three object
# slots fill up and the token cannot be made). Exit 77 (skipped) when a tool is missing.
#
#   tpm2_module_test.sh VECSEALD
set -euo pipefail
vecseald="$1"
module="$(ls /usr/lib/*/pkcs11/libtpm2_pkcs11.so 2>/dev/null | head -1)"
for tool in swtpm tpm2-abrmd dbus-daemon tpm2_ptool tpm2_getcap; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed (scripts/install-deps)"; exit 77; }
done
[ -n "$module" ] || { echo "SKIP: libtpm2_pkcs11.so not installed (scripts/install-deps)"; exit 77; }

dir="$(mktemp -d)"
chmod 755 "$dir"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  chattr -R -a "$dir" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# A free pair of TCP ports on the loopback for the TPM's command and control channels.
port=""
for _ in $(seq 50); do
  candidate=$((20000 + RANDOM % 40000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null &&
     ! (exec 3<>"/dev/tcp/127.0.0.1/$((candidate + 1))") 2>/dev/null; then
    port=$candidate
    break
  fi
done
[ -n "$port" ] || { echo "FAIL: no free port pair for swtpm"; exit 1; }

mkdir -p "$dir/tpm" "$dir/store" "$dir/audit" "$dir/run"
chmod 700 "$dir/audit"
swtpm socket --tpm2 --tpmstate dir="$dir/tpm" --flags not-need-init,startup-clear \
  --server type=tcp,port="$port",bindaddr=127.0.0.1 \
  --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 >"$dir/swtpm.log" 2>&1 &
dbus-daemon --session --address="unix:path=$dir/bus" --nofork --nopidfile >"$dir/dbus.log" 2>&1 &
for _ in $(seq 50); do [ -S "$dir/bus" ] && break; sleep 0.1; done
export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/bus"
tpm2-abrmd --session --allow-root --tcti="swtpm:host=127.0.0.1,port=$port" >"$dir/abrmd.log" 2>&1 &
export TPM2TOOLS_TCTI="tabrmd:bus_type=session" TPM2_PKCS11_TCTI="tabrmd:bus_type=session"
export TPM2_PKCS11_STORE="$dir/store" TPM2_PKCS11_LOG_LEVEL=0
ready=""
for _ in $(seq 100); do
  if tpm2_getcap properties-fixed >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { echo "FAIL: the software TPM did not answer"; cat "$dir"/*.log; exit 1; }
tpm2_ptool init --path "$dir/store" >/dev/null
tpm2_ptool addtoken --pid=1 --label=vecseal --sopin=so-pin-4711 --userpin=user-pin-4711 \
  --path "$dir/store" >/dev/null

(umask 077 && echo user-pin-4711 >"$dir/pin")
echo '{"version": 1, "rules": []}' >"$dir/policy.json"
configure() {  # the derivation of new keys: aes | hmac
  cat >"$dir/vecseald.json" <<JSON
{"socket": {"path": "$dir/run/vecseald.sock"},
 "pkcs11": {"module": "$module", "token_label": "vecseal", "pin": {"file": "$dir/pin"}},
 "derivation": {"new_keys": "$1"},
 "policy": {"file": "$dir/policy.json"}, "audit": {"directory": "$dir/audit"}}
JSON
}

failures=0
expect() {  # OUTPUT TEXT: OUTPUT must hold TEXT
  if [[ "$1" != *"$2"* ]]; then
    echo "FAIL: --init did not report: $2"
    failures=$((failures + 1))
  fi
}

configure aes
status=0
report="$("$vecseald" --init --config "$dir/vecseald.json" 2>&1)" || status=$?
echo "$report"
[ "$status" = 1 ] || { echo "FAIL: --init exited $status, not 1"; failures=$((failures + 1)); }
expect "$report" "token       ok: \"vecseal\" in $module, logged in"
expect "$report" "mechanisms  FAILED: the module $module lists CKM_AES_KEY_GEN but does not implement C_GenerateKey (CKR_FUNCTION_NOT_SUPPORTED)"
# EC P-256 and ECDSA are listed, but the module refuses the audit key's template: it sets usage
# attributes (derive, encrypt) of its own that vecseal's template sets false.
expect "$report" "audit key   FAILED: C_GenerateKeyPair failed"

configure hmac
report="$("$vecseald" --init --config "$dir/vecseald.json" 2>&1)" || true
echo "$report"
expect "$report" "does not offer CKM_GENERIC_SECRET_KEY_GEN with CKF_GENERATE (format v1 key creation)"

[ "$failures" = 0 ] || exit 1
echo "tpm2-pkcs11: model keys refused at --init (no C_GenerateKey, no generic secret generation)"
