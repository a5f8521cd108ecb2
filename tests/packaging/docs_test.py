#!/usr/bin/python3
"""The examples of docs/operations.md and docs/scaling.md: the JSON files shown are the shipped
ones, and each systemd drop-in (a ```ini block after `<!-- drop-in: NAME, exposure <= X -->`)
passes `systemd-analyze verify` as a real drop-in of the shipped unit and scores at most X.

    docs_test.py SOURCE_DIR VECSEALD
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

DROP_IN = re.compile(r"<!-- drop-in: ([a-z0-9-]+), exposure <= ([0-9.]+) -->\n```ini\n(.*?)```",
                     re.S)
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.S)
SCORE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")


def scratch_root(source, vecseald, work):
    root = os.path.join(work, "root")
    units = os.path.join(root, "usr/lib/systemd/system")
    os.makedirs(units)
    os.makedirs(os.path.join(root, "usr/sbin"))
    os.makedirs(os.path.join(root, "bin"))
    for target in glob.glob("/usr/lib/systemd/system/*.target"):
        shutil.copy(target, units)
    shutil.copy(vecseald, os.path.join(root, "usr/sbin/vecseald"))
    shutil.copy("/bin/kill", os.path.join(root, "bin/kill"))
    for unit in ("vecseald.service", "vecseald.socket"):
        shutil.copy(os.path.join(source, "packaging/systemd", unit), units)
    return root


def check_drop_ins(source, vecseald, text, failures, expected):
    blocks = DROP_IN.findall(text)
    if len(blocks) < expected:
        failures.append(f"expected {expected} drop-ins, found {len(blocks)}")
    with open(os.path.join(source, "packaging/systemd/vecseald.service")) as f:
        unit = f.read()
    for name, limit, body in blocks:
        with tempfile.TemporaryDirectory() as work:
            root = scratch_root(source, vecseald, work)
            drop_in_dir = os.path.join(root, "etc/systemd/system/vecseald.service.d")
            os.makedirs(drop_in_dir)
            with open(os.path.join(drop_in_dir, f"{name}.conf"), "w") as f:
                f.write(body)
            verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                                     "vecseald.service"], capture_output=True, text=True)
            if verify.returncode != 0 or verify.stdout or verify.stderr:
                failures.append(f"drop-in {name}: verify: {verify.stdout}{verify.stderr}")
            # Offline scoring reads one file: a drop-in is the same as appending its sections.
            merged = os.path.join(work, "vecseald.service")
            with open(merged, "w") as f:
                f.write(unit + "\n" + body)
            security = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                                       "--no-pager", merged], capture_output=True, text=True)
            match = SCORE.search(security.stdout)
            score = float(match.group(1)) if match else None
            print(f"drop-in {name}: exposure {score} (documented at most {limit})")
            if score is None or score > float(limit):
                failures.append(f"drop-in {name}: exposure {score} above {limit}")


def main():
    source, vecseald = sys.argv[1], sys.argv[2]
    if shutil.which("systemd-analyze") is None or not os.access(vecseald, os.X_OK):
        print("SKIP: needs systemd-analyze and a built vecseald")
        return 77
    failures = []
    with open(os.path.join(source, "docs/operations.md")) as f:
        operations = f.read()
    shown = [json.loads(block) for block in JSON_BLOCK.findall(operations)]
    for name in ("vecseald.json", "policy.json"):
        with open(os.path.join(source, "packaging/etc", name)) as f:
            shipped = json.load(f)
        if shipped not in shown:
            failures.append(f"operations.md does not show the shipped {name} as it is")
    check_drop_ins(source, vecseald, operations, failures, 2)
    scaling_path = os.path.join(source, "docs/scaling.md")
    if os.path.exists(scaling_path):
        with open(scaling_path) as f:
            check_drop_ins(source, vecseald, f.read(), failures, 0)
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main())
