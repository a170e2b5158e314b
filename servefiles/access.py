"""Private files: who may read a key under a private folder, decided before any lookup.

Files are public unless their key lies under one of the configured private folders. A read
(GET, HEAD) of a private key is let through when the request carries, in this order:

1. ``Authorization: Bearer`` with an upload token whose folder holds the key (whoever may
   write a folder may read it);
2. a valid signed URL (:mod:`servefiles.signing`);
3. the app's ``authorize(request, key)`` hook returning ``True`` (anything else refuses; an
   exception is a 500 for that request, logged, never a grant).

Otherwise it is refused with the one 403 (:func:`servefiles.http.replies.forbidden`), the
same whether or not the file exists, before the memory tier, the disk tier or the store is
asked. A refused key (the key gate's 404) is not private: it names no file at all.

The cost for a public key is one :meth:`AccessPolicy.private_key` call: the key gate's
remembered answer and one ``str.startswith`` over the folders (nothing at all when no folder
is private); the query and Authorization are read only for private keys. A private key's
decision is made per request and never remembered, so the file itself is then served from
the memory and disk tiers exactly as a public one, with ``Cache-Control: private``.
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

from .auth import TokenRing, UploadToken
from .errors import InvalidKey
from .http.model import Header, Response
from .http.read import CACHE_CONTROL_AT
from .keys import canonical_key, key_folder
from .signing import SIGNATURE_PARAM, Signer

__all__ = ["ASK", "AccessPolicy", "Decision", "private_cache_control"]

logger = logging.getLogger("servefiles")

Authorize = Callable[[Any, str], Any]
"""``authorize(request, key)``: the ASGI scope or WSGI environ, and the canonical key; returns
(or, under ASGI, may return an awaitable of) ``True`` to let the request through."""

_SHARED_ONLY = frozenset({"", "public", "private", "s-maxage", "proxy-revalidate", "max-age", "must-understand"})
"""Directives dropped from the configured Cache-Control of a private response: those that
speak to shared caches (RFC 9111 §5.2.2), and max-age, which is restated within bounds."""


SIGNED_GRANTS = 4096
"""Signed grants kept ready, one per distinct ``max-age`` (about 200 bytes each): the hot signed URLs
of one second share one, so a signed hit makes no new header value."""


class Decision(NamedTuple):
    """What the access check says about one read of a private key.

    ``granted``: serve it, with ``cache_control`` in place of the configured value;
    ``refused``: the 403 (``expired``: a signature servefiles made has expired);
    ``ask``: the hook decides (:meth:`AccessPolicy.ask_sync`, :meth:`AccessPolicy.ask_async`);
    ``failed``: the hook raised: a 500. A tuple: one is made per signed request, cheaply.
    """

    kind: Literal["granted", "refused", "ask", "failed"]
    cache_control: bytes = b""
    expired: bool = False


REFUSED = Decision("refused")
EXPIRED = Decision("refused", expired=True)
FAILED = Decision("failed")
ASK = Decision("ask")
ASK_EXPIRED = Decision("ask", expired=True)


def private_cache_control(configured: str, max_age: int | None = None) -> bytes:
    """The Cache-Control of a private response: ``private``, the configured directives that do
    not address shared caches, and ``max-age`` no longer than both the configured one and
    ``max_age`` (a signed URL's remaining seconds). RFC 9111 §5.2.2.7: no shared cache stores it.

    ``private_cache_control("no-cache", 60) == b"private, no-cache, max-age=60"``.
    """
    kept = [d.strip() for d in configured.split(",") if d.partition("=")[0].strip().lower() not in _SHARED_ONLY]
    ages = [age for age in (_max_age(configured), max_age) if age is not None]
    age = min(ages) if ages else None
    parts = ["private", *kept, *([f"max-age={age}"] if age is not None else [])]
    return ", ".join(parts).encode("latin-1")


def _max_age(cache_control: str) -> int | None:
    """The configured max-age in seconds, if any."""
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        if name.strip().lower() == "max-age" and value.strip().isdigit():
            return int(value)
    return None


class AccessPolicy:
    """The private folders of one mount and the ways into them (see the module).

    ``private``: folders as people type them (``invoices``, ``members/docs/``; a prefix is a
    folder: ``invoices`` covers ``invoices/…``, not ``invoices2/…``); :class:`InvalidKey` for
    one that is not a valid folder. ``signer``: None when no signing key is configured.
    ``url_expires``: seconds a URL signed by :meth:`url` lives when no expiry is given.
    """

    def __init__(
        self,
        private: Iterable[str],
        signer: Signer | None,
        tokens: TokenRing,
        authorize: Authorize | None,
        cache_control: str,
        url_expires: int,
    ) -> None:
        self.folders: tuple[str, ...] = tuple(dict.fromkeys(key_folder(folder) for folder in private))
        self.signer = signer
        self.tokens = tokens
        self.authorize = authorize
        self.url_expires = url_expires
        self._granted = Decision("granted", private_cache_control(cache_control))
        self._configured_age = _max_age(cache_control)
        self._signed_prefix = private_cache_control(cache_control, 0).rpartition(b", max-age=")[0]
        """The Cache-Control of a signed grant before its max-age, worked out once."""
        self._signed_grants: dict[int, Decision] = {}
        """Signed grants by their max-age (:meth:`_signed_grant`)."""
        self._age_cap = self._configured_age if self._configured_age is not None else sys.maxsize
        """The longest max-age a signed grant may state: the configured one, if any."""
        if signer is not None and url_expires > signer.max_expires:
            raise ValueError(f"url_expires ({url_expires} s) is longer than max_url_expires ({signer.max_expires} s)")

    def __bool__(self) -> bool:
        """Whether any folder is private: when not, no request is checked at all."""
        return bool(self.folders)

    def is_private(self, key: str) -> bool:
        """Whether canonical ``key`` lies under a private folder."""
        return key.startswith(self.folders)

    def private_key(self, raw_key: str) -> str | None:
        """The canonical key of a request for a private file, else None (a public key, or one the
        key gate refuses: the file service answers those, with the file or the one 404)."""
        try:
            key = canonical_key(raw_key)
        except InvalidKey:
            return None
        return key if key.startswith(self.folders) else None

    def check(self, key: str, query: str, authorization: str | None, now: float | None = None) -> Decision:
        """The decision for a GET or HEAD of private ``key``, before any hook runs (``ask``: run it).

        ``query`` is the request's query string as it came (undecoded), ``authorization`` its
        Authorization header, ``now`` seconds since the epoch (default: this host's clock).
        """
        if authorization is not None and self.tokens:
            token = self.tokens.authenticate(authorization)
            if isinstance(token, UploadToken) and token.allows(key):
                return self._granted
        expired = False
        if self.signer is not None and SIGNATURE_PARAM in query:
            moment = time.time() if now is None else now
            verdict, expires = self.signer.check(key, query, moment)
            if verdict == "valid":
                age = int(expires - moment)  # whole seconds left, never rounded up (negative within the skew)
                age = 0 if age < 0 else self._age_cap if age > self._age_cap else age
                return self._signed_grants.get(age) or self._signed_grant(age)
            expired = verdict == "expired"
        if self.authorize is not None:
            return ASK_EXPIRED if expired else ASK
        return EXPIRED if expired else REFUSED

    def _signed_grant(self, age: int) -> Decision:
        """The grant of a signature whose ``max-age`` is ``age`` seconds, made once per age (at most
        :data:`SIGNED_GRANTS` kept; the table starts afresh when full)."""
        if len(self._signed_grants) >= SIGNED_GRANTS:
            self._signed_grants.clear()  # threads may race here: both then build the same value
        grant = Decision("granted", b"%s, max-age=%d" % (self._signed_prefix, age))
        self._signed_grants[age] = grant
        return grant

    def hooked(self, allowed: object, asked: Decision) -> Decision:
        """The decision once the hook answered ``allowed``: only ``True`` itself grants."""
        if allowed is True:
            return self._granted
        return EXPIRED if asked.expired else REFUSED

    def ask_sync(self, request: Any, key: str, asked: Decision) -> Decision:
        """Run the hook in this thread (WSGI: the request's own thread, where the app's session
        and database connection live); an exception or an awaitable is ``failed``, logged."""
        assert self.authorize is not None
        try:
            allowed = self.authorize(request, key)
            if inspect.isawaitable(allowed):
                close = getattr(allowed, "close", None)
                if close is not None:
                    close()
                raise TypeError("a WSGI authorize hook must be a plain function, not a coroutine function")
        except Exception:
            logger.exception("authorize hook failed for %s: answered 500", key, extra={"key": key})
            return FAILED
        return self.hooked(allowed, asked)

    async def ask_async(self, request: Any, key: str, asked: Decision) -> Decision:
        """Run the hook on the loop (ASGI; a plain function is called, a coroutine function
        awaited); an exception is ``failed``, logged."""
        assert self.authorize is not None
        try:
            allowed = self.authorize(request, key)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except Exception:
            logger.exception("authorize hook failed for %s: answered 500", key, extra={"key": key})
            return FAILED
        return self.hooked(allowed, asked)

    def url(self, key: str, plain: str, expires_in: float | None) -> str:
        """The URL of canonical ``key`` whose plain path is ``plain``: signed when ``expires_in``
        (seconds) is given, or with :attr:`url_expires` when the key is private and a signing key
        is configured; else ``plain``. ValueError when a signature is asked for and no signing
        key is configured, or ``expires_in`` is out of range."""
        if expires_in is None:
            if self.signer is None or not self.is_private(key):
                return plain
            expires_in = self.url_expires
        if self.signer is None:
            raise ValueError("a signed URL needs a signing key (signing_keys=[...])")
        return f"{plain}?{self.signer.query(key, expires_in, time.time())}"


def with_cache_control(response: Response, value: bytes) -> Response:
    """``response`` (a file's 200, 206 or 304, or the redirect for nginx) with ``value`` as its
    Cache-Control, in place: its header list is its own (:func:`servefiles.http.respond`)."""
    if response.status in (200, 206, 304):
        headers: list[Header] = response.headers
        if len(headers) > CACHE_CONTROL_AT and headers[CACHE_CONTROL_AT][0] == b"cache-control":
            headers[CACHE_CONTROL_AT] = (b"cache-control", value)  # a 200 as PreparedFile lays it out
            return response
        for index, (name, _) in enumerate(headers):
            if name == b"cache-control":
                headers[index] = (name, value)
    return response
