"""Nodes that share one HSM, for the scale-out tests and benchmarks: one SoftHSM2 token behind
`p11-kit server`, and per node a production-config vecseald (its own socket, audit log and
p11-kit-client.so), as docs/scaling.md describes. Everything lives in one scratch directory.

    with SharedHsm(VECSEALD) as hsm:
        a, b = hsm.start_node("a"), hsm.start_node("b")
        ...  a.socket, a.audit_records(), hsm.kill_node(b), hsm.start_node("b") ...
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "shared-hsm-4711"


def missing_tools():
    """Why the shared HSM cannot be set up here, or None."""
    for tool in ("softhsm2-util", "p11-kit"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/install-deps)"
    if not glob.glob("/usr/lib/*/pkcs11/p11-kit-client.so"):
        return "p11-kit-client.so not installed (scripts/install-deps)"
    return None


class Node:
    def __init__(self, name, directory, process):
        self.name = name
        self.directory = directory
        self.process = process
        self.socket = os.path.join(directory, "vecseald.sock")

    def audit_records(self):
        records = []
        for path in sorted(glob.glob(os.path.join(self.directory, "audit", "*.jsonl"))):
            with open(path) as f:
                records.extend(json.loads(line) for line in f if line.strip())
        return records

    def encrypted_vectors(self):
        return sum(r.get("vectors", 0) for r in self.audit_records() if r.get("event") == "encrypt")


class SharedHsm:
    def __init__(self, vecseald, operations=("keys.create", "keys.list", "encrypt")):
        self.vecseald = vecseald
        self.operations = list(operations)
        self.root = tempfile.mkdtemp(prefix="vecseal-shared-hsm-")
        os.chmod(self.root, 0o755)
        self.server = None
        self.nodes = {}

    def __enter__(self):
        conf = os.path.join(self.root, "softhsm2.conf")
        os.makedirs(os.path.join(self.root, "tokens"))
        with open(conf, "w") as f:
            f.write(f"directories.tokendir = {self.root}/tokens\nobjectstore.backend = file\n")
        env = dict(os.environ, SOFTHSM2_CONF=conf)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "shared",
                        "--pin", PIN, "--so-pin", PIN + "-so"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        address = os.path.join(self.root, "p11-kit.sock")
        # Its own session: the server forks a p11-kit-remote per connection, stopped with it.
        self.server = subprocess.Popen(
            ["p11-kit", "server", "--foreground", "--provider", SOFTHSM, "--name", address,
             "pkcs11:token=shared"], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(lambda: os.path.exists(address), "p11-kit server")
        self.address = "unix:path=" + address
        return self

    def __exit__(self, *exc):
        for node in list(self.nodes.values()):
            self.stop_node(node)
        if self.server is not None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=10)
        subprocess.run(["chattr", "-R", "-a", self.root], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.root, ignore_errors=True)

    def start_node(self, name):
        """Starts (or restarts, with its audit log kept) node `name`'s daemon; returns the Node."""
        directory = os.path.join(self.root, "node-" + name)
        os.makedirs(os.path.join(directory, "audit"), mode=0o700, exist_ok=True)
        pin = os.path.join(directory, "pin")
        with open(os.open(pin, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(PIN + "\n")
        policy = {"version": 1, "rules": [{"id": "job", "callers": {"uid": os.getuid()},
                                           "keys": ["*"], "operations": self.operations}]}
        with open(os.path.join(directory, "policy.json"), "w") as f:
            json.dump(policy, f)
        client_module = glob.glob("/usr/lib/*/pkcs11/p11-kit-client.so")[0]
        config = {"socket": {"path": os.path.join(directory, "vecseald.sock"), "mode": "0600"},
                  "pkcs11": {"module": client_module, "token_label": "shared",
                             "pin": {"file": pin}},
                  "policy": {"file": os.path.join(directory, "policy.json")},
                  "audit": {"directory": os.path.join(directory, "audit")}}
        with open(os.path.join(directory, "vecseald.json"), "w") as f:
            json.dump(config, f)
        log_path = os.path.join(directory, "daemon.log")
        log = open(log_path, "a")
        offset = log.tell()  # a restarted node's log still holds the last run's lines
        process = subprocess.Popen(
            [self.vecseald, "--config", os.path.join(directory, "vecseald.json")],
            env=dict(os.environ, P11_KIT_SERVER_ADDRESS=self.address),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        node = Node(name, directory, process)
        self.nodes[name] = node

        def ready():
            with open(log_path) as f:
                f.seek(offset)
                text = f.read()
            if process.poll() is not None:
                raise RuntimeError(f"node {name}'s vecseald exited: {text}")
            return "event=ready" in text
        self._wait(ready, f"node {name}'s vecseald")
        return node

    def kill_node(self, node):
        """A crash: SIGKILL, no stop record."""
        node.process.kill()
        node.process.wait(timeout=10)
        if os.path.exists(node.socket):
            os.unlink(node.socket)

    def stop_node(self, node):
        if node.process.poll() is None:
            node.process.terminate()
            node.process.wait(timeout=30)
        self.nodes.pop(node.name, None)

    @staticmethod
    def _wait(condition, what, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not come up within {timeout} s")


class DaskWorkers:
    """A dask scheduler and one single-threaded worker per node, each started as its own process
    with only its node's socket in $VECSEAL_SOCKET, as on separate hosts."""

    def __init__(self, root, nodes, pythonpath):
        self.scheduler_file = os.path.join(root, "scheduler.json")
        env = dict(os.environ, PYTHONPATH=pythonpath)
        env.pop("VECSEAL_SOCKET", None)
        self.processes = [subprocess.Popen(
            ["dask-scheduler", "--scheduler-file", self.scheduler_file, "--port", "0",
             "--host", "127.0.0.1", "--no-dashboard"], env=env,
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "scheduler.log"), "w"))]
        SharedHsm._wait(lambda: os.path.exists(self.scheduler_file), "dask-scheduler")
        for node in nodes:
            self.processes.append(subprocess.Popen(
                ["dask-worker", "--scheduler-file", self.scheduler_file, "--nthreads", "1",
                 "--nworkers", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                 "--name", "worker-" + node.name],
                env=dict(env, VECSEAL_SOCKET=node.socket), stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(root, f"worker-{node.name}.log"), "w")))

    def client(self, workers):
        from distributed import Client
        client = Client(scheduler_file=self.scheduler_file, timeout=60)
        client.wait_for_workers(workers, timeout=60)
        return client

    def close(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
