#!/usr/bin/python3
"""The shipped unit's SystemCallFilter= against the system calls vecseald really makes: a dev
daemon runs under strace through start-up, identification, key creation, JSON and binary
encryption, a reload and shutdown, and every system call it made must be in the set the unit
allows (expanded with `systemd-analyze syscall-filter`). A call outside it would fail with EPERM
under systemd.

    syscall_filter_test.py SOURCE_DIR VECSEALD
"""
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from with_daemon import clear_append_only  # noqa: E402  (audit files may be chattr +a)

READY_PREFIX = "vecseald ready: socket "
CALL = re.compile(r"^\d+ +([a-z0-9_]+)\(")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def syscall_groups():
    listing = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                             capture_output=True, text=True, check=True).stdout
    groups, current = {}, None
    for line in listing.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if line.startswith("@"):
            current = groups.setdefault(entry, [])
        elif current is not None:
            current.append(entry)
    return groups


def expand(names, groups):
    out = set()
    for name in names:
        out |= expand(groups.get(name, []), groups) if name.startswith("@") else {name}
    return out


def allowed_by_unit(unit_path, groups):
    """SystemCallFilter= semantics: the first plain line starts an allow-list; `~` lines remove
    from it, later plain lines add to it."""
    allowed = None
    with open(unit_path) as f:
        for line in f:
            if not line.startswith("SystemCallFilter="):
                continue
            value = line.split("=", 1)[1].strip()
            deny = value.startswith("~")
            names = expand(value.lstrip("~").split(), groups)
            if allowed is None:
                if deny:
                    sys.exit("unit uses a deny-list first; this test expects an allow-list")
                allowed = set()
            allowed = allowed - names if deny else allowed | names
    return allowed


def request(path, method, url, body=None, headers=None):
    connection = UnixConnection(path)
    connection.request(method, url, body, headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.status not in (200, 201):
        sys.exit(f"{method} {url}: HTTP {response.status} {data[:200]!r}")
    return data


def exercise(vecseald, state_dir, trace):
    traced = None
    daemon = subprocess.Popen(["strace", "-f", "-qq", "-o", trace, vecseald, "--dev",
                               "--state-dir", state_dir],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        path = None
        deadline = time.monotonic() + 60
        while path is None and time.monotonic() < deadline:
            if select.select([daemon.stdout], [], [], 1.0)[0]:
                line = daemon.stdout.readline()
                if not line:
                    break
                if line.startswith(READY_PREFIX):
                    path = line[len(READY_PREFIX):].strip()
        if path is None:
            sys.exit("vecseald did not become ready under strace")
        # Signals go to the daemon, not to strace, which would stop tracing.
        with open(f"/proc/{daemon.pid}/task/{daemon.pid}/children") as f:
            traced = int(f.read().split()[0])
        json_type = {"Content-Type": "application/json"}
        request(path, "GET", "/v1/whoami")
        request(path, "GET", "/v1/health")
        request(path, "POST", "/v1/keys", json.dumps(
            {"name": "traced", "approximation_factor": 1.5, "transform": "permute"}), json_type)
        request(path, "GET", "/v1/keys")
        request(path, "POST", "/v1/keys/demo/encrypt",
                json.dumps({"vectors": [[0.6, 0.8, 0.0]], "reversible": True}), json_type)
        request(path, "POST", "/v1/keys/traced/encrypt", b"\0" * 32,
                {"Content-Type": "application/octet-stream", "Vecseal-Dimension": "8"})
        os.kill(traced, signal.SIGHUP)
        request(path, "GET", "/v1/health")
    finally:
        if daemon.poll() is None:
            if traced is not None:
                os.kill(traced, signal.SIGTERM)
            else:
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        daemon.stdout.close()


def main():
    source, vecseald = sys.argv[1], sys.argv[2]
    for tool in ("strace", "systemd-analyze"):
        if shutil.which(tool) is None:
            print(f"SKIP: {tool} is not installed")
            return 77
    if not os.access(vecseald, os.X_OK):
        print(f"SKIP: {vecseald} is not built")
        return 77
    probe = subprocess.run(["strace", "-qq", "-o", "/dev/null", "true"], capture_output=True)
    if probe.returncode != 0:
        print("SKIP: strace cannot trace here (ptrace not permitted)")
        return 77
    groups = syscall_groups()
    allowed = allowed_by_unit(os.path.join(source, "packaging/systemd/vecseald.service"), groups)
    # The filter is not vacuous: calls the unit must refuse are outside the set.
    for refused in ("setrlimit", "chown", "mount", "ptrace", "init_module", "setuid"):
        if refused in allowed:
            print(f"FAIL: the unit's filter allows {refused}")
            return 1
    with tempfile.TemporaryDirectory() as work:
        trace = os.path.join(work, "trace")
        exercise(vecseald, os.path.join(work, "state"), trace)
        with open(trace) as f:
            used = {m.group(1) for m in map(CALL.match, f) if m}
        clear_append_only(work)
    outside = sorted(used - allowed)
    print(f"{len(used)} distinct system calls made; outside the unit's filter: {outside or 'none'}")
    if len(used) < 30 or "fdatasync" not in used:
        print("FAIL: the trace is too thin to mean anything")
        return 1
    return 1 if outside else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main())
