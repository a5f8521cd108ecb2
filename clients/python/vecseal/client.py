"""A client for vecseald's HTTP API v1 over its Unix socket, using the standard library only.

With numpy installed, vectors come back as float32 arrays and travel in the binary protocol
(n×d little-endian float32); without it, they are lists of floats and travel as JSON.
"""

import base64
import http.client
import json
import math
import os
import re
import socket as _socket
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import (InvalidInput, KeyNotFound, KeyVersionChanged, PermissionDenied,
                     ProtocolError, Unavailable, VecsealError, error_for)

try:
    import numpy as np
except ImportError:  # the client works without numpy, over JSON
    np = None

DEFAULT_SOCKET = "/run/vecseal/vecseald.sock"
TOKEN_SIZE = 41
_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
# A JSON float as the daemon writes it is at most ~15 characters plus a separator.
_JSON_BYTES_PER_FLOAT = 16


@dataclass(frozen=True)
class KeyInfo:
    """A model key's public parameters (never key bytes)."""
    name: str
    version: int
    versions: Tuple[int, ...]
    approximation_factor: float
    transform: str
    dimension: Optional[int]
    created: str
    format: int = 0          # the newest version's ciphertext format: 2 (aes) or 1 (hmac)
    derivation: str = ""     # "aes" or "hmac"
    formats: Tuple[int, ...] = ()  # the format of each of versions
    # From get_key and configure_key only (0 and () from keys, create_key, rotate_key): the
    # minimum versions, and "active", "decrypt_only" or "retired" for each of versions.
    min_encryption_version: int = 0
    min_decryption_version: int = 0
    states: Tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "KeyInfo":
        try:
            return cls(name=obj["name"], version=int(obj["version"]),
                       versions=tuple(int(v) for v in obj.get("versions", [obj["version"]])),
                       approximation_factor=float(obj["approximation_factor"]),
                       transform=obj["transform"], dimension=obj.get("dimension"),
                       created=obj.get("created", ""), format=int(obj.get("format", 0)),
                       derivation=obj.get("derivation", ""),
                       formats=tuple(int(f) for f in obj.get("formats", ())),
                       min_encryption_version=int(obj.get("min_encryption_version", 0)),
                       min_decryption_version=int(obj.get("min_decryption_version", 0)),
                       states=tuple(str(state) for state in obj.get("states", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError("bad_response", f"unexpected key object from vecseald: {e!r}")


class ReversibleBatch(NamedTuple):
    """What encrypt(..., reversible=True) returns: the encrypted vectors and one 41-byte token per
    vector, which a caller holding the "decrypt" permission needs to recover the plaintext."""
    vectors: Any
    tokens: List[bytes]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


_FLOAT32_MAX = 3.4028234663852886e38


def _ragged_row(rows: Any) -> Optional[InvalidInput]:
    """The error for the first row of `rows` whose length differs from row 0's, if any."""
    try:
        lengths = [len(row) for row in rows]
    except TypeError:
        return None
    for i, length in enumerate(lengths):
        if length != lengths[0]:
            return InvalidInput("dimension_mismatch",
                                f"vector {i} has {length} values, vector 0 has {lengths[0]}",
                                vector_index=i)
    return None


def _out_of_range(i: int) -> InvalidInput:
    return InvalidInput("non_finite_value",
                        f"vector {i} has a value outside the float32 range (±3.4e38)",
                        vector_index=i)


class _Matrix:
    """The caller's vectors, normalised: n rows of d float32 values. As the CLI does with
    files, it refuses integer arrays (int64 would lose digits as float32 without a word) and
    values that float32 cannot hold, rather than casting them."""

    def __init__(self, vectors: Any, what: str):
        self.single = False
        if np is not None:
            if isinstance(vectors, np.ndarray) and vectors.dtype.kind not in "f":
                raise InvalidInput("invalid_request",
                                   f"{what} must be a floating-point array, not {vectors.dtype}; "
                                   "convert it with .astype(numpy.float32)")
            try:
                source = np.asarray(vectors)
                if source.dtype.kind not in "fiu":
                    raise ValueError(f"values of type {source.dtype}")  # ragged, or not numbers
                with np.errstate(over="ignore"):
                    array = source.astype(np.float32, copy=False)
            except (ValueError, TypeError) as e:
                ragged = _ragged_row(vectors)
                if ragged is not None:
                    raise ragged from None
                raise InvalidInput("invalid_request", f"{what} must be n×d numbers: {e}")
            if source.dtype.kind == "f" and source.dtype.itemsize > 4:
                overflowed = np.isfinite(source) & ~np.isfinite(array)
                if overflowed.any():
                    first = np.argwhere(overflowed)[0]
                    raise _out_of_range(int(first[0]) if overflowed.ndim > 1 else 0)
            if array.ndim == 1 and array.size == 0:
                array = array.reshape(0, 0)  # an empty batch
            elif array.ndim == 1:
                self.single, array = True, array.reshape(1, -1)
            if array.ndim != 2:
                raise InvalidInput("invalid_request",
                                   f"{what} must be one vector or a 2-D batch, got {array.ndim}-D")
            self.array = np.ascontiguousarray(array, dtype="<f4")
            self.n, self.d = self.array.shape
        else:
            rows = list(vectors)
            if rows and isinstance(rows[0], (int, float)):
                self.single, rows = True, [rows]
            try:
                self.rows = [[float(x) for x in row] for row in rows]
            except (TypeError, ValueError) as e:
                raise InvalidInput("invalid_request", f"{what} must be n×d numbers: {e}")
            for i, row in enumerate(self.rows):
                if any(math.isfinite(x) and abs(x) > _FLOAT32_MAX for x in row):
                    raise _out_of_range(i)
            self.n = len(self.rows)
            self.d = len(self.rows[0]) if self.rows else 0
            for i, row in enumerate(self.rows):
                if len(row) != self.d:
                    raise InvalidInput("dimension_mismatch",
                                       f"vector {i} has {len(row)} values, vector 0 has {self.d}",
                                       vector_index=i)
        if self.n and self.d == 0:
            raise InvalidInput("invalid_dimension", f"{what} have dimension 0")

    def rows_as_lists(self, start: int, stop: int) -> List[List[float]]:
        if np is not None:
            return self.array[start:stop].tolist()
        return self.rows[start:stop]

    def first_non_finite(self, start: int, stop: int) -> Optional[int]:
        if np is not None:
            bad = np.flatnonzero(~np.isfinite(self.array[start:stop]).all(axis=1))
            return start + int(bad[0]) if bad.size else None
        for i in range(start, stop):
            if not all(math.isfinite(x) for x in self.rows[i]):
                return i
        return None


class _Output:
    """Collects the per-request results into the caller's shape and type."""

    def __init__(self, n: int, d: int, single: bool):
        self.single = single
        self.data = np.empty((n, d), dtype=np.float32) if np is not None else [None] * n

    def put(self, positions: Sequence[int], rows: Any) -> None:
        if np is not None:
            self.data[positions] = rows
        else:
            for p, row in zip(positions, rows):
                self.data[p] = row

    def result(self) -> Any:
        return self.data[0] if self.single else self.data


class Client:
    """A connection to vecseald. Safe to share between threads (requests are serialised); use one
    Client per thread for parallelism.

    socket: the daemon's Unix socket; default $VECSEAL_SOCKET, else /run/vecseal/vecseald.sock.
    batch_size, max_request_bytes: larger batches are split into requests of at most this many
      vectors and bytes. A request the daemon still finds too large is split further, and the
      smaller size is kept for later calls.
    binary: use the binary protocol; default: when numpy is installed.
    """

    def __init__(self, socket: Optional[str] = None, *, timeout: Optional[float] = 60.0,
                 batch_size: int = 1024, max_request_bytes: int = 4 << 20,
                 binary: Optional[bool] = None):
        self.socket_path = socket or os.environ.get("VECSEAL_SOCKET") or DEFAULT_SOCKET
        if batch_size < 1 or max_request_bytes < 1:
            raise ValueError("batch_size and max_request_bytes must be positive")
        if binary and np is None:
            raise ValueError("the binary protocol needs numpy")
        self.binary = (np is not None) if binary is None else binary
        self.batch_size = batch_size
        self.max_request_bytes = max_request_bytes
        # The key version the most recent encrypt() used (the key's newest at that time).
        self.last_key_version: Optional[int] = None
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: Optional[_UnixConnection] = None

    def __repr__(self) -> str:
        return f"vecseal.Client(socket={self.socket_path!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    # ---- keys and identity ------------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """The daemon's health: {"status": "ok"|..., "hsm": ..., "audit": ..., "version": ...}.
        Returned as is, also when the daemon reports itself unhealthy."""
        status, _, body = self._request("GET", "/v1/health", retry_safe=True)
        if status in (200, 503):
            return self._parse_json(body)
        raise self._error(status, body)

    def whoami(self) -> Dict[str, Any]:
        """How the daemon identifies this process, and what the policy grants it."""
        return self._json_call("GET", "/v1/whoami")

    def keys(self) -> List[KeyInfo]:
        """The keys this caller may use for at least one operation."""
        reply = self._json_call("GET", "/v1/keys")
        return [KeyInfo.from_json(k) for k in reply.get("keys", [])]

    def create_key(self, name: str, approximation_factor: float, transform: str = "rotate",
                   dimension: Optional[int] = None, derivation: Optional[str] = None) -> KeyInfo:
        """Creates a model key inside the daemon's HSM. approximation_factor is β: larger means
        more noise (more privacy, less accuracy). derivation is "aes" (format v2) or "hmac"
        (format v1, for an HSM without AES-ECB); None leaves it to the daemon's configuration."""
        request: Dict[str, Any] = {"name": _check_key_name(name),
                                   "approximation_factor": approximation_factor,
                                   "transform": transform}
        if dimension is not None:
            request["dimension"] = dimension
        if derivation is not None:
            request["derivation"] = derivation
        return KeyInfo.from_json(self._json_call("POST", "/v1/keys", request, retry_safe=False))

    def rotate_key(self, name: str) -> KeyInfo:
        """Adds a new version to a key; new encryptions use it, old tokens still decrypt."""
        path = f"/v1/keys/{_check_key_name(name)}/rotate"
        return KeyInfo.from_json(self._json_call("POST", path, None, retry_safe=False))

    def get_key(self, name: str) -> KeyInfo:
        """One key, with its minimum versions and the state of each version."""
        return KeyInfo.from_json(self._json_call("GET", f"/v1/keys/{_check_key_name(name)}"))

    def configure_key(self, name: str, min_encryption_version: Optional[int] = None,
                      min_decryption_version: Optional[int] = None) -> KeyInfo:
        """Retires old versions: below min_encryption_version they no longer encrypt, below
        min_decryption_version their tokens no longer decrypt. None keeps a minimum as it is.
        Needs the "keys.config" permission."""
        request: Dict[str, int] = {}
        if min_encryption_version is not None:
            request["min_encryption_version"] = min_encryption_version
        if min_decryption_version is not None:
            request["min_decryption_version"] = min_decryption_version
        path = f"/v1/keys/{_check_key_name(name)}/config"
        return KeyInfo.from_json(self._json_call("POST", path, request, retry_safe=False))

    def delete_key(self, name: str, force: bool = False) -> List[int]:
        """Destroys every version of a key in the HSM, for good; returns the versions destroyed.
        The daemon refuses (409 key_in_policy) while the policy names the key, unless force.
        Needs the "keys.delete" permission."""
        path = f"/v1/keys/{_check_key_name(name)}" + ("?force=true" if force else "")
        reply = self._json_call("DELETE", path, None, retry_safe=False)
        return [int(v) for v in reply.get("destroyed_versions", [])]

    def rewrap(self, key: str, vectors: Any, tokens: Any) -> ReversibleBatch:
        """Re-encrypts reversible ciphertexts, given their tokens, under the newest version of
        `key` inside the daemon: returns new vectors and tokens, never the plaintext. Needs the
        "rewrap" permission only. Always sent as JSON."""
        path = f"/v1/keys/{_check_key_name(key)}/rewrap"
        matrix = _Matrix(vectors, "vectors")
        token_list = _token_list(matrix, tokens)
        out = _Output(matrix.n, matrix.d, matrix.single)
        new_tokens: List[bytes] = [b""] * matrix.n
        for positions, sub_matrix, sub_tokens in _by_token_version(matrix, token_list):
            for start, stop, (rows, chunk_tokens) in self._chunks(
                    len(positions), matrix.d, TOKEN_SIZE,
                    lambda a, b: self._rewrap_chunk(path, sub_matrix, sub_tokens, a, b),
                    index_map=positions):
                out.put(positions[start:stop], rows)
                for position, token in zip(positions[start:stop], chunk_tokens):
                    new_tokens[position] = token
        return ReversibleBatch(out.result(), new_tokens[0] if matrix.single else new_tokens)

    # ---- encryption --------------------------------------------------------------------------

    def encrypt(self, key: str, vectors: Any, reversible: bool = False,
                key_version: Optional[int] = None) -> Any:
        """Encrypts one vector or a batch (n×d) under the newest version of `key`, or under
        `key_version`: a model trained on vectors of one version needs its inputs under that
        version, also after the key was rotated.

        Returns the encrypted vectors in the input's shape (a float32 array with numpy, else
        lists). With reversible=True returns ReversibleBatch(vectors, tokens) instead.
        """
        if key_version is not None and (isinstance(key_version, bool) or
                                        not isinstance(key_version, int) or key_version < 1):
            raise InvalidInput("invalid_key_version",
                               f"key_version must be a positive integer, not {key_version!r}")
        path = f"/v1/keys/{_check_key_name(key)}/encrypt"
        matrix = _Matrix(vectors, "vectors")
        out = _Output(matrix.n, matrix.d, matrix.single)
        tokens: List[bytes] = []
        versions = set()
        token_bytes = TOKEN_SIZE if reversible else 0
        for start, stop, (rows, version, chunk_tokens) in self._chunks(
                matrix.n, matrix.d, token_bytes,
                lambda a, b: self._encrypt_chunk(path, matrix, a, b, reversible, key_version)):
            out.put(range(start, stop), rows)
            tokens.extend(chunk_tokens)
            versions.add(version)
        if len(versions) > 1:
            raise KeyVersionChanged(
                "key_version_changed",
                f"key '{key}' was rotated during this batch (versions {sorted(versions)}); "
                "encrypt the batch again")
        if versions:
            self.last_key_version = versions.pop()
        if reversible:
            return ReversibleBatch(out.result(), tokens[0] if matrix.single else tokens)
        return out.result()

    def decrypt(self, key: str, vectors: Any, tokens: Any) -> Any:
        """Recovers the plaintext of vectors encrypted with reversible=True, given their tokens
        (bytes, or base64 strings as in the JSON API). Needs the "decrypt" permission. Tokens of
        different key versions may be mixed: they are sent in separate requests."""
        path = f"/v1/keys/{_check_key_name(key)}/decrypt"
        matrix = _Matrix(vectors, "vectors")
        token_list = _token_list(matrix, tokens)
        out = _Output(matrix.n, matrix.d, matrix.single)
        for positions, sub_matrix, sub_tokens in _by_token_version(matrix, token_list):
            for start, stop, rows in self._chunks(
                    len(positions), matrix.d, TOKEN_SIZE,
                    lambda a, b: self._decrypt_chunk(path, sub_matrix, sub_tokens, a, b),
                    index_map=positions):
                out.put(positions[start:stop], rows)
        return out.result()

    # ---- batching ----------------------------------------------------------------------------

    def _chunks(self, n: int, d: int, extra_bytes_per_vector: int, call: Any,
                index_map: Optional[Sequence[int]] = None):
        """Runs call(start, stop) over [0, n) in requests within the size limits, yielding
        (start, stop, result). Halves the request size when the daemon answers 413."""
        per_vector = (4 * d if self.binary else _JSON_BYTES_PER_FLOAT * d) + \
            (extra_bytes_per_vector * (1 if self.binary else 2))
        start = 0
        while start < n:
            size = max(1, min(self.batch_size, self.max_request_bytes // per_vector))
            stop = min(n, start + size)
            try:
                result = call(start, stop)
            except InvalidInput as e:
                if e.status == 413 and stop - start > 1:
                    self.batch_size = max(1, (stop - start) // 2)
                    continue
                if e.vector_index is not None:
                    local = start + e.vector_index
                    e.vector_index = index_map[local] if index_map is not None else local
                raise
            yield start, stop, result
            start = stop

    def _encrypt_chunk(self, path: str, matrix: _Matrix, start: int, stop: int,
                       reversible: bool, key_version: Optional[int]):
        n, d = stop - start, matrix.d
        if self.binary:
            headers = {"Content-Type": "application/octet-stream", "Vecseal-Dimension": str(d),
                       "Vecseal-Reversible": "true" if reversible else "false"}
            if key_version is not None:
                headers["Vecseal-Key-Version"] = str(key_version)
            status, reply_headers, body = self._request(
                "POST", path, matrix.array[start:stop].tobytes(), headers, retry_safe=True)
            if status != 200:
                raise self._error(status, body)
            version = _int_header(reply_headers, "Vecseal-Key-Version")
            token_size = TOKEN_SIZE if reversible else 0
            if len(body) != n * (4 * d + token_size):
                raise ProtocolError("bad_response",
                                    f"expected {n * (4 * d + token_size)} bytes, got {len(body)}")
            rows = np.frombuffer(body, dtype="<f4", count=n * d).reshape(n, d)
            tokens = [body[4 * n * d + i * TOKEN_SIZE:4 * n * d + (i + 1) * TOKEN_SIZE]
                      for i in range(n)] if reversible else []
            return rows, version, tokens
        bad = matrix.first_non_finite(start, stop)
        if bad is not None:
            # JSON has no NaN or infinity, so the daemon could not even be told.
            raise InvalidInput("non_finite_value", f"vector {bad - start} has a non-finite value",
                               vector_index=bad - start)
        request = {"vectors": matrix.rows_as_lists(start, stop), "reversible": reversible}
        if key_version is not None:
            request["key_version"] = key_version
        reply = self._json_call("POST", path, request, retry_safe=True)
        rows = _json_rows(reply, n, d)
        tokens = []
        if reversible:
            encoded = reply.get("tokens")
            if not isinstance(encoded, list) or len(encoded) != n:
                raise ProtocolError("bad_response", "missing or wrong number of tokens")
            tokens = [base64.b64decode(t) for t in encoded]
        return rows, reply.get("key_version"), tokens

    def _decrypt_chunk(self, path: str, matrix: _Matrix, tokens: List[bytes], start: int,
                       stop: int):
        n, d = stop - start, matrix.d
        if self.binary:
            headers = {"Content-Type": "application/octet-stream", "Vecseal-Dimension": str(d)}
            body = matrix.array[start:stop].tobytes() + b"".join(tokens[start:stop])
            status, _, reply = self._request("POST", path, body, headers, retry_safe=True)
            if status != 200:
                raise self._error(status, reply)
            if len(reply) != 4 * n * d:
                raise ProtocolError("bad_response", f"expected {4 * n * d} bytes, got {len(reply)}")
            return np.frombuffer(reply, dtype="<f4").reshape(n, d)
        bad = matrix.first_non_finite(start, stop)
        if bad is not None:
            raise InvalidInput("non_finite_value", f"vector {bad - start} has a non-finite value",
                               vector_index=bad - start)
        request = {"vectors": matrix.rows_as_lists(start, stop),
                   "tokens": [base64.b64encode(t).decode("ascii") for t in tokens[start:stop]]}
        return _json_rows(self._json_call("POST", path, request, retry_safe=True), n, d)

    def _rewrap_chunk(self, path: str, matrix: _Matrix, tokens: List[bytes], start: int,
                      stop: int):
        n, d = stop - start, matrix.d
        request = {"vectors": matrix.rows_as_lists(start, stop),
                   "tokens": [base64.b64encode(t).decode("ascii") for t in tokens[start:stop]]}
        reply = self._json_call("POST", path, request, retry_safe=True)
        encoded = reply.get("tokens")
        if not isinstance(encoded, list) or len(encoded) != n:
            raise ProtocolError("bad_response", "missing or wrong number of tokens")
        return _json_rows(reply, n, d), [base64.b64decode(t) for t in encoded]

    # ---- HTTP --------------------------------------------------------------------------------

    def _json_call(self, method: str, path: str, request: Any = None,
                   retry_safe: bool = True) -> Any:
        body, headers = None, {}
        if request is not None:
            body = json.dumps(request, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        status, _, reply = self._request(method, path, body, headers, retry_safe=retry_safe)
        if status not in (200, 201):
            raise self._error(status, reply)
        return self._parse_json(reply)

    def _request(self, method: str, path: str, body: Optional[bytes] = None,
                 headers: Optional[Dict[str, str]] = None,
                 retry_safe: bool = False) -> Tuple[int, Any, bytes]:
        with self._lock:
            for attempt in range(2):
                reused = self._conn is not None
                conn = self._connect()
                try:
                    conn.request(method, path, body=body, headers=headers or {})
                    response = conn.getresponse()
                    data = response.read()
                except (http.client.RemoteDisconnected, ConnectionResetError,
                        BrokenPipeError) as e:
                    self._drop_connection()
                    # The daemon closes idle keep-alive connections; one retry on a fresh one.
                    if reused and retry_safe and attempt == 0:
                        continue
                    raise Unavailable("connection_lost",
                                      f"vecseald at {self.socket_path} closed the connection: {e}")
                except _socket.timeout:
                    self._drop_connection()
                    raise Unavailable("timeout", f"vecseald at {self.socket_path} did not answer "
                                      f"within {self._timeout} s")
                except (OSError, http.client.HTTPException) as e:
                    self._drop_connection()
                    raise Unavailable("connection_failed",
                                      f"talking to vecseald at {self.socket_path} failed: {e}")
                if response.will_close:
                    self._drop_connection()
                return response.status, response.headers, data
        raise AssertionError("unreachable")

    def _connect(self) -> _UnixConnection:
        if self._conn is not None:
            return self._conn
        conn = _UnixConnection(self.socket_path, self._timeout)
        try:
            conn.connect()
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unavailable("daemon_not_running",
                              f"no vecseald is listening on {self.socket_path}; start it, or "
                              "point $VECSEAL_SOCKET or Client(socket=...) at its socket") from None
        except PermissionError:
            raise PermissionDenied("socket_permission_denied",
                                   f"this user may not connect to {self.socket_path}; ask for "
                                   "membership of the socket's group") from None
        except OSError as e:
            raise Unavailable("connection_failed",
                              f"cannot connect to vecseald at {self.socket_path}: {e}") from None
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def _parse_json(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as e:
            raise ProtocolError("bad_response", f"vecseald sent invalid JSON: {e}") from None

    @staticmethod
    def _error(status: int, body: bytes) -> VecsealError:
        try:
            error = json.loads(body)["error"]
            return error_for(status, str(error["code"]), str(error["message"]),
                             error.get("vector_index"))
        except (ValueError, KeyError, TypeError):
            return error_for(status, "http_error",
                             f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")


def _check_key_name(name: str) -> str:
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise InvalidInput("invalid_key_name",
                           f"key name {name!r} must match [a-z0-9][a-z0-9._-]{{0,63}}")
    return urllib.parse.quote(name)


def _token_bytes(token: Any, index: int) -> bytes:
    if isinstance(token, str):
        try:
            token = base64.b64decode(token, validate=True)
        except ValueError:
            raise InvalidInput("invalid_token", f"token {index} is not valid base64",
                               vector_index=index) from None
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise InvalidInput("invalid_token", f"token {index} must be bytes or a base64 string",
                           vector_index=index)
    token = bytes(token)
    if len(token) != TOKEN_SIZE:
        # In the binary protocol a short token would shift every later one.
        raise InvalidInput("invalid_token",
                           f"token {index} has {len(token)} bytes, not {TOKEN_SIZE}",
                           vector_index=index)
    return token


def _token_list(matrix: _Matrix, tokens: Any) -> List[bytes]:
    if matrix.single and isinstance(tokens, (bytes, bytearray, memoryview, str)):
        tokens = [tokens]
    token_list = [_token_bytes(t, i) for i, t in enumerate(tokens)]
    if len(token_list) != matrix.n:
        raise InvalidInput("invalid_request", f"{matrix.n} vectors but {len(token_list)} tokens")
    return token_list


def _by_token_version(matrix: _Matrix, tokens: List[bytes]):
    """(positions, vectors, tokens) for each key version among the tokens: the daemon takes one
    version per request, and the version is bytes 1..4 of a token."""
    groups: Dict[bytes, List[int]] = {}
    for i, token in enumerate(tokens):
        groups.setdefault(token[1:5], []).append(i)
    for positions in groups.values():
        if len(groups) == 1:
            yield positions, matrix, tokens
        else:
            yield positions, _select(matrix, positions), [tokens[i] for i in positions]


def _select(matrix: _Matrix, positions: List[int]) -> _Matrix:
    subset = _Matrix.__new__(_Matrix)
    subset.single, subset.n, subset.d = False, len(positions), matrix.d
    if np is not None:
        subset.array = np.ascontiguousarray(matrix.array[positions])
    else:
        subset.rows = [matrix.rows[i] for i in positions]
    return subset


def _json_rows(reply: Any, n: int, d: int) -> Any:
    rows = reply.get("vectors") if isinstance(reply, dict) else None
    if not isinstance(rows, list) or len(rows) != n or any(len(r) != d for r in rows):
        raise ProtocolError("bad_response", f"expected {n} vectors of dimension {d}")
    return np.asarray(rows, dtype=np.float32) if np is not None else rows


def _int_header(headers: Any, name: str) -> int:
    try:
        return int(headers[name])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("bad_response", f"missing or bad {name} header") from None
