#!/usr/bin/python3
"""Which /proc sandboxing keeps policy identity working. vecseald runs as an unprivileged uid with
the capability set of vecseald.service, in a mount namespace whose /proc is mounted the way
ProtectProc=/ProcSubset= mount it; a caller of ANOTHER uid asks GET /v1/whoami, and the test
checks what the daemon could see of it. Needs root (for the namespaces and the uid switch).

    proc_sandbox_test.py VECSEALD
"""
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from with_daemon import clear_append_only  # noqa: E402  (audit files may be chattr +a)

READY_PREFIX = "vecseald ready: socket "
DAEMON_UID = 65533  # stands in for the `vecseal` system user
CALLER_UID = 65534
CURL = shutil.which("curl") or "/usr/bin/curl"
PTRACE_ONLY = ["--bounding-set=-all,+sys_ptrace", "--inh-caps=-all,+sys_ptrace",
               "--ambient-caps=-all,+sys_ptrace"]
NO_CAPS = ["--bounding-set=-all", "--inh-caps=-all"]

# (what the unit says, /proc mount options, capabilities, expected outcome)
CASES = [
    ("ProtectProc=invisible ProcSubset=pid, CAP_SYS_PTRACE (the shipped unit)",
     "hidepid=invisible,subset=pid", PTRACE_ONLY, "full"),
    ("ProtectProc=default, CAP_SYS_PTRACE", "hidepid=0", PTRACE_ONLY, "full"),
    ("ProtectProc=default, no capabilities", "hidepid=0", NO_CAPS, "no_exe"),
    ("ProtectProc=invisible, no capabilities", "hidepid=invisible,subset=pid", NO_CAPS, "refused"),
]


def start(proc_options, caps, state_dir):
    script = 'mount -t proc -o "$0" proc /proc && exec "$@"'
    command = (["unshare", "--mount", "--propagation", "private", "sh", "-c", script, proc_options,
                "setpriv", f"--reuid={DAEMON_UID}", f"--regid={DAEMON_UID}", "--clear-groups",
                "--no-new-privs"] + caps + [VECSEALD, "--dev", "--state-dir", state_dir])
    daemon = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([daemon.stdout], [], [], 1.0)
        if ready:
            line = daemon.stdout.readline()
            if not line:
                break
            if line.startswith(READY_PREFIX):
                return daemon, line[len(READY_PREFIX):].strip()
        elif daemon.poll() is not None:
            break
    stop(daemon)
    sys.exit(f"sandboxed vecseald did not start: {daemon.stderr.read()}")


def stop(daemon):
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def write_digest_policy(state_dir):
    """The daemon hashes a caller's executable only when a rule tests exe_sha256, so --dev's own
    policy (uid only) would hide whether the sandbox lets it read the image."""
    rule = {"id": "needs-a-digest", "callers": {"uid": DAEMON_UID, "exe_sha256": "0" * 64},
            "keys": ["*"], "operations": ["keys.list"]}
    path = os.path.join(state_dir, "policy.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "rules": [rule]}, f)
    os.chmod(path, 0o600)
    os.chown(path, DAEMON_UID, DAEMON_UID)


def whoami(socket_path):
    result = subprocess.run(["setpriv", f"--reuid={CALLER_UID}", f"--regid={CALLER_UID}",
                             "--clear-groups", CURL, "-s", "-w", "\n%{http_code}",
                             "--unix-socket", socket_path, "http://localhost/v1/whoami"],
                            capture_output=True, text=True, timeout=60)
    body, _, status = result.stdout.rpartition("\n")
    return status, body


def outcome(status, body):
    if status != "200":
        return "refused"
    identity = json.loads(body)["identity"]
    if identity["uid"] != CALLER_UID:
        return f"wrong uid {identity['uid']}"
    with open(os.path.realpath(CURL), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if identity["exe"] == os.path.realpath(CURL) and identity["exe_sha256"] == digest:
        return "full"
    if identity["exe"] is None and identity["exe_sha256"] is None:
        return "no_exe"
    return f"partial {identity['exe']} {identity['exe_sha256']}"


def main():
    if os.geteuid() != 0:
        print("SKIP: needs root to switch uids and mount a private /proc")
        return 77
    if not os.access(VECSEALD, os.X_OK):
        print(f"SKIP: {VECSEALD} is not built")
        return 77
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t",
                            "proc", "-o", "hidepid=invisible,subset=pid", "proc", "/proc"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"SKIP: cannot mount a private /proc here: {probe.stderr.strip()}")
        return 77
    work = tempfile.mkdtemp(prefix="vecseal-proc-")
    os.chmod(work, 0o755)
    failures = 0
    try:
        for index, (name, options, caps, expected) in enumerate(CASES):
            state_dir = os.path.join(work, str(index))
            os.mkdir(state_dir, 0o700)
            os.chown(state_dir, DAEMON_UID, DAEMON_UID)
            write_digest_policy(state_dir)
            daemon, socket_path = start(options, caps, state_dir)
            try:
                # Dev mode keeps its socket to its own user; open it to the other-uid caller.
                os.chmod(state_dir, 0o711)
                os.chmod(socket_path, 0o666)
                status, body = whoami(socket_path)
            finally:
                stop(daemon)
            got = outcome(status, body)
            verdict = "ok" if got == expected else "FAIL"
            failures += got != expected
            print(f"{verdict}: {name}: {got} (expected {expected}); HTTP {status} {body[:160]}")
    finally:
        clear_append_only(work)
        shutil.rmtree(work)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    VECSEALD = sys.argv[1]
    sys.exit(main())
