#!/usr/bin/python3
"""Runs a command against a fresh `vecseald --dev` daemon, then stops the daemon.

    with_daemon.py VECSEALD COMMAND [ARGS...]

The daemon gets its own temporary state directory (SoftHSM2 token, policy, audit log); the command
sees VECSEAL_SOCKET, VECSEAL_STATE_DIR and VECSEAL_DAEMON_PID (to send SIGHUP after changing
STATE/policy.json). Exits with the command's status, or 77 (ctest's skip
code here) with the reason when the daemon has not been built.
"""

import os
import select
import signal
import subprocess
import sys
import tempfile
import time

READY_PREFIX = "vecseald ready: socket "
START_TIMEOUT_S = 60


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


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    vecseald, command = sys.argv[1], sys.argv[2:]
    if not os.access(vecseald, os.X_OK):
        print(f"SKIP: {vecseald} has not been built", flush=True)
        return 77
    with tempfile.TemporaryDirectory(prefix="vecseal-pytest-") as tmp:
        state_dir = os.path.join(tmp, "state")
        daemon, socket_path = start_daemon(vecseald, state_dir)
        try:
            env = dict(os.environ, VECSEAL_SOCKET=socket_path, VECSEAL_STATE_DIR=state_dir,
                       VECSEAL_DAEMON_PID=str(daemon.pid))
            status = subprocess.call(command, env=env)
        finally:
            stop_daemon(daemon)
        if daemon.returncode not in (0, -signal.SIGTERM):
            print(f"with_daemon: vecseald exited with status {daemon.returncode}",
                  file=sys.stderr)
            return status or 1
        return status


if __name__ == "__main__":
    sys.exit(main())
