"""servefiles: serve uploaded files from the database, fast, on every frontend.

The public API: :func:`open_store`, the :class:`ServeFiles` ASGI and
:class:`ServeFilesWSGI` WSGI middleware (which also take uploads, over HTTP and from
Python; private folders with signed, expiring URLs and an ``authorize`` hook), the types and
errors they hand out, :class:`Signer` for signing URLs elsewhere, :class:`ZeroCopySend`, which
lets uvicorn send disk-tier hits with ``sendfile(2)``, and :func:`inline_protocol`, uvicorn's
protocol answering cache hits without a task. Django: :mod:`servefiles.contrib.django`.

``__version__`` is the installed distribution's version (pyproject.toml's, the one source).
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .auth import UploadToken
from .errors import (
    ContentChanged,
    InvalidContentType,
    InvalidKey,
    InvalidURL,
    NotFound,
    PreconditionFailed,
    SchemaTooNew,
    ServeFilesError,
    StoreUnavailable,
    UploadAborted,
    UploadTooLarge,
)
from .keys import canonical_key
from .middleware import ServeFiles, ServeFilesWSGI, ZeroCopySend, inline_protocol
from .signing import CLOCK_SKEW_SECONDS, Signer, new_signing_key
from .store import Change, FileMeta, Store, open_store
from .tuning import tune_allocator, tune_collector, tune_process

try:
    __version__ = _version("servefiles")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "Change",
    "ContentChanged",
    "FileMeta",
    "InvalidContentType",
    "InvalidKey",
    "InvalidURL",
    "NotFound",
    "PreconditionFailed",
    "SchemaTooNew",
    "ServeFiles",
    "ServeFilesError",
    "ServeFilesWSGI",
    "Signer",
    "Store",
    "StoreUnavailable",
    "UploadAborted",
    "UploadToken",
    "UploadTooLarge",
    "ZeroCopySend",
    "canonical_key",
    "inline_protocol",
    "new_signing_key",
    "open_store",
    "tune_allocator",
    "tune_collector",
    "tune_process",
]
