"""Signed, expiring URLs: ``{prefix}/{key}?expires=E&signature=S``.

``E`` is the expiry in whole seconds since the epoch (UTC), ``S`` the HMAC-SHA256 of
``servefiles-url-v1``, the URL prefix, the canonical key and ``E`` (newline-separated, UTF-8),
under a signing key, in unpadded URL-safe base64 (43 characters). A signature is thus valid
for one key under one prefix until one moment; GET and HEAD are all a file URL answers.

Several signing keys may be configured for rotation: the first signs, every one verifies.
Each comparison is :func:`hmac.compare_digest` over every key, with no early exit, so the time
a refusal takes says nothing about how close a guess was. Query values are read as they
come, never percent-decoded: the values servefiles writes need no encoding, so anything
encoded (twice or once) is a forgery or a mangling and is refused.

Clock skew: frontends' clocks may disagree by a few seconds, so a URL is accepted for
:data:`CLOCK_SKEW_SECONDS` after its expiry, and an expiry up to that much beyond the
configured maximum is not refused as too far in the future.
"""

from __future__ import annotations

import base64
import hmac
import math
import re
import threading
from collections.abc import Iterable
from typing import Literal, NamedTuple
from urllib.parse import quote

from .keys import canonical_key

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "EXPIRES_PARAM",
    "MIN_KEY_BYTES",
    "SIGNATURE_PARAM",
    "Signer",
    "Verdict",
    "new_signing_key",
    "parse_duration",
]

EXPIRES_PARAM = "expires"
SIGNATURE_PARAM = "signature"
CLOCK_SKEW_SECONDS = 5
"""Seconds a signed URL stays valid after its expiry, for frontends whose clocks disagree."""
MIN_KEY_BYTES = 32
"""A signing key's least length in bytes (256 bits, HMAC-SHA256's own strength)."""
MIN_KEY_CHARS = 43
"""A text key's least length: 32 random bytes in URL-safe base64, as ``servefiles new-signing-key`` prints."""
MIN_DISTINCT_CHARS = 13
"""A text key of fewer distinct characters is a pattern, not a secret (``aaaa…``, ``0123456789…``)."""
VERIFIED_ENTRIES = 4096
"""Signatures remembered as verified: about 250 bytes each for a short key, 4 MiB with the
longest keys (1 KiB); only signatures servefiles made ever enter."""
_VERSION = b"servefiles-url-v1"
_SIGNATURE_CHARS = 43
_EXPIRES_DIGITS = 12
"""An expiry of more digits is year 33658 or later: refused without parsing it."""
_PLAIN_QUERY = re.compile(r"expires=[0-9]{1,12}&signature=[A-Za-z0-9_-]{43}")
"""The query :meth:`Signer.query` writes, and nothing else: remembered whole once verified."""
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

Verdict = Literal["valid", "expired", "invalid"]
"""What a request's query says about access to a key: a signature that holds now, one that
held until its expiry, or none that holds (absent, malformed, forged, for another key or
prefix, or expiring beyond the configured maximum)."""


def new_signing_key() -> str:
    """A fresh random signing key: 32 bytes from :mod:`secrets`, URL-safe base64 (43 characters)."""
    import secrets

    return secrets.token_urlsafe(MIN_KEY_BYTES)


def _key_bytes(key: str | bytes) -> bytes:
    """A configured signing key as bytes; ValueError (never naming the key) when it is too weak."""
    if isinstance(key, bytes):
        if len(key) < MIN_KEY_BYTES or len(set(key)) < MIN_DISTINCT_CHARS:
            raise ValueError(f"a signing key must be at least {MIN_KEY_BYTES} random bytes")
        return key
    if not isinstance(key, str):
        raise TypeError(f"a signing key is str or bytes, not {type(key).__name__}")
    text = key.strip()
    if len(text) < MIN_KEY_CHARS or len(set(text)) < MIN_DISTINCT_CHARS or not text.isprintable():
        raise ValueError(
            f"a signing key must be at least {MIN_KEY_CHARS} printable characters of a random secret "
            "(32 bytes of entropy; make one with `servefiles new-signing-key`)"
        )
    return text.encode("utf-8")


class Checked(NamedTuple):
    """A query's verdict, and for a valid signature its expiry (seconds since the epoch). A tuple:
    made on every signed request, where a dataclass's construction costs several times more."""

    verdict: Verdict
    expires: int = 0


_INVALID = Checked("invalid")


