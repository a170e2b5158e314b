"""The request path every adapter shares: key gate → memory → disk → store.

:class:`FileService` answers ``(method, raw key, request headers)`` with a
:class:`Reply` in three steps: **look up** the key once (:meth:`FileService.lookup`
gives a :class:`Found` — a fresh copy with its body, a stale copy while the database
is down, or the metadata of a miss — or None for an absent key), **decide** the HTTP
response in one place (:meth:`FileService.decide`, with :func:`servefiles.http.respond`),
and hand the reply to the adapter, which **sends** it. Freshness is the metadata view's
(:mod:`servefiles.metaview`); what runs beside the path is the :class:`Runtime`'s.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import http, pagecache
from .bodies import Body, DiskBody, FillBody, MemoryBody, PrimedBody, StoreBody
from .cache.disk import DiskCache, DiskEntry
from .cache.fill import opened_on_thread
from .cache.memory import MemoryEntry, MemoryTier
from .errors import ContentChanged, InvalidKey, NotFound, ServeFilesError, StoreUnavailable
from .feed import ChangeFeed
from .http import ByteRange, HttpPolicy, PreparedFile
from .http.replies import for_error
from .keys import canonical_key
from .metaview import MetadataView, Revision
from .metrics import Metrics
from .misses import Misses
from .runtime import CacheSettings, Runtime
from .shared_lru import SharedLRU
from .store import CHUNK_SIZE, Store
from .store.types import Change, FileMeta, Head

__all__ = ["CacheSettings", "FileService", "Found", "Reply", "Source"]

logger = logging.getLogger("servefiles")

PREPARED_CACHE_ENTRIES = 4096
"""Versions whose per-file header work is kept (about 1.1 KB each, 1.7-2.2 KB with the metadata only
it keeps alive; a memory-tier copy carries its own). Measured on the issue-15 workload (10,000
files, benchmarks/RESULTS.md, 2026-12-02): 4,096 instead of 8,192 took 5-9 MiB off a frontend's
peak RSS (96-107 -> 91-98 MiB) for 11-22 rebuilds per 100 requests instead of 2-4, about 1 µs of
CPU per request at 6.5 µs a rebuild; 2,048 saved little more (88-97 MiB) for 18-36 rebuilds."""
STALE_HEADER = (b"x-servefiles-stale", b"store-unavailable")
HEAD_BYTES = 4 * CHUNK_SIZE
"""Content a miss asks for with the metadata (1 MiB): the whole of most files (every avatar and
photo of the issue-15 workload), so their miss is one query and a reply of one message from its
bytes; a larger file's start, the rest read by blob id. Measured against one chunk (256 KiB):
benchmarks/RESULTS.md, 2026-11-30 evening."""
DISK_RECENCY_EVERY = 8
"""One memory hit in this many also refreshes the key's place in the disk tier's recency order
(:meth:`FileService.in_memory`). Without it a file answered from memory sinks to the disk tier's
least recent end and is evicted there, to be fetched again once memory lets it go: replayed on the
long-tail workload (256 MiB disk tier, 16 MiB memory), 86.6 % of requests hit without, 87.9 % with
one hit in 8, 88.5 % with every hit (s = 1.0; at s = 0.8: 76.0, 79.4 and 80.0 %). One in 8 keeps
most of that at an eighth of the cost: a lock, and a touch the index writes behind."""
LOOP_CHECK_BYTES = 1024 * 1024
"""A disk copy too large for the memory tier but no larger than this, all in the page cache, is
hashed on the event loop before this process first serves it (about 0.8 ms per MiB of sha256 on a
slow machine): on a thread, the request waited for the GIL at every step while the loop held it,
and such first reads were 70 % of the slowest 1 % of requests (benchmarks.workload --tail, 4 GiB
warm, server-side p99 47.5 ms). A larger file, or one the page cache lacks, is hashed on a thread."""
PREFETCH_CONCURRENCY = 4
PRIME_ATTEMPTS = 5
"""How often a reply is rebuilt when its file changes between the metadata query and the fetch."""

_READS = frozenset({"GET", "HEAD"})
Source = Literal["memory", "disk", "miss"]
"""How a request for an existing file was answered, for the hit and miss counters."""


@dataclass(slots=True)
class Reply:
    response: http.Response
    body: Body | None = None
    source: Source | None = None
    """A cache tier's copy answered (``memory``, ``disk``), or none held the file (``miss``);
    None for a reply about no file (404, 405, 503). :meth:`FileService.serve` counts it once."""
    meta: FileMeta | None = None
    """The version the reply is about (None for a reply about no file)."""
    file: PreparedFile | None = None
    """That version's prepared headers, when the reply was decided from them (an adapter may reuse
    their work: :meth:`PreparedFile.native_headers_200`)."""
    rendered: http.FieldLines | None = None
    """The response's headers already rendered as field lines (an nginx redirect's, made once per
    version), for an HTTP/1.1 server's head while the response still carries those headers."""


