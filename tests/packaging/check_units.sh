#!/bin/sh
# The shipped units pass `systemd-analyze verify` and the service's offline exposure score is at
# most 1.0 ("SAFE"). Usage: check_units.sh PACKAGING_DIR VECSEALD
set -eu
packaging=$1 vecseald=$2
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed"; exit 77; }

# A scratch root holding the units, the daemon at its installed path and systemd's own units, so
# that verify resolves ExecStart= and the targets without touching the host.
root=$(mktemp -d "${TMPDIR:-/tmp}/vecseal-units.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/sbin" "$root/bin" "$root/usr/lib/systemd/system"
cp /usr/lib/systemd/system/*.target "$root/usr/lib/systemd/system/"
cp "$vecseald" "$root/usr/sbin/vecseald"
cp /bin/kill "$root/bin/kill"
cp "$packaging"/systemd/vecseald.service "$packaging"/systemd/vecseald.socket \
   "$root/usr/lib/systemd/system/"

# verify only warns about a setting it cannot parse; any output at all counts as a failure here.
verify() {
  out=$(systemd-analyze verify --root="$root" "$@" 2>&1) && [ -z "$out" ] || { echo "$out"; return 1; }
}
verify vecseald.service vecseald.socket
echo "verify: ok"

# A wrong PIN exits 1; a restart would spend another login attempt on the token each time, and
# could lock its PIN (docs/hsm.md, "A wrong PIN").
grep -qx 'Restart=on-failure' "$packaging/systemd/vecseald.service" &&
  grep -qx 'RestartPreventExitStatus=1' "$packaging/systemd/vecseald.service" ||
  { echo "FAIL: the unit must restart on failure, but never after exit status 1"; exit 1; }

# --threshold counts tenths: 10 is an exposure of 1.0.
systemd-analyze security --offline=yes --threshold=10 --no-pager \
  "$packaging/systemd/vecseald.service" | tail -n 1

# Negative controls: the checks must be able to fail.
sed 's/^Type=notify/Type=notifyy/' "$packaging/systemd/vecseald.service" \
  > "$root/usr/lib/systemd/system/vecseald.service"
if verify vecseald.service >/dev/null; then
  echo "FAIL: verify accepted Type=notifyy"; exit 1
fi
grep -v '^ProtectSystem=\|^PrivateNetwork=' "$packaging/systemd/vecseald.service" \
  > "$root/weak.service"
if systemd-analyze security --offline=yes --threshold=10 --no-pager "$root/weak.service" \
     >/dev/null 2>&1; then
  echo "FAIL: the score gate passed a unit without ProtectSystem= and PrivateNetwork="; exit 1
fi
echo "negative controls: ok"
