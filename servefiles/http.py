"""Sans-I/O HTTP decisions: (method, request headers, file metadata) -> response.

Everything here is pure and synchronous: no sockets, no files, no clock, no
randomness. The ASGI and WSGI adapters carry a :class:`Response` out; this
module alone decides status, headers and which byte ranges form the body, so
every rule of RFC 9110 it implements is a unit test away.

Per-file header work happens once, in :class:`PreparedFile` (the whitenoise
``StaticFile`` idea), when a cache entry is created; :func:`respond` on the hit
path only evaluates preconditions and ranges.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal, TypeAlias

from . import defaults
from .content_types import DEFAULT_CONTENT_TYPE, check_content_type
from .errors import InvalidContentType
from .store.types import FileMeta

__all__ = [
    "ByteRange",
    "HttpPolicy",
    "PreparedFile",
    "Response",
    "Segment",
    "accel_redirect",
    "bearer_challenge",
    "evaluate_preconditions",
    "head_too_large",
    "json_error",
    "json_response",
    "method_not_allowed",
    "not_found",
    "parse_range",
    "respond",
    "unavailable",
    "upload_refusal",
    "write_precondition",
    "written",
]

Header: TypeAlias = tuple[bytes, bytes]

# -- public data types --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """Site-wide choices that shape every file response.

    ``cache_control`` defaults to ``no-cache``: keys are mutable URLs, so a
    cache may store the file but must revalidate it (cheap: ETag/304) before
    each reuse (RFC 9111 §5.2.2.4). ``active_content`` says how HTML, SVG, XML
    and JavaScript uploads are kept from running on the app's origin.
    """

    cache_control: str = defaults.CACHE_CONTROL
    active_content: Literal["attachment", "sandbox"] = defaults.ACTIVE_CONTENT
    max_ranges: int = 16
    allow: str = "GET, HEAD"

    def __post_init__(self) -> None:
        # Configuration mistakes surface at start-up, not as split headers later.
        _config_value("cache_control", self.cache_control)
        _config_value("allow", self.allow)
        if self.active_content not in ("attachment", "sandbox"):
            raise ValueError(f"active_content must be 'attachment' or 'sandbox', not {self.active_content!r}")
        if isinstance(self.max_ranges, bool) or not isinstance(self.max_ranges, int) or self.max_ranges < 1:
            raise ValueError(f"max_ranges must be a positive integer, not {self.max_ranges!r}")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The bytes ``[start, end)`` of the file: the adapter reads and sends them."""

    start: int
    end: int


Segment: TypeAlias = bytes | ByteRange
"""A body is a sequence of literal bytes and file ranges, sent in order."""


@dataclass(frozen=True, slots=True)
class Response:
    """The whole decision: the adapter sends exactly this.

    Header names are lower-case bytes, values latin-1 bytes (ASGI style). There
    is no Date header: the server adds it (RFC 9110 §6.6.1). ``body`` is empty
    for HEAD, 304, 412 and 416.
    """

    status: int
    headers: list[Header]
    body: tuple[Segment, ...] = ()


# -- constants ------------------------------------------------------------------------------

_NOSNIFF: Header = (b"x-content-type-options", b"nosniff")
_TEXT_PLAIN: Header = (b"content-type", b"text/plain; charset=utf-8")
_NO_STORE: Header = (b"cache-control", b"no-store")
_ZERO_LENGTH: Header = (b"content-length", b"0")
_GET_OR_HEAD = frozenset({"GET", "HEAD"})

# Types a browser would execute or render as a document with the app origin's
# authority. The brief's list plus the other JavaScript MIME type essences of
# the WHATWG MIME Sniffing standard (§4.6) and XSLT; any ``+xml`` suffix counts.
_ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "text/javascript",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/x-ecmascript",
        "text/ecmascript",
        "text/jscript",
        "text/livescript",
        "text/x-ecmascript",
        "text/x-javascript",
        "text/javascript1.0",
        "text/javascript1.1",
        "text/javascript1.2",
        "text/javascript1.3",
        "text/javascript1.4",
        "text/javascript1.5",
        "multipart/x-mixed-replace",  # each part is rendered as its own type (HTML included, in some browsers)
    }
)

