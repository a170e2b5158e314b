"""Content-Type guessing and validation for stored files.

The table is Python's built-in one plus a few modern types, deliberately *not*
the host's ``/etc/mime.types``: every frontend and every machine must guess the
same type for the same key, or the same file would get different headers.
"""

from __future__ import annotations

import mimetypes
import re

from .errors import InvalidContentType

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_CONTENT_TYPE_LENGTH = 255

_TABLE = mimetypes.MimeTypes(filenames=())
for _type, _extension in (
    ("image/avif", ".avif"),
    ("image/webp", ".webp"),
    ("font/woff", ".woff"),
    ("font/woff2", ".woff2"),
    ("text/javascript", ".js"),  # RFC 9239; Python 3.11 says application/javascript, 3.12+ agrees
    ("text/javascript", ".mjs"),
    ("application/wasm", ".wasm"),
    ("text/markdown", ".md"),
    ("video/webm", ".webm"),
    ("audio/ogg", ".ogg"),
    ("audio/flac", ".flac"),
):
    _TABLE.add_type(_type, _extension)

# A file compressed as a whole (``x.tar.gz``) is stored as the compressed bytes,
# so its type is the compression format's, not the inner file's.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*[\x20-\x7e]*)?")


def guess_content_type(key: str) -> str:
    """The type for ``key``'s extension, or ``application/octet-stream``."""
    # The leading "/" keeps a key such as "data:text/html,x" from being parsed as a
    # data: URL (whose type mimetypes would return): only the extension counts.
    guessed, encoding = _TABLE.guess_type("/" + key, strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    return guessed or DEFAULT_CONTENT_TYPE


def content_type_table() -> dict[str, list[str]]:
    """Every type this table can guess -> its extensions (without the dot), in the order
    :func:`guess_content_type` would pick them: what the nginx ``types`` block is made of."""
    extensions = {*_TABLE.types_map[True], *_TABLE.types_map[False], *_TABLE.encodings_map, *_TABLE.suffix_map}
    table: dict[str, list[str]] = {}
    for extension in sorted(extensions):
        name = extension.lstrip(".")
        if not (name and name.isascii() and all(c.isalnum() or c in "-_+" for c in name)):
            continue
        # nginx looks extensions up lower-cased: keep only those guessed alike in any case.
        guessed = {guess_content_type("x." + variant) for variant in (name, name.lower(), name.upper())}
        if len(guessed) == 1 and name.lower() not in table.get(next(iter(guessed)), []):
            table.setdefault(guessed.pop(), []).append(name.lower())
    return table


def check_content_type(value: str) -> str:
    """Return ``value`` when it is safe to send as a header, else raise.

    Refusing CR, LF and other controls here means no stored type can ever split
    a response header.
    """
    if len(value) > MAX_CONTENT_TYPE_LENGTH or not _CONTENT_TYPE.fullmatch(value):
        raise InvalidContentType(f"not a valid content type: {value!r}")
    return value
