"""The request path every adapter shares: key gate → memory → disk → store.

:class:`FileService` answers ``(method, raw key, request headers)`` with a
:class:`Reply`: the HTTP decision of :mod:`servefiles.http` and the body
source that produces its byte ranges. The ASGI and WSGI adapters only carry
replies out, so every rule here holds for both.

Freshness: while the change feed is healthy, a cached copy is current unless
the feed has announced a newer version of its key (and the feed drops such
copies as it announces them): a hit costs no query. While the feed is down, a
cached entry is trusted for ``freshness_seconds`` after the store last
confirmed its version (one metadata query, single-flight per key), so a
replaced file is never served for longer than that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from cachetools import LRUCache

from . import defaults, http
from .breaker import CircuitBreaker
from .cache.disk import DiskCache, DiskEntry, content_name
from .cache.fill import Filler, FillReader, read_fd
from .cache.memory import MemoryEntry, MemoryTier
from .errors import ContentChanged, InvalidKey, NotFound, ServeFilesError, StoreUnavailable
from .feed import ChangeFeed
from .http import ByteRange, HttpPolicy, PreparedFile
from .keys import canonical_key
from .metrics import Metrics
from .nginx import TREE_LOCATION
from .nginx.tree import PublishedTree
from .store import Store, connect
from .store.base import PutSource, WritePrecondition
from .store.types import Change, FileMeta

logger = logging.getLogger("servefiles")

_T = TypeVar("_T")
PREPARED_CACHE_ENTRIES = 4096
ABSENT_ENTRIES = 20_000
"""Absent keys remembered, by a 32-byte digest: anyone can ask for any key, so this is what
bounds the memory a flood of 404s can take (about 4 MB); a forgotten one costs one query."""
VALIDATION_ENTRIES = 100_000
"""Keys whose last revalidation time is remembered; a forgotten one costs one more metadata query."""
RETRY_AFTER_SECONDS = 5
STALE_HEADER = (b"x-servefiles-stale", b"store-unavailable")
FEED_START_SECONDS = 2.0
"""How long start-up waits for the feed's first catch-up before serving anyway."""
PREFETCH_CONCURRENCY = 4
PRIME_ATTEMPTS = 5
"""How often a reply is rebuilt when its file changes between the metadata query and the fetch."""


@dataclass(frozen=True)
class CacheSettings:
    """Sizes and timings of the caches; the defaults suit a typical frontend."""

    memory_bytes: int = defaults.MEMORY_BYTES
    memory_file_bytes: int = defaults.MEMORY_FILE_BYTES
    disk_bytes: int = defaults.DISK_BYTES
    freshness_seconds: float = defaults.FRESHNESS_SECONDS
    fill_wait_seconds: float = defaults.FILL_WAIT_SECONDS
    feed: bool = defaults.FEED
    """Follow the store's change feed: while it is healthy, hits need no query at all."""
    feed_poll_seconds: float = defaults.FEED_POLL_SECONDS
    """How often a store that cannot notify (SQLite) is asked for changes."""
    feed_check_seconds: float = defaults.FEED_CHECK_SECONDS
    """How often an idle notifying feed (PostgreSQL) checks its connection."""
    prefetch: bool = defaults.PREFETCH
    """Fetch new versions as soon as they are announced, so even first requests hit the disk."""


class Body(ABC):
    """Where a reply's :class:`ByteRange` segments come from."""

    path: str | None = None
    """A complete file on disk holding the whole content (for pathsend / sendfile)."""

    @abstractmethod
    def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]: ...

    def close(self) -> None:  # noqa: B027 - most bodies hold nothing to release
        """Release what the body holds; called once the response is over."""


class MemoryBody(Body):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        if (segment.start, segment.end) == (0, len(self.data)):
            yield self.data
        else:
            yield self.data[segment.start : segment.end]


class DiskBody(Body):
    def __init__(self, fd: int, path: Path, inline: bool) -> None:
        self.fd = fd
        self.path = str(path)
        self.inline = inline

    def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        return read_fd(self.fd, segment.start, segment.end, self.inline)

    def close(self) -> None:
        os.close(self.fd)


class StoreBody(Body):
    """Bytes straight from the store: a cold range, or a cache that could not help."""

    def __init__(self, store: Store, meta: FileMeta, metrics: Metrics) -> None:
        self.store = store
        self.meta = meta
        self.metrics = metrics

    async def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        self.metrics.store_fetches.inc()
        async for chunk in self.store.read(self.meta.key, segment.start, segment.end, version=self.meta.version):
            yield chunk


