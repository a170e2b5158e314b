"""``ServeFiles``: pure ASGI middleware that serves ``{prefix}/{key}``.

It only carries out what :class:`servefiles.service.FileService` decides:
it picks the request headers that matter, sends the reply's status and
headers, then its body segments — with ``http.response.pathsend`` when the
server offers it and the whole file is on disk, or ``http.response.zerocopysend`` when
the server offers that and the whole file is in the page cache. Requests outside the prefix,
and lifespan, go to the wrapped app untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, MutableMapping
from email.utils import formatdate
from pathlib import Path
from typing import Any, Unpack

from .. import defaults, http
from ..access import AccessPolicy, Decision
from ..bodies import Body, DiskBody, MemoryBody
from ..errors import StoreUnavailable, UploadAborted
from ..http import ByteRange
from ..service import Reply
from ..store import FileMeta, PutSource, Store
from ..store.base import WritePrecondition
from ..write_api import REQUEST_HEADERS as WRITE_HEADERS
from .inline import DECIDED_SLOT, Answer
from .sending import plan
from .wiring import Mount, Options, mount
from .zerocopy import EXTENSION as ZEROCOPYSEND
from .zerocopy import HEAD_LINES, carried_out, hold_head

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("servefiles")

REQUEST_HEADERS = frozenset(
    (b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")
)
"""The only request headers a decision reads; the rest are never even decoded."""
_AUTHORIZATION = frozenset((b"authorization",))
"""Read for private keys only: an upload token for the folder lets a read through."""
_READS = frozenset(("GET", "HEAD"))
REPLY_SLOT = "servefiles.reply"
"""A scope key an access log in front adds (:mod:`.access_log`): the reply about a file is put there."""


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

    ``date_header``: servefiles stamps the Date header of its own responses, for a
    server whose own Date is switched off (uvicorn's ``date_header=False``), as
    ``servefiles serve`` runs it. uvicorn refreshes its Date once a second, so it may
    name a second earlier than the Last-Modified of a file written a moment ago,
    which RFC 9110 §8.8.2.1 forbids; servefiles states a Last-Modified no later than
    its own clock, and stamps Date from that clock after deciding. Leave it off when
    the server adds Date (the default everywhere), or Date would be sent twice.
    """

    def __init__(
        self,
        app: ASGIApp | None,
        db: str | Store,
        prefix: str = defaults.PREFIX,
        cache_dir: str | Path | None = None,
        *,
        date_header: bool = False,
        **options: Unpack[Options],
    ) -> None:
        self.app = app
        self.date_header = date_header
        self.mount = mount(db, prefix, cache_dir, options)
        self.prefix = self.mount.prefix
        self.service = self.mount.service
        self.writes = self.mount.writes
        self._private = self.mount.access if self.mount.access else None
        """The access policy when a folder is private (else None: no request is checked)."""
        self._bearer_reads = bool(self._private and self._private.tokens)
        """Whether an upload token may let a read of a private key through (else Authorization is not read)."""
        self._timings = self.service.metrics.request_timings

    async def aclose(self) -> None:
        """Stop fills, close the disk index, and close a store this middleware opened."""
        await self.service.close()

    def admin_app(self) -> ASGIApp:
        """An ASGI app for a separate, private listener: ``/_servefiles/metrics``, ``/health`` and
        ``/ready``, the last two always detailed; 404 for anything else. It shares this middleware's
        service (run it on the same event loop); ``servefiles serve --admin-port`` runs it."""
        return AdminASGI(self.mount)

    # -- the Python API, for an app's own admin views -------------------------------------

    async def put(
        self, key: str, data: PutSource, content_type: str | None = None, *, expect: WritePrecondition | None = None
    ) -> FileMeta:
        """Store a file; this frontend serves it at once, the others once the feed tells them."""
        return await self.mount.files.put(key, data, content_type, expect=expect)

    async def delete(self, key: str, *, expect: WritePrecondition | None = None) -> bool:
        """Delete a file; False when there was none."""
        return await self.mount.files.delete(key, expect=expect) is not None

    async def stat(self, key: str) -> FileMeta | None:
        return await self.mount.files.stat(key)

    async def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> list[FileMeta]:
        """One page of files in key order; pass the last key as ``after`` for the next."""
        return await self.mount.files.list(prefix, limit, after)

    def url(self, key: str, expires_in: float | None = None) -> str:
        """The path ``key`` is served at, percent-encoded, for links in the app's pages.

        Signed (``?expires=…&signature=…``, :mod:`servefiles.signing`) when ``expires_in`` seconds
        are given, or when ``key`` is private and signing keys are configured (then for
        ``url_expires`` seconds). ValueError when a signature is asked for without a signing key
        or for longer than ``max_url_expires``; InvalidKey for a bad key."""
        return self.mount.url(key, expires_in)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method: str = scope["method"]
            route, raw_key = self.mount.route(method, scope["path"])
            if route == "files":
                started = time.perf_counter()
                access = None
                if self._private is not None and method in _READS:
                    checked = self._check(self._private, scope, raw_key)
                    if checked is not None:
                        key, access = checked
                        if access.kind == "ask":
                            access = await self._private.ask_async(scope, key, access)
                headers = request_headers(scope["headers"])
                # A hit is decided without a coroutine (Mount.cached); the rest on the loop, as it may
                # wait. answer_now may have looked already: its reply (one it could not write at
                # once), or None (no cached copy answers), and when it began.
                decided: tuple[Reply | None, float] | None = scope.pop(DECIDED_SLOT, None)
                if decided is None:
                    reply = self.mount.cached(method, raw_key, headers, access)
                else:
                    reply, started = decided
                reply = reply or await self.mount.serve(method, raw_key, headers, access, asked=True)
                if REPLY_SLOT in scope:  # servefiles serve --access-log: the line names the tier and the key
                    scope[REPLY_SLOT] = reply
                await self._send(reply, scope, send, receive)
                self._timings(reply.response.status, reply.source).observe(time.perf_counter() - started)
                return
            if route == "writes":
                reply = await self.writes.handle(
                    method,
                    raw_key,
                    scope.get("query_string", b"").decode("latin-1"),
                    request_headers(scope["headers"], WRITE_HEADERS),
                    _request_body(receive),
                )
                if REPLY_SLOT in scope:
                    scope[REPLY_SLOT] = reply
                await self._send(reply, scope, send)
                return
            if route != "app":  # health, ready, metrics
                authorization = request_headers(scope["headers"], _AUTHORIZATION).get("authorization")
                await self._send(await self.mount.probe(route, authorization), scope, send)
                return
        if self.app is not None:
            if scope["type"] == "lifespan":
                send = self._closing_after_shutdown(send)
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._send(Reply(http.not_found()), scope, send)

    def answer_now(self, scope: Scope) -> Answer | None:
        """The response to a GET or HEAD of a public file if it can be written at once, without
        an ASGI task (:mod:`servefiles.middleware.inline`): a fresh hit whose body is in hand (a
        memory hit, a small disk hit read whole), its HEAD, its 304 — decided as :meth:`__call__`
        decides it first (:meth:`Mount.cached`) and counted alike (its duration: the decision's,
        as the write is the server's). None for everything else, with what it found in the scope
        (:data:`DECIDED_SLOT`) for :meth:`__call__`, so that nothing is looked up twice: a reply it
        cannot write (a file for ``sendfile``, a range, a stale copy's Warning, a 404), or None
        when no cached copy answers (a miss)."""
        method: str = scope["method"]
        if self._private is not None or method not in _READS:
            return None
        route, raw_key = self.mount.route(method, scope["path"])
        if route != "files":
            return None
        started = time.perf_counter()
        reply = self.mount.cached(method, raw_key, request_headers(scope["headers"]))
        lines = self._head_lines(reply) if reply is not None else None
        if reply is None or lines is None:
            scope[DECIDED_SLOT] = (reply, started)
            return None
        body, status = reply.body, reply.response.status
        way = plan(reply, method, False) if body is None or type(body) is MemoryBody or method == "HEAD" else None
        # The body must be what the head says: uvicorn's send checks that, nothing does here.
        stated = reply.file.meta.size if reply.file is not None and status == 200 and method == "GET" else 0
        if way is None or way.way != "whole" or len(way.data) != stated:
            scope[DECIDED_SLOT] = (reply, started)
            return None
        if body is not None:
            body.close()
        self.service.metrics.bytes_sent.inc(way.counted)
        self._timings(status, reply.source).observe(time.perf_counter() - started)
        return Answer(status, lines, way.data)

    def _head_lines(self, reply: Reply) -> bytes | None:
        """The head's field lines of a file's 200 or 304 as prepared, or of a reply rendered once (an
        nginx redirect), with the Date (None: another response, whose head the server builds from
        its headers)."""
        file, rendered = reply.file, reply.rendered
        lines = file.field_lines(reply.response) if file is not None else None
        if lines is None and rendered is not None:
            lines = rendered.of(reply.response)
        if lines is None or not self.date_header:
            return lines
        return lines + date_line()

    def _check(self, policy: AccessPolicy, scope: Scope, raw_key: str) -> tuple[str, Decision] | None:
        """The canonical key of a read of a private key and the access decision before any hook runs
        (None: a public key). Synchronous: a signed hit is decided without a coroutine; Authorization is read only when
        upload tokens are configured (nothing else here looks at it)."""
        key = policy.private_key(raw_key)
        if key is None:
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        authorization = None
        if self._bearer_reads:
            authorization = request_headers(scope["headers"], _AUTHORIZATION).get("authorization")
        return key, policy.check(key, query, authorization)

    async def _send(self, reply: Reply, scope: Scope, send: Send, receive: Receive | None = None) -> None:
        """Send ``reply``; with ``receive``, a streamed body stops as soon as the client is gone.

        ``servefiles_bytes_sent_total`` counts the body bytes handed to the server: each chunk
        once ``send`` took it; a body of one message (a memory hit) or a file handed over whole
        (``http.response.pathsend``: the server sends it itself, and stops itself when the
        client goes) counts its full length at hand-over.
        """
        response, body = reply.response, reply.body
        segments = response.body
        headers = [*response.headers, date_header()] if self.date_header else response.headers
        method = scope["method"]
        start = {"type": "http.response.start", "status": response.status, "headers": headers}
        # Whether this send reaches ZeroCopySend unchanged: asked once, for the head and the body.
        carried = carried_out(scope, send)
        vouched = carried and (body is not None or bool(segments))
        if carried and reply.file is not None:
            # A file's 200 or 304 as prepared: its head is written from lines rendered once.
            lines = self._head_lines(reply)
            if lines is not None:
                start[HEAD_LINES] = (lines, reply.file.meta.size if response.status == 200 else None)
        if vouched and method == "GET":
            # The head goes out with the body's first bytes, which are in hand or one read away (a
            # fetched body is primed): one system call and one TCP segment fewer per response. (A
            # reply of no body at all, a 304 or nginx's redirect, is written in one call anyway.)
            hold_head(scope)
        try:
            await send(start)
        except BaseException:  # the client gone, a server that raises then: the body's descriptor goes too
            if body is not None:
                body.close()
            raise
        sent = self.service.metrics.bytes_sent
        try:
            extensions = scope.get("extensions") or _NONE
            zero_copy = vouched and isinstance(body, DiskBody)  # only a disk hit can use it
            way = plan(reply, method, _PATHSEND in extensions, True, zero_copy)
            if way.way == "whole":
                await send({"type": "http.response.body", "body": way.data})
            elif way.way == "read":
                assert isinstance(body, DiskBody) and isinstance(segments[0], ByteRange)
                await send({"type": "http.response.body", "body": await body.whole(segments[0])})
            elif way.way == "sendfile":
                assert isinstance(body, DiskBody) and isinstance(segments[0], ByteRange)
                await send({"type": ZEROCOPYSEND, "file": body, "offset": segments[0].start, "count": way.counted})
            elif way.way == "file":
                assert isinstance(body, DiskBody)
                await send({"type": _PATHSEND, "path": body.path})
            sent.inc(way.counted)
            if way.way != "stream":
                return
            assert body is not None
            streaming = _stream(segments, body, send, sent.inc)
            if receive is None:
                await streaming
            elif not await _unless_disconnected(receive, streaming):
                logger.debug("client went away during %s: response stopped", scope["path"])
        except Exception as exc:
            # The status line is gone already: end without completing the body, so
            # the server cuts the connection and the client sees a short response
            # rather than bytes that do not match the headers.
            logger.warning("aborting response for %s: %s: %s", scope["path"], type(exc).__name__, exc)
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


