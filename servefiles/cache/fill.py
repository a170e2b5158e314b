"""Filling the cache on a miss: one store fetch per key, streamed while written.

A :class:`Fill` is the one fetch of one version of one key. It runs as its
own task, so a client that disconnects neither aborts nor corrupts it, and
every request that wants that version joins it:

* a small file (one that fits the memory tier) is read whole, kept in memory and
  handed to every waiter at once, then written to the disk tier;
* a large file streams into a disk-tier temp file; waiters read that file
  (one shared descriptor, positional reads) as far as it has been written,
  so the first bytes go out before the last ones have arrived.

A process alone in its cache dir needs nothing more (:meth:`DiskCache.fill_lock`
is None: no lock file, no thread hop). Across processes that share a cache dir, the
disk tier's lock file elects one filler; the others wait for its entry, and a waiter
that waits longer than ``wait_seconds`` reads from the store itself. If the disk write fails (disk
full, read-only), the bytes beyond what reached the disk come from the store:
a cache failure never fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from ..errors import CacheWriteError
from ..http import ByteRange, PreparedFile
from ..localfs import open_regular
from ..metrics import Metrics
from ..store import Store
from ..store.types import FileMeta, Head
from ..threadwork import finished_on_thread, taken_on_thread
from .disk import DiskCache
from .layout import DiskEntry
from .locks import FillLock
from .memory import MemoryEntry, MemoryTier
from .writer import DiskWriter

logger = logging.getLogger("servefiles")
_T = TypeVar("_T")

READ_BLOCK = 256 * 1024
"""Bytes per read of a cache file: one thread hop per 256 KiB (each hop costs ~50 us)."""
INLINE_READ = 64 * 1024
"""Reads up to this size always run on the event loop."""
INLINE_WRITE_BYTES = 1024 * 1024
"""Fills of files up to this size write their cache file on the event loop, not on a thread.
Nothing on this path waits for the device (no fsync: durability is a background ``syncfs``,
durable.py), so each step is page-cache work of tens of µs, and a thread hop costs more than
the work: the GIL changes hands around every system call. Measured on a journaled ext4, an
admitted 20 KB miss took 1,192 µs of CPU with its write on a thread and 597 µs on the loop.
Larger files keep the thread: their writes are long enough to hold other requests up."""
INLINE_STREAM_BYTES = 4 * 1024 * 1024
"""A file streamed into the tier (larger than a whole write: above) up to this size has its chunks
written on the event loop too, one chunk (at most 256 KiB: its ``write`` and its share of the
sha256) per step; its begin and commit keep the rule above. On a thread, each chunk's step waited
for the GIL while the loop held it, and under load 1-2 MiB misses were the slowest 1 % of
requests (tree mode, benchmarks/RESULTS.md, 2026-12-01 evening). A larger file (a video) keeps the
thread, so that its hashing can run beside the loop on another core."""
REMOTE_POLL_SECONDS = 0.05


async def read_fd(fd: int, start: int, end: int, inline: bool, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
    """Yield bytes ``[start, end)`` of an open file in blocks of up to ``block`` bytes (256 KiB).

    A block already in the page cache is read on the event loop (``RWF_NOWAIT``: the
    kernel answers from the cache or refuses at once, it never waits for the disk), as is
    any block when ``inline``; the rest is read on a thread, so a slow disk blocks no
    other request. Measured: a thread hop per block costs more than copying it from the
    cache (a 1 MiB disk-tier hit under uvicorn: about 850 requests/s with a hop per
    block, 1,700 with this).
    """
    pos = start
    while pos < end:
        want = min(block, end - pos)
        data = os.pread(fd, want, pos) if inline or want <= INLINE_READ else _read_cached(fd, want, pos)
        if data is None:
            data = await finished_on_thread(os.pread, fd, want, pos)  # fd is the caller's: never closed under it
        if not data:
            raise OSError(f"cache file ended at byte {pos} of {end}")
        pos += len(data)
        yield data


_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


async def opened_on_thread(open_fd: Callable[[], int | None]) -> int | None:
    """``open_fd()`` run on a thread (:func:`~servefiles.threadwork.taken_on_thread`): the
    descriptor it opened (None: none), the caller's to close; closed instead of lost if the caller
    is cancelled meanwhile (a whole large file hashed on that thread, :meth:`DiskCache.open_checked`,
    is a long window)."""
    return await taken_on_thread(open_fd, _close_fd)


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


async def lock_taken_on_thread(lock: FillLock) -> bool:
    """``lock.try_acquire()`` on a thread (:func:`~servefiles.threadwork.taken_on_thread`): whether
    it is held now; let go again if the caller is cancelled meanwhile."""
    return await taken_on_thread(lock.try_acquire, lambda taken: lock.release() if taken else None)


def _read_cached(fd: int, want: int, pos: int) -> bytes | None:
    """What of ``[pos, pos + want)`` the page cache holds, read without waiting for the disk;
    None when none of it is cached (or the system cannot tell): read it on a thread then."""
    global _NOWAIT
    if _NOWAIT is None:
        return None
    buffer = _scratch(want)
    try:
        count = os.preadv(fd, [buffer], pos, _NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            _NOWAIT = None  # this kernel or filesystem cannot: threads from now on
            return None
        raise
    return bytes(buffer[:count])


_scratches = threading.local()


def _scratch(size: int) -> memoryview:
    """This thread's reusable read buffer, ``size`` bytes of it. A fresh ``bytearray`` per read
    is zero-filled memory the kernel must fault in and give back: measured, a 115 KB cached read
    took 47 µs that way and 7.5 µs into a reused buffer (then copied into the ``bytes`` that are
    sent). One per thread: a buffer is only ever read into and copied out by the same thread."""
    buffer: memoryview | None = getattr(_scratches, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = memoryview(bytearray(max(size, READ_BLOCK)))
        _scratches.buffer = buffer
    return buffer[:size]


def held_bytes(head: Head | None, start: int, end: int) -> int:
    """How many bytes of ``[start, end)`` ``head`` holds: what :meth:`Store.read_from` yields without
    a query (fetched, and counted, with the metadata)."""
    return 0 if head is None else max(0, min(end, len(head.data)) - start)


class Fill:
    """The state of one fetch, shared by the task that runs it and the requests that read it."""

    def __init__(self, meta: FileMeta, file: PreparedFile | None, small: bool, head: Head | None = None) -> None:
        self.meta = meta
        self.file = file
        self.small = small
        self.head = head
        """The content's start, fetched with the metadata: the fill reads on from it (by blob id)."""
        self.written = 0
        self.disk_limit: int | None = None  # set when the disk copy stops short of the end
        self.body: bytes | None = None  # a small file's bytes, once done
        self.error: BaseException | None = None
        self.done = False
        self.fd: int | None = None
        self._readers = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def advance(self, count: int) -> None:
        self.written += count
        self._notify()

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done = True
        if self.disk_limit is None and self.written < self.meta.size:
            self.disk_limit = self.written
        self._notify()
        self._maybe_close_fd()

    async def wait_done(self) -> None:
        while not self.done:
            await self._changed.wait()

    async def wait_past(self, pos: int) -> None:
        """Until byte ``pos`` is on disk or nothing more will come; a small file: until its bytes are here."""
        while not self.done and self.body is None and (self.small or (self.written <= pos and self.disk_limit is None)):
            await self._changed.wait()

    def join(self) -> None:
        self._readers += 1

    def leave(self) -> None:
        self._readers -= 1
        self._maybe_close_fd()

    def _maybe_close_fd(self) -> None:
        if self.done and self._readers == 0 and self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class Filler:
    """Runs fills, at most one per (key, version) in this process.

    Without a ``memory`` tier (warm, sync), or for a fill started without a prepared file,
    every fill goes to the disk tier alone.
    """

    def __init__(
        self, store: Store, disk: DiskCache, memory: MemoryTier | None, metrics: Metrics, wait_seconds: float
    ) -> None:
        self.store = store
        self.disk = disk
        self.memory = memory
        self.metrics = metrics
        self.wait_seconds = wait_seconds
        self._fills: dict[tuple[str, tuple[int, str]], Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._soon: dict[tuple[str, tuple[int, str]], int] = {}
        """Whole files to be written by :meth:`write_soon`'s callback: (key, revision) → size."""
        self._landed: dict[tuple[str, tuple[int, str]], asyncio.Future[bool]] = {}
        """What waits for such a write (:meth:`landing`)."""
        self._closed = False

    def get(self, meta: FileMeta) -> Fill | None:
        return self._fills.get((meta.key, meta.revision))

    @property
    def in_flight(self) -> int:
        """Fills running now (one per key and version), whole files waiting to be written included."""
        return len(self._fills) + len(self._soon)

    @property
    def pending_bytes(self) -> int:
        """The bytes the fills running now will install (their files' sizes)."""
        return sum(fill.meta.size for fill in self._fills.values()) + sum(self._soon.values())

    def write_soon(self, meta: FileMeta, data: bytes) -> bool:
        """Write ``data``, the whole content of ``meta``'s version already in hand (a head that
        brought it all), to the disk tier in a plain callback on the loop, after every callback
        queued by then: the response that carries the same bytes goes first — under a WSGI
        server too, where the request's thread is woken by the done callback of the task that
        answered it. False, and nothing done, where that cannot be (a file over
        :data:`INLINE_WRITE_BYTES`, or a cache dir shared with another process: its install
        waits for SQLite's write lock) and :meth:`start` must fill instead.

        Why not a :class:`Fill`: nobody can wait for bytes that are all here, and the task, its
        events and the store read's async generators cost more than the write (in process, on a
        slow VM: 2026-12-01 entry of benchmarks/RESULTS.md). A version already being filled or
        written is not written twice."""
        if len(data) != meta.size or meta.size > INLINE_WRITE_BYTES or not self.disk.alone():
            return False
        name = (meta.key, meta.revision)
        if name not in self._fills and name not in self._soon:
            self._soon[name] = meta.size
            loop = asyncio.get_running_loop()
            # Queued from a callback queued now: it runs after everything already queued, the
            # done callback of the task answering this request among them.
            loop.call_soon(loop.call_soon, self._write_whole, name, meta, data)
        return True

    def landing(self, meta: FileMeta) -> asyncio.Future[bool] | None:
        """For a write of ``meta``'s version queued by :meth:`write_soon` and not made yet: a future
        of whether it left that version in the disk tier. None when no such write is pending."""
        name = (meta.key, meta.revision)
        if name not in self._soon:
            return None
        future = self._landed.get(name)
        if future is None:
            future = self._landed[name] = asyncio.get_running_loop().create_future()
        return future

    def _write_whole(self, name: tuple[str, tuple[int, str]], meta: FileMeta, data: bytes) -> None:
        """:meth:`write_soon`'s callback: ``data`` into the disk tier unless it is there already or
        the filler has closed (a shutdown: a copy not written is only a later miss)."""
        del self._soon[name]
        landed = False
        try:
            if self._closed:
                return
            if self._current_entry(meta) is not None:
                landed = True  # already there: requests that shared one query each asked for it
                return
            started = time.perf_counter()
            try:
                self.disk.store(meta, data)
                landed = True
            except Exception as exc:  # a cache failure never fails a request, nor the loop's callback
                self._count_failure(meta, exc)
            self.metrics.fills.observe(time.perf_counter() - started)
        finally:
            waiting = self._landed.pop(name, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(landed)

    def start(self, meta: FileMeta, file: PreparedFile | None = None, head: Head | None = None) -> Fill:
        """The fill for this version: the running one, or a new one (kept in memory too when small and ``file``).

        ``head`` (of this version, from :meth:`Store.fetch_head`): what the store already sent
        with the metadata; the fill writes it and reads on from there (:meth:`Store.read_from`), so
        a complete head costs no further query and a partial one no second LOCATE."""
        running = self._fills.get((meta.key, meta.revision))
        if running is not None:
            return running
        small = file is not None and self.memory is not None and self.memory.fits(meta.size)
        fill = Fill(meta, file, small, head if head is not None and head.meta == meta else None)
        self._fills[(meta.key, meta.revision)] = fill
        task = asyncio.create_task(self._run(fill), name=f"servefiles fill {meta.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def fill(self, meta: FileMeta, file: PreparedFile | None = None) -> bool:
        """Fill now and wait for the end (warm, sync); True when the disk tier has it."""
        fill = self.start(meta, file)
        fill.join()
        try:
            await fill.wait_done()
        finally:
            fill.leave()
        if fill.error is not None:
            raise fill.error
        return await asyncio.to_thread(self._current_entry, meta) is not None

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Let running fills finish (their bytes are mostly fetched already), then cancel the rest;
        whole files not written yet are not written (:meth:`write_soon`)."""
        self._closed = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_seconds)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, fill: Fill) -> None:
        meta = fill.meta
        started = time.perf_counter()
        lock = self.disk.fill_lock(meta.key)
        locked = False
        try:
            if lock is None:  # alone in the cache dir: this object's single-flight is enough
                entry = self._current_entry(meta)  # from memory: no thread hop
                if entry is None:
                    await self._fetch(fill)
                    return
                await self._adopt(fill, entry)
                fill.finish()
                return
            locked = await lock_taken_on_thread(lock)
            entry = None
            if not locked:
                entry, locked = await self._wait_for_other_process(fill, lock)
            if locked:
                entry = await asyncio.to_thread(self._current_entry, meta)
                if entry is None:
                    await self._fetch(fill)
                    return
            if entry is not None:
                await self._adopt(fill, entry)
            fill.finish()  # still no entry: every waiter reads the store itself
        except BaseException as exc:
            fill.finish(exc)
            if not isinstance(exc, Exception):
                raise
            logger.warning("fill of %s failed: %s", meta.key, exc, extra={"key": meta.key})
        finally:
            self._fills.pop((meta.key, meta.revision), None)
            self.metrics.fills.observe(time.perf_counter() - started)
            if locked and lock is not None:
                # On the loop (an unlink and a close): a thread's work item, queued behind others when
                # a close cancels this task again, would be dropped, and the lock held until exit.
                lock.release()

    def _current_entry(self, meta: FileMeta) -> DiskEntry | None:
        entry = self.disk.find(meta.key)
        return entry if entry is not None and entry.meta.revision == meta.revision else None

    async def _wait_for_other_process(self, fill: Fill, lock: FillLock) -> tuple[DiskEntry | None, bool]:
        """Another process holds the fill lock: wait for its entry, or for the lock.

        Returns (entry, False) when its entry appears, (None, True) when the lock
        came free (it finished or died), (None, False) after ``wait_seconds``.
        """
        deadline = time.monotonic() + self.wait_seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(REMOTE_POLL_SECONDS)
            entry = await asyncio.to_thread(self._current_entry, fill.meta)
            if entry is not None:
                return entry, False
            if await lock_taken_on_thread(lock):
                return None, True
        return None, False

    async def _adopt(self, fill: Fill, entry: DiskEntry) -> None:
        """Serve the waiters from an entry that is already on disk, checked as a disk hit's is: the
        entry another process just installed may share a file that was in place already, and no one
        here hashed that. A small one is read whole (:meth:`DiskCache.read_entry`), a large one
        hashed in blocks (:meth:`DiskCache.check_open`)."""
        if not fill.small:
            fd = await opened_on_thread(functools.partial(self.disk.open_checked, entry))
            if fd is None:
                return  # gone, or damaged and dropped: the waiters read the store
            fill.fd = fd
            fill.written = entry.meta.size
            return
        # Opened and read in one hop: cancelled between two, the descriptor opened by the first was lost.
        body = await asyncio.to_thread(self.disk.read_entry, entry)
        if body is None:
            return  # gone, or damaged and dropped: the waiters read the store
        fill.body = body
        self._remember(fill)
        fill.written = entry.meta.size

    async def _fetch(self, fill: Fill) -> None:
        """The one store read: into the disk tier (and memory, for a small file)."""
        if fill.small:
            await self._fetch_small(fill)
            return
        meta = fill.meta
        writer = await self._begin(meta)
        if writer is None:
            fill.finish()  # no disk copy at all: every waiter reads the store
            return
        try:
            fill.fd = open_regular(writer.path)  # our temp file: still, never follow or block
            written = True
            async for chunk in self._source(fill):
                written = await self._write(writer, chunk, fill) is not None
                if not written:
                    break  # the disk failed: waiters take the rest from the store
                fill.advance(len(chunk))
            if written:
                try:
                    await self._on_disk(meta, writer.commit)
                except CacheWriteError as exc:
                    self._count_failure(meta, exc)
        except BaseException:
            await asyncio.shield(self._on_disk(meta, writer.abort))
            raise
        fill.finish()

    async def _fetch_small(self, fill: Fill) -> None:
        """A small file: read whole, handed to the waiters and the memory tier, then written to
        the disk tier in one thread hop (begin, write, commit) while they are answered."""
        meta = fill.meta
        pieces = [chunk async for chunk in self._source(fill)]
        fill.body = b"".join(pieces)
        fill.advance(len(fill.body))  # wakes the waiters: they have the bytes
        if len(fill.body) == meta.size:
            self._remember(fill)
        try:
            # Cancelled (a close), the write still ends before the fill does, and its lock goes.
            await self._on_disk(meta, self.disk.store, meta, fill.body)
        except CacheWriteError as exc:
            self._count_failure(meta, exc)
        fill.finish()

    def _source(self, fill: Fill) -> AsyncIterator[bytes]:
        """The fill's one store read: on from the head the request path fetched, when it did (no
        second lookup of the key; a head that brought bytes was counted as the fetch then)."""
        head = fill.head
        if head is None or not head.data:
            self.metrics.store_fetches.inc()
        if head is not None:
            return self.metrics.fetched(self.store.read_from(head), held_bytes(head, 0, fill.meta.size))
        return self.metrics.fetched(self.store.read(fill.meta.key, version=fill.meta.version))

    def _remember(self, fill: Fill) -> None:
        """A small fill's bytes into the memory tier (a fill is small only with a tier and a file)."""
        if self.memory is not None and fill.file is not None and fill.body is not None:
            self.memory.offer(fill.meta.key, MemoryEntry(fill.file, fill.body))

    async def _on_disk(
        self, meta: FileMeta, call: Callable[..., _T], *args: object, limit: int = INLINE_WRITE_BYTES,
        give_back: Callable[[_T], None] | None = None,
    ) -> _T:  # fmt: skip
        """``call(*args)``, a step of writing ``meta``'s cache file: on the loop for a file of at
        most ``limit`` bytes in a cache dir this process has to itself (sharing it, an install
        waits for SQLite's write lock, which another process may hold for long), else on a
        thread. ``limit``: :data:`INLINE_WRITE_BYTES` for a step that may touch the whole file
        (a whole write, a commit, which may hash a file already in place to share it);
        :data:`INLINE_STREAM_BYTES` for one chunk of a streamed fill. ``give_back``: for a step that
        makes something (a writer): how to undo it if the fill is cancelled while the thread runs.
        A fill cancelled during a step on a thread goes on only once that step has ended."""
        if meta.size <= limit and self.disk.alone():
            return call(*args)
        if give_back is not None:  # what it makes is given back if the fill is cancelled meanwhile
            return await taken_on_thread(functools.partial(call, *args), give_back)
        # A cancelled fill aborts its writer: only once this step has ended.
        return await finished_on_thread(call, *args)

    async def _begin(self, meta: FileMeta) -> DiskWriter | None:
        try:
            return await self._on_disk(meta, self.disk.begin, meta, give_back=DiskWriter.abort)
        except CacheWriteError as exc:
            self._count_failure(meta, exc)
            return None

    async def _write(self, writer: DiskWriter, chunk: bytes, fill: Fill) -> DiskWriter | None:
        try:
            await self._on_disk(fill.meta, writer.write, chunk, limit=INLINE_STREAM_BYTES)
            return writer
        except CacheWriteError as exc:
            self._count_failure(fill.meta, exc)
            fill.disk_limit = fill.written
            with contextlib.suppress(OSError):
                await self._on_disk(fill.meta, writer.abort)
            return None

    def _count_failure(self, meta: FileMeta, exc: BaseException) -> None:
        self.metrics.cache_write_failures.inc()
        logger.warning("cache write for %s failed: %s", meta.key, exc, extra={"key": meta.key})


class FillReader:
    """One request's view of a :class:`Fill`: the bytes it has, the store for the rest."""

    def __init__(self, fill: Fill, store: Store, metrics: Metrics) -> None:
        self.fill = fill
        self.store = store
        self.metrics = metrics
        fill.join()

    async def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        fill, pos, end = self.fill, segment.start, segment.end
        while pos < end:
            await fill.wait_past(pos)
            if fill.error is not None:
                raise fill.error
            if fill.body is not None:
                yield fill.body[pos:end] if (pos, end) != (0, len(fill.body)) else fill.body
                return
            limit = fill.disk_limit if fill.disk_limit is not None else fill.written
            if fill.fd is None or pos >= limit:
                async for chunk in self._from_store(pos, end):
                    yield chunk
                return
            stop = min(limit, end)
            async for chunk in read_fd(fill.fd, pos, stop, inline=False):
                yield chunk
            pos = stop

    async def _from_store(self, start: int, end: int) -> AsyncIterator[bytes]:
        self.metrics.store_fetches.inc()
        meta, head = self.fill.meta, self.fill.head
        if head is not None:
            reading = self.store.read_from(head, start, end)
        else:
            reading = self.store.read(meta.key, start, end, version=meta.version)
        async for chunk in self.metrics.fetched(reading, held_bytes(head, start, end)):
            yield chunk

    def close(self) -> None:
        self.fill.leave()
