"""Every ready-made reply, and the one mapping from an error type to its reply.

The file decision (200, 206, 304) is :mod:`.read`'s; everything else servefiles answers,
from a 404 to the JSON of the write API, the health report and the metrics, is built here,
so each status has its headers written once. :func:`for_error` turns every error type of
:mod:`servefiles.errors` into its reply: callers raise, and catch only to call it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Literal, TypeAlias

from .. import errors
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..store.types import FileMeta
from .model import NO_STORE, NOSNIFF, TEXT_PLAIN, ZERO_LENGTH, Header, HttpPolicy, Response, ascii_int
from .validators import strong_etag

__all__ = [
    "RETRY_AFTER_SECONDS",
    "Surface",
    "bearer_challenge",
    "deleted",
    "file_json",
    "for_error",
    "forbidden",
    "head_too_large",
    "health",
    "internal_error",
    "json_error",
    "json_response",
    "method_not_allowed",
    "metrics",
    "not_found",
    "precondition_failed",
    "range_not_satisfiable",
    "ready",
    "retry_after_seconds",
    "too_large",
    "unavailable",
    "written",
]

RETRY_AFTER_SECONDS = 5
"""Retry-After of a 503 when nothing knows better (the store failed outright rather than
the circuit breaker refusing with its own time to the next trial)."""

Surface: TypeAlias = Literal["read", "write"]
"""Which door a request came in by: file reads (GET/HEAD of a key) or the write API."""

_JSON: Header = (b"content-type", b"application/json")
_NOT_FOUND_BODY = b"Not Found"
_FORBIDDEN_BODY = b"403 Forbidden: not allowed\n"
_EXPIRED_BODY = b"403 Forbidden: URL expired\n"
"""Of one length: a refusal's headers (Content-Length too) never tell an expired URL from a forgery."""


def _reply(
    status: int,
    content_type: Header,
    body: bytes,
    *,
    before: Sequence[Header] = (),
    after: Sequence[Header] = (),
    no_store: bool = True,
) -> Response:
    """A reply whose whole body is ``body``: ``before``, its type and length, ``no-store``
    unless told otherwise, nosniff (every response carries it), then ``after``."""
    headers = [*before, content_type, (b"content-length", ascii_int(len(body)))]
    if no_store:
        headers.append(NO_STORE)
    headers += (NOSNIFF, *after)
    return Response(status, headers, (body,))


# -- error pages of the read surface --------------------------------------------------------


def not_found() -> Response:
    """The one 404, identical for missing and rejected keys (no existence oracle).

    ``no-store``: an upload must be visible at once, so no cache may keep the
    absence. The adapter drops the body for HEAD (RFC 9110 §9.3.2).
    """
    return _reply(404, TEXT_PLAIN, _NOT_FOUND_BODY)


def forbidden(expired: bool = False) -> Response:
    """The one 403 of a private key (:mod:`servefiles.access`): the same status, headers and body
    length whether the file exists or not, with no validator (no ETag, no Last-Modified), so a
    refusal says nothing about the file. ``expired``: a signed URL servefiles made has expired,
    said in the body text only. ``no-store``: a later request may be let through.
    """
    return _reply(403, TEXT_PLAIN, _EXPIRED_BODY if expired else _FORBIDDEN_BODY)


def internal_error() -> Response:
    """500 for a request whose ``authorize`` hook raised (logged by the caller): never a grant."""
    return _reply(500, TEXT_PLAIN, b"Internal Server Error")


def method_not_allowed(policy: HttpPolicy) -> Response:
    """405 with the Allow header RFC 9110 §15.5.6 requires."""
    return _not_allowed(policy.allow)


def _not_allowed(allow: str) -> Response:
    allowed: Header = (b"allow", allow.encode("latin-1"))
    return _reply(405, TEXT_PLAIN, b"Method Not Allowed", before=[allowed], no_store=False)


def precondition_failed() -> Response:
    """412 to a GET or HEAD (RFC 9110 §15.5.13): no body, nothing about the file."""
    return Response(412, [ZERO_LENGTH, NOSNIFF])


def range_not_satisfiable(size: int) -> Response:
    """416 naming the current length in Content-Range (RFC 9110 §15.5.17): ``size`` in bytes."""
    return Response(416, [(b"content-range", b"bytes */" + ascii_int(size)), ZERO_LENGTH, NOSNIFF])


def unavailable(retry_after: int) -> Response:
    """503 with Retry-After in seconds (RFC 9110 §15.6.4, §10.2.3).

    A negative delay is not a valid delay-seconds, so it is sent as 0.
    """
    retry: Header = (b"retry-after", ascii_int(max(0, int(retry_after))))
    return _reply(503, TEXT_PLAIN, b"Service Unavailable", before=[retry])


def retry_after_seconds(retry_after: float | None) -> int:
    """A Retry-After for a wait of ``retry_after`` seconds: rounded up to whole seconds and
    at least 1 (a 0 invites a retry into the same refusal); :data:`RETRY_AFTER_SECONDS`
    when the wait is unknown (None)."""
    if retry_after is None:
        return RETRY_AFTER_SECONDS
    return max(1, math.ceil(retry_after))


def head_too_large(status: Literal[414, 431], reason: str) -> Response:
    """414 URI Too Long (RFC 9110 §15.5.15) or 431 Request Header Fields Too Large (RFC 6585
    §5), before any work; the connection is closed after it (the head may have been hostile)."""
    body = reason.encode("ascii", "replace") + b"\n"
    return _reply(status, TEXT_PLAIN, body, after=[(b"connection", b"close")])


