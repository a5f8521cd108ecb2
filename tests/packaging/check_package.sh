#!/bin/sh
# scripts/package builds the Debian packages from source with dpkg-buildpackage and lintian passes
# them without errors; vecseal installs into a scratch root (dpkg --root, maintainer scripts run
# chrootless with DPKG_ROOT), its installed default config passes the installed
# `vecseald --check-config`, and it purges leaving only the kept state (token, audit log) and the
# system user; a C++ service builds with find_package(vecseal) against the installed
# libvecseal-dev; Debian's python3 imports the client from python3-vecseal's files.
# Usage: check_package.sh SOURCE_DIR
set -eu
source_dir=$1
[ "$(id -u)" -eq 0 ] || { echo "SKIP: dpkg --root needs root to set the package's owners"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/vecseal-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
deb=$("$source_dir/scripts/package" "$work/out")
dpkg-deb --info "$deb" | grep -q '^ Package: vecseal$'
dev=$(echo "$work"/out/libvecseal-dev_*.deb)
[ -f "$dev" ] || { echo "FAIL: no libvecseal-dev package beside $deb"; exit 1; }
python_deb=$(echo "$work"/out/python3-vecseal_*_all.deb)
[ -f "$python_deb" ] || { echo "FAIL: no python3-vecseal package beside $deb"; exit 1; }

root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status"
dpkg_root() { dpkg --root="$root" --force-script-chrootless --force-depends "$@"; }
dpkg_root -i "$deb" "$dev" 2>&1 | grep -v 'depends on\|is not installed\|dependency problems' || true
dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}\n' vecseal | grep -q 'install ok installed'

fail() { echo "FAIL: $*"; exit 1; }
uid=$(sed -n 's/^vecseal:x:\([0-9]*\):.*/\1/p' "$root/etc/passwd")
[ -n "$uid" ] || fail "sysusers did not create the vecseal user"
grep -q '^vecseal-clients:' "$root/etc/group" || fail "no vecseal-clients group"
expect() {  # PATH OWNER_UID MODE
  [ "$(stat -c '%u %a' "$root$1")" = "$2 $3" ] || fail "$1 is $(stat -c '%u %a' "$root$1"), not $2 $3"
}
expect /usr/sbin/vecseald 0 755
expect /usr/bin/vecseal 0 755
expect /etc/vecseal/vecseald.json 0 644
expect /etc/vecseal/policy.json 0 644
expect /lib/systemd/system/vecseald.service 0 644
expect /var/lib/vecseal "$uid" 700
expect /var/lib/vecseal/tokens "$uid" 700
expect /var/log/vecseal "$uid" 700
expect /usr/share/man/man8/vecseald.8.gz 0 644
expect /usr/share/man/man1/vecseal.1.gz 0 644
# Installed, not enabled: the daemon cannot start before the operator has set up the token.
if [ -n "$(find "$root/etc/systemd" -name 'vecseald.*' 2>/dev/null)" ]; then
  fail "the package enabled a unit: $(find "$root/etc/systemd" -name 'vecseald.*')"
fi
grep -qx /etc/vecseal/vecseald.json "$root/var/lib/dpkg/info/vecseal.conffiles" ||
  fail "vecseald.json is not a conffile"

# The installed binary checks the installed files (the policy path moved into the scratch root).
sed "s|/etc/vecseal/policy.json|$root/etc/vecseal/policy.json|" "$root/etc/vecseal/vecseald.json" \
  > "$work/vecseald.json"
chmod 0644 "$work/vecseald.json"
"$root/usr/sbin/vecseald" --check-config "$work/vecseald.json"

# The client SDK as a C++ service uses it (tests/client/consumer: write and read a .npy file,
# then a typed error from a socket that is not there).
cmake -S "$source_dir/tests/client/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$root/usr" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/consumer" >/dev/null
out=$("$work/consumer/my_service" "$work/m.npy" "$work/none.sock" 2>&1) || true
[ "$out" = "formats ok
connect_failed: cannot connect to $work/none.sock: no such file" ] || fail "consumer printed: $out"

# The Python client: unpacked, not configured, because dh_python3's postinst byte-compiles with
# py3compile, which ignores DPKG_ROOT and would compile the host's /usr/lib/python3 (Python
# compiles on first import anyway). It lands where Debian's python3 looks, and from there that
# python3 imports it and gets a typed error from a socket that is not there.
dpkg_root --unpack "$python_deb" >/dev/null 2>&1
dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}\n' python3-vecseal | grep -q 'install ok unpacked' ||
  fail "python3-vecseal did not unpack"
dist=/usr/lib/python3/dist-packages
/usr/bin/python3 -c "import sys; sys.exit('$dist' not in sys.path)" ||
  fail "Debian's python3 does not search $dist"
out=$(cd / && PYTHONPATH="$root$dist" /usr/bin/python3 -c '
import sys, vecseal
try:
    vecseal.Client(sys.argv[1]).keys()
except vecseal.Unavailable as error:
    print(vecseal.__file__, error.code)
' "$work/none.sock" 2>&1) || true
[ "$out" = "$root$dist/vecseal/__init__.py daemon_not_running" ] || fail "import vecseal printed: $out"

dpkg_root --purge vecseal libvecseal-dev python3-vecseal
left=$(cd "$root" && find . -path ./var/lib/dpkg -prune -o -print | LC_ALL=C sort | tr '\n' ' ')
# /var/lib/systemd is deb-systemd-helper's state directory, emptied by the purge (on a real
# system it exists before and after).
expected=". ./etc ./etc/.pwd.lock ./etc/group ./etc/gshadow ./etc/passwd ./etc/shadow ./run ./var ./var/lib ./var/lib/systemd ./var/lib/vecseal ./var/lib/vecseal/tokens ./var/log ./var/log/vecseal "
[ "$left" = "$expected" ] || fail "after purge: $left"
echo "install and purge: ok"
