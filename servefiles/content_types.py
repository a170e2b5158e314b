"""Content-Type guessing and validation for stored files.

servefiles owns its table (:data:`CONTENT_TYPES`), written out here and identical on every
Python and every machine: neither the running Python's ``mimetypes`` table (which changes
between 3.11, 3.12 and 3.13) nor the host's ``/etc/mime.types`` is consulted, so every
frontend guesses the same type for the same key and ``nginx-config`` prints the same
``types`` block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from .errors import InvalidContentType

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_CONTENT_TYPE_LENGTH = 255

_OOXML = "application/vnd.openxmlformats-officedocument."
_OPENDOCUMENT = "application/vnd.oasis.opendocument."

CONTENT_TYPES: Mapping[str, str] = MappingProxyType({
    # Images.
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",  # RFC 9649
    "avif": "image/avif",
    "heic": "image/heic",
    "heif": "image/heif",
    "jxl": "image/jxl",
    "svg": "image/svg+xml",
    "ico": "image/vnd.microsoft.icon",  # the registered name, not the common image/x-icon
    "bmp": "image/bmp",
    "tif": "image/tiff",  # RFC 3302
    "tiff": "image/tiff",
    # Video.
    "mp4": "video/mp4",  # RFC 4337
    "m4v": "video/mp4",  # an MPEG-4 file: the registered type, not Apple's video/x-m4v
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mkv": "video/matroska",  # RFC 9559, not the older video/x-matroska
    "ogv": "video/ogg",  # RFC 5334
    # Audio.
    "mp3": "audio/mpeg",  # RFC 3003
    "m4a": "audio/mp4",  # RFC 4337
    "aac": "audio/aac",
    "ogg": "audio/ogg",  # RFC 5334 §10: .ogg is audio/ogg
    "oga": "audio/ogg",
    "opus": "audio/ogg",  # RFC 7845 §9: an Ogg Opus file; audio/opus is the RTP payload (RFC 7587)
    "flac": "audio/flac",  # RFC 9639
    # IANA has only audio/vnd.wave (RFC 2361), which browsers do not recognise; audio/wav
    # is the name the WHATWG MIME Sniffing standard and every browser use.
    "wav": "audio/wav",
    "weba": "audio/webm",
    # Documents.
    "pdf": "application/pdf",  # RFC 8118
    "txt": "text/plain",
    "csv": "text/csv",  # RFC 7111
    "md": "text/markdown",  # RFC 7763
    "json": "application/json",  # RFC 8259
    "xml": "application/xml",  # RFC 7303 §4.1 prefers it to text/xml
    "xhtml": "application/xhtml+xml",
    "html": "text/html",
    "htm": "text/html",
    "rtf": "application/rtf",
    "doc": "application/msword",
    "docx": _OOXML + "wordprocessingml.document",
    "xls": "application/vnd.ms-excel",
    "xlsx": _OOXML + "spreadsheetml.sheet",
    "ppt": "application/vnd.ms-powerpoint",
    "pptx": _OOXML + "presentationml.presentation",
    "odt": _OPENDOCUMENT + "text",
    "ods": _OPENDOCUMENT + "spreadsheet",
    "odp": _OPENDOCUMENT + "presentation",
    "epub": "application/epub+zip",
    # Fonts (RFC 8081).
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
    # Archives. A file compressed as a whole (x.tar.gz) is stored as the compressed bytes,
    # so its type is the compression format's, not the inner file's. tar, 7z, bzip2, xz and
    # brotli have no registered type: these are the names every tool uses.
    "zip": "application/zip",
    "gz": "application/gzip",  # RFC 6713
    "tgz": "application/gzip",
    "tar": "application/x-tar",
    "7z": "application/x-7z-compressed",
    "zst": "application/zstd",  # RFC 8878
    "bz2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "rar": "application/vnd.rar",
    # Web.
    "wasm": "application/wasm",
    "js": "text/javascript",  # RFC 9239, not application/javascript
    "mjs": "text/javascript",
    "css": "text/css",  # RFC 2318
    "ics": "text/calendar",  # RFC 5545
    "vcf": "text/vcard",  # RFC 6350, not text/x-vcard
})  # fmt: skip
"""Extension (lower-case ASCII, no dot) -> Content-Type: the whole table. IANA-registered
types throughout, except where a comment names the choice made."""

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*[\x20-\x7e]*)?")


def key_extension(key: str) -> str | None:
    """``key``'s extension as nginx finds it, or None: the text after the last dot of the
    last ``/`` segment (a leading dot starts no extension: ``.png`` is a dot file),
    lower-cased in ASCII only (a Unicode lower() would turn a Kelvin sign into "k")."""
    name = key.rpartition("/")[2]
    dot = name.rfind(".")
    return name[dot + 1 :].translate(_ASCII_LOWER) if dot > 0 else None


def guess_content_type(key: str) -> str:
    """The type :data:`CONTENT_TYPES` gives ``key``'s extension, or ``application/octet-stream``.

    Only the extension counts: a key such as ``data:text/html,x`` is no data: URL here.
    """
    extension = key_extension(key)
    return DEFAULT_CONTENT_TYPE if extension is None else CONTENT_TYPES.get(extension, DEFAULT_CONTENT_TYPE)


def content_type_table() -> dict[str, list[str]]:
    """Every type :data:`CONTENT_TYPES` gives -> its extensions (without the dot), in table
    order: what the nginx ``types`` block is made of."""
    table: dict[str, list[str]] = {}
    for extension, content_type in CONTENT_TYPES.items():
        table.setdefault(content_type, []).append(extension)
    return table


def check_content_type(value: str) -> str:
    """Return ``value`` when it is safe to send as a header, else raise.

    Refusing CR, LF and other controls here means no stored type can ever split
    a response header.
    """
    if len(value) > MAX_CONTENT_TYPE_LENGTH or not _CONTENT_TYPE.fullmatch(value):
        raise InvalidContentType(f"not a valid content type: {value!r}")
    return value


# Types a browser would execute or render as a document with the app origin's
# authority. The brief's list plus the other JavaScript MIME type essences of
# the WHATWG MIME Sniffing standard (§4.6) and XSLT; any ``+xml`` suffix counts.
ACTIVE_TYPES: frozenset[str] = frozenset(
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


def is_active_content(content_type: str) -> bool:
    """Whether a browser would run or render this type as a document (script, markup):
    such an upload is never rendered inline on the app's origin (an attachment, or a
    sandboxing CSP, as the HTTP policy says)."""
    essence = content_type.partition(";")[0].strip(" \t").lower()
    return essence in ACTIVE_TYPES or essence.endswith("+xml")
