#!/bin/sh
# The shipped /etc/vecseal files pass `vecseald --check-config` and the policy denies everything.
# Usage: check_default_config.sh PACKAGING_DIR VECSEALD
set -eu
packaging=$1 vecseald=$2
[ -x "$vecseald" ] || { echo "SKIP: $vecseald not built"; exit 77; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/vecseal-etc.XXXXXX")
trap 'rm -rf "$dir"' EXIT
chmod 0755 "$dir"
# The config names /etc/vecseal/policy.json; point it at the shipped copy in the scratch dir.
sed "s|/etc/vecseal/policy.json|$dir/policy.json|" "$packaging/etc/vecseald.json" > "$dir/vecseald.json"
cp "$packaging/etc/policy.json" "$dir/policy.json"
chmod 0644 "$dir/vecseald.json" "$dir/policy.json"
"$vecseald" --check-config "$dir/vecseald.json"
"$vecseald" --check-policy "$dir/policy.json"
# Deny by default: even root is granted nothing until the operator writes a rule.
set +e
decision=$("$vecseald" --check-policy "$dir/policy.json" --as-uid 0 --exe "$vecseald" \
  --op encrypt --key demo)
status=$?
set -e
echo "$decision" | tail -n 1
[ "$status" -eq 3 ] && echo "$decision" | grep -q "^decision: no rule grants encrypt on key 'demo'$"
