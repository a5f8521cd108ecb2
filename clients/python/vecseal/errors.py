"""Exceptions raised by the vecseal client.

Every error the daemon reports carries a stable snake_case ``code`` (the daemon's JSON
``error.code``) and a sentence for people; the exception class says what the caller can do about it.
"""

from typing import Optional


class VecsealError(Exception):
    """Base class: any failure reported by vecseald or met while talking to it."""

    def __init__(self, code: str, message: str, status: Optional[int] = None,
                 vector_index: Optional[int] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        # Index into the caller's whole batch (not into one of the requests it was split into).
        self.vector_index = vector_index

    def __reduce__(self):
        # Rebuilt from its fields, not from str(): errors cross processes (Dask workers, pools).
        return (self.__class__, (self.code, self.message, self.status, self.vector_index))


class InvalidInput(VecsealError, ValueError):
    """The request was malformed: bad shape, non-finite value, bad token, oversized..."""


class PermissionDenied(VecsealError, PermissionError):
    """The daemon's policy grants the caller no such operation on this key (or the socket is closed
    to this user)."""


class KeyNotFound(VecsealError, LookupError):
    """No key (or key version) by that name."""


class KeyExists(VecsealError):
    """A key by that name already exists."""


class Unavailable(VecsealError, ConnectionError):
    """The daemon cannot serve now (not running, HSM or audit log down, overloaded, timed out).
    Retrying later may succeed."""


class ProtocolError(VecsealError):
    """The daemon answered something this client does not understand (version skew or a bug)."""


class KeyVersionChanged(VecsealError):
    """The key was rotated while a batch was being encrypted in several requests, so the parts
    are under different key versions and must not be mixed. Encrypt the batch again."""


_BY_STATUS = {
    400: InvalidInput,
    403: PermissionDenied,
    404: KeyNotFound,
    408: Unavailable,
    409: InvalidInput,  # a request that conflicts with the key's state, e.g. a fixed dimension
    411: InvalidInput,
    413: InvalidInput,
    415: InvalidInput,
    429: Unavailable,
    503: Unavailable,
}


def error_for(status: int, code: str, message: str,
              vector_index: Optional[int] = None) -> VecsealError:
    """The exception for an HTTP error response from the daemon."""
    cls = _BY_STATUS.get(status, VecsealError)
    if code == "key_exists":
        cls = KeyExists
    elif code == "key_not_found":
        cls = KeyNotFound
    return cls(code, message, status=status, vector_index=vector_index)
