#!/usr/bin/python3
"""packaging/kubernetes/vecseald-daemonset.yaml: the config it ships passes
`vecseald --check-config`, its policy denies everything, the pod keeps the settings the
daemon's identity checks depend on, and its memory limit is the unit's MemoryMax= (the
daemon's own bounds need it; docs/operations.md, "Memory and tasks"). (No cluster here: what a
cluster adds is not tested.)

    daemonset_test.py SOURCE_DIR VECSEALD
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

# Binary suffixes, as both systemd (MemoryMax=2G) and Kubernetes (2Gi) read them.
UNIT_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
KUBERNETES_SUFFIXES = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def unit_memory_max(source):
    with open(os.path.join(source, "packaging", "systemd", "vecseald.service")) as f:
        match = re.search(r"^MemoryMax=(\d+)([KMGT])$", f.read(), re.MULTILINE)
    return int(match.group(1)) * UNIT_SUFFIXES[match.group(2)]


def kubernetes_bytes(quantity):
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)", quantity)
    return int(match.group(1)) * KUBERNETES_SUFFIXES[match.group(2)] if match else None


def main():
    source, vecseald = sys.argv[1], sys.argv[2]
    if not os.access(vecseald, os.X_OK):
        print(f"SKIP: {vecseald} is not built")
        return 77
    with open(os.path.join(source, "packaging", "kubernetes", "vecseald-daemonset.yaml")) as f:
        documents = {d["kind"]: d for d in yaml.safe_load_all(f)}
    config_map = documents["ConfigMap"]["data"]
    pod = documents["DaemonSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    failures = []
    if pod.get("hostPID") is not True:
        failures.append("hostPID must be true: callers' pids are host pids")
    if security["capabilities"] != {"drop": ["ALL"], "add": ["SYS_PTRACE"]}:
        failures.append(f"capabilities must be exactly SYS_PTRACE: {security['capabilities']}")
    if security.get("allowPrivilegeEscalation") is not False or security.get("privileged"):
        failures.append("the container must not be privileged or escalate")
    if not security.get("readOnlyRootFilesystem"):
        failures.append("the root file system must be read-only")
    memory_limit = kubernetes_bytes(container["resources"]["limits"]["memory"])
    if memory_limit != unit_memory_max(source):
        failures.append(f"limits.memory {container['resources']['limits']['memory']} is not the "
                        f"unit's MemoryMax= ({unit_memory_max(source)} bytes), which the daemon's "
                        "own bounds need")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = json.loads(config_map["vecseald.json"])
    if os.path.dirname(config["socket"]["path"]) != mounts["socket-dir"]:
        failures.append("the socket is not in the hostPath socket directory")
    if config["audit"]["directory"] != mounts["audit"]:
        failures.append("the audit log is not on the node's disk")

    with tempfile.TemporaryDirectory() as work:
        os.chmod(work, 0o755)
        # Paths of the pod's mounts, moved under the scratch dir.
        policy = os.path.join(work, "policy.json")
        with open(policy, "w") as f:
            f.write(config_map["policy.json"])
        pin = os.path.join(work, "hsm-pin")
        with open(pin, "w") as f:
            f.write("1234\n")
        os.chmod(pin, 0o400)
        config["policy"]["file"] = policy
        config["pkcs11"]["pin"]["file"] = pin
        path = os.path.join(work, "vecseald.json")
        with open(path, "w") as f:
            json.dump(config, f)
        os.chmod(path, 0o444)
        for command in ([vecseald, "--check-config", path],
                        [vecseald, "--check-policy", policy, "--as-uid", "0", "--exe", vecseald,
                         "--op", "encrypt", "--key", "demo"]):
            result = subprocess.run(command, capture_output=True, text=True)
            print(result.stdout + result.stderr, end="")
            expected = 0 if "--check-config" in command else 3  # 3: denied
            if result.returncode != expected:
                failures.append(f"{' '.join(command[1:2])}: exit {result.returncode}")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main())
