"""``ServeFiles``: pure ASGI middleware that serves ``{prefix}/{key}``.

It only carries out what :class:`servefiles.service.FileService` decides:
it picks the request headers that matter, sends the reply's status and
headers, then its body segments — with ``http.response.pathsend`` when the
server offers it and the whole file is on disk. Requests outside the prefix,
and lifespan, go to the wrapped app untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, Literal

from .. import config, http
from ..auth import TokenRing, UploadToken
from ..errors import ServeFilesError, StoreUnavailable, UploadAborted
from ..http import ByteRange, HttpPolicy
from ..keys import canonical_key
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..service import CacheSettings, FileService, MemoryBody, Reply
from ..store import FileMeta, PutSource, Store
from ..store.base import WritePrecondition
from ..write_api import DEFAULT_MAX_UPLOAD_BYTES, WriteApi
from ..write_api import REQUEST_HEADERS as WRITE_HEADERS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("servefiles")

HEALTH_PATH = "/_servefiles/health"
METRICS_PATH = "/_servefiles/metrics"
REQUEST_HEADERS = frozenset(
    (b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")
)
"""The only request headers a decision reads; the rest are never even decoded."""


def request_headers(raw: list[tuple[bytes, bytes]], wanted: frozenset[bytes] = REQUEST_HEADERS) -> dict[str, str]:
    """The headers a decision needs, by lower-case name; repeats joined with ", " (RFC 9110 §5.3)."""
    found: dict[str, str] = {}
    for name, value in raw:
        name = name.lower()
        if name in wanted:
            text, key = value.decode("latin-1"), name.decode("latin-1")
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


class ServeFiles:
    """Serve the store's files under ``prefix``; pass everything else to ``app``.

    ``db`` is a database URL (opened on first use; PostgreSQL DSNs may name
    several hosts, and ``read_db`` a read replica for content fetches) or an
    open :class:`Store` (the caller closes it). ``app`` may be None for a standalone file server;
    then lifespan events start and stop the service. With an ``app``, the
    app's lifespan passes through unchanged and servefiles closes itself once
    the app has completed its shutdown.
    """

    def __init__(
        self,
        app: ASGIApp | None,
        db: str | Store,
        prefix: str = "/media",
        cache_dir: str | Path | None = None,
        *,
        read_db: str | None = None,
        cache_control: str = "no-cache",
        active_content: Literal["attachment", "sandbox"] = "attachment",
        memory_bytes: int = CacheSettings.memory_bytes,
        memory_file_bytes: int = CacheSettings.memory_file_bytes,
        disk_bytes: int = CacheSettings.disk_bytes,
        freshness_seconds: float = CacheSettings.freshness_seconds,
        fill_wait_seconds: float = CacheSettings.fill_wait_seconds,
        feed: bool = CacheSettings.feed,
        feed_poll_seconds: float = CacheSettings.feed_poll_seconds,
        feed_check_seconds: float = CacheSettings.feed_check_seconds,
        prefetch: bool = CacheSettings.prefetch,
        metrics: bool = False,
        upload_tokens: Iterable[str | UploadToken] = (),
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/")
        self._under_prefix = self.prefix.rstrip("/") + "/"
        self.metrics_enabled = metrics
        tokens = TokenRing(upload_tokens)
        self.service = FileService(
            db,
            Path(cache_dir) if cache_dir is not None else config.default_cache_dir(),
            HttpPolicy(
                cache_control=cache_control,
                active_content=active_content,
                allow="GET, HEAD, PUT, DELETE" if tokens else "GET, HEAD",
            ),
            CacheSettings(
                memory_bytes,
                memory_file_bytes,
                disk_bytes,
                freshness_seconds,
                fill_wait_seconds,
                feed=feed,
                feed_poll_seconds=feed_poll_seconds,
                feed_check_seconds=feed_check_seconds,
                prefetch=prefetch,
            ),
            read_url=read_db,
        )
        self.writes = WriteApi(self.service, tokens, max_upload_bytes, self.prefix)

    async def aclose(self) -> None:
        """Stop fills, close the disk index, and close a store this middleware opened."""
        await self.service.close()

    # -- the Python API, for an app's own admin views -------------------------------------

    async def put(
        self, key: str, data: PutSource, content_type: str | None = None, *, expect: WritePrecondition | None = None
    ) -> FileMeta:
        """Store a file; this frontend serves it at once, the others once the feed tells them."""
        return await self.service.put(key, data, content_type, expect=expect)

    async def delete(self, key: str, *, expect: WritePrecondition | None = None) -> bool:
        """Delete a file; False when there was none."""
        return await self.service.delete(key, expect=expect) is not None

    async def stat(self, key: str) -> FileMeta | None:
        return await self.service.stat(key)

    async def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> list[FileMeta]:
        """One page of files in key order; pass the last key as ``after`` for the next."""
        return await self.service.list(prefix, limit, after)

    def url(self, key: str) -> str:
        """The path ``key`` is served at, percent-encoded, for links in the app's pages."""
        return self.writes.url(canonical_key(key))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self._under_prefix):
                method, raw_key = scope["method"], path[len(self._under_prefix) :]
                if self.writes.handles(method, raw_key):
                    reply = await self.writes.handle(
                        method,
                        raw_key,
                        scope.get("query_string", b"").decode("latin-1"),
                        request_headers(scope["headers"], WRITE_HEADERS),
                        _request_body(receive),
                    )
                else:
                    reply = await self.service.serve(method, raw_key, request_headers(scope["headers"]))
                await self._send(reply, scope, send)
                return
            if path == HEALTH_PATH:
                await self._health(send)
                return
            if path == METRICS_PATH and self.metrics_enabled:
                await _send_simple(send, 200, self.service.metrics.render(), METRICS_CONTENT_TYPE)
                return
        if self.app is not None:
            if scope["type"] == "lifespan":
                send = self._closing_after_shutdown(send)
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._send(Reply(http.not_found()), scope, send)

    async def _send(self, reply: Reply, scope: Scope, send: Send) -> None:
        response, body = reply.response, reply.body
        segments = response.body
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        sent = self.service.metrics.bytes_sent
        try:
            if scope["method"] == "HEAD":  # RFC 9110 §9.3.2: the headers of a GET, never a body
                await send({"type": "http.response.body", "body": b""})
                return
            if body is None or not any(isinstance(s, ByteRange) for s in segments):
                await send({"type": "http.response.body", "body": b"".join(segments)})  # type: ignore[arg-type]
                return
            if isinstance(body, MemoryBody) and len(segments) == 1 and response.status == 200:
                await send({"type": "http.response.body", "body": body.data})  # the hot path: one message
                sent.inc(len(body.data))
                return
            if body.path is not None and response.status == 200 and _offers_pathsend(scope):
                await send({"type": "http.response.pathsend", "path": body.path})
                sent.inc(sum(s.end - s.start for s in segments if isinstance(s, ByteRange)))
                return
            for segment in segments:
                if isinstance(segment, bytes):
                    await send({"type": "http.response.body", "body": segment, "more_body": True})
                    continue
                async for chunk in body.chunks(segment):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent.inc(len(chunk))
            await send({"type": "http.response.body", "body": b""})
        except (ServeFilesError, OSError) as exc:
            # The status line is gone already: end without completing the body, so
            # the server cuts the connection and the client sees a short response
            # rather than bytes that do not match the headers.
            logger.warning("aborting response for %s: %s", scope["path"], exc)
        finally:
            if body is not None:
                body.close()

    def _closing_after_shutdown(self, send: Send) -> Send:
        """The app's lifespan messages pass unchanged; once its shutdown is complete,
        servefiles closes too (with ``add_middleware`` the app has no handle to do it)."""

        async def forward(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return forward

    async def _health(self, send: Send) -> None:
        """Liveness plus what a load balancer may want to know; 200 while this process can serve."""
        report: dict[str, Any] = {"status": "ok"}
        try:
            await self.service.start()
            report["store"] = "ok"
            report["last_version"] = await self.service.store.last_version()
        except StoreUnavailable as exc:
            report["store"] = f"unavailable: {exc}"
        feed = self.service.feed
        if feed is not None:
            report["feed"] = {"healthy": feed.healthy, "cursor": feed.cursor, "error": feed.last_error}
        stats = self.service.disk.stats()
        report["disk"] = {"entries": stats.entries, "bytes": stats.bytes, "max_bytes": stats.max_bytes}
        report["memory"] = {"entries": len(self.service.memory), "bytes": self.service.memory.bytes}
        await _send_simple(send, 200, json.dumps(report).encode(), "application/json")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.start()
                except StoreUnavailable as exc:
                    logger.warning("starting without the store, will retry on first request: %s", exc)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that goes away mid-way aborts the upload."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise UploadAborted("the client disconnected before the upload was complete")
        piece = message.get("body", b"")
        if piece:
            yield piece
        if not message.get("more_body", False):
            return


def _offers_pathsend(scope: Scope) -> bool:
    return "http.response.pathsend" in scope.get("extensions", {})


async def _send_simple(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
