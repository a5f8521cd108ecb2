#!/usr/bin/python3
"""packaging/examples/spark_encrypt.py, run the way the test suite can run it (--local, the same
partition function Spark calls), against the dev daemon that with_daemon.py started: every row
comes back, in order, and distances are kept within beta/2 (the `demo` key's beta, as the daemon
says).

    with_daemon.py VECSEALD /usr/bin/python3 spark_example_test.py SOURCE_DIR
"""
import json
import math
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients",
                                "python"))
import vecseal  # noqa: E402


def main():
    source = sys.argv[1]
    example = os.path.join(source, "packaging", "examples", "spark_encrypt.py")
    rng = random.Random(7)
    # More rows than one batch of the example, so that the batching path is exercised.
    rows = [{"id": f"doc-{i}", "embedding": [round(rng.uniform(-2, 2), 5) for _ in range(8)]}
            for i in range(1500)]
    with tempfile.TemporaryDirectory() as work:
        source_file, sink_file = os.path.join(work, "in.jsonl"), os.path.join(work, "out.jsonl")
        with open(source_file, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        env = dict(os.environ, PYTHONPATH=os.path.join(source, "clients", "python"))
        subprocess.run([sys.executable, example, "--key", "demo", "--local", source_file,
                        sink_file], check=True, env=env)
        with open(sink_file) as f:
            sealed = [json.loads(line) for line in f]
    beta = next(key.approximation_factor for key in vecseal.Client().keys() if key.name == "demo")
    if [r["id"] for r in sealed] != [r["id"] for r in rows]:
        sys.exit("FAIL: rows lost or reordered")
    worst = max(abs(math.dist(sealed[i]["embedding"], sealed[j]["embedding"]) -
                    math.dist(rows[i]["embedding"], rows[j]["embedding"]))
                for i in range(0, 1500, 37) for j in range(0, 1500, 41))
    changed = sum(s["embedding"] != r["embedding"] for s, r in zip(sealed, rows))
    print(f"{len(sealed)} rows; worst distance error {worst:.4f} (beta/2 = {beta / 2}); "
          f"{changed} vectors changed")
    if worst > beta / 2 + 1e-3 or changed != len(rows):
        sys.exit("FAIL: the example's output is not the encryption of its input")
    return 0


if __name__ == "__main__":
    sys.exit(main())
