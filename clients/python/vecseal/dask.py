"""Bulk encryption with Dask: every worker encrypts its partitions through the vecseald of its own
node (its $VECSEAL_SOCKET), so that no vector leaves its node in clear (docs/scaling.md).

    import dask.array as da
    import vecseal.dask

    sealed = vecseal.dask.encrypt_array(da.from_array(embeddings, chunks=(50_000, -1)), "demo")
    frame = vecseal.dask.encrypt_column(frame, "embedding", "demo")       # a dask DataFrame
    vecseal.dask.encrypt_npy("in.npy", "out.npy", "demo", client=dask_client)

Needs dask (and distributed for a cluster); `import vecseal` works without them. Pass
`key_version` so that a rotation during a long job cannot mix versions: vectors of different
versions are not comparable. encrypt_npy checks that on its own.
"""

import json
import os
import time
from typing import Any, Dict, Optional

import numpy as np
import dask
import dask.array as da

from .errors import KeyVersionChanged
from .partitions import BATCH, PartitionError, encrypt_partition, node_socket

__all__ = ["encrypt_array", "encrypt_column", "encrypt_npy", "PartitionError"]


def encrypt_array(array: "da.Array", key: str, *, key_version: Optional[int] = None,
                  batch: int = BATCH) -> "da.Array":
    """A 2-D dask array of embeddings (rows × dimension) in, its encryption out: float32, the
    same chunks of rows, in order. Lazy, like any dask array."""
    if array.ndim != 2:
        raise ValueError(f"encrypt_array takes a 2-D array (rows × dimension), not {array.shape}")
    rows = array.rechunk({1: -1}).astype(np.float32)
    starts = np.cumsum((0,) + rows.chunks[0][:-1])

    def seal(block, block_info=None):
        first = int(starts[block_info[0]["chunk-location"][0]]) if block_info else 0
        return encrypt_partition(block, key, key_version=key_version, batch=batch,
                                 first_row=first)

    return rows.map_blocks(seal, dtype=np.float32)


def encrypt_column(frame: Any, column: str, key: str, *, key_version: Optional[int] = None,
                   batch: int = BATCH) -> Any:
    """A dask DataFrame whose `column` holds one embedding per row (a list or array): the same
    frame, that column encrypted (float32 arrays), every other column (id, labels, text) and the
    row order as they were."""
    if column not in frame.columns:
        raise KeyError(f"no column {column!r} in {list(frame.columns)}")

    def seal(part):
        if len(part) == 0:
            return part
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in part[column].to_numpy()])
        sealed = encrypt_partition(vectors, key, key_version=key_version, batch=batch)
        part = part.copy()
        part[column] = list(sealed)
        return part

    return frame.map_partitions(seal, meta=frame._meta)


def _done_marks(parts: str) -> Dict[int, int]:
    """The partitions written in full so far: index -> key version."""
    marks = {}
    for name in os.listdir(parts):
        if name.endswith(".done"):
            index, version = name[:-5].split(".")
            marks[int(index)] = int(version)
    return marks


def _seal_rows_into(source: str, unfinished: str, data_offset: int, parts: str, index: int,
                    start: int, stop: int, key: str, key_version: Optional[int],
                    batch: int) -> Dict[str, Any]:
    """Encrypts rows [start, stop) of the .npy `source` into the same rows of `unfinished`, then
    marks the partition done (parts/INDEX.VERSION.done), unless it is marked: a retried job
    encrypts only what is missing, and a partition cut short is written again, whole."""
    if index in _done_marks(parts):
        return {"index": index, "skipped": True, "socket": None}
    vectors = np.load(source, mmap_mode="r")[start:stop]
    sealed, version = encrypt_partition(vectors, key, key_version=key_version, batch=batch,
                                        first_row=start, with_version=True)
    # A pwrite of the rows at their offset, not synced here: measured, a memory map opened per
    # partition costs ten times its CPU, and a sync per partition halves the throughput. A worker
    # or daemon that dies leaves what it wrote to the kernel; the file is synced once, before it
    # becomes the target.
    _write_at(unfinished, data_offset + start * sealed.shape[1] * 4, sealed)
    open(os.path.join(parts, f"{index:06d}.{version}.done"), "w").close()
    return {"index": index, "skipped": False, "socket": node_socket()}


def _write_at(path: str, offset: int, rows: Any) -> None:
    data = memoryview(np.ascontiguousarray(rows, dtype="<f4")).cast("B")
    fd = os.open(path, os.O_WRONLY)
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
    finally:
        os.close(fd)