# -- the service's own endpoints ---------------------------------------------------------------


def health(report: Mapping[str, object]) -> Response:
    """200 with the health report as JSON (:func:`servefiles.probes.health_report`), never cached."""
    return _reply(200, _JSON, json.dumps(report).encode())


def ready(is_ready: bool, report: Mapping[str, object]) -> Response:
    """200 (ready) or 503 (not ready) with the readiness report as JSON
    (:func:`servefiles.probes.ready_report`), never cached."""
    return _reply(200 if is_ready else 503, _JSON, json.dumps(report).encode())


def metrics(body: bytes) -> Response:
    """200 with the Prometheus text exposition ``body`` (``Metrics.render()``), never cached."""
    return _reply(200, (b"content-type", METRICS_CONTENT_TYPE.encode("latin-1")), body)


# -- the write API: PUT, DELETE and the listing ---------------------------------------------


def json_response(status: int, payload: object, headers: Sequence[Header] = ()) -> Response:
    """A JSON reply that no cache keeps and no browser sniffs; non-ASCII is escaped,
    so a hostile key in a message can never become markup or split a header."""
    body = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return _reply(status, _JSON, body, after=headers)


def json_error(status: int, code: str, message: str, headers: Sequence[Header] = ()) -> Response:
    """``{"error": code, "message": message}``: a machine-readable code and a sentence for people."""
    return json_response(status, {"error": code, "message": message}, headers)


def bearer_challenge(status: int, error: str | None, message: str) -> Response:
    """401 or 403 with the Bearer challenge of RFC 6750 §3.

    No credentials: no error attribute (§3.1). A wrong token: ``invalid_token``
    (401). A token that may not touch this key: ``insufficient_scope`` (403).
    """
    challenge = 'Bearer realm="servefiles"' + (f', error="{error}"' if error else "")
    return json_error(status, error or "unauthorized", message, [(b"www-authenticate", challenge.encode("ascii"))])


def too_large(max_bytes: int) -> Response:
    """413 for an upload over the limit (RFC 9110 §15.5.14); the body says the limit."""
    return json_error(413, "too_large", f"uploads are limited to {max_bytes} bytes")


def written(meta: FileMeta, created: bool, url: str) -> Response:
    """201 Created (with Location, RFC 9110 §15.3.2) or 200 for a replaced file; both carry
    the new ETag (§9.3.4) and describe the stored file in JSON."""
    headers: list[Header] = [(b"etag", strong_etag(meta.sha256))]
    if created:
        headers.append((b"location", url.encode("ascii")))
    return json_response(201 if created else 200, file_json(meta, url), headers)


def deleted() -> Response:
    """204 No Content for a DELETE that removed the file (RFC 9110 §9.3.5)."""
    return Response(204, [NO_STORE, NOSNIFF])


def file_json(meta: FileMeta, url: str) -> dict[str, object]:
    """What the write API and the listing say about one file."""
    return {
        "key": meta.key,
        "url": url,
        "size": meta.size,
        "content_type": meta.content_type,
        "etag": f'"{meta.sha256}"',
        "version": meta.version,
        "updated_at": meta.updated_at.astimezone(UTC).isoformat(),
    }


# -- the one mapping from errors to replies -------------------------------------------------


def for_error(error: errors.ServeFilesError, surface: Surface) -> Response:
    """The reply to ``error`` on ``surface``: every error type's HTTP status in one place.

    On the read surface a bad key is the same plain 404 as a missing one (a hostile URL
    learns nothing) and a failed precondition the empty 412 of RFC 9110 §13.2.2; on the
    write surface they are JSON: 400 ``invalid_key``, 404 ``not_found``, 412
    ``precondition_failed``. Either surface: 401/403 with a Bearer challenge (RFC 6750 §3),
    405 with Allow, 400 for a request that cannot be acted on as sent, 413 over the upload
    limit, 415 for a body sent in a form servefiles does not store, and 503 with
    Retry-After from ``StoreUnavailable.retry_after`` (:func:`retry_after_seconds`). Any
    other error (the store or cache not usable now: ``ContentChanged``, ``SchemaTooNew``,
    ``CacheWriteError``) is a 503 with the default Retry-After.
    """
    match error:
        case errors.StoreUnavailable():
            return unavailable(retry_after_seconds(error.retry_after))
        case errors.InvalidKey() | errors.NotFound() if surface == "read":
            return not_found()
        case errors.PreconditionFailed() if surface == "read":
            return precondition_failed()
        case errors.MethodNotAllowed():
            return _not_allowed(error.allow)
        case errors.InvalidToken():
            return bearer_challenge(401, "invalid_token", str(error))
        case errors.Unauthorized():
            return bearer_challenge(401, None, str(error))
        case errors.OutOfScope():
            return bearer_challenge(403, "insufficient_scope", str(error))
        case errors.InvalidKey():
            return json_error(400, "invalid_key", str(error))
        case errors.InvalidContentType():
            return json_error(400, "invalid_content_type", str(error))
        case errors.InvalidRequest():
            return json_error(400, error.code, str(error))
        case errors.UnsupportedUpload():
            return json_error(415, error.code, str(error))
        case errors.UploadAborted():
            return json_error(400, "upload_aborted", str(error))
        case errors.NotFound():
            return json_error(404, "not_found", "no such file")
        case errors.PreconditionFailed():
            return json_error(412, "precondition_failed", "the file is not in the state the request names")
        case errors.UploadTooLarge():
            return too_large(error.limit)
    return unavailable(RETRY_AFTER_SECONDS)
