"""vecseal: encrypt ML embeddings through the local vecseald daemon.

    import vecseal
    client = vecseal.Client()              # $VECSEAL_SOCKET, else /run/vecseal/vecseald.sock
    encrypted = client.encrypt("demo", embeddings)
"""

from .client import DEFAULT_SOCKET, TOKEN_SIZE, Client, KeyInfo, ReversibleBatch
from .errors import (InvalidInput, KeyExists, KeyNotFound, KeyVersionChanged, PermissionDenied,
                     ProtocolError, Unavailable, VecsealError)

__version__ = "0.1.0"
__all__ = [
    "Client", "KeyInfo", "ReversibleBatch", "DEFAULT_SOCKET", "TOKEN_SIZE",
    "VecsealError", "InvalidInput", "PermissionDenied", "KeyNotFound", "KeyExists",
    "Unavailable", "ProtocolError", "KeyVersionChanged",
]
