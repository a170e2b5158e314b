"""What a frontend runs besides the request path, and its life cycle.

:class:`Runtime` owns the store connection, the memory and disk tiers, the fills and their admission,
the change feed and the :class:`~servefiles.metaview.MetadataView`; it starts them
once (however many requests race to it), keeps the view and the tiers true to the
feed's changes, reports liveness, and closes them. The request path
(:class:`~servefiles.service.FileService`) reads from what it holds.

Layers in front of the request path (nginx's published tree) take part through
:class:`Hooks`, so nothing here knows of them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import defaults
from .cache.admission import RIVALS, Admission
from .cache.disk import DiskCache, StartupReport
from .cache.fill import Filler
from .cache.memory import MemoryTier
from .errors import StoreUnavailable
from .feed import ChangeFeed
from .levels import FeedLevels, Levels, TierLevels
from .metaview import MetadataView, outdated
from .metrics import Metrics
from .probes import health_report
from .store import Store, connect
from .store.types import Change, FileMeta

logger = logging.getLogger("servefiles")

FEED_START_SECONDS = 2.0
"""How long start-up waits for the feed's first catch-up before serving anyway."""

State = Literal["not started", "starting", "running", "stopping", "stopped"]


@dataclass(frozen=True)
class CacheSettings:
    """Sizes (bytes) and timings (seconds) of the caches; the defaults suit a typical frontend."""

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
    cache_min_uses: int = defaults.CACHE_MIN_USES
    """Admission: a file missed this many times within the window (:mod:`servefiles.cache.admission`)
    is written through to the disk tier; before that it is served from the store fetch alone.
    1 admits every file on its first request. Prefetch, warm and sync fill regardless."""


@dataclass
class Hooks:
    """Where a layer in front of the request path takes part in the life cycle: each callable
    runs in a worker thread (``before_start``, ``after_close``) or on the loop (the others)."""

    before_start: list[Callable[[], None]] = field(default_factory=list)
    """Before the store is asked for anything (it may be unreachable)."""
    after_start: list[Callable[[], None]] = field(default_factory=list)
    """Once the store answered, the disk tier is open and the feed has started (on the loop)."""
    after_close: list[Callable[[], None]] = field(default_factory=list)
    feed_down: list[Callable[[], None]] = field(default_factory=list)
    """The change feed just went down: nothing vouches for cached copies until it is back."""
    announced: list[Callable[[Change], None]] = field(default_factory=list)
    """A change the feed announced, after older copies were dropped."""


