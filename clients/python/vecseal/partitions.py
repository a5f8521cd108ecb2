"""Partition functions for bulk engines (Dask, Spark, Ray): each encrypts one partition through
the vecseald of the node it runs on, in batches, and keeps the rows in their order.

They need no engine: `vecseal.dask` builds on them, and a Spark job maps them over partitions.
One client per process and thread is kept open across partitions, to the daemon named by the
socket argument, else $VECSEAL_SOCKET, else /run/vecseal/vecseald.sock: always a Unix socket, so
never another node's daemon.
"""

import os
import socket as _socket
import threading
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

from .client import DEFAULT_SOCKET, Client
from .errors import VecsealError

BATCH = 1024  # vectors per request: large enough to amortise a round trip, small enough to stream

_local = threading.local()


class PartitionError(VecsealError):
    """A partition could not be encrypted. Names the worker, the node and its socket, and the rows;
    `cause` is the client's exception (Unavailable when that node's daemon is down)."""

    def __init__(self, where: str, rows: str, cause: VecsealError):
        super().__init__(cause.code, f"{where}: rows {rows}: {cause.message}", cause.status,
                         cause.vector_index)
        self.where = where
        self.rows = rows
        self.cause = cause

    def __reduce__(self):
        return (PartitionError, (self.where, self.rows, self.cause))


def node_socket(socket_path: Optional[str] = None) -> str:
    """The daemon socket a partition on this node uses."""
    return socket_path or os.environ.get("VECSEAL_SOCKET") or DEFAULT_SOCKET


def _client(socket_path: str) -> Client:
    clients: Dict[str, Client] = getattr(_local, "clients", None) or {}
    _local.clients = clients
    if socket_path not in clients:
        clients[socket_path] = Client(socket_path, batch_size=BATCH)
    return clients[socket_path]


def _where(socket_path: str) -> str:
    worker = "process %d" % os.getpid()
    try:  # inside a Dask worker, its address names it
        from distributed import get_worker
        worker = "worker %s" % get_worker().address
    except (ImportError, ValueError):
        pass
    return f"{worker} on node {_socket.gethostname()} (socket {socket_path})"


def encrypt_partition(vectors: Any, key: str, *, socket_path: Optional[str] = None,
                      batch: int = BATCH, key_version: Optional[int] = None,
                      first_row: int = 0, with_version: bool = False) -> Any:
    """An n×d float32 array in, its encryption out, row for row (with with_version, a pair of it
    and the key version used). Every batch is under one version: a rotation between two batches
    is KeyVersionChanged, never a partition of mixed versions. Raises PartitionError naming the
    worker, node, socket and rows (counted from `first_row`) when the daemon refuses or is down."""
    import numpy as np
    path = node_socket(socket_path)
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"a partition must be 2-D (rows × dimension), not {matrix.shape}")
    out = np.empty_like(matrix)
    client = _client(path)
    version = key_version
    for start in range(0, len(matrix), batch):
        stop = min(start + batch, len(matrix))
        try:
            out[start:stop] = client.encrypt(key, matrix[start:stop], key_version=version)
        except VecsealError as error:
            client.close()  # the next partition on this worker reconnects
            raise PartitionError(_where(path), f"{first_row + start}-{first_row + stop - 1}",
                                 error) from error
        version = client.last_key_version  # the rest of the partition stays on it
    return (out, version) if with_version else out


def encrypt_rows(rows: Iterable[Tuple[Any, Any]], key: str, *,
                 socket_path: Optional[str] = None,
                 batch: int = BATCH) -> Iterator[Tuple[Any, Any]]:
    """(id, embedding) rows in, (id, encrypted embedding as a list of floats) out, in order: the
    partition function of a Spark or Ray job (packaging/examples/spark_encrypt.py)."""
    pending = []
    for row in rows:
        pending.append(row)
        if len(pending) == batch:
            yield from _encrypt_pending(pending, key, socket_path)
            pending = []
    if pending:
        yield from _encrypt_pending(pending, key, socket_path)


def _encrypt_pending(pending, key, socket_path):
    sealed = encrypt_partition([list(embedding) for _, embedding in pending], key,
                               socket_path=socket_path, batch=len(pending))
    for (row_id, _), vector in zip(pending, sealed):
        yield row_id, [float(v) for v in vector]