@dataclass(slots=True)
class Found:
    """What the lookup found for a key: the file's prepared headers, where they came from, and
    the body of a cached copy (None for a miss: the body is chosen once the response is)."""

    file: PreparedFile
    source: Source
    body: Body | None = None
    stale: bool = False
    """A copy served while the store is unreachable (stale-if-error, RFC 5861 §4)."""
    head: Head | None = None
    """For a miss: the content's start, fetched with the metadata in the same query."""
    sighted: bool = False
    """For a miss: the admission filter counted this request when it went to the store."""
    held: bool = False
    """For a miss: a tier held another revision (or a damaged copy) of the key, which was admitted
    then; its current one is admitted without waiting for more requests."""


def head_bytes(method: str, headers: Mapping[str, str]) -> int | None:
    """How much content to ask for with the metadata of a key no tier holds (:meth:`Store.fetch_head`):
    none for a HEAD (``stat`` alone: no content is needed); the metadata and blob only (0) for a
    conditional GET, likely a 304, and for a range not from byte 0; else :data:`HEAD_BYTES`."""
    if method != "GET":
        return None
    if "if-none-match" in headers or "if-modified-since" in headers:
        return 0
    range_value = headers.get("range")
    if range_value is not None and not range_value.replace(" ", "").lower().startswith("bytes=0-"):
        return 0
    return HEAD_BYTES