# RFC 8187 §3.2.1 (was RFC 5987) attr-char: the only characters filename* may carry raw.
_ATTR_CHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]+")
_OWS = " \t"

# -- per-file preparation -----------------------------------------------------------------


class PreparedFile:
    """Per-file header work done ONCE when a cache entry is created, not per request.

    The strong ETag is the content hash, so every frontend computes the same
    one (RFC 9110 §8.8.3); Last-Modified is the version's validator second,
    :attr:`FileMeta.last_modified` (whole seconds, the granularity HTTP-date can
    express, §8.8.2). That second may still be ahead of the clock just after a
    burst of writes: :func:`respond` then states the response's own time instead.
    """

    __slots__ = (
        "_boundary",
        "_common",
        "_full_body",
        "content_type",
        "etag",
        "headers_200",
        "headers_304",
        "last_modified",
        "last_modified_epoch",
        "last_modified_header",
        "meta",
        "policy",
    )

    meta: FileMeta
    policy: HttpPolicy
    etag: bytes
    last_modified: datetime
    last_modified_header: bytes
    last_modified_epoch: int
    content_type: bytes
    headers_200: list[Header]
    headers_304: list[Header]
    _common: list[Header]
    _boundary: bytes
    _full_body: tuple[Segment, ...]

    def __init__(self, meta: FileMeta, policy: HttpPolicy) -> None:
        if not _HEX_DIGEST.fullmatch(meta.sha256):
            raise ValueError(f"sha256 of {meta.key!r} is not a hex digest: {meta.sha256!r}")
        if meta.size < 0:
            raise ValueError(f"size of {meta.key!r} is negative: {meta.size}")
        self.meta = meta
        self.policy = policy
        self.etag = b'"' + meta.sha256.encode("ascii") + b'"'
        self.last_modified = _whole_seconds(meta.last_modified)
        self.last_modified_epoch = int(self.last_modified.timestamp())
        self.last_modified_header = format_datetime(self.last_modified, usegmt=True).encode("ascii")
        content_type = _response_content_type(meta.content_type)
        self.content_type = content_type.encode("latin-1")
        cache_control: Header = (b"cache-control", policy.cache_control.encode("latin-1"))
        # Headers every 200 and 206 share, after Content-Type and Content-Length.
        common: list[Header] = [
            (b"etag", self.etag),
            (b"last-modified", self.last_modified_header),
            cache_control,
            (b"accept-ranges", b"bytes"),
            _NOSNIFF,
        ]
        if is_active_content(content_type):
            if policy.active_content == "sandbox":
                common.append((b"content-security-policy", b"sandbox"))
            else:
                common.append((b"content-disposition", _attachment(meta.key)))
        self._common = common
        self.headers_200 = [
            (b"content-type", self.content_type),
            (b"content-length", _ascii_int(meta.size)),
            *common,
        ]
        # RFC 9110 §15.4.5: of the fields a 200 would carry, a 304 repeats
        # Content-Location, Date, ETag, Vary, Cache-Control and Expires; here
        # that is ETag and Cache-Control (the server adds Date). nosniff is no
        # representation metadata, and every response carries it, this one too.
        self.headers_304 = [(b"etag", self.etag), cache_control, _NOSNIFF]
        self._boundary = b"servefiles-" + meta.sha256[:32].lower().encode("ascii")
        self._full_body = (ByteRange(0, meta.size),) if meta.size else ()

    def __repr__(self) -> str:
        return f"PreparedFile({self.meta.key!r}, etag={self.etag.decode('ascii')})"


# -- the decision ---------------------------------------------------------------------------


