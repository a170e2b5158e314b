"""The data of an HTTP decision: what the adapters are handed and what shapes it.

:class:`Response` is the whole decision (status, headers, body segments); :class:`HttpPolicy`
holds the site-wide choices that shape every file response. The small header constants
here are shared by the read decision and the ready-made replies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from .. import defaults

__all__ = ["ByteRange", "FieldLines", "Header", "HttpPolicy", "Response", "Segment", "field_lines"]

Header: TypeAlias = tuple[bytes, bytes]
"""A header as ASGI carries it: lower-case name bytes, latin-1 value bytes."""


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


# -- shared header pieces ---------------------------------------------------------------------

NOSNIFF: Header = (b"x-content-type-options", b"nosniff")
TEXT_PLAIN: Header = (b"content-type", b"text/plain; charset=utf-8")
NO_STORE: Header = (b"cache-control", b"no-store")
ZERO_LENGTH: Header = (b"content-length", b"0")
OWS = " \t"
"""Optional whitespace around field values and list elements (RFC 9110 §5.6.3)."""

MAX_DIGITS = 19
HUGE: int = 10**MAX_DIGITS
"""Stands for any number of more than 19 digits: larger than every real file."""


_NOT_TOKEN = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
"""A byte no field name may hold (RFC 9110 §5.1: a name is a token, §5.6.2)."""
_NOT_FIELD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
"""A byte no field value may hold (RFC 9110 §5.5: no control character but HTAB)."""


def field_lines(headers: Iterable[Header]) -> bytes | None:
    """``headers`` as HTTP/1.1 field lines (RFC 9112 §5: ``name: value`` CRLF each; names
    lower-cased, as uvicorn writes them), or None when a name is not a token or a value holds a
    control character (such a header must never reach the wire as it is: the server refuses it)."""
    lines: list[bytes] = []
    for name, value in headers:
        if not name or _NOT_TOKEN.search(name) or _NOT_FIELD_VALUE.search(value):
            return None
        lines += (name.lower(), b": ", value, b"\r\n")
    return b"".join(lines)


@dataclass(frozen=True, slots=True)
class FieldLines:
    """Headers rendered once as field lines (:func:`field_lines`), kept with the headers they came
    from: :meth:`of` gives them for a response that still carries exactly those headers."""

    headers: tuple[Header, ...]
    lines: bytes

    @classmethod
    def render(cls, headers: Sequence[Header]) -> FieldLines | None:
        """None for headers that cannot be written as they are (see :func:`field_lines`)."""
        lines = field_lines(headers)
        return None if lines is None else cls(tuple(headers), lines)

    def of(self, response: Response) -> bytes | None:
        return self.lines if tuple(response.headers) == self.headers else None


def ascii_int(number: int) -> bytes:
    """A number as a header value states it."""
    return str(number).encode("ascii")


def _config_value(name: str, value: str) -> None:
    """Refuse a configured header value that could split or corrupt a header."""
    if not isinstance(value, str) or any(not ("\x20" <= c <= "\x7e" or c == "\t") for c in value):
        raise ValueError(f"{name} must be printable ASCII, not {value!r}")
