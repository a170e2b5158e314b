"""The metadata view: what this frontend knows of each key's current version.

Per key it remembers the newest version the change feed announced, when the store
last confirmed a revision, and whether the store said the key is absent; it runs
the revalidation query (one at a time per key, behind the circuit breaker). The
rule that decides whether a cached copy may be served is :func:`is_fresh`, a pure
function:

* while the change feed is healthy, a copy is current unless the feed has announced
  a newer version of its key (and the feed drops such copies as it announces them):
  a hit costs no query;
* while the feed is down, a copy is trusted for ``freshness_seconds`` after the
  store last confirmed its revision, so a replaced file is never served for longer
  than that interval.

The view holds no cached bytes: dropping copies is the caller's, told by
:func:`outdated` and by the ``on_checked`` callback of :meth:`MetadataView.revalidate`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .breaker import CircuitBreaker
from .errors import StoreUnavailable
from .feed import ChangeFeed
from .keys import key_digest
from .metrics import Metrics
from .shared_lru import SharedLRU
from .store import Store
from .store.types import Change, FileMeta, Head

_T = TypeVar("_T")
Revision = tuple[int, str]
"""A version of a key with its content hash: ``(version, sha256)``."""
Checked = tuple[FileMeta, Head | None]
"""What a revalidation found of a live key: its metadata, and its head when the query fetched one."""

ABSENT_ENTRIES = 20_000
"""Absent keys remembered, by a 32-byte digest: anyone can ask for any key, so this is what
bounds the memory a flood of 404s can take (about 4 MB); a forgotten one costs one query."""
VALIDATION_ENTRIES = 100_000
"""Keys whose last revalidation time is remembered; a forgotten one costs one more metadata query."""


@dataclass(slots=True)
class Validation:
    """The store confirmed ``revision`` as the key's current one at ``checked_at`` (monotonic seconds)."""

    revision: Revision
    checked_at: float


def is_fresh(
    revision: Revision,
    *,
    feed_healthy: bool,
    latest: int | None,
    validation: Validation | None,
    now: float,
    freshness_seconds: float,
) -> bool:
    """Whether a cached copy of ``revision`` may be served at ``now`` (monotonic seconds).

    With a healthy feed: unless ``latest`` (the newest version announced) is newer.
    Without: only if the store confirmed this very revision less than
    ``freshness_seconds`` ago.
    """
    if feed_healthy:
        return latest is None or revision[0] >= latest
    if validation is None or validation.revision != revision:
        return False
    return now - validation.checked_at < freshness_seconds


def outdated(changes: Iterable[Change], cached_version: Callable[[str], int | None]) -> list[str]:
    """The keys of ``changes`` whose cached copy (``cached_version(key)``, None when there is
    none) the change outdates (:meth:`Change.outdates`): the copies to drop."""
    return [change.key for change in changes if change.outdates(cached_version(change.key))]


class _LeaderGone(Exception):
    """The caller running a flight was cancelled: a waiter runs it again for itself."""


@dataclass
class Flights:
    """Single-flight for coroutines keyed by a string: one runs, the others await its result.

    The first caller runs the coroutine itself, in its own task: no task is created and no
    loop turn is spent between the request and its query (each turn costs milliseconds on a
    busy loop, and a miss is already the slow path). The others wait for its result. If that
    first caller is cancelled (its client went away), the query stops with it, and one of the
    waiters runs it again for itself: nobody is answered with another request's cancellation.
    """

    running: dict[str, asyncio.Future[Any]] = field(default_factory=dict)

    async def run(self, key: str, make: Callable[[], Awaitable[_T]]) -> _T:
        while (running := self.running.get(key)) is not None:
            try:
                # shield: a waiter cancelled must not cancel the future the others share
                shared: _T = await asyncio.shield(running)
                return shared
            except _LeaderGone:
                continue
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.running[key] = future
        try:
            result = await make()
        except Exception as exc:
            future.set_exception(exc)
            raise
        except BaseException:  # cancelled, closed, interrupted: this caller's end, not the waiters'
            future.set_exception(_LeaderGone())
            raise
        else:
            future.set_result(result)
            return result
        finally:
            if self.running.get(key) is future:
                del self.running[key]
            future.exception()  # set above in every case; retrieved: no warning when nobody waited


