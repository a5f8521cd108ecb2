#!/usr/bin/python3
"""Runs a command against a fresh `vecseald --dev` daemon, then stops the daemon.

    with_daemon.py [--verify-audit VECSEAL_CLI] VECSEALD COMMAND [ARGS...]

The daemon gets its own temporary state directory (SoftHSM2 token, policy, audit log); the command
sees VECSEAL_SOCKET, VECSEAL_STATE_DIR and VECSEAL_DAEMON_PID (to send SIGHUP after changing
STATE/policy.json). Exits with the command's status, or 77 (ctest's skip
code here) with the reason when the daemon has not been built. With --verify-audit, the audit log
the run left (sealed when the daemon stopped) must then verify with `vecseal audit verify`.
"""

import array
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

READY_PREFIX = "vecseald ready: socket "
START_TIMEOUT_S = 60
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_APPEND_FL = 0x80086601, 0x40086602, 0x20


def start_daemon(vecseald, state_dir):
    # The daemon's stdout carries the ready line; stderr goes to ours, so failures are visible.
    daemon = subprocess.Popen([vecseald, "--dev", "--state-dir", state_dir],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([daemon.stdout], [], [], 1.0)
        if not ready:
            if daemon.poll() is not None:
                break
            continue
        line = daemon.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(READY_PREFIX):
            return daemon, line[len(READY_PREFIX):].strip()
    stop_daemon(daemon)
    sys.exit("with_daemon: vecseald did not become ready within %d s; its output:\n%s"
             % (START_TIMEOUT_S, "".join(seen)))


def stop_daemon(daemon):
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            print("with_daemon: vecseald ignored SIGTERM for 15 s; killing it", file=sys.stderr)
            daemon.kill()
            daemon.wait()
    daemon.stdout.close()


def clear_append_only(root):
    """The daemon makes audit files append-only (chattr +a) when it may; such a file cannot be
    deleted until the flag is cleared, which the same privilege allows."""
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                flags = array.array("i", [0])
                fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
                if flags[0] & FS_APPEND_FL:
                    flags[0] &= ~FS_APPEND_FL
                    fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags)
            except OSError:
                pass  # a file system without flags; nothing to clear
            finally:
                os.close(fd)


def verify_audit(cli, state_dir):
    """True when the whole log verifies, and every record is covered by a seal."""
    result = subprocess.run([cli, "audit", "verify", "--json", "--pubkey",
                             os.path.join(state_dir, "audit-key.pem"),
                             os.path.join(state_dir, "audit")], capture_output=True, text=True)
    print(f"with_daemon: vecseal audit verify: exit {result.returncode}\n{result.stdout}"
          f"{result.stderr}", end="")
    try:
        report = json.loads(result.stdout)
    except ValueError:
        return False
    return (result.returncode == 0 and report.get("ok") is True and report.get("records", 0) > 0
            and report.get("seals", 0) > 0 and report.get("unsealed_tail") == 0)


def main():
    args = sys.argv[1:]
    audit_cli = None
    if args[:1] == ["--verify-audit"] and len(args) > 1:
        audit_cli, args = args[1], args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    vecseald, command = args[0], args[1:]
    for binary in filter(None, (vecseald, audit_cli)):
        if not os.access(binary, os.X_OK):
            print(f"SKIP: {binary} has not been built", flush=True)
            return 77
    with tempfile.TemporaryDirectory(prefix="vecseal-pytest-") as tmp:
        state_dir = os.path.join(tmp, "state")
        daemon, socket_path = start_daemon(vecseald, state_dir)
        try:
            env = dict(os.environ, VECSEAL_SOCKET=socket_path, VECSEAL_STATE_DIR=state_dir,
                       VECSEAL_DAEMON_PID=str(daemon.pid))
            status = subprocess.call(command, env=env)
            if audit_cli is not None:
                stop_daemon(daemon)
                if not verify_audit(audit_cli, state_dir):
                    print("with_daemon: the audit log did not verify", file=sys.stderr)
                    status = status or 1
        finally:
            stop_daemon(daemon)
            clear_append_only(tmp)
        if daemon.returncode not in (0, -signal.SIGTERM):
            print(f"with_daemon: vecseald exited with status {daemon.returncode}",
                  file=sys.stderr)
            return status or 1
        return status


if __name__ == "__main__":
    sys.exit(main())
