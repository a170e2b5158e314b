"""The key gate: the one function that turns an upload name or a URL path into a key.

Every key that reaches the store, a cache or (later) a filesystem path has been
through :func:`canonical_key`. Nothing downstream builds a path from a URL.
"""

from __future__ import annotations

import hashlib
import unicodedata
from functools import lru_cache

from .errors import InvalidKey

MAX_KEY_BYTES = 1024
"""Upper bound of a key's UTF-8 length: fits any database index and URL."""

MAX_SEGMENT_BYTES = 255
"""Upper bound of one ``/``-separated segment: the NAME_MAX of common filesystems."""

# Unicode categories refused anywhere in a key: control characters (C0, DEL, C1),
# lone surrogates, and the line/paragraph separators that some clients treat as
# newlines (header injection through a Content-Disposition filename).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_REPLACEMENT_CHARACTER = "\ufffd"


KNOWN_KEYS = 4096
"""Valid keys remembered by :func:`canonical_key`, each of at most :data:`KNOWN_KEY_CHARS`
characters: a hit then costs one dict lookup instead of a Unicode check of every character.
At most about 7 MiB however hostile the keys (4,096 x 200 characters x 4 bytes, the raw text
and its result); refused keys are never kept."""
KNOWN_KEY_CHARS = 200


def canonical_key(raw: str | bytes) -> str:
    """Return the canonical form of ``raw``, or raise :class:`InvalidKey`.

    Rules: relative, ``/``-separated, no empty, ``.`` or ``..`` segment, no
    backslash, NUL or control character, valid UTF-8, NFC-normalised, at most
    :data:`MAX_KEY_BYTES` bytes and :data:`MAX_SEGMENT_BYTES` per segment.
    U+FFFD is refused too: ASGI servers decode invalid UTF-8 in a URL into it,
    so accepting it would let two different byte strings name one key.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKey("key is not valid UTF-8") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidKey(f"key must be str or bytes, not {type(raw).__name__}")
    return _canonical_text(text) if len(text) <= KNOWN_KEY_CHARS else _checked_text(text)


def _checked_text(text: str) -> str:
    """:func:`canonical_key` of a ``str`` (pure: its results may be remembered)."""
    if not text:
        raise InvalidKey("key is empty")
    for char in text:
        if char == "\\":
            raise InvalidKey("key contains a backslash")
        if char == _REPLACEMENT_CHARACTER:
            raise InvalidKey("key contains U+FFFD (invalid UTF-8)")
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidKey(f"key contains control character U+{ord(char):04X}")
    key = unicodedata.normalize("NFC", text)
    encoded_length = len(key.encode("utf-8"))
    if encoded_length > MAX_KEY_BYTES:
        raise InvalidKey(f"key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise InvalidKey("key must be relative (no leading '/')")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey("key has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidKey(f"key has a '{segment}' segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"key has a segment longer than {MAX_SEGMENT_BYTES} bytes")
    return key


def key_folder(raw: str) -> str:
    """A folder that files are placed under, as people type it, in its one form: ``"blog/"``.

    ``blog``, ``blog/`` and ``/blog/`` all give ``"blog/"``; ``""`` and ``"/"`` give ``""``
    (the root). The rest must be a valid key (:func:`canonical_key`), so a folder never
    brings a doubled slash, a ``..`` or a control character into the keys placed under it;
    otherwise :class:`InvalidKey` naming the folder. Used by every option that *places*
    files under a prefix (``import --prefix``, an upload token's folder), never by those
    that filter by a plain string prefix (``ls``, the listing's ``?prefix=``).
    """
    text = raw.strip("/")
    if not text:
        return ""
    try:
        return canonical_key(text) + "/"
    except InvalidKey as exc:
        raise InvalidKey(f"not a valid folder {raw!r}: {exc}") from None


def key_under(folder: str, name: str) -> str:
    """The canonical key of ``name`` (a relative, ``/``-separated name) placed in ``folder``.

    ``folder`` is read by :func:`key_folder` (``imported`` and ``imported/`` alike), so
    ``key_under("imported", "a/b/c.txt") == "imported/a/b/c.txt"``; :class:`InvalidKey` when
    either part is not valid.
    """
    return canonical_key(key_folder(folder) + name)


def key_digest(key: str) -> bytes:
    """The 32-byte sha256 of ``key``'s UTF-8: a fixed-size name for a key of any length.

    Names a key where its text must not go (a fill lock's file name) and keeps a key in
    bounded memory (the absent keys remembered). ``surrogatepass``: any ``str`` has a
    digest, even one :func:`canonical_key` would refuse, so a caller never fails here.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


_canonical_text = lru_cache(maxsize=KNOWN_KEYS)(_checked_text)
