"""The GET/HEAD decision: (method, request headers, prepared file) -> :class:`Response`.

Everything here is pure and synchronous: no sockets, no files, no clock, no
randomness. The ASGI and WSGI adapters carry a :class:`Response` out; this
module alone decides status, headers and which byte ranges form the body, so
every rule of RFC 9110 it implements is a unit test away.

Per-file header work happens once, in :class:`PreparedFile` (the whitenoise
``StaticFile`` idea), when a cache entry is created; :func:`respond` on the hit
path only evaluates preconditions and ranges.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from ..content_types import DEFAULT_CONTENT_TYPE, check_content_type, is_active_content
from ..errors import InvalidContentType
from ..store.types import FileMeta
from .dates import http_date, parse_http_date, whole_seconds
from .model import NOSNIFF, OWS, ByteRange, Header, HttpPolicy, Response, Segment, ascii_int, field_lines
from .ranges import content_range, parse_range
from .replies import method_not_allowed, precondition_failed, range_not_satisfiable
from .validators import if_match_holds, if_none_match_matches, if_range_holds, strong_etag, unmodified_at

__all__ = ["CACHE_CONTROL_AT", "PreparedFile", "evaluate_preconditions", "respond", "stated"]

_GET_OR_HEAD = frozenset({"GET", "HEAD"})
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]+")

# RFC 8187 §3.2.1 (was RFC 5987) attr-char: the only characters filename* may carry raw.
_ATTR_CHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")

# -- per-file preparation -----------------------------------------------------------------


CACHE_CONTROL_AT = 4
"""Where Cache-Control stands in a 200's headers (:attr:`PreparedFile.headers_200`: Content-Type,
Content-Length, ETag, Last-Modified, Cache-Control, …), so a private grant restates it without a search."""


class PreparedFile:
    """Per-file header work done ONCE when a cache entry is created, not per request.

    The strong ETag is the content hash, so every frontend computes the same
    one (RFC 9110 §8.8.3); Last-Modified is the version's validator second,
    :attr:`FileMeta.last_modified` (whole seconds, the granularity HTTP-date can
    express, §8.8.2). That second may still be ahead of the clock just after a
    burst of writes: :func:`respond` then states the response's own time instead.
    """

    __slots__ = (
        "_full_body",
        "_lines_200",
        "_lines_304",
        "_native_200",
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
    _full_body: tuple[Segment, ...]

    def __init__(self, meta: FileMeta, policy: HttpPolicy) -> None:
        if not _HEX_DIGEST.fullmatch(meta.sha256):
            raise ValueError(f"sha256 of {meta.key!r} is not a hex digest: {meta.sha256!r}")
        if meta.size < 0:
            raise ValueError(f"size of {meta.key!r} is negative: {meta.size}")
        self.meta = meta
        self.policy = policy
        self.etag = strong_etag(meta.sha256)
        self.last_modified = whole_seconds(meta.last_modified)
        self.last_modified_epoch = int(self.last_modified.timestamp())
        self.last_modified_header = http_date(self.last_modified)
        content_type = _response_content_type(meta.content_type)
        self.content_type = content_type.encode("latin-1")
        # A few hundred bytes each: up to PREPARED_CACHE_ENTRIES of them are kept (service.py), so
        # what every file shares (Cache-Control, Accept-Ranges) is one object, not a copy per file.
        cache_control = _cache_control(policy.cache_control)
        # Headers every 200 and 206 share, after Content-Type and Content-Length.
        common: list[Header] = [(b"etag", self.etag), (b"last-modified", self.last_modified_header), cache_control,
                                ACCEPT_RANGES, NOSNIFF]  # fmt: skip
        if is_active_content(content_type):
            if policy.active_content == "sandbox":
                common.append((b"content-security-policy", b"sandbox"))
            else:
                common.append((b"content-disposition", _attachment(meta.key)))
        self.headers_200 = [
            (b"content-type", self.content_type),
            (b"content-length", ascii_int(meta.size)),
            *common,
        ]
        assert self.headers_200[CACHE_CONTROL_AT] is cache_control
        # RFC 9110 §15.4.5: of the fields a 200 would carry, a 304 repeats
        # Content-Location, Date, ETag, Vary, Cache-Control and Expires; here
        # that is ETag and Cache-Control (the server adds Date). nosniff is no
        # representation metadata, and every response carries it, this one too.
        self.headers_304 = [(b"etag", self.etag), cache_control, NOSNIFF]
        self._full_body = (ByteRange(0, meta.size),) if meta.size else ()
        self._native_200: tuple[tuple[str, str], ...] | None = None
        # Rendered on first use (a WSGI server never asks); b"": a header that cannot be written.
        self._lines_200: bytes | None = None
        self._lines_304: bytes | None = None

    def field_lines(self, response: Response) -> bytes | None:
        """``response``'s headers as HTTP/1.1 field lines (:func:`~.model.field_lines`), rendered
        once per file: when they are this file's 200 or 304 headers as :func:`respond` gave them
        (None otherwise: a range, a private grant's Cache-Control, a Last-Modified held to the
        clock, any header an adapter added). An HTTP/1.1 server's head needs no other work then."""
        status, headers = response.status, response.headers
        if status == 200 and headers == self.headers_200:
            lines = self._lines_200
            if lines is None:
                lines = self._lines_200 = field_lines(headers) or b""
        elif status == 304 and headers == self.headers_304:
            lines = self._lines_304
            if lines is None:
                lines = self._lines_304 = field_lines(headers) or b""
        else:
            return None
        return lines or None

    def native_headers_200(self) -> list[tuple[str, str]]:
        """:attr:`headers_200` as PEP 3333's native strings (latin-1), a fresh list: decoded the
        first time a WSGI server asks, not per request (nor for an ASGI server, which never does)."""
        native = self._native_200
        if native is None:
            native = self._native_200 = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers_200)
        return list(native)

    @property
    def common_headers(self) -> list[Header]:
        """The headers every 200 and 206 share, after Content-Type and Content-Length."""
        return self.headers_200[2:]

    @property
    def boundary(self) -> bytes:
        """The multipart/byteranges boundary: from the content hash (see :func:`_multipart`)."""
        return b"servefiles-" + self.meta.sha256[:32].lower().encode("ascii")

    def __repr__(self) -> str:
        return f"PreparedFile({self.meta.key!r}, etag={self.etag.decode('ascii')})"


