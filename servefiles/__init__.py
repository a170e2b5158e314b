"""servefiles: serve uploaded files from the database, fast, on every frontend.

The public API: :func:`open_store`, the :class:`ServeFiles` ASGI app, and the
types and errors they hand out.
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
from .middleware import ServeFiles
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
    "ServeFiles",
    "ServeFilesError",
    "Store",
    "StoreUnavailable",
    "canonical_key",
    "open_store",
]