class FileService:
    """Serves files from a store through the memory and disk tiers (see the module)."""

    def __init__(
        self,
        db: str | Store,
        cache_dir: Path,
        policy: HttpPolicy | None = None,
        settings: CacheSettings | None = None,
        read_url: str | None = None,
    ) -> None:
        self.policy = policy or HttpPolicy()
        self.runtime = Runtime(db, cache_dir, settings or CacheSettings(), read_url)
        self.settings = self.runtime.settings
        self.metrics: Metrics = self.runtime.metrics
        self.memory: MemoryTier = self.runtime.memory
        self.disk: DiskCache = self.runtime.disk
        self.view: MetadataView = self.runtime.view
        self._prepared: SharedLRU[tuple[str, tuple[int, str]], PreparedFile] = SharedLRU(PREPARED_CACHE_ENTRIES)
        self._memory_hits = itertools.count(1)  # next() is atomic: request threads share it safely
        self._not_found = http.not_found()
        self._not_allowed = http.method_not_allowed(self.policy)
        self.misses = Misses(self.runtime)
        self._prefetching = asyncio.Semaphore(PREFETCH_CONCURRENCY)
        if self.settings.prefetch:
            self.runtime.hooks.announced.append(self._prefetch)

    @property
    def feed(self) -> ChangeFeed | None:
        return self.runtime.feed

    @property
    def store(self) -> Store:
        return self.runtime.store

    async def start(self) -> None:
        await self.runtime.start()

    async def close(self) -> None:
        await self.runtime.close()

    async def health(self) -> dict[str, Any]:
        """:meth:`Runtime.health`."""
        return self.runtime.health()

    # -- the request path ---------------------------------------------------------------------

    async def serve(self, method: str, raw_key: str, headers: Mapping[str, str], *, asked: bool = False) -> Reply:
        """The reply to a GET or HEAD of ``{prefix}/{raw_key}``, counted once as a hit or a miss.

        A fresh cached copy is decided on at once (:meth:`cached`), without a coroutine or a
        retry loop: that is most requests, and the whole of their cost is this path's. ``asked``:
        the caller has just had None from :meth:`cached` (an adapter tries it first), so it is
        not asked again; :meth:`answer` looks at the tiers itself."""
        reply = None if asked else self.cached(method, raw_key, headers)
        return reply or self.count(await self.answer(method, raw_key, headers))

    def cached(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply | None:
        """The reply, counted, when a fresh cached copy answers it — the memory tier's, else the disk
        tier's, opened — or when the healthy feed vouches that the key is absent (a 404); None for
        everything else (a miss, a copy to revalidate, a damaged file, a refused key, a service
        not started), which :meth:`answer` then answers on the event loop.

        Synchronous and safe on any thread: it reads only what is shared under locks (the tiers,
        the metadata view, the prepared headers), so the WSGI adapter calls it on the request's
        own thread and a hit never waits for the loop. It is exactly as fresh as the loop's path:
        the feed marks a version outdated in the view (:meth:`MetadataView.apply`) before it drops
        the copies, so a copy checked here after that is refused, one checked before is the
        version current when the request came. It writes nothing but a small disk file promoted to
        the memory tier (and what a hit records: recency, admission sightings, counters)."""
        if method not in _READS or not self.runtime.running:
            return None
        try:
            key = canonical_key(raw_key)
        except InvalidKey:
            return None  # counted and answered (a 404) by answer(), as every refused key is
        now = time.monotonic()
        found = self.in_memory(key, now)
        if found is None:
            entry = self.disk.get(key)
            if entry is None:
                if self.memory.peek(key) is None and self.view.known_absent(key):
                    return Reply(self._not_found)
                return None
            if not self.view.fresh(key, entry.meta.revision, now):
                return None
            found = self.open_disk(entry, drop_damaged=False)
            if found is None:
                return None
        return self.count(self.decide(method, headers, found))

    def count(self, reply: Reply) -> Reply:
        """Count a reply about a file once, however many attempts it took: a hit of the tier
        whose copy answered it, or a miss (see :attr:`Reply.source`)."""
        if reply.source == "memory":
            self.metrics.memory_hits.inc()
        elif reply.source == "disk":
            self.metrics.disk_hits.inc()
        elif reply.source == "miss":
            self.metrics.misses.inc()
        return reply

    async def answer(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply:
        """The reply, uncounted. A body fetched from the store is primed: its first bytes are in
        hand before the reply goes out, so a file replaced or deleted between the metadata query
        and the fetch is asked for again (the client gets the new version or a 404) instead of a
        status line followed by a cut connection; the database going away then is a 503."""
        for _ in range(PRIME_ATTEMPTS):
            reply = await self._answer_once(method, raw_key, headers)
            body = reply.body
            if method == "HEAD" or not isinstance(body, FillBody | StoreBody):
                return reply
            segment = next((s for s in reply.response.body if isinstance(s, ByteRange)), None)
            if segment is None:
                return reply
            try:
                reply.body = await PrimedBody.prime(body, segment)
                return reply
            except (ContentChanged, NotFound):
                body.close()  # changed under us: ask the store again
            except StoreUnavailable as exc:
                body.close()
                return self.refused(exc)
        logger.warning("%s changed %d times while being fetched; answering 503", raw_key, PRIME_ATTEMPTS)
        return Reply(for_error(StoreUnavailable(f"{raw_key} keeps changing"), "read"))

    async def _answer_once(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply:
        if method not in _READS:
            return Reply(self._not_allowed)
        try:
            key = canonical_key(raw_key)
            if not self.runtime.running:
                await self.start()
            found = await self.lookup(key, head_bytes(method, headers))
        except (InvalidKey, StoreUnavailable) as exc:
            return self.refused(exc)
        if found is None:
            return Reply(self._not_found)
        return self.decide(method, headers, found)

    def refused(self, exc: ServeFilesError) -> Reply:
        """A request the service cannot answer with a file, as :func:`~servefiles.http.replies.for_error`
        maps it (a bad key is a 404: a hostile URL learns nothing; an unreachable store a 503)."""
        if isinstance(exc, StoreUnavailable):
            logger.warning("store unavailable: %s", exc)
        elif isinstance(exc, InvalidKey):
            self.metrics.rejected["bad_key"].inc()
        return Reply(for_error(exc, "read"))

    def decide(self, method: str, headers: Mapping[str, str], found: Found) -> Reply:
        """The one HTTP decision of a GET or HEAD (:func:`servefiles.http.respond`), and the body
        that carries it out: the copy's, or for a miss a fill (or a store stream for a cold range)."""
        response = http.respond(method, headers, found.file, time.time())
        if found.stale:
            response = http.Response(response.status, [*response.headers, STALE_HEADER], response.body)
        body = found.body
        if body is None and found.source == "miss" and any(isinstance(s, ByteRange) for s in response.body):
            ranged = response.status == 206
            body = self.misses.body(found.file, ranged, found.head, held=found.held, sighted=found.sighted)
        return Reply(response, body, found.source, found.file.meta, found.file)

    async def lookup(self, key: str, head_bytes: int | None = None) -> Found | None:
        """Memory, then disk, then the store: the first fresh copy, else the store's word (None:
        absent). Raises StoreUnavailable when the store is needed, unreachable, and no copy is at hand.

        ``head_bytes`` (see :func:`head_bytes`): when no tier holds the key at all, the store is asked
        for its metadata and that much content in one query, carried in :attr:`Found.head`."""
        now = time.monotonic()
        found = self.in_memory(key, now)
        if found is not None:
            return found
        cached = self.memory.peek(key)  # in_memory counted its hit (if it holds a copy, not fresh)
        disk_entry = self.disk.get(key)
        if disk_entry is not None and self.view.fresh(key, disk_entry.meta.revision, now):
            found = await self._open_checked(disk_entry)
            if found is not None:
                return found
        if cached is None and disk_entry is None and self.view.known_absent(key):
            return None
        try:
            if cached is None and disk_entry is None and head_bytes is not None:
                self.runtime.admission.admit(key)  # a sighting (see _admit)
                checked = await self.view.revalidate_head(self.store, key, self._drop_other_revisions, head_bytes)
                meta, head = checked if checked is not None else (None, None)
            else:
                meta, head = await self.revalidate(key), None
        except StoreUnavailable:
            stale = await self._copy(cached, disk_entry, None)  # stale-if-error: the database is down, a copy is here
            if stale is None:
                raise
            self.metrics.stale_served.inc()
            stale.stale = True
            return stale
        if meta is None:
            return None
        held = cached is not None or disk_entry is not None
        sighted = not held and head_bytes is not None
        return await self._copy(cached, disk_entry, meta.revision) or Found(
            self.prepared(meta), "miss", head=head, sighted=sighted, held=held
        )

    def in_memory(self, key: str, now: float) -> Found | None:
        """The memory tier's copy of ``key`` if it is fresh at ``now`` (monotonic seconds)."""
        cached = self.memory.get(key)
        if cached is not None and self.view.fresh(key, cached.file.meta.revision, now):
            if not next(self._memory_hits) % DISK_RECENCY_EVERY:  # a hot file is the disk tier's to keep too
                self.disk.touch(key, cached.file.meta.revision)  # not an older copy there, though
            return Found(cached.file, "memory", MemoryBody(cached.body))
        return None

    async def _copy(
        self, cached: MemoryEntry | None, disk_entry: DiskEntry | None, revision: Revision | None
    ) -> Found | None:
        """The memory copy if there is one, else the disk copy — if of ``revision`` (any, when None)."""
        if cached is not None:
            current = revision in (None, cached.file.meta.revision)
            return Found(cached.file, "memory", MemoryBody(cached.body)) if current else None
        if disk_entry is not None and revision in (None, disk_entry.meta.revision):
            return await self._open_checked(disk_entry)
        return None

    async def _open_checked(self, entry: DiskEntry) -> Found | None:
        """:meth:`open_disk` on the loop, a file too large to read whole hashed first if this process
        has not vouched for it yet (:meth:`DiskCache.check_open`): on the loop when it is at most
        :data:`LOOP_CHECK_BYTES` and all in the page cache, else on a thread. The descriptor hashed
        is the one served (a file hashed within a timestamp tick of its last change is not
        remembered as verified, verified.py: opened again, it would be refused)."""
        found = self.open_disk(entry)
        if found is not None or self.memory.fits(entry.meta.size):
            return found
        if entry.meta.size <= LOOP_CHECK_BYTES:
            opened = self.disk.open_stamped(entry)
            if opened is None:
                return None  # gone (or not a regular file, dropped): a miss
            loop_fd, stamp = opened
            try:
                if pagecache.cached(loop_fd, 0, entry.meta.size):
                    if self.disk.check_open(entry, loop_fd, stamp):
                        return self._on_disk(entry, loop_fd)
                    os.close(loop_fd)
                    return None  # damaged, dropped: a miss
            except BaseException:  # whatever the check raised: the descriptor is not lost
                os.close(loop_fd)
                raise
            os.close(loop_fd)
        # Too large, or not in the page cache. The thread owns the descriptor it hashes: a
        # request cancelled meanwhile closes nothing under it.
        fd = await opened_on_thread(functools.partial(self.disk.open_checked, entry))
        return None if fd is None else self._on_disk(entry, fd)

    def open_disk(self, entry: DiskEntry, *, drop_damaged: bool = True) -> Found | None:
        """A disk copy, opened (None: gone, truncated or tampered with, so a miss). A file small
        enough for the memory tier is promoted on its way out. ``drop_damaged`` False (a request
        thread, :meth:`cached`): a damaged copy is left for the loop's lookup to drop and refetch.

        Every copy is hashed before this process first serves that very file (verified.py): a small
        one here, as it is read whole; a large one only once vouched for (None until then: the
        loop's :meth:`lookup` hashes it on a thread)."""
        opened = self.disk.open_stamped(entry, drop_damaged=drop_damaged)
        if opened is None:
            return None
        fd, stamp = opened
        meta = entry.meta
        if not self.memory.fits(meta.size):
            if self.disk.vouched(entry, stamp):
                return self._on_disk(entry, fd)
            os.close(fd)
            return None
        file = self._hit(meta)
        # A small file read whole is worth a hash the first time this process reads that file (a
        # cache file damaged in place — same size, other bytes — is refetched, not served), not on
        # every read: most small disk hits are not copied into memory (MemoryTier.offer).
        data = self.disk.read_whole(entry, fd, stamp, drop_damaged=drop_damaged)
        if data is None:
            return None
        self.memory.offer(meta.key, MemoryEntry(file, data))
        return Found(file, "disk", MemoryBody(data))

    def _on_disk(self, entry: DiskEntry, fd: int) -> Found:
        """A disk copy too large to read whole, served from ``fd`` (a file this process has hashed)."""
        return Found(self._hit(entry.meta), "disk", DiskBody(fd, entry.text, inline=False))

    def _hit(self, meta: FileMeta) -> PreparedFile:
        """What a disk hit records (recency, its frequency against newcomers); its prepared headers."""
        self.disk.touch(meta.key)
        self.runtime.admission.seen(meta.key)
        return self.prepared(meta)

    def prepared(self, meta: FileMeta) -> PreparedFile:
        """The per-version header work, done once and kept for the next request."""
        prepared = self._prepared.get((meta.key, meta.revision))
        if prepared is None or prepared.meta != meta:
            prepared = PreparedFile(meta, self.policy)
            self._prepared[(meta.key, meta.revision)] = prepared
        return prepared

    async def revalidate(self, key: str) -> FileMeta | None:
        """The store's current metadata of ``key`` (:meth:`MetadataView.revalidate`), copies of any
        other revision dropped. Raises StoreUnavailable (at once while the breaker is open)."""
        return await self.view.revalidate(self.store, key, self._drop_other_revisions)

    async def _drop_other_revisions(self, key: str, meta: FileMeta | None) -> None:
        memory_copy, disk_copy = self.memory.peek(key), self.disk.get(key)
        held = [memory_copy.file.meta] if memory_copy is not None else []
        held += [disk_copy.meta] if disk_copy is not None else []
        if meta is None or any(copy.revision != meta.revision for copy in held):
            await self.runtime.discard(key)

    def _prefetch(self, change: Change) -> None:
        """Fetch an announced version before anyone asks (``prefetch``), a few at a time."""
        if change.deleted:
            return
        key = change.key

        async def fetch() -> None:
            async with self._prefetching:
                try:
                    meta = await self.revalidate(key)
                except ServeFilesError:
                    return
                if meta is not None and self.runtime.filler is not None:
                    self.runtime.filler.start(meta, self.prepared(meta))

        self.runtime.spawn(fetch())