class FillBody(Body):
    def __init__(self, reader: FillReader) -> None:
        self.reader = reader

    def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        return self.reader.chunks(segment)

    def close(self) -> None:
        self.reader.close()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class PrimedBody(Body):
    """A body whose first chunk was fetched before the reply was sent (see :meth:`FileService.serve`)."""

    def __init__(self, inner: Body, segment: ByteRange, first: bytes, rest: AsyncIterator[bytes]) -> None:
        self.inner = inner
        self.path = inner.path
        self._segment = segment
        self._first: bytes | None = first
        self._rest = rest

    @classmethod
    async def prime(cls, inner: Body, segment: ByteRange) -> PrimedBody:
        chunks = inner.chunks(segment)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        return cls(inner, segment, first, chunks)

    async def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        if segment is self._segment and self._first is not None:
            first, self._first = self._first, None
            if first:
                yield first
            async for chunk in self._rest:
                yield chunk
            return
        async for chunk in self.inner.chunks(segment):
            yield chunk

    def close(self) -> None:
        self.inner.close()


Source = Literal["memory", "disk", "miss"]
"""How a request for an existing file was answered, for the hit and miss counters."""


@dataclass(slots=True)
class Reply:
    response: http.Response
    body: Body | None = None
    source: Source | None = None
    """A cache tier's copy answered (``memory``, ``disk``), or none held the file (``miss``);
    None for a reply about no file (404, 405, 503). :meth:`FileService.serve` counts it once."""


@dataclass(slots=True)
class _Validation:
    revision: tuple[int, str]
    checked_at: float


@dataclass
class _Flights:
    """Single-flight for coroutines keyed by a string: one runs, the others await it."""

    running: dict[str, asyncio.Future[Any]] = field(default_factory=dict)

    async def run(self, key: str, make: Callable[[], Awaitable[_T]]) -> _T:
        future = self.running.get(key)
        if future is None:
            future = asyncio.ensure_future(make())
            self.running[key] = future
            future.add_done_callback(lambda _: self.running.pop(key, None))
        result: _T = await asyncio.shield(future)
        return result