class Runtime:
    """The store connection, tiers, fills, admission, feed and metadata view of one frontend (see the module)."""

    def __init__(self, db: str | Store, cache_dir: Path, settings: CacheSettings, read_url: str | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.admission = Admission(settings.cache_min_uses)
        self.memory = MemoryTier(settings.memory_bytes, settings.memory_file_bytes, self.admission)
        self.disk = DiskCache(cache_dir, settings.disk_bytes)
        self.view = MetadataView(settings.freshness_seconds, self.metrics)
        self.metrics.watch(
            self.levels,
            {"memory": lambda: self.memory.evictions, "disk": lambda: self.disk.evictions},
            {"feed": self._feed_failures, "circuit_open": lambda: self.view.breaker.rejected},
            lambda: self.disk.verified.hashed,
        )
        self.hooks = Hooks()
        self.filler: Filler | None = None
        self.feed: ChangeFeed | None = None
        self._url = db if isinstance(db, str) else None
        self._read_url = read_url
        self._store = None if isinstance(db, str) else db
        self._store_answered = False
        self._past_feed_failures = 0
        """The failures of feeds closed before the current one (a restart makes a new feed)."""
        self._started: asyncio.Future[None] | None = None
        self._opening: asyncio.Future[StartupReport] | None = None
        """The disk tier's open on its thread: a close waits for it (cancelling the start-up does not
        stop the thread, and a disk opened after the close would stay open)."""
        self.state: State = "not started"
        """Where the life cycle is, for the health report (which must answer in every state)."""
        self._background: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> Store:
        assert self._store is not None, "start() first"
        return self._store

    @property
    def running(self) -> bool:
        return self.filler is not None

    async def start(self) -> None:
        """Open the store and the disk tier and follow the feed; runs once, however many requests race to it.

        Raises :class:`StoreUnavailable` when the database cannot be reached (a later call tries again)
        or while :meth:`close` runs (a start then would open what the close has just closed)."""
        if self.state == "stopping":
            raise StoreUnavailable("servefiles is closing")
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        started = self._started
        try:
            await asyncio.shield(started)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started.cancelled() and task is not None and not task.cancelling():
                # The start-up was cancelled by a close, not this caller: a 503, not a dropped request.
                raise StoreUnavailable("servefiles is closing") from None
            raise

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background until it ends or :meth:`close` cancels it."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _start_soon(self) -> None:
        """Begin :meth:`start` without waiting for it (a failure is kept for the health report); not
        while :meth:`close` runs."""
        if self._started is None and self.state != "stopping":
            self._started = asyncio.ensure_future(self._start())
            self._started.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _start(self) -> None:
        self.state = "starting"
        for hook in self.hooks.before_start:
            await asyncio.to_thread(hook)
        try:
            if self._store is None:
                assert self._url is not None
                self._store = await connect(self._url, self._read_url)
            self._store_answered = True
            opening = self._opening = asyncio.ensure_future(asyncio.to_thread(self.disk.open))
            report = await asyncio.shield(opening)
        except BaseException as exc:
            self._started = None  # let a later request try again (the database may come back)
            if self.state == "starting":
                self.state = "not started"
            if isinstance(exc, StoreUnavailable):
                self.view.store_error = str(exc)
                self.metrics.store_errors["connect"].inc()
            elif isinstance(exc, Exception):
                self.view.store_error = f"{type(exc).__name__}: {exc}"
            raise
        self.view.store_error = None
        logger.info("disk cache %s: %d entries, %d bytes", self.disk.root, report.entries, report.bytes)
        self.filler = Filler(self._store, self.disk, self.memory, self.metrics, self.settings.fill_wait_seconds)
        if self.settings.feed:
            await self._start_feed(self._store)
        self.state = "running"
        for started in self.hooks.after_start:
            started()

    async def _start_feed(self, store: Store) -> None:
        settings = self.settings
        self.feed = ChangeFeed(store, self.disk.root, self._apply_changes, settings.feed_poll_seconds,
                               settings.feed_check_seconds, on_down=self._feed_down,
                               on_up=self.view.store_answered, on_history_changed=self._drop_everything)  # fmt: skip
        self.view.feed = self.feed
        if not self.feed.load():
            # No cursor for this database: nothing here can be vouched for.
            dropped = await asyncio.to_thread(self.disk.clear)
            if dropped:
                logger.warning("disk cache %s was not filled from this database (or its history went back since): "
                               "cleared", self.disk.root)  # fmt: skip
            # An empty cache has nothing to invalidate: follow from now on, rather than
            # replaying the database's whole history (a million keys, a million changes).
            self.feed.cursor = await store.last_version()
        self.feed.start()
        await self.feed.wait_caught_up(FEED_START_SECONDS)

    async def _apply_changes(self, changes: list[Change]) -> None:
        """Drop every cached copy older than what the feed announces.

        Raises if the disk index cannot be written: the feed then retries the batch (its cursor did not move)."""
        self.view.apply(changes)
        for key in outdated(changes, self._memory_version):
            self.memory.discard(key)
        await asyncio.to_thread(self.disk.drop_outdated, changes)
        for change in changes:
            for hook in self.hooks.announced:
                hook(change)

    async def _drop_everything(self) -> None:
        """The database's history went back (:meth:`ChangeFeed._check_history`): no cached copy, no
        announced version, no validation and no absence is vouched for any more. The store has just
        answered: the copies dropped are fetched again at once, never refused by an open circuit."""
        self.view.store_answered()
        self.memory.clear()  # first: a request thread that still finds a copy checked it before the forget
        self.view.forget()
        await asyncio.to_thread(self.disk.clear)
        self.memory.clear()  # what a hit promoted from the disk tier while it was being cleared

    def _memory_version(self, key: str) -> int | None:
        cached = self.memory.peek(key)
        return cached.file.meta.version if cached is not None else None

    def _feed_down(self) -> None:
        self.view.feed_down()
        for hook in self.hooks.feed_down:
            hook()

    async def wrote(self, key: str, version: int, revision: tuple[int, str] | None) -> None:
        """This frontend wrote ``key`` (``revision`` None: deleted it): it serves the new state at
        once (read-your-writes), without waiting for the feed (:meth:`MetadataView.wrote`)."""
        self.view.wrote(key, version, revision)
        await self.discard(key)

    def worth_a_disk_write(self, meta: FileMeta, *, sighted: bool, room_admits: bool = True) -> bool:
        """The admission rule for ``meta``'s file, which no tier holds on disk: any file while the
        disk tier has room for it (``room_admits``), beside the fills running; once it is full, one
        asked for ``cache_min_uses`` times lately (this request counted now, unless ``sighted``
        already) and more often than the entries it would evict together
        (:meth:`Admission.worth_writing`; as often, where nginx answers the hits). Never a file
        larger than the whole tier: its write would be refused."""
        if meta.size > self.disk.max_bytes:
            return False
        return self.admission.worth_writing(
            meta.key, lambda: room_admits and self._room_for(meta), lambda: self.disk.victims(meta, RIVALS),
            sighted=sighted,
        )  # fmt: skip

    def _room_for(self, meta: FileMeta) -> bool:
        """Whether the disk tier holds ``meta``'s file without evicting anything, counting the
        fills running now as installed (concurrent first misses would otherwise each see the same
        room, and together evict with no comparison). Only while this process has the cache dir
        to itself: its in-memory index does not see other processes' installs, and asking
        SQLite for the dir's total on every miss costs a query; a shared dir waits for the
        sightings, as before."""
        pending = self.filler.pending_bytes if self.filler is not None else 0
        return self.disk.alone() and self.disk.fits(meta, pending)

    async def discard(self, key: str) -> None:
        """Drop every cached copy of ``key``. A disk copy that cannot be dropped now is
        harmless: it no longer matches the validated revision, so it is not served."""
        self.memory.discard(key)
        try:
            await asyncio.to_thread(self.disk.discard, key)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("disk cache: could not drop %s: %s", key, exc, extra={"key": key})

    async def close(self) -> None:
        """Stop the feed, background work and fills; close a store opened here and the disk index.
        However it ends (a hook that raises, a close cancelled), the disk index is closed and the
        state is "stopped", from which :meth:`start` may run again."""
        self.state = "stopping"
        try:
            starting = self._started
            if starting is not None and not starting.done():
                starting.cancel()  # a start-up still waiting on the database: nothing to wait for now
                await asyncio.wait([starting])
            opening = self._opening
            if opening is not None:  # a disk open still running on its thread ends before the close
                await asyncio.wait([opening])
                self._opening = None  # none can begin meanwhile: start() refuses while stopping
            self._store_answered = False
            if self.feed is not None:
                await self.feed.close()
                self._past_feed_failures += self.feed.failures
                self.feed = self.view.feed = None
            for task in list(self._background):
                task.cancel()
            if self.filler is not None:
                await self.filler.close()
            if self._url is not None and self._store is not None:
                store, self._store = self._store, None
                await store.close()
            for hook in self.hooks.after_close:
                await asyncio.to_thread(hook)
        finally:
            self.disk.close()  # waits for an open still on its thread (its lock) if the wait above was cut
            self._started = None
            self.state = "stopped"

    def health(self) -> dict[str, Any]:
        """The detailed liveness report (:func:`servefiles.probes.health_report` of :meth:`probe`)."""
        return health_report(self.probe(), detailed=True)

    def probe(self) -> Levels:
        """:meth:`levels` for a health or readiness probe: a service never started is started in
        the background first (as the first request would), or it would never become ready."""
        if self.state == "not started":
            self._start_soon()
        return self.levels()

    def levels(self) -> Levels:
        """This frontend's state now (:class:`~servefiles.levels.Levels`), read from its own objects:
        it never waits on the database, so a probe or a scrape answers in every state."""
        disk, disk_error = None, None
        if self.disk.is_open:
            try:
                stats = self.disk.stats()
                disk = TierLevels(stats.entries, stats.bytes, stats.max_bytes)
            except (sqlite3.Error, OSError) as exc:
                disk_error = f"{type(exc).__name__}: {exc}"
        return Levels(
            state=self.state, store_answered=self._store_answered, store_error=self.view.store_error,
            breaker_open=self.view.breaker.is_open, memory=TierLevels(len(self.memory), self.memory.bytes,
            self.memory.max_bytes), disk_open=self.disk.is_open, disk=disk, disk_error=disk_error,
            fills_in_flight=self.filler.in_flight if self.filler is not None else 0, feed_enabled=self.settings.feed,
            feed=self._feed_levels(), freshness_seconds=self.settings.freshness_seconds,
        )  # fmt: skip

    def _feed_levels(self) -> FeedLevels | None:
        feed = self.feed
        if feed is None:
            return None
        now = time.monotonic()
        return FeedLevels(
            connected=feed.healthy, caught_up_once=feed.caught_up_once, cursor=feed.cursor,
            lag_versions=max(0, self.view.newest_version - feed.cursor), lag_seconds=feed.lag_seconds(now),
            last_change_age_seconds=None if feed.applied_at is None else now - feed.applied_at, error=feed.last_error,
        )  # fmt: skip

    def _feed_failures(self) -> int:
        return self._past_feed_failures + (self.feed.failures if self.feed is not None else 0)
