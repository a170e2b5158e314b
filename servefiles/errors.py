"""The error types of servefiles.

Each is mapped to an HTTP reply and to a CLI exit in exactly one place each
(:func:`servefiles.http.replies.for_error` and ``servefiles.cli``), so callers raise
and catch types, never build a reply or compare strings.
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
    """The database cannot be reached (down, refused, timed out, bad credentials): HTTP 503.

    ``retry_after`` is how many seconds until the database is worth asking again, when
    something knows (the circuit breaker, refusing until its next trial); None otherwise.
    """

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after = retry_after


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


class MethodNotAllowed(ServeFilesError):
    """A method the resource does not answer (HTTP 405); ``allow`` is the Allow header value."""

    def __init__(self, method: str, allow: str) -> None:
        super().__init__(f"{method} is not allowed here (allowed: {allow})")
        self.method = method
        self.allow = allow


class Unauthorized(ServeFilesError):
    """A write API request without an upload token (HTTP 401 with a Bearer challenge)."""

    def __init__(self, message: str = "this needs an upload token: Authorization: Bearer <token>") -> None:
        super().__init__(message)


class InvalidToken(Unauthorized):
    """An upload token that no configured token matches (HTTP 401, ``invalid_token``)."""

    def __init__(self, message: str = "the upload token is not valid") -> None:
        super().__init__(message)


class OutOfScope(ServeFilesError):
    """A valid upload token used outside its folder (HTTP 403, ``insufficient_scope``)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(f"this token may only change keys under {prefix!r}")
        self.prefix = prefix


class InvalidRequest(ServeFilesError, ValueError):
    """A write API request that cannot be acted on as sent (HTTP 400); ``code`` is the
    machine-readable name of what is wrong (``partial_put``, ``content_length``,
    ``invalid_limit``, ``invalid_prefix``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnsupportedUpload(ServeFilesError):
    """An upload sent in a form servefiles does not store as is (HTTP 415); ``code`` names
    it (``content_encoding``, ``form_upload``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
