"""The store API, and what every backend shares.

A backend supplies a handful of primitives (locate a key, fetch a run of
chunks, write a stream of chunks as a new version, delete, list, changes);
this module turns any accepted upload source into fixed-size chunks with their
sha256, and turns a byte range into exactly the chunks that cover it. So the
chunking, hashing and range arithmetic exist once, for both databases.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import inspect
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import IO, Any, Protocol, Self, runtime_checkable

from ..content_types import check_content_type, guess_content_type
from ..errors import ContentChanged, InvalidKey, NotFound, PreconditionFailed
from ..keys import canonical_key
from .dsn import mask_dsn
from .types import BlobRef, Change, FileMeta, Head

CHUNK_SIZE = 256 * 1024
"""Bytes per stored chunk: big enough to keep row overhead small, small enough
that a range read fetches little more than it needs."""

READ_BATCH_CHUNKS = 4
"""Chunks fetched per query when reading: bounds a read's memory to ~1 MiB."""

STAGE_BATCH_CHUNKS = 8
"""Chunks committed per staging transaction (2 MiB): short transactions, and no
connection or lock held while the client sends the rest of an upload."""

STALE_UPLOAD_SECONDS = 3600
"""A staged upload idle this long died half-way: the next open frees its chunks."""

MAX_LIST_LIMIT = 10_000
_UNLISTABLE = re.compile("[\x00\ud800-\udfff]")


@runtime_checkable
class AsyncReadable(Protocol):
    """A binary file with an ``async def read(n)``, such as an aiofiles file."""

    async def read(self, size: int = -1, /) -> bytes: ...


WritePrecondition = Callable[[str | None], bool]
"""Given the live content's sha256 (None: no live file), whether a write or delete
may go ahead. Backends call it inside the write's transaction, under the write
lock, so the check and the change are one atomic step."""

class Readable(Protocol):
    """A binary file-like object: anything with a blocking ``read(n)`` returning bytes."""

    def read(self, size: int = -1, /) -> bytes: ...


PutSource = bytes | bytearray | memoryview | IO[bytes] | Readable | AsyncIterable[bytes] | AsyncReadable
"""What :meth:`Store.put` accepts: bytes, a binary file (sync or async), or an
async iterator of bytes."""


