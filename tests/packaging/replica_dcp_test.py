#!/usr/bin/python3
"""Scale-out property: two vecseald daemons on replicas of one SoftHSM2 token (a copied token
directory) derive the same transform for the same key, so vectors encrypted on different nodes
stay comparable: for every x, y, z with d(x, y) < d(x, z) - beta, d(A(x), B(y)) < d(A(x), B(z)).
A third daemon on a freshly made token is the control: its ciphertexts must NOT be comparable.

    replica_dcp_test.py VECSEALD
"""
import http.client
import json
import math
import os
import random
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
DIMENSION = 32
COUNT = 40


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def start(vecseald, state_dir):
    daemon = subprocess.Popen([vecseald, "--dev", "--state-dir", state_dir],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
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
    sys.exit(f"vecseald --dev --state-dir {state_dir} did not become ready")


def stop(daemon):
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    daemon.stdout.close()


def demo_beta(socket_path):
    """The dev token's `demo` key's β, as the daemon reports it."""
    connection = UnixConnection(socket_path)
    connection.request("GET", "/v1/keys")
    keys = json.loads(connection.getresponse().read())["keys"]
    connection.close()
    return next(key["approximation_factor"] for key in keys if key["name"] == "demo")


def encrypt(socket_path, vectors):
    connection = UnixConnection(socket_path)
    connection.request("POST", "/v1/keys/demo/encrypt", json.dumps({"vectors": vectors}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    if response.status != 200:
        sys.exit(f"encrypt on {socket_path}: HTTP {response.status}: {body!r}")
    return json.loads(body)["vectors"]


def copy_state(source, target):
    """A replica: the token directory and PINs copied while no daemon runs on them."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("vecseald.sock", "audit"))


def worst_pair_error(plain, left, right):
    """max over i, j of |d(left_i, right_j) - d(x_i, x_j)|; at most beta/2 for one transform."""
    return max(abs(math.dist(left[i], right[j]) - math.dist(plain[i], plain[j]))
               for i in range(len(plain)) for j in range(len(plain)))


def dcp_violations(plain, left, right, beta):
    """(triples where d(x, y) < d(x, z) - beta, of which the cross-daemon order broke)."""
    checked = broken = 0
    n = len(plain)
    for x in range(n):
        for y in range(n):
            for z in range(n):
                if math.dist(plain[x], plain[y]) < math.dist(plain[x], plain[z]) - beta:
                    checked += 1
                    if not math.dist(left[x], right[y]) < math.dist(left[x], right[z]):
                        broken += 1
    return checked, broken


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    vecseald = sys.argv[1]
    if not os.access(vecseald, os.X_OK):
        print(f"SKIP: {vecseald} is not built")
        return 77
    rng = random.Random(20261125)
    # Spread out enough that many triples are separated by more than beta, and some are not.
    plain = [[rng.uniform(-3, 3) for _ in range(DIMENSION)] for _ in range(COUNT)]
    plain = [[float(f"{v:.6g}") for v in row] for row in plain]

    work = tempfile.mkdtemp(prefix="vecseal-replicas-")
    daemons = []
    try:
        node_a, node_b, node_c = (os.path.join(work, n) for n in ("node-a", "node-b", "node-c"))
        first, _ = start(vecseald, node_a)  # creates the token and the `demo` key
        stop(first)
        copy_state(node_a, node_b)
        sockets = {}
        for name, state in (("a", node_a), ("b", node_b), ("c", node_c)):
            daemon, path = start(vecseald, state)
            daemons.append(daemon)
            sockets[name] = path
        enc = {name: encrypt(path, plain) for name, path in sockets.items()}
        beta = demo_beta(sockets["a"])

        failures = []
        if enc["a"] == enc["b"]:
            failures.append("replicas returned identical ciphertexts: the noise is not fresh")
        error_ab = worst_pair_error(plain, enc["a"], enc["b"])
        checked, broken = dcp_violations(plain, enc["a"], enc["b"], beta)
        print(f"replicas a/b: worst |d(A(x),B(y)) - d(x,y)| = {error_ab:.4f} (bound beta/2 = "
              f"{beta / 2}); beta-DCP triples checked {checked}, broken {broken}")
        if error_ab > beta / 2 + 1e-3:
            failures.append(f"replica distance error {error_ab} exceeds beta/2")
        if checked < 1000 or broken:
            failures.append(f"beta-DCP across replicas: {broken} of {checked} triples broken")

        error_ac = worst_pair_error(plain, enc["a"], enc["c"])
        checked_c, broken_c = dcp_violations(plain, enc["a"], enc["c"], beta)
        print(f"control a/c (another token): worst distance error {error_ac:.4f}; "
              f"triples broken {broken_c} of {checked_c}")
        if error_ac <= beta / 2 or broken_c == 0:
            failures.append("a daemon on a different token kept the property: the check is void")
        for failure in failures:
            print("FAIL:", failure)
        return 1 if failures else 0
    finally:
        for daemon in daemons:
            stop(daemon)
        clear_append_only(work)
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
