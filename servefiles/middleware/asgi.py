"""``ServeFiles``: pure ASGI middleware that serves ``{prefix}/{key}`` from the store.

This first version serves straight from the store (no memory or disk tier
yet): GET and HEAD, with the file's ETag, Last-Modified, Content-Type and
Content-Length, 404 for missing or rejected keys (one identical answer), 405
for other methods, and 503 with Retry-After when the database is down.
Requests outside the prefix, and lifespan, go to the wrapped app untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import format_datetime
from typing import Any

from ..errors import ContentChanged, InvalidKey, NotFound, StoreUnavailable
from ..keys import canonical_key
from ..store import Store, connect
from ..store.types import FileMeta

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("servefiles")

RETRY_AFTER_SECONDS = 5
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_NOSNIFF = (b"x-content-type-options", b"nosniff")


def _etag(meta: FileMeta) -> bytes:
    return f'"{meta.sha256}"'.encode("ascii")


def _file_headers(meta: FileMeta) -> list[tuple[bytes, bytes]]:
    content_type = meta.content_type
    if content_type.startswith("text/") and "charset" not in content_type:
        content_type += "; charset=utf-8"
    return [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(meta.size).encode("ascii")),
        (b"etag", _etag(meta)),
        (b"last-modified", format_datetime(meta.updated_at, usegmt=True).encode("ascii")),
        (b"cache-control", b"no-cache"),
        _NOSNIFF,
    ]


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode("utf-8")
    headers = [_TEXT, (b"content-length", str(len(body)).encode("ascii")), _NOSNIFF, *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ServeFiles:
    """Serve the store's files under ``prefix``; pass everything else to ``app``.

    ``db`` is a database URL (opened on first use, closed at lifespan shutdown
    when standalone) or an already open :class:`Store` (the caller closes it).
    ``app`` may be None for a standalone file server.
    """

    def __init__(self, app: ASGIApp | None, db: str | Store, prefix: str = "/media") -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/")
        self._url = db if isinstance(db, str) else None
        self._store = None if isinstance(db, str) else db
        self._opening = asyncio.Lock()

    async def store(self) -> Store:
        """The store, opened on first use (at most once, however many requests race)."""
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    assert self._url is not None
                    self._store = await connect(self._url)
        return self._store

    async def close(self) -> None:
        """Close a store this middleware opened itself."""
        if self._url is not None and self._store is not None:
            store, self._store = self._store, None
            await store.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self.prefix + "/"):
                await self._serve(scope, path[len(self.prefix) + 1 :], send)
                return
        if self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await _plain(send, 404, "Not Found")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _serve(self, scope: Scope, raw_key: str, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, "Method Not Allowed", [(b"allow", b"GET, HEAD")])
            return
        try:
            key = canonical_key(raw_key)
            store = await self.store()
            meta = await store.stat(key)
        except InvalidKey:
            meta = None
        except StoreUnavailable as exc:
            logger.warning("store unavailable: %s", exc)
            await _plain(send, 503, "Service Unavailable", [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
            return
        if meta is None:
            await _plain(send, 404, "Not Found")
            return
        await send({"type": "http.response.start", "status": 200, "headers": _file_headers(meta)})
        if method == "HEAD" or meta.size == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            async for chunk in store.read(key, version=meta.version):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (ContentChanged, NotFound, StoreUnavailable) as exc:
            # Headers are gone already: end without completing the body, so the
            # server cuts the connection and the client sees a short response
            # rather than bytes that do not match the ETag.
            logger.warning("aborting response for %s: %s", key, exc)
            return
        await send({"type": "http.response.body", "body": b""})