class MetadataView:
    """Key → latest announced version, last validation, known-absent; and the revalidation query.

    ``feed`` is the change feed once one runs (None without one: every copy then
    needs a recent validation). ``store_error`` is why the store last failed a
    revalidation, until one succeeds.
    """

    def __init__(self, freshness_seconds: float, metrics: Metrics, breaker: CircuitBreaker | None = None) -> None:
        self.freshness_seconds = freshness_seconds
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self.feed: ChangeFeed | None = None
        self.store_error: str | None = None
        self.newest_version = 0
        """The newest version this frontend has seen the store issue: in the feed's batches, in
        answers to its queries, in its own writes (the feed's lag is measured against it)."""
        # Shared with the WSGI adapter's request threads, which answer hits by :meth:`fresh` too:
        # a change applied here is seen by every thread's next check (shared_lru.py).
        self._latest: SharedLRU[str, int] = SharedLRU(VALIDATION_ENTRIES)
        self._validated: SharedLRU[str, Validation] = SharedLRU(VALIDATION_ENTRIES)
        self._absent: SharedLRU[bytes, bool] = SharedLRU(ABSENT_ENTRIES)
        """Keys the store said were missing while the feed was healthy: until the feed announces
        them, asking again would only cost a query per request (a flood of 404s is free)."""
        self._flights = Flights()

    @property
    def feed_healthy(self) -> bool:
        return self.feed is not None and self.feed.healthy

    def fresh(self, key: str, revision: Revision, now: float) -> bool:
        """:func:`is_fresh` for a cached copy of ``key`` at ``now`` (monotonic seconds)."""
        healthy = self.feed_healthy
        return is_fresh(
            revision,
            feed_healthy=healthy,
            latest=self._latest.get(key) if healthy else None,  # each read is a hit path's cost:
            validation=None if healthy else self._validated.get(key),  # only what the rule reads
            now=now,
            freshness_seconds=self.freshness_seconds,
        )

    def known_absent(self, key: str) -> bool:
        """The store said ``key`` is missing, and the healthy feed has announced nothing of it since."""
        return bool(self._absent) and key_digest(key) in self._absent and self.feed_healthy

    def apply(self, changes: Iterable[Change]) -> None:
        """Take in a batch of the feed's changes: every copy older than announced is stale from now on."""
        for change in changes:
            self._latest[change.key] = change.version
            self._validated.pop(change.key)
            self._absent.pop(key_digest(change.key))
            self.newest_version = max(self.newest_version, change.version)

    def wrote(self, key: str, version: int, revision: Revision | None) -> None:
        """This frontend wrote ``key`` (``revision`` None: deleted it): older copies are stale here
        and now, without waiting for the feed — ``latest`` outdates them while the feed is healthy,
        the validation while it is not; copies a fill of the old version adds later are caught too.
        The store answered: the circuit breaker closes (:meth:`store_answered`)."""
        self.store_answered()
        self.newest_version = max(self.newest_version, version)
        if self._latest.get(key, 0) < version:
            self._latest[key] = version
        self._absent.pop(key_digest(key))
        if revision is None:
            self._validated.pop(key)
        else:
            self._validated[key] = Validation(revision, time.monotonic())

    def store_answered(self) -> None:
        """The store just answered (a write, the feed's catch-up): the circuit is closed for every
        request, not only after a revalidation's own trial (read-your-writes right after a fail-over)."""
        self.breaker.succeeded()
        self.store_error = None

    def forget(self) -> None:
        """Forget every announced version, validation and absence: the database's history went back
        (its versions may be issued again: the newest seen is forgotten too)."""
        self.newest_version = 0
        self._latest.clear()
        self._validated.clear()
        self._absent.clear()

    def feed_down(self) -> None:
        """Absence was vouched for by the feed: forget it while the feed is down."""
        self._absent.clear()

    async def revalidate(
        self, store: Store, key: str, on_checked: Callable[[str, FileMeta | None], Awaitable[None]]
    ) -> FileMeta | None:
        """The key's current metadata from the store (None: absent), one query per key however many
        ask at once; ``on_checked(key, meta)`` runs inside that one query's turn, for the caller to
        drop copies of any other revision before any waiter goes on.

        Raises :class:`StoreUnavailable` (at once while the circuit breaker is open).
        """
        checked = await self._flights.run(key, lambda: self._revalidate(store, key, on_checked, None))
        return checked[0] if checked is not None else None

    async def revalidate_head(
        self,
        store: Store,
        key: str,
        on_checked: Callable[[str, FileMeta | None], Awaitable[None]],
        max_bytes: int,
    ) -> Checked | None:
        """:meth:`revalidate` for a key with no copy here: the metadata AND, for a file of at most
        ``max_bytes``, its content in the same one query (:meth:`Store.fetch_head` with ``whole``),
        so a small miss costs one round trip; a larger one comes with where its content is, so the
        read that follows locates nothing again (and fetches no byte twice).
        The head is None when this request joined a metadata-only query of the key already under
        way (single-flight: still one query per key). A head with bytes counts as a store fetch.
        """
        return await self._flights.run(key, lambda: self._revalidate(store, key, on_checked, max_bytes))

    async def _query(self, store: Store, key: str, max_bytes: int | None) -> Checked | None:
        """One query: ``stat`` (``max_bytes`` None) or ``fetch_head``."""
        if max_bytes is None:
            meta = await store.stat(key)
            return None if meta is None else (meta, None)
        started = time.perf_counter()
        head = await store.fetch_head(key, max_bytes, whole=True)
        if head is None:
            return None
        if head.data:
            self.metrics.store_fetches.inc()
            self.metrics.store_fetch.observe(time.perf_counter() - started)
            self.metrics.store_fetch_bytes.inc(len(head.data))
        return head.meta, head

    async def _revalidate(
        self,
        store: Store,
        key: str,
        on_checked: Callable[[str, FileMeta | None], Awaitable[None]],
        max_bytes: int | None,
    ) -> Checked | None:
        self.breaker.before()
        self.metrics.revalidations.inc()
        feed = self.feed
        cursor = feed.cursor if feed is not None and feed.healthy else None
        try:
            checked = await self._query(store, key, max_bytes)
            if checked is not None and checked[0].version < self._latest.get(key, 0):
                checked = await self._query(store, key, max_bytes)  # read before a change the feed has since announced
        except StoreUnavailable as exc:
            self.breaker.failed()
            self.store_error = str(exc)
            self.metrics.store_errors["query"].inc()
            raise
        except BaseException:
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()
        self.store_error = None
        meta = checked[0] if checked is not None else None
        if meta is not None and meta.version > self.newest_version:
            self.newest_version = meta.version
        if meta is None:
            self._validated.pop(key)
            if cursor is not None and feed is not None and feed.healthy and feed.cursor == cursor:
                self._absent[key_digest(key)] = True  # no change arrived meanwhile: the feed will say when it exists
        await on_checked(key, meta)
        if meta is not None:
            self._validated[key] = Validation(meta.revision, time.monotonic())
        return checked