class AdminASGI:
    """The admin listener's app (:meth:`ServeFiles.admin_app`): probes and metrics, detailed."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the public listener's app starts and stops the service
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        route = self.mount.admin_route(scope["path"])
        reply = Reply(http.not_found()) if route is None else await self.mount.probe(route, None, admin=True)
        response = reply.response
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        body = b"" if scope["method"] == "HEAD" else b"".join(s for s in response.body if isinstance(s, bytes))
        await send({"type": "http.response.body", "body": body})


async def _stream(segments: Iterable[bytes | ByteRange], body: Body, send: Send, count: Callable[[int], None]) -> None:
    """Send a body segment by segment, chunk by chunk, counting each chunk once ``send`` took it."""
    for segment in segments:
        if isinstance(segment, bytes):
            await send({"type": "http.response.body", "body": segment, "more_body": True})
            continue
        chunks = body.chunks(segment)
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                count(len(chunk))
                # A send to a client that has gone returns at once under servers before ASGI
                # 2.4, and a cached block is read without waiting: let the loop run between
                # chunks, so the disconnect is seen and this task cancelled.
                await asyncio.sleep(0)
        finally:
            closing = getattr(chunks, "aclose", None)
            if closing is not None:
                await closing()  # now, not when collected: a store read gives back its connection
    await send({"type": "http.response.body", "body": b""})


async def _unless_disconnected(receive: Receive, sending: Coroutine[Any, Any, None]) -> bool:
    """Run ``sending`` until it ends or ``receive`` reports ``http.disconnect``; True when it ended.

    Servers before ASGI spec 2.4 (uvicorn among them) make a send after a disconnect return
    silently (ASGI HTTP spec, "Disconnected Client Send Exception"), so only ``receive``
    tells that the client is gone: the body is cancelled then, wherever it waits (the
    disk, a fill, the store), instead of being read to its end for nobody.
    """
    sender = asyncio.ensure_future(sending)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        done, _ = await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled: so is its body
        sender.cancel()
        watcher.cancel()
        await asyncio.wait((sender, watcher))
        raise
    if sender in done:
        watcher.cancel()
        await asyncio.wait((watcher,))
        sender.result()  # the body's own error, if any
        return True
    sender.cancel()
    await asyncio.wait((sender,))
    for task in (sender, watcher):
        if not task.cancelled():
            task.exception()  # retrieved: a receive that failed is taken as the client gone
    return False


async def _disconnect(receive: Receive) -> None:
    """Until the client disconnects (the request body, empty for a GET, is passed over).

    Once the request is whole, only ``http.disconnect`` may follow; a server that answers
    anything else cannot tell a disconnect, so this then waits to be cancelled, not spins.
    """
    whole = False
    while (message := await receive())["type"] != "http.disconnect":
        if whole:
            await asyncio.get_running_loop().create_future()  # never set: cancelled with the response
        whole = not message.get("more_body", False)


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


_PATHSEND = "http.response.pathsend"
"""ASGI extension: the server sends a file by its path."""
_NONE: dict[str, Any] = {}


_last_date: tuple[int, tuple[bytes, bytes], bytes] = (-1, (b"date", b""), b"")


def date_header() -> tuple[bytes, bytes]:
    """``Date`` (RFC 9110 §6.6.1) from this host's clock, read now: after the response was
    decided, so never before the time its Last-Modified was held to. Formatted once a second."""
    return _date()[1]


def date_line() -> bytes:
    """:func:`date_header` as an HTTP/1.1 field line (``date: …`` CRLF)."""
    return _date()[2]


def _date() -> tuple[int, tuple[bytes, bytes], bytes]:
    global _last_date
    second = int(time.time())
    if _last_date[0] != second:
        value = formatdate(second, usegmt=True).encode("ascii")
        _last_date = (second, (b"date", value), b"date: " + value + b"\r\n")
    return _last_date
