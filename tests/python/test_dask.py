#!/usr/bin/python3
"""Dask scale-out (issue #21, docs/scaling.md): two nodes, each a production vecseald with its
own socket, share one SoftHSM2 token through p11-kit server; a dask scheduler and one worker per
node (each seeing only its node's socket) encrypt 200 000 vectors of d = 384 from .npy to .npy
with vecseal.dask.encrypt_npy. Checked: every row comes back once and in its place; vectors
encrypted on different nodes keep the beta-DCP guarantee between them; a node's daemon killed
mid-job gives an error naming that worker and node, and running the job again finishes it with
no row lost or encrypted twice into the output. Then the lazy APIs (encrypt_array and
encrypt_column) against the same cluster.

    test_dask.py VECSEALD
"""
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "..", "..", "clients", "python")
sys.path.insert(0, CLIENT)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import shared_hsm  # noqa: E402

ROWS, DIM, CLUSTERS = 200_000, 384, 2_000
BETA = 0.5
PARTITION = 10_000


def skip(reason):
    print("SKIP:", reason)
    sys.exit(77)


def clustered(rows, seed=7):
    """Unit vectors in tight clusters (row i in cluster i % CLUSTERS): a row's cluster mates lie
    far closer than beta, the others far beyond it, so the DCP order of triplets is checkable."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data = centers[np.arange(rows) % CLUSTERS] + 0.01 * rng.standard_normal((rows, DIM))
    return data.astype(np.float32)


def node_of_row(result, sockets_by_node):
    """For each row, the node whose daemon encrypted it in `result`'s run (None: an earlier run)."""
    names = {socket: name for name, socket in sockets_by_node.items()}
    owner = np.full(result["rows"], None, dtype=object)
    for index, socket in result["sockets"].items():
        start = index * result["rows_per_partition"]
        owner[start:start + result["rows_per_partition"]] = names[socket]
    return owner


def check_dcp(plain, sealed, owner, rng, what, samples=4_000):
    """Triplets (x, y, z) with y a cluster mate of x and z not, x encrypted on one node and y, z
    on the other where possible: d(x, y) < d(x, z) - beta must keep d(Ex, Ey) < d(Ex, Ez). A row
    out of place, missing or doubled breaks this for its triplets."""
    assert sealed.shape == plain.shape, f"{what}: shape {sealed.shape}, not {plain.shape}"
    assert np.isfinite(sealed).all(), f"{what}: non-finite values in the output"
    cross = checked = broken = 0
    for x in rng.integers(0, len(plain), samples):
        mates = np.arange(x % CLUSTERS, len(plain), CLUSTERS)
        mates = mates[mates != x]
        if len(mates) == 0:
            continue
        y = rng.choice(mates)
        others = rng.integers(0, len(plain), 8)
        for z in others[others % CLUSTERS != x % CLUSTERS][:1]:
            if not np.linalg.norm(plain[x] - plain[y]) < np.linalg.norm(plain[x] - plain[z]) - BETA:
                continue
            checked += 1
            cross += owner[x] is not None and owner[y] is not None and owner[x] != owner[y]
            if not np.linalg.norm(sealed[x] - sealed[y]) < np.linalg.norm(sealed[x] - sealed[z]):
                broken += 1
    print(f"{what}: {checked} triplets checked ({cross} across nodes), {broken} broken")
    assert checked > samples // 2 and broken == 0, f"{what}: {broken} of {checked} triplets broken"
    return cross