class FileService:
    """Serves files from a store through the memory and disk tiers."""

    def __init__(
        self,
        db: str | Store,
        cache_dir: Path,
        policy: HttpPolicy | None = None,
        settings: CacheSettings | None = None,
        read_url: str | None = None,
        accel_prefix: str | None = None,
        tree: PublishedTree | None = None,
    ) -> None:
        self.policy = policy or HttpPolicy()
        self.accel_prefix = accel_prefix.rstrip("/") + "/" if accel_prefix else None
        """With nginx in front (X-Accel-Redirect): the internal location over ``objects/``."""
        self.settings = settings or CacheSettings()
        self.metrics = Metrics()
        self.memory = MemoryTier(self.settings.memory_bytes, self.settings.memory_file_bytes)
        self.disk = DiskCache(cache_dir, self.settings.disk_bytes)
        self.tree = tree
        """nginx's published tree, kept in step with the disk tier's entries (see nginx/tree.py)."""
        if tree is not None:
            tree.follow(self.disk)
        self.metrics.watch_evictions({"memory": lambda: self.memory.evictions, "disk": lambda: self.disk.evictions})
        self._url = db if isinstance(db, str) else None
        self._read_url = read_url
        self._store = None if isinstance(db, str) else db
        self._filler: Filler | None = None
        self._started: asyncio.Future[None] | None = None
        self._state: Literal["not started", "starting", "running", "stopping", "stopped"] = "not started"
        """Where the life cycle is, for the health report (which must answer in every state)."""
        self._store_error: str | None = None
        """Why the store last failed (start-up or a query), until a query succeeds again."""
        self._validated: LRUCache[str, _Validation] = LRUCache(VALIDATION_ENTRIES)
        self._prepared: LRUCache[tuple[str, tuple[int, str]], PreparedFile] = LRUCache(PREPARED_CACHE_ENTRIES)
        self._stats = _Flights()
        self.feed: ChangeFeed | None = None
        self._absent: LRUCache[bytes, bool] = LRUCache(ABSENT_ENTRIES)
        """Keys the store said were missing while the feed was healthy: until the feed announces
        them, asking again would only cost a query per request (a flood of 404s is free)."""
        self._latest: LRUCache[str, int] = LRUCache(VALIDATION_ENTRIES)
        """The newest version the feed announced per key: anything older is stale."""
        self._prefetching = asyncio.Semaphore(PREFETCH_CONCURRENCY)
        self._breaker = CircuitBreaker()
        self._background: set[asyncio.Task[None]] = set()
        self._outages = 0
        """Feed outages so far: a publish that overlapped one withdraws what it published."""
        self._not_found = http.not_found()
        self._not_allowed = http.method_not_allowed(self.policy)
        self._unavailable = http.unavailable(RETRY_AFTER_SECONDS)

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and the disk tier; runs once, however many requests race to it."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    def withdraw_tree(self) -> None:
        """Empty nginx's published tree, which nginx serves without asking anyone: at start
        (a stopped or crashed run left it, nobody has vouched for it since, and the database
        may be unreachable) and at close (nothing keeps it current any more). Keys are
        published again as they are asked for."""
        if self.tree is not None:
            self.tree.clear()

    def _start_soon(self) -> None:
        """Begin :meth:`start` without waiting for it (a failure is kept for the health report)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
            self._started.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _start(self) -> None:
        self._state = "starting"
        await asyncio.to_thread(self.withdraw_tree)
        try:
            if self._store is None:
                assert self._url is not None
                self._store = await connect(self._url, self._read_url)
            report = await asyncio.to_thread(self.disk.open)
            if self.tree is not None:
                await asyncio.to_thread(self.tree.sweep, self.disk.get)
        except BaseException as exc:
            self._started = None  # let a later request try again (the database may come back)
            if self._state == "starting":
                self._state = "not started"
            if isinstance(exc, Exception):
                self._store_error = str(exc) if isinstance(exc, StoreUnavailable) else f"{type(exc).__name__}: {exc}"
            raise
        self._store_error = None
        logger.info("disk cache %s: %d entries, %d bytes", self.disk.root, report.entries, report.bytes)
        self._filler = Filler(self._store, self.disk, self.memory, self.metrics, self.settings.fill_wait_seconds)
        if self.settings.feed:
            await self._start_feed(self._store)
        self._state = "running"

    async def _start_feed(self, store: Store) -> None:
        settings = self.settings
        self.feed = ChangeFeed(store, self.disk.root, self._apply_changes, settings.feed_poll_seconds,
                               settings.feed_check_seconds, on_down=self._feed_down)  # fmt: skip
        if not self.feed.load():
            # No cursor for this database: nothing here can be vouched for.
            dropped = await asyncio.to_thread(self.disk.clear)
            if dropped:
                logger.warning("disk cache %s was not filled from this database: cleared", self.disk.root)
            # An empty cache has nothing to invalidate: follow from now on, rather than
            # replaying the database's whole history (a million keys, a million changes).
            self.feed.cursor = await store.last_version()
        self.feed.start()
        await self.feed.wait_caught_up(FEED_START_SECONDS)

    async def _apply_changes(self, changes: list[Change]) -> None:
        """Drop every cached copy older than what the feed announces (and prefetch, if asked)."""
        for change in changes:
            self._latest[change.key] = change.version
            self._validated.pop(change.key, None)
            self._absent.pop(_digest(change.key), None)
            cached = self.memory.get(change.key)
            if cached is not None and cached.file.meta.version < change.version:
                self.memory.discard(change.key)
        await asyncio.to_thread(self._discard_older_on_disk, changes)
        if self.settings.prefetch:
            for change in changes:
                if not change.deleted:
                    self._prefetch(change.key)

    def _feed_down(self) -> None:
        """nginx serves the published tree without asking: withdraw it until the feed is back."""
        self._absent.clear()
        self._outages += 1
        if self.tree is not None:
            task = asyncio.create_task(asyncio.to_thread(self.withdraw_tree))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _discard_older_on_disk(self, changes: list[Change]) -> None:
        """Raises if the index cannot be written: the feed then retries the batch (its cursor did not move)."""
        for change in changes:
            entry = self.disk.get(change.key)
            if entry is not None and entry.meta.version < change.version:
                self.disk.discard(change.key)

    def _prefetch(self, key: str) -> None:
        async def fetch() -> None:
            async with self._prefetching:
                with contextlib.suppress(ServeFilesError):
                    meta = await self._stats.run(key, lambda: self._revalidate(key))
                    if meta is not None and self._filler is not None:
                        self._filler.start(meta, self.prepared(meta))

        task = asyncio.create_task(fetch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def store(self) -> Store:
        assert self._store is not None, "FileService.start() first"
        return self._store

    async def close(self) -> None:
        self._state = "stopping"
        starting = self._started
        if starting is not None and not starting.done():
            starting.cancel()  # a start-up still waiting on the database: nothing to wait for now
            await asyncio.wait([starting])
        if self.feed is not None:
            await self.feed.close()
            self.feed = None
        for task in list(self._background):
            task.cancel()
        if self._filler is not None:
            await self._filler.close()
        if self._url is not None and self._store is not None:
            store, self._store = self._store, None
            await store.close()
        await asyncio.to_thread(self.withdraw_tree)  # nginx then asks servefiles: a 502 while it is down
        self.disk.close()
        self._started = None
        self._state = "stopped"

    async def health(self) -> dict[str, Any]:
        """The liveness report every adapter sends as JSON with status 200, in every state.

        It reads this process's own state and never waits on the database (a slow or
        absent database must not make a liveness probe fail or hang): ``status`` is
        always ``"ok"``; ``state`` is ``"not started"``, ``"starting"``, ``"running"``,
        ``"stopping"`` or ``"stopped"``; ``store`` is ``"ok"``, ``"not connected"`` or
        ``"unavailable: REASON"`` (the last failure, start-up or query, until a query
        succeeds; DSNs in it are shown without their password); ``feed`` (while one
        runs) its health, cursor and last error; ``disk`` the tier's entries, bytes and
        max_bytes, or None while its index is not open; ``memory`` its entries and bytes.
        A service never started is started in the background (as the first request would).
        """
        if self._state == "not started":
            self._start_soon()
        report: dict[str, Any] = {"status": "ok", "state": self._state}
        if self._store_error is not None:
            report["store"] = f"unavailable: {self._store_error}"
        else:
            report["store"] = "ok" if self._state == "running" else "not connected"
        if self.feed is not None:
            report["feed"] = {"healthy": self.feed.healthy, "cursor": self.feed.cursor, "error": self.feed.last_error}
        report["disk"] = None
        if self.disk.is_open:
            try:
                stats = self.disk.stats()
                report["disk"] = {"entries": stats.entries, "bytes": stats.bytes, "max_bytes": stats.max_bytes}
            except (sqlite3.Error, OSError) as exc:
                report["disk"] = {"error": f"{type(exc).__name__}: {exc}"}
        report["memory"] = {"entries": len(self.memory), "bytes": self.memory.bytes}
        return report

    # -- writes -------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: PutSource,
        content_type: str | None = None,
        *,
        expect: WritePrecondition | None = None,
    ) -> FileMeta:
        """:meth:`Store.put`, then this frontend serves the new version at once (read-your-writes);
        the others learn of it from the change feed."""
        await self.start()
        meta = await self.store.put(key, data, content_type, expect=expect)
        await self._wrote(meta.key, meta.version, meta.revision)
        return meta

    async def delete(self, key: str, *, expect: WritePrecondition | None = None) -> int | None:
        """:meth:`Store.delete`, then this frontend answers 404 at once (read-your-writes)."""
        await self.start()
        key = canonical_key(key)
        version = await self.store.delete(key, expect=expect)
        if version is not None:
            await self._wrote(key, version, None)
        return version

    async def stat(self, key: str) -> FileMeta | None:
        """The live file's metadata, straight from the store."""
        await self.start()
        return await self.store.stat(key)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The bytes of ``key`` straight from the store (:meth:`Store.read`), for the Python APIs."""
        await self.start()
        async for chunk in self.store.read(key):
            yield chunk

    async def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> list[FileMeta]:
        """One page of live files, as :meth:`Store.list`."""
        await self.start()
        return await self.store.list(prefix, limit, after)

    async def _wrote(self, key: str, version: int, revision: tuple[int, str] | None) -> None:
        """Make every older cached copy stale here and now, without waiting for the feed.

        ``_latest`` outdates copies while the feed is healthy, ``_validated``
        while it is not; copies a fill of the old version adds later are caught
        by the same two checks.
        """
        if self._latest.get(key, 0) < version:
            self._latest[key] = version
        self._absent.pop(_digest(key), None)
        if revision is None:
            self._validated.pop(key, None)
        else:
            self._validated[key] = _Validation(revision, time.monotonic())
        await self._discard(key)

    # -- the request path ---------------------------------------------------------------

    async def serve(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply:
        """The reply to a GET or HEAD of ``{prefix}/{raw_key}``.

        A body fetched from the store is primed: its first bytes are in hand before the
        reply goes out, so a file replaced or deleted between the metadata query and the
        fetch (its old chunks are gone) is asked for again — the client gets the new
        version or a 404 — instead of a status line followed by a cut connection. The
        database going away at that point is a 503 with Retry-After rather than a cut.

        Each reply about a file is counted once, however many attempts it took: a hit of
        the tier whose copy answered it, or a miss (see :attr:`Reply.source`).
        """
        reply = await self._serve_primed(method, raw_key, headers)
        if reply.source == "memory":
            self.metrics.memory_hits.inc()
        elif reply.source == "disk":
            self.metrics.disk_hits.inc()
        elif reply.source == "miss":
            self.metrics.misses.inc()
        return reply

    async def _serve_primed(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply:
        for _ in range(PRIME_ATTEMPTS):
            reply = await self._serve_once(method, raw_key, headers)
            if method == "HEAD" or not isinstance(reply.body, FillBody | StoreBody):
                return reply
            segment = next((s for s in reply.response.body if isinstance(s, ByteRange)), None)
            if segment is None:
                return reply
            try:
                reply.body = await PrimedBody.prime(reply.body, segment)
                return reply
            except (ContentChanged, NotFound):
                reply.body.close()  # changed under us: ask the store again
            except StoreUnavailable as exc:
                reply.body.close()
                logger.warning("store unavailable: %s", exc)
                return Reply(self._unavailable)
        logger.warning("%s changed %d times while being fetched; answering 503", raw_key, PRIME_ATTEMPTS)
        return Reply(self._unavailable)

    async def _serve_once(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply:
        if method not in ("GET", "HEAD"):
            return Reply(self._not_allowed)
        try:
            key = canonical_key(raw_key)
        except InvalidKey:
            return Reply(self._not_found)
        try:
            if self._filler is None:
                await self.start()
            filled = False
            if self.accel_prefix is not None:
                accelerated, filled = await self._accelerated(method, headers, key)
                if accelerated is not None:
                    return accelerated
            reply = await self._from_tiers(method, headers, key)
            if filled and reply.source is not None:
                reply.source = "miss"  # on disk only because this request's own fill put it there
            return reply
        except StoreUnavailable as exc:
            logger.warning("store unavailable: %s", exc)
            return Reply(self._unavailable)

    async def _from_tiers(self, method: str, headers: Mapping[str, str], key: str) -> Reply:
        """Memory, then disk, then the store."""
        now = time.monotonic()
        entry = self.memory.get(key)
        if entry is not None and self._is_fresh(key, entry.file.meta.revision, now):
            return Reply(http.respond(method, headers, entry.file, time.time()), MemoryBody(entry.body), "memory")
        disk_entry = self.disk.get(key)
        if disk_entry is not None and self._is_fresh(key, disk_entry.meta.revision, now):
            reply = self._from_disk(method, headers, disk_entry)
            if reply is not None:
                return reply
        if entry is None and disk_entry is None and self._known_absent(key):
            return Reply(self._not_found)
        return await self._from_store(method, headers, key, entry, disk_entry)

    async def _accelerated(self, method: str, headers: Mapping[str, str], key: str) -> tuple[Reply | None, bool]:
        """Hand the bytes to nginx: answer with X-Accel-Redirect — to the published tree, where
        nginx judges preconditions and ranges against the tree file itself, or to the content
        file, for a plain whole-file GET that servefiles has judged.

        None when neither applies or can be done (a HEAD or a range that is not for the tree,
        a miss of a file the tree will not take, the cache cannot take the file, the database
        is down): the ordinary path then answers, streaming a miss as it writes it through,
        or from a stale copy. A miss of a file for the tree fills the disk tier first, so
        that even the first response carries nginx's validators, as every later hit will.
        The flag says whether this request filled the disk tier: its reply is a miss then.
        """
        assert self.accel_prefix is not None and self._filler is not None
        tree = self.tree
        if tree is None and (method != "GET" or any(name in headers for name in http.ACCEL_BLOCKERS)):
            return None, False
        entry = self.disk.get(key)
        if entry is None and self._known_absent(key):
            return Reply(self._not_found), False
        filled = False
        if entry is None or not self._is_fresh(key, entry.meta.revision, time.monotonic()):
            try:
                meta = await self._stats.run(key, lambda: self._revalidate(key))
            except StoreUnavailable:
                return None, False
            if meta is None:
                return Reply(self._not_found), False
            if entry is None or entry.meta.revision != meta.revision:
                if tree is None or not tree.accepts(meta):
                    return None, False  # streamed at once; the next request finds it on disk
                try:
                    if not await self._filler.fill(meta, self.prepared(meta)):
                        return None, False
                except ServeFilesError:
                    return None, False
                entry, filled = DiskEntry(meta, self.disk.content_path(meta.sha256)), True
        source: Source = "miss" if filled else "disk"
        fd = self.disk.open_entry(entry)
        if fd is None:
            return None, False  # damaged or gone: the ordinary path refetches it
        os.close(fd)
        file = self.prepared(entry.meta)
        if tree is not None and tree.accepts(entry.meta) and await self._publish(entry):
            location = TREE_LOCATION + quote(entry.meta.key, safe="/")
            return Reply(http.accel_redirect(file, location, time.time()), None, source), False
        if method != "GET" or any(name in headers for name in http.ACCEL_BLOCKERS):
            return None, filled
        response = http.respond("GET", headers, file, time.time())
        if response.status != 200:
            return Reply(response, None, source), False
        self.disk.touch(key)
        location = self.accel_prefix + content_name(entry.meta.sha256)
        return Reply(http.accel_redirect(file, location, time.time()), None, source), False

    async def _publish(self, entry: DiskEntry) -> bool:
        """Publish ``entry`` in the tree, only while the feed is up: nginx would serve it
        unchecked. An outage that began while the publish ran has cleared the tree already,
        perhaps before this file landed in it: withdraw it then."""
        outages = self._outages
        if self.feed is None or not self.feed.healthy:
            return False
        tree = self.tree
        assert tree is not None
        if not await asyncio.to_thread(tree.publish_entry, self.disk, entry):
            return False
        if self._outages != outages or not self.feed.healthy:
            await asyncio.to_thread(tree.withdraw, entry.meta.key)
            return False
        return True

    def _known_absent(self, key: str) -> bool:
        return bool(self._absent) and _digest(key) in self._absent and self.feed is not None and self.feed.healthy

    def _is_fresh(self, key: str, revision: tuple[int, str], now: float) -> bool:
        if self.feed is not None and self.feed.healthy:
            latest = self._latest.get(key)
            return latest is None or revision[0] >= latest
        seen = self._validated.get(key)
        return (
            seen is not None
            and seen.revision == revision
            and now - seen.checked_at < self.settings.freshness_seconds
        )

    def prepared(self, meta: FileMeta) -> PreparedFile:
        """The per-version header work, done once and kept for the next request."""
        prepared = self._prepared.get((meta.key, meta.revision))
        if prepared is None or prepared.meta != meta:
            prepared = PreparedFile(meta, self.policy)
            self._prepared[(meta.key, meta.revision)] = prepared
        return prepared

    def _from_disk(self, method: str, headers: Mapping[str, str], entry: DiskEntry) -> Reply | None:
        fd = self.disk.open_entry(entry)
        if fd is None:
            return None  # gone, truncated or tampered with: a miss
        file = self.prepared(entry.meta)
        self.disk.touch(entry.meta.key)
        response = http.respond(method, headers, file, time.time())
        if self.memory.fits(entry.meta.size):
            try:
                data = os.pread(fd, entry.meta.size, 0)
            finally:
                os.close(fd)
            # Promotion is once per file, not per hit: worth a hash, so a cache file damaged
            # in place (same size, other bytes) is refetched rather than served from memory.
            if len(data) == entry.meta.size and hashlib.sha256(data).hexdigest() == entry.meta.sha256:
                self.memory.put(entry.meta.key, MemoryEntry(file, data))
                return Reply(response, MemoryBody(data), "disk")
            logger.warning("disk cache: %s does not match its sha256; refetching it", entry.path)
            self.disk.drop_damaged(entry.meta)
            return None
        return Reply(response, DiskBody(fd, entry.path, inline=False), "disk")

    async def _from_store(
        self,
        method: str,
        headers: Mapping[str, str],
        key: str,
        cached: MemoryEntry | None,
        disk_entry: DiskEntry | None,
    ) -> Reply:
        cached_meta = cached.file.meta if cached else disk_entry.meta if disk_entry else None
        try:
            meta = await self._stats.run(key, lambda: self._revalidate(key))
        except StoreUnavailable:
            # The database is down but a copy is at hand: serve it (stale-if-error).
            stale = self._stale_copy(method, headers, cached, disk_entry)
            if stale is None:
                raise
            self.metrics.stale_served.inc()
            return stale
        if meta is None:
            return Reply(self._not_found)
        if cached_meta is not None and cached_meta.revision == meta.revision:
            if cached is not None:
                response = http.respond(method, headers, cached.file, time.time())
                return Reply(response, MemoryBody(cached.body), "memory")
            if disk_entry is not None:
                reply = self._from_disk(method, headers, disk_entry)
                if reply is not None:
                    return reply
        file = self.prepared(meta)
        response = http.respond(method, headers, file, time.time())
        if not any(isinstance(segment, ByteRange) for segment in response.body):
            return Reply(response, None, "miss")  # HEAD, 304, 412, 416: no content needed, yet no copy held it
        logger.debug("miss: %s version %d", key, meta.version)
        assert self._filler is not None
        fill = self._filler.get(meta)
        if response.status == 206 and fill is None:
            # A cold range: answer it from the store now, and fill the cache behind it.
            if meta.size <= self.settings.disk_bytes:
                self._filler.start(meta, file)
            return Reply(response, StoreBody(self.store, meta, self.metrics), "miss")
        fill = fill or self._filler.start(meta, file)
        return Reply(response, FillBody(FillReader(fill, self.store, self.metrics)), "miss")

    def _stale_copy(
        self, method: str, headers: Mapping[str, str], cached: MemoryEntry | None, disk_entry: DiskEntry | None
    ) -> Reply | None:
        """A cached copy, marked as possibly stale (``X-Servefiles-Stale``), or None."""
        if cached is not None:
            response = http.respond(method, headers, cached.file, time.time())
            reply: Reply | None = Reply(response, MemoryBody(cached.body), "memory")
        else:
            reply = self._from_disk(method, headers, disk_entry) if disk_entry is not None else None
        if reply is not None:
            response = reply.response
            reply.response = http.Response(response.status, [*response.headers, STALE_HEADER], response.body)
        return reply

    async def _revalidate(self, key: str) -> FileMeta | None:
        """Ask the store for the key's current version; drop cached copies of any other.

        Guarded by the circuit breaker: with the database gone, requests fail
        fast (503, or a stale copy) instead of each waiting on it.
        """
        self._breaker.before()
        self.metrics.revalidations.inc()
        feed = self.feed
        cursor = feed.cursor if feed is not None and feed.healthy else None
        try:
            meta = await self.store.stat(key)
            if meta is not None and meta.version < self._latest.get(key, 0):
                meta = await self.store.stat(key)  # read before a change the feed has since announced
        except StoreUnavailable as exc:
            self._breaker.failed()
            self._store_error = str(exc)
            raise
        except BaseException:
            self._breaker.abandoned()
            raise
        self._breaker.succeeded()
        self._store_error = None
        if meta is None:
            self._validated.pop(key, None)
            if cursor is not None and feed is not None and feed.healthy and feed.cursor == cursor:
                self._absent[_digest(key)] = True  # no change arrived meanwhile: the feed will say when it exists
            await self._discard(key)
            return None
        cached = self.memory.get(key)
        disk_entry = self.disk.get(key)
        stale = (cached is not None and cached.file.meta.revision != meta.revision) or (
            disk_entry is not None and disk_entry.meta.revision != meta.revision
        )
        if stale:
            await self._discard(key)
        self._validated[key] = _Validation(meta.revision, time.monotonic())
        return meta

    async def _discard(self, key: str) -> None:
        """Drop every cached copy of ``key``. A disk copy that cannot be dropped now
        is harmless: it no longer matches the validated revision, so it is not served."""
        self.memory.discard(key)
        try:
            await asyncio.to_thread(self.disk.discard, key)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("disk cache: could not drop %s: %s", key, exc)
