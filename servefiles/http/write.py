"""Write decisions for PUT and DELETE: what refuses an upload before its body is read, the
length it announces, and its preconditions against the live file (RFC 9110 §13.2.2).

Refusals are raised as the error types of :mod:`servefiles.errors`; their replies are
:func:`servefiles.http.replies.for_error`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..errors import InvalidRequest, UnsupportedUpload, UploadTooLarge
from ..store.types import FileMeta
from .dates import parse_http_date
from .model import HUGE, MAX_DIGITS, OWS
from .validators import if_match_holds, if_none_match_matches, strong_etag, unmodified_at

__all__ = ["check_upload", "content_length", "unmodified_since", "write_precondition"]


def check_upload(headers: Mapping[str, str], max_bytes: int) -> None:
    """Refuse a PUT that must not be read at all; return to go ahead.

    - Content-Range: a partial PUT is not supported, and RFC 9110 §14.5 says a
      server that does not support it MUST answer 400, lest a part be stored
      as the whole: :class:`InvalidRequest` ``partial_put``.
    - Content-Encoding other than identity: the stored bytes would be served
      without it, so :class:`UnsupportedUpload` (415, §15.5.16) rather than serve gibberish.
    - Content-Length not a number: :class:`InvalidRequest` ``content_length``; over
      ``max_bytes``: :class:`UploadTooLarge` (413, §15.5.14) before any byte is read.
    """
    if "content-range" in headers:
        raise InvalidRequest("partial_put", "PUT with Content-Range is not supported: send the whole file")
    encoding = headers.get("content-encoding", "identity").strip(OWS).lower()
    if encoding not in ("", "identity"):
        raise UnsupportedUpload("content_encoding", "Content-Encoding is not supported: send the file as is")
    try:
        declared = content_length(headers.get("content-length"))
    except ValueError:
        raise InvalidRequest("content_length", "Content-Length is not a number") from None
    if declared is not None and declared > max_bytes:
        raise UploadTooLarge(max_bytes)


def content_length(value: str | None) -> int | None:
    """A Content-Length field value as a number (None when absent); ValueError unless it is
    ASCII digits between optional whitespace. The one parser both adapters use, so the
    length checked against the limit is the length the body is read to."""
    if value is None:
        return None
    digits = value.strip(OWS)
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"Content-Length is not a number: {value!r}")
    return int(digits) if len(digits) <= MAX_DIGITS else HUGE


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
        etag = None if live_sha256 is None else strong_etag(live_sha256)
        if if_match is not None and (etag is None or not if_match_holds(if_match, etag)):
            return False
        return if_none_match is None or etag is None or not if_none_match_matches(if_none_match, etag)

    return holds


def unmodified_since(headers: Mapping[str, str], live: FileMeta | None) -> bool:
    """If-Unmodified-Since of a PUT or DELETE against the live file (RFC 9110 §13.1.4, step 2
    of §13.2.2): False (412) when the file changed after the date. Ignored, so True, with
    If-Match, with no such field, with an invalid date, and when there is no live file (it
    has no modification date; the caller pins the write to "still absent")."""
    value = headers.get("if-unmodified-since")
    if value is None or "if-match" in headers or live is None:
        return True
    date = parse_http_date(value, live.last_modified.year)
    return date is None or unmodified_at(live, date)