class Signer:
    """Signs and verifies URLs for one URL prefix with the configured signing keys.

    ``keys``: at least one, each :data:`MIN_KEY_BYTES` bytes or :data:`MIN_KEY_CHARS` characters
    of a random secret (ValueError otherwise, without the key in the message); the first
    signs. ``prefix``: the mount's URL prefix (``/media``), bound into every signature.
    ``max_expires``: the longest life, in seconds, a URL may be signed for or accepted with.
    """

    def __init__(self, keys: Iterable[str | bytes], prefix: str, max_expires: int) -> None:
        self._keys = tuple(_key_bytes(key) for key in keys)
        if not self._keys:
            raise ValueError("signing needs at least one signing key")
        if max_expires < 1:
            raise ValueError("the maximum expiry must be at least 1 second")
        self.prefix = prefix
        self.max_expires = max_expires
        self._prefix_bytes = prefix.encode("utf-8")
        self._verified: dict[tuple[str, ...], Checked] = {}
        """Signatures whose MAC matched, as their "valid" verdict: a hot private file behind one signed
        URL then costs one dict lookup per request, not a parse and an HMAC per configured key. A query
        as :meth:`query` writes it is remembered whole, by ``(key, query)`` (no parsing at all on the
        next request); any other spelling by ``(key, expires, signature)`` once parsed. Only matches are
        kept (a forgery never is), at most :data:`VERIFIED_ENTRIES`, oldest out first; the expiry is
        judged again on every request (:meth:`_judged`). The signing keys are fixed for a signer's life
        (a changed set is a new signer, with nothing remembered), so a removed key verifies nothing."""
        self._remembering = threading.Lock()

    def __repr__(self) -> str:  # never show a key
        return f"Signer(prefix={self.prefix!r}, keys={len(self._keys)}, max_expires={self.max_expires})"

    @property
    def remembered(self) -> int:
        """How many verified signatures this signer remembers (at most :data:`VERIFIED_ENTRIES`)."""
        return len(self._verified)

    def _mac(self, signing_key: bytes, key: str, expires: bytes) -> bytes:
        message = b"\n".join((_VERSION, self._prefix_bytes, key.encode("utf-8"), expires))
        return hmac.digest(signing_key, message, "sha256")  # one-shot: OpenSSL's, no HMAC object

    def query(self, key: str, expires_in: float, now: float) -> str:
        """The query string (no ``?``) that lets GET and HEAD of canonical ``key`` through for
        ``expires_in`` seconds from ``now`` (seconds since the epoch), rounded up to a whole second.
        ValueError when ``expires_in`` is not positive or longer than ``max_expires``."""
        if not (0 < expires_in <= self.max_expires):
            raise ValueError(f"a signed URL lives from 1 to {self.max_expires} seconds, not {expires_in!r}")
        expires = str(math.ceil(now + expires_in)).encode("ascii")
        signature = base64.urlsafe_b64encode(self._mac(self._keys[0], key, expires)).rstrip(b"=")
        return f"{EXPIRES_PARAM}={expires.decode()}&{SIGNATURE_PARAM}={signature.decode()}"

    def url(self, key: str, expires_in: float, now: float) -> str:
        """``{prefix}/{key}?{query}``, the key percent-encoded (:meth:`query`; InvalidKey for a bad key)."""
        key = canonical_key(key)
        return f"{quote(self.prefix, safe='/')}/{quote(key, safe='/')}?{self.query(key, expires_in, now)}"

    def check(self, key: str, query: str, now: float) -> Checked:
        """Whether ``query`` (as it came, undecoded) carries a signature for canonical ``key`` at ``now``.

        Exactly one ``expires`` and one ``signature`` parameter; ``expires`` ASCII digits, at most
        12 (year 33658); ``signature`` 43 URL-safe base64 characters. Other parameters
        are ignored (they are not signed, and change nothing servefiles sends). The signature is
        compared with every key's; only then is the expiry judged, so "expired" is said only of
        a URL that servefiles signed.
        """
        remembered = self._verified.get((key, query))  # as url() wrote it, verified before
        if remembered is not None:
            return self._judged(remembered, now)  # the same inputs, the same MAC: only the clock moved
        expires = signature = None
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == EXPIRES_PARAM:
                if expires is not None:
                    return _INVALID
                expires = value
            elif name == SIGNATURE_PARAM:
                if signature is not None:
                    return _INVALID
                signature = value
        if expires is None or signature is None:
            return _INVALID
        if not (0 < len(expires) <= _EXPIRES_DIGITS and expires.isascii() and expires.isdigit()):
            return _INVALID
        remembered = self._verified.get((key, expires, signature))  # another spelling, verified before
        if remembered is not None:
            if _PLAIN_QUERY.fullmatch(query):
                self._remember((key, query), remembered)  # url()'s own spelling: no parsing next time
            return self._judged(remembered, now)
        raw = signature.encode("latin-1", "replace")
        if len(raw) != _SIGNATURE_CHARS or not _B64URL.issuperset(raw):
            return _INVALID
        presented = base64.urlsafe_b64decode(raw + b"=")
        if base64.urlsafe_b64encode(presented)[:_SIGNATURE_CHARS] != raw:
            return _INVALID  # one MAC, one spelling: unused low bits in the last character are refused
        expires_bytes = expires.encode("ascii")
        matched = False
        for signing_key in self._keys:  # every key, always: no early exit
            matched |= hmac.compare_digest(presented, self._mac(signing_key, key, expires_bytes))
        if not matched:
            return _INVALID
        valid = Checked("valid", int(expires))
        self._remember((key, query) if _PLAIN_QUERY.fullmatch(query) else (key, expires, signature), valid)
        return self._judged(valid, now)

    def _remember(self, spelling: tuple[str, ...], valid: Checked) -> None:
        """Remember a signature whose MAC matched, under one of its spellings; the oldest goes first
        once :data:`VERIFIED_ENTRIES` are held."""
        with self._remembering:  # WSGI checks in request threads: one writer at a time
            if len(self._verified) >= VERIFIED_ENTRIES:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[spelling] = valid

    def _judged(self, valid: Checked, now: float) -> Checked:
        """The verdict at ``now`` on a signature that matched (``valid``: its "valid" verdict, returned
        as it is while it holds, so a remembered signature's request makes no new object)."""
        moment = valid.expires
        if moment > now + self.max_expires + CLOCK_SKEW_SECONDS:
            return _INVALID  # signed with another maximum, or by someone holding the key: refused
        if now > moment + CLOCK_SKEW_SECONDS:
            return Checked("expired", moment)
        return valid


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``7d`` or plain seconds (``3600``) as whole seconds, at least 1.
    ValueError naming the text otherwise."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _UNITS else "s"
    number = value[:-1] if value[-1:] in _UNITS else value
    if not (number.isascii() and number.isdigit()) or len(number) > 9 or int(number) < 1:
        raise ValueError(f"not a duration: {text!r} (try 90s, 15m, 1h or 7d)")
    return int(number) * _UNITS[unit]