def respond(method: str, headers: Mapping[str, str], file: PreparedFile, now: float | None = None) -> Response:
    """Decide the response to a GET or HEAD of ``file``.

    Order: preconditions (RFC 9110 §13.2.2), then for GET only, Range guarded
    by If-Range (§14.2, §13.1.5). HEAD gets the GET 200's headers and no body
    (§9.3.2); Range is ignored for it (§14.2 defines Range for GET only).
    Header lists are fresh copies, so an adapter may append to them.

    ``now`` (seconds since the epoch) is a time no later than the Date the server
    will send with the response; None means the caller knows ``file``'s
    Last-Modified is not in the future. RFC 9110 §8.8.2.1: a Last-Modified later
    than Date MUST be replaced by the Date, so while :attr:`PreparedFile.last_modified`
    is after ``now`` the header states ``now``'s second. Preconditions are judged
    against the true validator all the same: a client sending that earlier date
    back gets the file, never a 304 for a version newer than the date.
    """
    if method not in _GET_OR_HEAD:
        return method_not_allowed(file.policy)
    status = evaluate_preconditions(method, headers, file)
    if status == 304:
        return Response(304, list(file.headers_304))
    if status == 412:
        return Response(412, [_ZERO_LENGTH, _NOSNIFF])
    if method == "HEAD":
        return Response(200, _stated(list(file.headers_200), file, now))
    range_value = headers.get("range")
    if range_value is None or not _if_range_holds(headers.get("if-range"), file):
        return Response(200, _stated(list(file.headers_200), file, now), file._full_body)
    ranges = parse_range(range_value, file.meta.size, file.policy.max_ranges)
    if ranges is None:
        return Response(200, _stated(list(file.headers_200), file, now), file._full_body)
    if ranges == "unsatisfiable":
        # RFC 9110 §15.5.17: a 416 names the current length in Content-Range.
        unsatisfied = b"bytes */" + _ascii_int(file.meta.size)
        return Response(416, [(b"content-range", unsatisfied), _ZERO_LENGTH, _NOSNIFF])
    response = _single_part(file, ranges[0]) if len(ranges) == 1 else _multipart(file, ranges)
    _stated(response.headers, file, now)  # in place
    return response