def _data_offset(npy: str) -> int:
    """Where the rows of a .npy file begin, after its header."""
    return np.load(npy, mmap_mode="r").offset


def _run(client: Any, tasks: Any) -> Any:
    """Computes the tasks on the cluster. On the first failure the rest of the job is cancelled
    and the tasks already running are waited for, so that a retry never races this run."""
    futures = client.compute(tasks)
    try:
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)
        # The scheduler forgets a cancelled task at once, but a worker cannot stop one that is
        # running: ask the workers themselves until none of this job's tasks still executes.
        keys = {future.key for future in futures}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(
                keys.intersection(running) for running in client.run(_executing).values()):
            time.sleep(0.05)
        raise


def _executing(dask_worker: Any) -> list:
    return [task.key for task in dask_worker.state.executing]


def encrypt_npy(source: str, target: str, key: str, *, rows_per_partition: int = 20_000,
                key_version: Optional[int] = None, batch: int = BATCH,
                client: Any = None) -> Dict[str, Any]:
    """Encrypts the n×d .npy file `source` into `target`, a partition of rows per task, on the
    cluster of the distributed `client` (else dask's default scheduler). Each worker reads its
    rows from `source` and writes them, encrypted, into the same rows of TARGET.parts/
    unfinished.npy, then marks its partition done (so both paths must be reachable from every
    worker). When a task fails (a node's daemon down), the error names the worker and node, the
    rest of the job is cancelled (the tasks already running are waited for) and the partitions
    marked done stay: running it again encrypts only the rest, so no row is lost or encrypted
    twice into `target`, which appears (by rename) only when every partition is done.

    Returns {"rows", "partitions", "encrypted", "skipped", "key_version", "rows_per_partition",
    "sockets"}: the daemon socket each partition encrypted in this run was sent to, by index."""
    layout = np.load(source, mmap_mode="r")
    if layout.ndim != 2 or np.isfortran(layout):
        raise ValueError(f"{source}: an n×d array in C order is needed, not {layout.shape}")
    n, d = layout.shape
    del layout
    parts, unfinished = target + ".parts", target + ".parts/unfinished.npy"
    os.makedirs(parts, exist_ok=True)
    # A retry must cut the rows into the same partitions, or the marks would name other rows.
    job = {"source": os.path.abspath(source), "rows": n, "dimension": d, "key": key,
           "rows_per_partition": rows_per_partition}
    job_file = os.path.join(parts, "job.json")
    if os.path.exists(job_file):
        with open(job_file) as f:
            earlier = json.load(f)
        if earlier != job:
            raise ValueError(f"{parts} holds an unfinished job of another shape ({earlier}); run "
                             f"encrypt_npy with the same arguments, or remove {parts}")
    else:
        with open(job_file, "w") as f:
            json.dump(job, f)
    if not os.path.exists(unfinished):
        # Sparse until written; each task fills its rows in place, so nothing is copied twice.
        np.lib.format.open_memmap(unfinished, mode="w+", dtype="<f4", shape=(n, d)).flush()
    data_offset = _data_offset(unfinished)
    bounds = [(i, start, min(start + rows_per_partition, n))
              for i, start in enumerate(range(0, n, rows_per_partition))]
    tasks = [dask.delayed(_seal_rows_into, pure=False)(
        source, unfinished, data_offset, parts, i, start, stop, key, key_version, batch)
        for i, start, stop in bounds]
    results = _run(client, tasks) if client is not None else dask.compute(*tasks)

    marks = _done_marks(parts)
    missing = [i for i, _, _ in bounds if i not in marks]
    if missing:
        raise RuntimeError(f"partitions {missing} have no output; run encrypt_npy again")
    versions = sorted(set(marks.values()))
    if len(versions) > 1:
        raise KeyVersionChanged(
            "key_version_changed",
            f"key '{key}' was rotated during the job: its partitions are under versions "
            f"{versions}; remove {parts} and run again with key_version= set")
    with open(unfinished, "rb+") as written:
        os.fsync(written.fileno())
    os.replace(unfinished, target)
    for name in os.listdir(parts):
        os.remove(os.path.join(parts, name))
    os.rmdir(parts)
    sockets = {r["index"]: r["socket"] for r in results if not r["skipped"]}
    return {"rows": n, "partitions": len(bounds), "encrypted": len(sockets),
            "skipped": len(bounds) - len(sockets), "key_version": versions[0],
            "rows_per_partition": rows_per_partition, "sockets": sockets}