async def _pieces(source: PutSource) -> AsyncIterator[bytes]:
    """Yield the bytes of ``source`` in whatever pieces it naturally comes in."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
    elif isinstance(source, AsyncIterable):
        async for piece in source:
            if not isinstance(piece, bytes | bytearray | memoryview):
                raise TypeError(f"upload iterator yielded {type(piece).__name__}, not bytes")
            yield bytes(piece)
    elif inspect.iscoroutinefunction(getattr(source, "read", None)):
        reader: Any = source
        while piece := await reader.read(CHUNK_SIZE):
            yield piece
    elif callable(getattr(source, "read", None)):
        # A plain file: read it off the event loop, so a slow disk blocks nobody.
        blocking_read: Callable[[int], bytes] = source.read  # type: ignore[assignment]
        while piece := await asyncio.to_thread(blocking_read, CHUNK_SIZE):
            if not isinstance(piece, bytes):
                raise TypeError("upload file must be opened in binary mode")
            yield piece
    else:
        raise TypeError(f"cannot upload a {type(source).__name__}: give bytes, a binary file or an async iterator")


class HashedChunks:
    """Re-cut an upload into ``chunk_size`` pieces, hashing them as they pass.

    Memory stays bounded by one chunk plus one incoming piece, whatever the
    upload's size; :attr:`sha256` and :attr:`size` are final once exhausted.
    """

    def __init__(self, source: PutSource, chunk_size: int = CHUNK_SIZE) -> None:
        self._source = source
        self.chunk_size = chunk_size
        self._digest = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def _emit(self, chunk: bytes) -> bytes:
        self._digest.update(chunk)
        self.size += len(chunk)
        return chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = self.chunk_size
        pending = bytearray()
        async for piece in _pieces(self._source):
            view = memoryview(piece)
            if pending:
                take = size - len(pending)
                pending += view[:take]
                view = view[take:]
                if len(pending) < size:
                    continue
                yield self._emit(bytes(pending))
                pending.clear()
            while len(view) >= size:
                yield self._emit(bytes(view[:size]))
                view = view[size:]
            pending += view
        if pending:
            yield self._emit(bytes(pending))


async def staged_batches(chunks: HashedChunks) -> AsyncIterator[list[tuple[int, bytes]]]:
    """An upload as ``(seq, chunk)`` lists of up to :data:`STAGE_BATCH_CHUNKS`.

    Both stores commit each list in a short transaction under a registered upload
    and publish at the end: a slow client never holds a pooled connection, an open
    transaction or SQLite's write lock while the next piece is on its way.
    """
    batch: list[tuple[int, bytes]] = []
    seq = 0
    async for chunk in chunks:
        batch.append((seq, chunk))
        seq += 1
        if len(batch) == STAGE_BATCH_CHUNKS:
            yield batch
            batch = []
    if batch:
        yield batch


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    Turns a prefix filter into an index range (``prefix <= key < bound``) in
    code-point order, which is both SQLite's BINARY and PostgreSQL's "C"
    collation for UTF-8. None means "no upper bound" (empty prefix).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # skip the surrogate block
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


def check_expectation(key: str, expect: WritePrecondition | None, live_sha256: str | None) -> None:
    """Raise :class:`PreconditionFailed` unless ``expect`` allows a change to ``key`` now."""
    if expect is not None and not expect(live_sha256):
        raise PreconditionFailed(key)


class Store(ABC):
    """An async store of files, keyed by canonical keys, in a database.

    Use it through :func:`servefiles.open_store`. Every write and delete takes a
    new version from one monotonic sequence; deletes leave tombstones that
    :meth:`changes` reports.
    """

    url: str
    """The URL the store was opened with, password included: show it only through :func:`mask_dsn`."""
    notifies: bool = False
    """Whether :meth:`wake_ups` is woken by the database itself (else it polls)."""
    store_id: str
    """A random id the database got when its schema was created: a cache dir built
    from one database is never mistaken for another's (versions repeat across them)."""
    history_id: str = ""
    """Which history of the database the store met when opened (:meth:`read_history_id`)."""

    def __repr__(self) -> str:  # never the password, in logs or tracebacks
        return f"<{type(self).__name__} {mask_dsn(self.url)}>"

    # -- the public API -------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: PutSource,
        content_type: str | None = None,
        *,
        expect: WritePrecondition | None = None,
    ) -> FileMeta:
        """Store ``data`` under ``key`` as a new version, and return its metadata.

        ``data`` is streamed in chunks (bounded memory) and hashed on the way.
        The write is atomic: until it commits, readers see the previous version;
        if it fails, the previous version stays intact. With ``expect``, the
        write commits only if ``expect(live sha256 or None)`` holds at commit
        time, else it raises :class:`PreconditionFailed` and changes nothing.
        """
        key = canonical_key(key)
        content_type = check_content_type(content_type) if content_type else guess_content_type(key)
        return await self._write(key, HashedChunks(data), content_type, expect)

    async def stat(self, key: str) -> FileMeta | None:
        """The live file's metadata, or None when the key is missing or deleted."""
        located = await self._locate(canonical_key(key))
        return located[0] if located else None

    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, version: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of ``key`` (``end`` None: to the end).

        Only the chunks covering the range are fetched, a few at a time. With
        ``version``, raise :class:`ContentChanged` rather than yield bytes of any
        other version; the same happens if the key is replaced mid-read. Raises
        :class:`NotFound` for a missing key (on first iteration).
        """
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range [{start}, {end})")
        key = canonical_key(key)
        located = await self._locate(key)
        if located is None:
            raise NotFound(key)
        meta, blob = located
        if version is not None and meta.version != version:
            raise ContentChanged(key)
        stop = meta.size if end is None else min(end, meta.size)
        async for data in self._read_blob(meta, blob, start, stop):
            yield data

    async def fetch_head(self, key: str, max_bytes: int = CHUNK_SIZE, *, whole: bool = False) -> Head | None:
        """The live file's metadata and its first ``min(size, max_bytes)`` bytes in ONE query
        (None when the key is missing or deleted): for a file of at most ``max_bytes`` (one
        chunk by default) the whole content; for a larger one its start and where the rest is,
        for :meth:`read_from`. ``max_bytes=0``, or ``whole`` and a file larger than ``max_bytes``:
        the metadata and the blob only (a caller that wants a small file whole and would read a
        large one through anyway transfers nothing twice). Raises ValueError for a negative
        ``max_bytes``, :class:`InvalidKey`, :class:`StoreUnavailable`.
        """
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        key = canonical_key(key)
        found = await self._locate_head(key, max_bytes, whole)
        if found is None:
            return None
        meta, blob, chunks = found
        want = 0 if whole and meta.size > max_bytes else min(meta.size, max_bytes)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) > want:
            data = data[:want]
        if len(data) != want:  # one statement sees one snapshot: only a damaged blob gets here
            raise ContentChanged(key)
        return Head(meta, data, blob)

    async def read_from(self, head: Head, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of ``head``'s version (``end`` None: to the end): from
        the head where it holds them, the rest by blob id, without locating the key again.

        Pinned to that version like :meth:`read` with ``version``: raises :class:`ContentChanged`
        if it was replaced or deleted since the head, never yields another version's bytes. The
        first batch beyond the head is fetched before any byte is yielded, so a version replaced
        since the head fails before a response built on it has begun.
        """
        meta, held = head.meta, len(head.data)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range [{start}, {end})")
        stop = meta.size if end is None else min(end, meta.size)
        if start >= stop:
            return
        if start >= held:
            async for data in self._read_blob(meta, head.blob, start, stop):
                yield data
            return
        first = head.data if (start, stop) == (0, held) else head.data[start : min(stop, held)]
        if stop <= held:
            yield first
            return
        rest = self._read_blob(meta, head.blob, held, stop)
        following = await anext(rest)  # before the first byte goes out (see above)
        yield first
        yield following
        async for data in rest:
            yield data

    async def _read_blob(self, meta: FileMeta, blob: BlobRef, start: int, stop: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, stop)`` of ``meta``'s version, its chunks fetched from ``blob`` a few at a
        time; :class:`ContentChanged` as soon as a chunk is missing or of the wrong size."""
        if start >= stop:
            return
        size, chunk_size = meta.size, blob.chunk_size
        seq, last = start // chunk_size, (stop - 1) // chunk_size
        while seq <= last:
            batch_last = min(last, seq + READ_BATCH_CHUNKS - 1)
            chunks = await self._fetch_chunks(blob.blob_id, seq, batch_last)
            if len(chunks) != batch_last - seq + 1:
                raise ContentChanged(meta.key)
            for data in chunks:
                offset = seq * chunk_size
                if len(data) != min(chunk_size, size - offset):
                    raise ContentChanged(meta.key)
                lo, hi = max(start - offset, 0), min(stop - offset, len(data))
                yield data if (lo, hi) == (0, len(data)) else data[lo:hi]
                seq += 1

    async def delete(self, key: str, *, expect: WritePrecondition | None = None) -> int | None:
        """Delete ``key``, leaving a tombstone; return the tombstone's version, or None
        when there was no live file. ``expect`` as for :meth:`put`."""
        return await self._delete(canonical_key(key), expect)

    async def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> builtins.list[FileMeta]:
        """One page of live files whose key starts with ``prefix``, in key order.

        Pass the last key of a page as ``after`` to get the next page.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        for name, value in (("prefix", prefix), ("after", after)):
            if value is not None and _UNLISTABLE.search(value):
                # No key holds these, and PostgreSQL cannot even take NUL as text: refuse alike on both.
                raise InvalidKey(f"{name} contains NUL or a lone surrogate")
        prefix = unicodedata.normalize("NFC", prefix)
        if after is not None:
            after = unicodedata.normalize("NFC", after)  # keys are NFC: compare like with like
        low = max(prefix, after) if after is not None else prefix
        return await self._list(low, after is not None and after >= prefix, prefix_upper_bound(prefix), limit)

    async def changes(self, since_version: int = 0, limit: int = 1000) -> builtins.list[Change]:
        """What changed after ``since_version``: each key's newest version or tombstone, in version order."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        return await self._changes(since_version, limit)

    async def iter_files(self, prefix: str = "") -> AsyncIterator[FileMeta]:
        """Every live file under ``prefix``, in key order, one page at a time."""
        after: str | None = None
        while page := await self.list(prefix, limit=1000, after=after):
            for meta in page:
                yield meta
            after = page[-1].key

    async def iter_changes(self, since_version: int = 0) -> AsyncIterator[Change]:
        """Every change after ``since_version``, in version order, one page at a time."""
        while batch := await self.changes(since_version, limit=1000):
            for change in batch:
                yield change
            since_version = batch[-1].version

    async def last_version(self) -> int:
        """The newest version in the store (0 when empty): where a change feed starts."""
        return await self._last_version()

    async def read_history_id(self) -> str:
        """Which history of the database answers now, as an opaque string: it changes when that
        history may have gone back, so versions once seen may be issued again for other content.

        PostgreSQL: the cluster's ``system_identifier`` and its timeline, which a promoted standby
        (or a point-in-time recovery) starts anew; asynchronous replication can lose the old
        primary's last commits on the way. SQLite has no standby: always ``""`` (a file restored
        from a backup shows instead as a last version below a feed's cursor). Raises
        :class:`StoreUnavailable`.
        """
        return ""

    async def wake_ups(self, poll_seconds: float) -> AsyncIterator[None]:
        """Yield whenever changes may have been made: once at once, then on each hint.

        The change feed calls :meth:`changes` after each wake-up, so a wake-up
        too many costs one indexed query and one too few is made up by the
        next. This default polls every ``poll_seconds``; PostgreSQL is woken by
        NOTIFY instead. Raises :class:`StoreUnavailable` when the database goes.
        """
        while True:
            yield
            await asyncio.sleep(poll_seconds)

    @abstractmethod
    async def close(self) -> None:
        """Release the store's connections; the store is unusable afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- what a backend provides ----------------------------------------------------

    @abstractmethod
    async def _locate(self, key: str) -> tuple[FileMeta, BlobRef] | None:
        """The live row for ``key`` and where its content is, or None."""

    async def _locate_head(
        self, key: str, max_bytes: int, whole: bool
    ) -> tuple[FileMeta, BlobRef, Sequence[bytes]] | None:
        """The live row for ``key``, where its content is, and its chunks that begin before byte
        ``max_bytes``, in order (none if ``whole`` and it is larger than ``max_bytes``). Both
        backends do it in one query; this fallback takes two."""
        located = await self._locate(key)
        if located is None:
            return None
        meta, blob = located
        last = -1 if whole and meta.size > max_bytes else min(max_bytes, meta.size) - 1
        chunks = await self._fetch_chunks(blob.blob_id, 0, last // blob.chunk_size) if last >= 0 else []
        return meta, blob, chunks

    @abstractmethod
    async def _fetch_chunks(self, blob_id: int, first: int, last: int) -> Sequence[bytes]:
        """Chunks ``first..last`` (inclusive) of a blob, in order; fewer if the blob is gone."""

    @abstractmethod
    async def _write(
        self, key: str, chunks: HashedChunks, content_type: str, expect: WritePrecondition | None
    ) -> FileMeta:
        """Store every chunk, then publish them as ``key``'s new version atomically
        (after checking ``expect`` under the write lock: :func:`check_expectation`).

        ``created_at`` and ``updated_at`` are the true time of the write (the database's
        clock). ``last_modified`` is its whole second, or the second after the key's previous
        version's or tombstone's ``last_modified`` if that is later, so a key's versions never
        share a validator second (:attr:`FileMeta.last_modified`); tombstones keep theirs for
        that reason."""

    @abstractmethod
    async def _delete(self, key: str, expect: WritePrecondition | None) -> int | None:
        """Replace ``key``'s row by a tombstone with a new version; free its chunks.
        None (and no change) when there is no live row; ``expect`` as in :meth:`_write`."""

    @abstractmethod
    async def _list(self, low: str, exclusive: bool, high: str | None, limit: int) -> builtins.list[FileMeta]:
        """Live rows with ``low <(=) key < high`` in key order, at most ``limit``."""

    @abstractmethod
    async def _changes(self, since_version: int, limit: int) -> builtins.list[Change]:
        """Rows (live or tombstone) with version > ``since_version``, in version order."""

    @abstractmethod
    async def _last_version(self) -> int:
        """The highest version ever handed out."""
