"""servefiles: serve uploaded files from the database, fast, on every frontend.

The public API: :func:`open_store` and the types and errors it hands out.
"""

from .errors import (
    ContentChanged,
    InvalidContentType,
    InvalidKey,
    InvalidURL,
    NotFound,
    SchemaTooNew,
    ServeFilesError,
    StoreUnavailable,
)
from .keys import canonical_key
from .store import Change, FileMeta, Store, open_store

__all__ = [
    "Change",
    "ContentChanged",
    "FileMeta",
    "InvalidContentType",
    "InvalidKey",
    "InvalidURL",
    "NotFound",
    "SchemaTooNew",
    "ServeFilesError",
    "Store",
    "StoreUnavailable",
    "canonical_key",
    "open_store",
]