def run_doc_job(scheduler_file, source, target):
    """The job of docs/scaling.md ("The recipe that runs"), as written, on this cluster."""
    with open(os.path.join(HERE, "..", "..", "docs", "scaling.md")) as f:
        doc = f.read()
    marker = "<!-- example: dask-job -->\n```python\n"
    assert marker in doc, "docs/scaling.md lost its dask-job example"
    code = doc[doc.index(marker) + len(marker):]
    code = code[:code.index("```")]
    for shown, here in (("/shared/scheduler.json", scheduler_file),
                        ("/shared/embeddings.npy", source), ("/shared/sealed.npy", target),
                        ('"support-v1"', '"dask-job"')):
        assert shown in code, f"the example no longer names {shown}"
        code = code.replace(shown, here)
    code += "\nclient.close()\n"
    exec(compile(code, "docs/scaling.md (dask-job)", "exec"), {})


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    vecseald = sys.argv[1]
    if not os.path.exists(vecseald):
        skip(f"{vecseald} is not built")
    try:
        import distributed  # noqa: F401
        import dask.dataframe  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as error:
        skip(f"{error.name} not installed (python3-distributed, python3-pandas: scripts/install-deps)")
    if (why := shared_hsm.missing_tools()) is not None:
        skip(why)
    import vecseal
    import vecseal.dask
    from vecseal.partitions import PartitionError

    rng = np.random.default_rng(11)
    with shared_hsm.SharedHsm(vecseald) as hsm, tempfile.TemporaryDirectory() as work:
        a, b = hsm.start_node("a"), hsm.start_node("b")
        with vecseal.Client(a.socket) as admin:
            admin.create_key("dask-job", BETA, dimension=DIM)
        plain = clustered(ROWS)
        source = os.path.join(work, "embeddings.npy")
        np.save(source, plain)
        workers = shared_hsm.DaskWorkers(hsm.root, [a, b], CLIENT)
        try:
            client = workers.client(2)
            sockets = {"a": a.socket, "b": b.socket}

            # 1. The whole job: both nodes take part, every row is encrypted exactly once.
            target = os.path.join(work, "sealed.npy")
            result = vecseal.dask.encrypt_npy(source, target, "dask-job",
                                              rows_per_partition=PARTITION, client=client)
            print("job:", {k: v for k, v in result.items() if k != "sockets"})
            assert result["encrypted"] == ROWS // PARTITION and result["skipped"] == 0
            used = set(result["sockets"].values())
            assert used == {a.socket, b.socket}, f"both nodes must take part, not only {used}"
            audited = a.encrypted_vectors() + b.encrypted_vectors()
            assert audited == ROWS, f"the daemons encrypted {audited} vectors for {ROWS} rows"
            assert not os.path.exists(target + ".parts")
            cross = check_dcp(plain, np.load(target), node_of_row(result, sockets), rng,
                              "the whole job")
            assert cross > 100, "too few triplets across the two nodes"
            run_doc_job(workers.scheduler_file, source, os.path.join(work, "doc.npy"))
            assert np.load(os.path.join(work, "doc.npy"), mmap_mode="r").shape == plain.shape

            # 2. Node b's daemon is killed mid-job: the user sees which worker and node failed.
            target = os.path.join(work, "sealed-again.npy")
            outcome = {}

            def run():
                try:
                    outcome["result"] = vecseal.dask.encrypt_npy(
                        source, target, "dask-job", rows_per_partition=PARTITION, client=client)
                except Exception as error:  # noqa: BLE001  (what the user sees, checked below)
                    outcome["error"] = error
            job = threading.Thread(target=run)
            job.start()
            parts = target + ".parts"
            def done():
                return [n for n in os.listdir(parts) if n.endswith(".done")] \
                    if os.path.isdir(parts) else []
            while job.is_alive() and len(done()) < 3:
                time.sleep(0.01)
            hsm.kill_node(b)
            job.join(timeout=300)
            error = outcome.get("error")
            assert isinstance(error, PartitionError), f"expected PartitionError, got {outcome!r}"
            print("what the user sees:", error)
            assert "worker tcp://" in str(error) and b.socket in str(error), str(error)
            assert isinstance(error.cause, vecseal.Unavailable), repr(error.cause)
            finished = len(done())
            assert 0 < finished < ROWS // PARTITION, f"{finished} parts finished before the kill"

            # 3. The node is back; running the job again encrypts only the missing partitions
            # (and only when cut into the same partitions as before).
            b = hsm.start_node("b")
            try:
                vecseal.dask.encrypt_npy(source, target, "dask-job",
                                         rows_per_partition=PARTITION // 2, client=client)
                raise AssertionError("a retry with other partitions was accepted")
            except ValueError as refused:
                assert "unfinished job of another shape" in str(refused), str(refused)
            before = a.encrypted_vectors() + b.encrypted_vectors()
            result = vecseal.dask.encrypt_npy(source, target, "dask-job",
                                              rows_per_partition=PARTITION, client=client)
            print("retry:", {k: v for k, v in result.items() if k != "sockets"})
            assert result["skipped"] >= finished
            assert result["encrypted"] + result["skipped"] == ROWS // PARTITION
            again = a.encrypted_vectors() + b.encrypted_vectors() - before
            assert again == result["encrypted"] * PARTITION, \
                f"the retry encrypted {again} vectors for {result['encrypted']} partitions"
            check_dcp(plain, np.load(target), node_of_row(result, sockets), rng, "after the retry")

            # 4. The lazy APIs: an array, and a DataFrame column with its other columns kept.
            import dask.array as da
            import dask.dataframe as dd
            import pandas as pd
            head = plain[:20_000]
            sealed = vecseal.dask.encrypt_array(
                da.from_array(head, chunks=(2_500, DIM)), "dask-job",
                key_version=result["key_version"]).compute()
            check_dcp(head, sealed, np.full(len(head), None), rng, "encrypt_array", 1_000)
            frame = pd.DataFrame({"id": np.arange(3_000), "label": np.arange(3_000) % 7,
                                  "embedding": list(head[:3_000])})
            out = vecseal.dask.encrypt_column(dd.from_pandas(frame, npartitions=4), "embedding",
                                              "dask-job").compute(scheduler=client.get)
            assert list(out["id"]) == list(range(3_000)), "rows out of order"
            assert list(out["label"]) == list(frame["label"]), "a passed-through column changed"
            check_dcp(head[:3_000], np.stack(out["embedding"].to_numpy()),
                      np.full(3_000, None), rng, "encrypt_column", 1_000)
            client.close()
        finally:
            workers.close()
    print("OK: dask scale-out on two nodes sharing one HSM")


if __name__ == "__main__":
    main()
