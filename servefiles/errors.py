"""The error types of servefiles.

Each is mapped to an HTTP status and to a CLI exit in exactly one place each
(the middleware and ``servefiles.cli``), so callers catch types, never strings.
"""

from __future__ import annotations


class ServeFilesError(Exception):
    """Base class: every error servefiles raises on purpose derives from it."""


class InvalidKey(ServeFilesError, ValueError):
    """A key (an upload name or a URL path) that the key gate rejects.

    HTTP maps it to 404 on GET (no oracle) and 400 on upload.
    """


class NotFound(ServeFilesError, LookupError):
    """The key does not exist in the store (never written, or deleted)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no such key: {key}")
        self.key = key


class ContentChanged(ServeFilesError):
    """The key was replaced or deleted while it was being read.

    Raised instead of returning bytes of a version other than the one the
    caller asked for, so a response never mixes two versions.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"content of {key} changed during the read")
        self.key = key


class StoreUnavailable(ServeFilesError):
    """The database cannot be reached (down, refused, timed out, bad credentials)."""


class InvalidURL(ServeFilesError, ValueError):
    """A database URL servefiles cannot use."""


class SchemaTooNew(ServeFilesError):
    """The database was initialised by a newer servefiles than this one."""


class InvalidContentType(ServeFilesError, ValueError):
    """A content type that is not a plain ``type/subtype[; params]`` header value."""


class CacheWriteError(ServeFilesError):
    """The disk tier could not store a file (disk full, read-only, bytes not as announced).

    A cache failure never fails a request: the caller serves from the store instead.
    """


class PreconditionFailed(ServeFilesError):
    """A conditional write or delete found another version than the caller expected.

    Checked inside the write's own transaction, so two conditional writers
    never both succeed (HTTP maps it to 412).
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} is not in the expected state; nothing was changed")
        self.key = key


class UploadTooLarge(ServeFilesError):
    """An upload went past the configured size limit; nothing of it is stored (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload is larger than the limit of {limit} bytes")
        self.limit = limit


class UploadAborted(ServeFilesError):
    """The upload did not arrive whole (the client went away, or left it idle until it was
    swept); nothing of it is stored."""