def _stated(headers: list[Header], file: PreparedFile, now: float | None) -> list[Header]:
    """``headers`` (a fresh list, changed in place) with a Last-Modified no later than ``now``.

    RFC 9110 §8.8.2.1: an origin server MUST NOT send a Last-Modified later than the
    message's Date, and replaces one that would be with the Date. The precomputed header
    stands as soon as the clock has reached the validator second: one comparison per hit.
    """
    if now is None or now >= file.last_modified_epoch:
        return headers
    stated = format_datetime(datetime.fromtimestamp(int(now // 1), UTC), usegmt=True).encode("ascii")
    for index, (name, _value) in enumerate(headers):
        if name == b"last-modified":
            headers[index] = (name, stated)
    return headers


def evaluate_preconditions(method: str, headers: Mapping[str, str], file: PreparedFile) -> int | None:
    """Return 304, 412, or None to proceed, in the order of RFC 9110 §13.2.2.

    1. If-Match false -> 412. 2. Else If-Unmodified-Since false -> 412.
    3. If-None-Match false -> 304 for GET/HEAD, else 412. 4. Else (no
    If-None-Match), GET/HEAD with If-Modified-Since false -> 304.
    If-Range (step 5) only chooses between 206 and 200: see :func:`respond`.
    """
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _if_match_holds(if_match, file.etag):
            return 412
    else:
        if_unmodified_since = headers.get("if-unmodified-since")
        if if_unmodified_since is not None:
            # §13.1.4: an invalid date is ignored; the condition is false when
            # the file changed after the given date.
            date = _parse_http_date(if_unmodified_since, file.last_modified.year)
            if date is not None and not _unmodified_since(file.meta, date):
                return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _if_none_match_matches(if_none_match, file.etag):
            return 304 if method in _GET_OR_HEAD else 412
    elif method in _GET_OR_HEAD:
        if_modified_since = headers.get("if-modified-since")
        if if_modified_since is not None:
            date = _parse_http_date(if_modified_since, file.last_modified.year)
            if date is not None and file.last_modified <= date:
                return 304
    return None


def parse_range(value: str, size: int, max_ranges: int) -> list[ByteRange] | Literal["unsatisfiable"] | None:
    """Parse a Range header (RFC 9110 §14.1.2) against a file of ``size`` bytes.

    Returns None when the header must be ignored (a 200 follows): unknown unit,
    any malformed range-spec, or more than ``max_ranges`` list elements (§14.2
    lets a server ignore Range; ignoring is never wrong); also when ``size`` is 0
    and a suffix-range with a non-zero length makes the set satisfiable (§14.1.1:
    the only satisfiable form on an empty representation) although it selects no
    byte that a Content-Range could name (the 200 with an empty body that Go's
    ServeContent and Werkzeug send). Returns
    ``"unsatisfiable"`` when no range-spec is satisfiable (§14.1.1; 416).
    Otherwise the satisfiable ranges, sorted, with overlapping and adjacent
    ones coalesced (§14.2 allows coalescing). Cost is linear in the header:
    the element count is checked (one C-level scan) before any per-range work,
    and digit strings longer than 19 are never converted to int.
    """
    unit, equals, range_set = value.strip(_OWS).partition("=")
    if not equals or not unit.isascii() or unit.lower() != "bytes":
        return None
    # Empty list elements (§5.6.1.2) count toward the limit: a header padded
    # with commas is as suspicious as one with many ranges.
    if range_set.count(",") >= max_ranges:
        return None
    satisfiable: list[ByteRange] = []
    any_spec = False
    empty_suffix = False  # a satisfiable suffix-range of an empty file: it selects no byte
    for element in range_set.split(","):
        element = element.strip(_OWS)
        if not element:
            continue
        match = _RANGE_SPEC.fullmatch(element)
        if match is None:
            return None
        any_spec = True
        first_digits, last_digits, suffix_digits = match.groups()
        if suffix_digits is not None:
            # suffix-range: the last N bytes; N = 0 is unsatisfiable (§14.1.1). On an
            # empty file N > 0 is satisfiable yet selects nothing: noted, not a range.
            length = _bounded_int(suffix_digits)
            if length > 0 and size > 0:
                satisfiable.append(ByteRange(max(0, size - length), size))
            elif length > 0:
                empty_suffix = True
            continue
        if last_digits and _numeric_key(last_digits) < _numeric_key(first_digits):
            return None  # §14.1.1: an int-range with last-pos < first-pos is invalid
        first = _bounded_int(first_digits)
        if first < size:
            # An int-range is satisfiable when it starts inside the file; its end is clamped.
            end = size if not last_digits else min(_bounded_int(last_digits) + 1, size)
            satisfiable.append(ByteRange(first, end))
    if not any_spec:
        return None  # 1#range-spec: at least one element
    if not satisfiable:
        # An empty file: "bytes=-1" is satisfiable but no Content-Range can describe it,
        # so Range is ignored (200, empty body); "bytes=0-" stays 416 "bytes */0".
        return None if empty_suffix else "unsatisfiable"
    return _coalesce(satisfiable)


# -- error responses -------------------------------------------------------------------------


_NOT_FOUND_BODY = b"Not Found"
_NOT_FOUND_HEADERS: tuple[Header, ...] = (
    _TEXT_PLAIN,
    (b"content-length", b"%d" % len(_NOT_FOUND_BODY)),
    _NO_STORE,
    _NOSNIFF,
)


def not_found() -> Response:
    """The one 404, identical for missing and rejected keys (no existence oracle).

    ``no-store``: an upload must be visible at once, so no cache may keep the
    absence. The adapter drops the body for HEAD (RFC 9110 §9.3.2).
    """
    return Response(404, list(_NOT_FOUND_HEADERS), (_NOT_FOUND_BODY,))


def method_not_allowed(policy: HttpPolicy) -> Response:
    """405 with the Allow header RFC 9110 §15.5.6 requires."""
    body = b"Method Not Allowed"
    return Response(
        405,
        [
            (b"allow", policy.allow.encode("latin-1")),
            _TEXT_PLAIN,
            (b"content-length", _ascii_int(len(body))),
            _NOSNIFF,
        ],
        (body,),
    )


def unavailable(retry_after: int) -> Response:
    """503 with Retry-After in seconds (RFC 9110 §15.6.4, §10.2.3).

    A negative delay is not a valid delay-seconds, so it is sent as 0.
    """
    body = b"Service Unavailable"
    return Response(
        503,
        [
            (b"retry-after", _ascii_int(max(0, int(retry_after)))),
            _TEXT_PLAIN,
            (b"content-length", _ascii_int(len(body))),
            _NO_STORE,
            _NOSNIFF,
        ],
        (body,),
    )


def head_too_large(status: Literal[414, 431], reason: str) -> Response:
    """414 URI Too Long (RFC 9110 §15.5.15) or 431 Request Header Fields Too Large (RFC 6585
    §5), before any work; the connection is closed after it (the head may have been hostile)."""
    body = reason.encode("ascii", "replace") + b"\n"
    return Response(
        status,
        [_TEXT_PLAIN, (b"content-length", _ascii_int(len(body))), _NO_STORE, _NOSNIFF, (b"connection", b"close")],
        (body,),
    )


# -- nginx in front: X-Accel-Redirect ---------------------------------------------------------

ACCEL_BLOCKERS = ("if-match", "if-unmodified-since", "range", "if-range")
"""Requests carrying these are answered by servefiles itself, never handed to nginx: nginx
would judge them against its own validators (mtime and size), not the content hash."""


def accel_redirect(file: PreparedFile, target: str, now: float | None = None) -> Response:
    """A 200 whose bytes nginx sends from ``target``, an internal location (``X-Accel-Redirect``).

    servefiles has already decided it is a 200 (preconditions evaluated); nginx keeps
    Content-Type, Content-Disposition, Cache-Control and Accept-Ranges from this
    response and sets ETag, Last-Modified, nosniff and the CSP from it as the generated
    internal location says. The body here is empty; nginx replaces it. ``now`` as for
    :func:`respond`: nginx stamps Date after this decision, so no Last-Modified it
    passes on is later than that Date.
    """
    headers = [header for header in file.headers_200 if header[0] != b"content-length"]
    _stated(headers, file, now)
    return Response(200, [*headers, _ZERO_LENGTH, (b"x-accel-redirect", target.encode("ascii"))])


# -- write requests: PUT, DELETE and the listing ---------------------------------------------


def json_response(status: int, payload: object, headers: Sequence[Header] = ()) -> Response:
    """A JSON reply that no cache keeps and no browser sniffs; non-ASCII is escaped,
    so a hostile key in a message can never become markup or split a header."""
    body = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return Response(
        status,
        [(b"content-type", b"application/json"), (b"content-length", _ascii_int(len(body))), _NO_STORE, _NOSNIFF,
         *headers],
        (body,),
    )  # fmt: skip


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


def upload_refusal(headers: Mapping[str, str], max_bytes: int) -> Response | None:
    """Whether a PUT must be refused before any of its body is read; None to go ahead.

    - Content-Range: a partial PUT is not supported, and RFC 9110 §14.5 says a
      server that does not support it MUST answer 400, lest a part be stored
      as the whole.
    - Content-Encoding other than identity: the stored bytes would be served
      without it, so refuse with 415 (§15.5.16) rather than serve gibberish.
    - Content-Length over the limit: 413 (§15.5.14) before any byte is read.
    """
    if "content-range" in headers:
        return json_error(400, "partial_put", "PUT with Content-Range is not supported: send the whole file")
    encoding = headers.get("content-encoding", "identity").strip(_OWS).lower()
    if encoding not in ("", "identity"):
        return json_error(415, "content_encoding", "Content-Encoding is not supported: send the file as is")
    try:
        declared = content_length(headers.get("content-length"))
    except ValueError:
        return json_error(400, "content_length", "Content-Length is not a number")
    if declared is not None and declared > max_bytes:
        return too_large(max_bytes)
    return None


def content_length(value: str | None) -> int | None:
    """A Content-Length field value as a number (None when absent); ValueError unless it is
    ASCII digits between optional whitespace. The one parser both adapters use, so the
    length checked against the limit is the length the body is read to."""
    if value is None:
        return None
    digits = value.strip(_OWS)
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"Content-Length is not a number: {value!r}")
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def too_large(max_bytes: int) -> Response:
    """413 for an upload over the limit (RFC 9110 §15.5.14); the body says the limit."""
    return json_error(413, "too_large", f"uploads are limited to {max_bytes} bytes")


def write_precondition(headers: Mapping[str, str]) -> Callable[[str | None], bool] | None:
    """If-Match and If-None-Match of a PUT or DELETE, as a test of the live content's sha256.

    RFC 9110 §13.1.1/§13.1.2: If-Match holds when a file exists and (``*``)
    or its strong ETag is listed; If-None-Match fails when a file exists and
    (``*``) or its ETag is listed, so ``If-None-Match: *`` creates only. Both
    false answers are 412 (§13.2.2, steps 1 and 3 for methods other than
    GET/HEAD). The store runs the test inside the write's transaction. None
    when the request is unconditional.
    """
    if_match, if_none_match = headers.get("if-match"), headers.get("if-none-match")
    if if_match is None and if_none_match is None:
        return None

    def holds(live_sha256: str | None) -> bool:
        etag = None if live_sha256 is None else b'"' + live_sha256.encode("ascii") + b'"'
        if if_match is not None and (etag is None or not _if_match_holds(if_match, etag)):
            return False
        return if_none_match is None or etag is None or not _if_none_match_matches(if_none_match, etag)

    return holds


def unmodified_since(headers: Mapping[str, str], live: FileMeta | None) -> bool:
    """If-Unmodified-Since of a PUT or DELETE against the live file (RFC 9110 §13.1.4, step 2
    of §13.2.2): False (412) when the file changed after the date. Ignored, so True, with
    If-Match, with no such field, with an invalid date, and when there is no live file (it
    has no modification date; the caller pins the write to "still absent")."""
    value = headers.get("if-unmodified-since")
    if value is None or "if-match" in headers or live is None:
        return True
    date = _parse_http_date(value, live.last_modified.year)
    return date is None or _unmodified_since(live, date)


def _unmodified_since(meta: FileMeta, date: datetime) -> bool:
    """Whether ``meta``'s version was already there at ``date`` (whole seconds): If-Unmodified-Since.

    Judged by the write's true second, not the validator second a burst of writes pushes
    ahead: a client sends back the Last-Modified it was given, which states the response's
    time while the validator second is still ahead (:func:`respond`); every such date is at
    or after the write's second, and no date stated for an older version is later than it.
    A date in that very second is ambiguous, as with every date validator (RFC 9110 §8.8.2.2);
    If-Match has no such blind spot. If-Modified-Since and If-Range keep to the validator
    second, so that ambiguity can only cost a full response, never a stale 304 or splice.
    """
    return min(_whole_seconds(meta.updated_at), _whole_seconds(meta.last_modified)) <= date


def written(meta: FileMeta, created: bool, url: str) -> Response:
    """201 Created (with Location, RFC 9110 §15.3.2) or 200 for a replaced file; both carry
    the new ETag (§9.3.4) and describe the stored file in JSON."""
    etag = b'"' + meta.sha256.encode("ascii") + b'"'
    headers: list[Header] = [(b"etag", etag)]
    if created:
        headers.append((b"location", url.encode("ascii")))
    return json_response(201 if created else 200, file_json(meta, url), headers)


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


# -- partial content ------------------------------------------------------------------------


def _single_part(file: PreparedFile, byte_range: ByteRange) -> Response:
    """206 with one Content-Range and the 200's other headers (RFC 9110 §15.3.7.1)."""
    headers = [
        (b"content-type", file.content_type),
        (b"content-length", _ascii_int(byte_range.end - byte_range.start)),
        (b"content-range", _content_range(byte_range, file.meta.size)),
        *file._common,
    ]
    return Response(206, headers, (byte_range,))


def _multipart(file: PreparedFile, ranges: list[ByteRange]) -> Response:
    """206 multipart/byteranges (RFC 9110 §14.6, §15.3.7.2).

    The boundary comes from the content hash: deterministic (every frontend
    sends the same bytes), and no file can contain its own boundary, since
    that would take content holding 128 bits of its own SHA-256.
    """
    delimiter = b"--" + file._boundary + b"\r\n"
    part_type = b"Content-Type: " + file.content_type + b"\r\nContent-Range: "
    body: list[Segment] = []
    length = 0
    for byte_range in ranges:
        head = delimiter + part_type + _content_range(byte_range, file.meta.size) + b"\r\n\r\n"
        body += (head, byte_range, b"\r\n")
        length += len(head) + (byte_range.end - byte_range.start) + 2
    closing = b"--" + file._boundary + b"--\r\n"
    body.append(closing)
    length += len(closing)
    headers = [
        (b"content-type", b"multipart/byteranges; boundary=" + file._boundary),
        (b"content-length", _ascii_int(length)),
        *file._common,
    ]
    return Response(206, headers, tuple(body))


def _content_range(byte_range: ByteRange, size: int) -> bytes:
    """``bytes first-last/complete-length`` (RFC 9110 §14.4), last inclusive."""
    return b"bytes %d-%d/%d" % (byte_range.start, byte_range.end - 1, size)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Sort and merge overlapping or adjacent ranges: no byte is sent twice."""
    ranges.sort(key=lambda r: r.start)
    merged = [ranges[0]]
    for byte_range in ranges[1:]:
        previous = merged[-1]
        if byte_range.start <= previous.end:
            if byte_range.end > previous.end:
                merged[-1] = ByteRange(previous.start, byte_range.end)
        else:
            merged.append(byte_range)
    return merged


# int-range "a-" / "a-b", or suffix-range "-n" (RFC 9110 §14.1.2). [0-9], never
# \d: Python's \d and int() accept other Unicode digits (and int() underscores).
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")
_MAX_DIGITS = 19
_HUGE: int = 10**_MAX_DIGITS
"""Stands for any number of more than 19 digits: larger than every real file."""


def _numeric_key(digits: str) -> tuple[int, str]:
    """Orders digit strings by value without converting them (they may be huge)."""
    stripped = digits.lstrip("0")
    return len(stripped), stripped


def _bounded_int(digits: str) -> int:
    """``int(digits)``, or :data:`_HUGE` when it is too long to matter or to parse cheaply."""
    stripped = digits.lstrip("0")
    if len(stripped) > _MAX_DIGITS:
        return _HUGE
    return int(stripped) if stripped else 0


# -- conditional requests -----------------------------------------------------------------

# entity-tag = [ W/ ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
# (RFC 9110 §8.8.3). A comma is a valid etagc, so lists are scanned, not split.
_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e\x80-\xff]*"')


def _entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """Parse ``#entity-tag`` into (weak, opaque-tag) pairs; None if malformed.

    Empty list elements are skipped (RFC 9110 §5.6.1.2). Linear time.
    """
    tags: list[tuple[bool, str]] = []
    position, length = 0, len(value)
    while True:
        while position < length and value[position] in _OWS:
            position += 1
        if position == length:
            return tags
        if value[position] == ",":
            position += 1
            continue
        match = _ENTITY_TAG.match(value, position)
        if match is None:
            return None
        weak = match.group(1) is not None
        tags.append((weak, match.group(0)[2:] if weak else match.group(0)))
        position = match.end()
        while position < length and value[position] in _OWS:
            position += 1
        if position < length:
            if value[position] != ",":
                return None
            position += 1


def _if_match_holds(value: str, etag: bytes) -> bool:
    """If-Match (RFC 9110 §13.1.1): "*" or any tag equal by strong comparison.

    A malformed field cannot vouch for the current representation: false.
    """
    if value.strip(_OWS) == "*":
        return True  # the file exists
    tags = _entity_tags(value)
    if tags is None:
        return False
    current = etag.decode("ascii")
    return any(not weak and tag == current for weak, tag in tags)


def _if_none_match_matches(value: str, etag: bytes) -> bool:
    """If-None-Match (RFC 9110 §13.1.2): "*" or any tag equal by weak comparison.

    A malformed field matches nothing: the full response is the safe answer.
    """
    if value.strip(_OWS) == "*":
        return True
    tags = _entity_tags(value)
    if tags is None:
        return False
    current = etag.decode("ascii")
    return any(tag == current for _weak, tag in tags)


def _if_range_holds(value: str | None, file: PreparedFile) -> bool:
    """If-Range (RFC 9110 §13.1.5): true when absent, else an exact validator match.

    An entity-tag matches only by strong comparison (a weak tag never does);
    an HTTP-date only when exactly equal to Last-Modified; anything else is false.
    """
    if value is None:
        return True
    value = value.strip(_OWS)
    if value[:1] == '"' or value[:3] == 'W/"':
        match = _ENTITY_TAG.fullmatch(value)
        return match is not None and match.group(1) is None and value == file.etag.decode("ascii")
    date = _parse_http_date(value, file.last_modified.year)
    return date is not None and date == file.last_modified


# -- HTTP-date (RFC 9110 §5.6.7) ----------------------------------------------------------

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_MONTH = "(" + "|".join(_MONTH_NAMES) + ")"
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(
    rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_DATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")


def _whole_seconds(moment: datetime) -> datetime:
    """A timestamp as Last-Modified states it: UTC (a naive one is taken as UTC), whole
    seconds (HTTP-date has no fraction)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _parse_http_date(value: str, reference_year: int) -> datetime | None:
    """Parse an HTTP-date in any of its three forms; None for anything else.

    HTTP-date is case-sensitive and exact (§5.6.7), so this is a strict match,
    not ``email.utils``' lenient one, and it never raises. A two-digit
    rfc850 year more than 50 years after ``reference_year`` (the file's
    Last-Modified year: this module has no clock) means the previous century.
    A leap second (:60) reads as :59.
    """
    value = value.strip(_OWS)
    try:
        if match := _IMF_FIXDATE.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
            full_year = int(year)
        elif match := _RFC850_DATE.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
            full_year = reference_year - reference_year % 100 + int(year)
            if full_year > reference_year + 50:
                full_year -= 100
        elif match := _ASCTIME_DATE.fullmatch(value):
            month, day, hour, minute, second, year = match.groups()
            full_year = int(year)
        else:
            return None
        return datetime(full_year, _MONTHS[month], int(day), int(hour), int(minute), min(int(second), 59), tzinfo=UTC)
    except (ValueError, OverflowError):
        return None  # 31 Feb, hour 25, year 0000 ...


# -- header values --------------------------------------------------------------------------


def _ascii_int(number: int) -> bytes:
    return str(number).encode("ascii")


def _config_value(name: str, value: str) -> None:
    """Refuse a configured header value that could split or corrupt a header."""
    if not isinstance(value, str) or any(not ("\x20" <= c <= "\x7e" or c == "\t") for c in value):
        raise ValueError(f"{name} must be printable ASCII, not {value!r}")


def _response_content_type(stored: str) -> str:
    """The Content-Type to send for a stored type.

    Types are validated at upload, but a row written before that check (or by
    hand) must still not split a header or pick a charset: anything that fails
    the check is sent as application/octet-stream, which no browser renders.
    Text without a charset gets UTF-8 (RFC 9110 §8.3.2: no default charset).
    """
    try:
        content_type = check_content_type(stored)
    except InvalidContentType:
        return DEFAULT_CONTENT_TYPE
    essence, _, parameters = content_type.partition(";")
    if essence.strip(_OWS).lower().startswith("text/"):
        names = (parameter.partition("=")[0].strip(_OWS).lower() for parameter in parameters.split(";"))
        if "charset" not in names:
            content_type = content_type.rstrip(" \t;") + "; charset=utf-8"
    return content_type


def is_active_content(content_type: str) -> bool:
    """Whether a browser would run or render this type as a document (script, markup)."""
    essence = content_type.partition(";")[0].strip(_OWS).lower()
    return essence in _ACTIVE_TYPES or essence.endswith("+xml")


def _attachment(key: str) -> bytes:
    """``Content-Disposition: attachment`` naming the key's last segment (RFC 6266).

    ``filename`` is a quoted-string ASCII fallback in which non-ASCII, '"',
    '\\' and control characters become '_' (so no CR/LF can ever appear);
    ``filename*`` carries the exact name, UTF-8 percent-encoded (RFC 8187).
    """
    name = key.rsplit("/", 1)[-1]
    fallback = "".join("_" if not ("\x20" <= char <= "\x7e") or char in '"\\' else char for char in name)
    encoded = "".join(chr(byte) if byte in _ATTR_CHAR else f"%{byte:02X}" for byte in name.encode("utf-8", "replace"))
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}".encode("ascii")