ACCEPT_RANGES: Header = (b"accept-ranges", b"bytes")


@functools.lru_cache(maxsize=16)
def _cache_control(value: str) -> Header:
    """The Cache-Control header of a policy's value, one object for every file that shares it."""
    return (b"cache-control", value.encode("latin-1"))


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
    if not headers and method == "GET" and (now is None or now >= file.last_modified_epoch):
        # The hit path's most common request: nothing to evaluate, what every step below concludes.
        return Response(200, list(file.headers_200), file._full_body)
    if method not in _GET_OR_HEAD:
        return method_not_allowed(file.policy)
    status = evaluate_preconditions(method, headers, file)
    if status == 304:
        return Response(304, list(file.headers_304))
    if status == 412:
        return precondition_failed()
    if method == "HEAD":
        return Response(200, stated(list(file.headers_200), file, now))
    range_value = headers.get("range")
    if range_value is None or not if_range_holds(headers.get("if-range"), file.etag, file.last_modified):
        return Response(200, stated(list(file.headers_200), file, now), file._full_body)
    ranges = parse_range(range_value, file.meta.size, file.policy.max_ranges)
    if ranges is None:
        return Response(200, stated(list(file.headers_200), file, now), file._full_body)
    if ranges == "unsatisfiable":
        return range_not_satisfiable(file.meta.size)
    response = _single_part(file, ranges[0]) if len(ranges) == 1 else _multipart(file, ranges)
    stated(response.headers, file, now)  # in place
    return response


def stated(headers: list[Header], file: PreparedFile, now: float | None) -> list[Header]:
    """``headers`` (a fresh list, changed in place) with a Last-Modified no later than ``now``.

    RFC 9110 §8.8.2.1: an origin server MUST NOT send a Last-Modified later than the
    message's Date, and replaces one that would be with the Date. The precomputed header
    stands as soon as the clock has reached the validator second: one comparison per hit.
    """
    if now is None or now >= file.last_modified_epoch:
        return headers
    stated_date = http_date(datetime.fromtimestamp(int(now // 1), UTC))
    for index, (name, _value) in enumerate(headers):
        if name == b"last-modified":
            headers[index] = (name, stated_date)
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
        if not if_match_holds(if_match, file.etag):
            return 412
    else:
        if_unmodified_since = headers.get("if-unmodified-since")
        if if_unmodified_since is not None:
            # §13.1.4: an invalid date is ignored; the condition is false when
            # the file changed after the given date.
            date = parse_http_date(if_unmodified_since, file.last_modified.year)
            if date is not None and not unmodified_at(file.meta, date):
                return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if if_none_match_matches(if_none_match, file.etag):
            return 304 if method in _GET_OR_HEAD else 412
    elif method in _GET_OR_HEAD:
        if_modified_since = headers.get("if-modified-since")
        if if_modified_since is not None:
            date = parse_http_date(if_modified_since, file.last_modified.year)
            if date is not None and file.last_modified <= date:
                return 304
    return None


# -- partial content ------------------------------------------------------------------------


def _single_part(file: PreparedFile, byte_range: ByteRange) -> Response:
    """206 with one Content-Range and the 200's other headers (RFC 9110 §15.3.7.1)."""
    headers = [
        (b"content-type", file.content_type),
        (b"content-length", ascii_int(byte_range.end - byte_range.start)),
        (b"content-range", content_range(byte_range, file.meta.size)),
        *file.common_headers,
    ]
    return Response(206, headers, (byte_range,))


def _multipart(file: PreparedFile, ranges: list[ByteRange]) -> Response:
    """206 multipart/byteranges (RFC 9110 §14.6, §15.3.7.2).

    The boundary comes from the content hash: deterministic (every frontend
    sends the same bytes), and no file can contain its own boundary, since
    that would take content holding 128 bits of its own SHA-256.
    """
    delimiter = b"--" + file.boundary + b"\r\n"
    part_type = b"Content-Type: " + file.content_type + b"\r\nContent-Range: "
    body: list[Segment] = []
    length = 0
    for byte_range in ranges:
        head = delimiter + part_type + content_range(byte_range, file.meta.size) + b"\r\n\r\n"
        body += (head, byte_range, b"\r\n")
        length += len(head) + (byte_range.end - byte_range.start) + 2
    closing = b"--" + file.boundary + b"--\r\n"
    body.append(closing)
    length += len(closing)
    headers = [
        (b"content-type", b"multipart/byteranges; boundary=" + file.boundary),
        (b"content-length", ascii_int(length)),
        *file.common_headers,
    ]
    return Response(206, headers, tuple(body))


# -- header values --------------------------------------------------------------------------


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
    if essence.strip(OWS).lower().startswith("text/"):
        names = (parameter.partition("=")[0].strip(OWS).lower() for parameter in parameters.split(";"))
        if "charset" not in names:
            content_type = content_type.rstrip(" \t;") + "; charset=utf-8"
    return content_type


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
