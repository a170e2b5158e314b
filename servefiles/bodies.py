"""Where a reply's bytes come from: the body sources the adapters read.

A :class:`~servefiles.http.Response` names its body as literal bytes and
:class:`~servefiles.http.ByteRange` segments; a :class:`Body` produces the bytes of
those ranges from one place — memory, a cache file on disk, a fill in progress, or the
store itself. The adapters only iterate :meth:`Body.chunks` (or hand :attr:`Body.path`
to the server for sendfile) and call :meth:`Body.close` once the response is over.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path

from .cache.fill import FillReader, held_bytes, read_fd
from .http import ByteRange
from .metrics import Metrics
from .store import Store
from .store.types import FileMeta, Head


class Body(ABC):
    """Where a reply's :class:`ByteRange` segments come from."""

    path: str | None = None
    """A complete file on disk holding the whole content (for pathsend / sendfile)."""

    @abstractmethod
    def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        """The bytes ``[segment.start, segment.end)``, in order, in chunks of any size."""

    def close(self) -> None:  # noqa: B027 - most bodies hold nothing to release
        """Release what the body holds; called once the response is over."""


class MemoryBody(Body):
    """A whole file held in memory: a memory-tier hit, or a small file just promoted."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        if (segment.start, segment.end) == (0, len(self.data)):
            yield self.data
        else:
            yield self.data[segment.start : segment.end]


class DiskBody(Body):
    """An open cache file (its descriptor is closed with the body, or by the server that took it)."""

    def __init__(self, fd: int, path: Path | str, inline: bool) -> None:
        self.fd = fd
        self.path = path if isinstance(path, str) else str(path)
        self.inline = inline

    def fileno(self) -> int:
        """The descriptor: the body is the file object of an ASGI ``http.response.zerocopysend``."""
        return self.fd

    def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        return read_fd(self.fd, segment.start, segment.end, self.inline)

    async def whole(self, segment: ByteRange) -> bytes:
        """The bytes of ``segment`` in one piece, read in as few reads as the page cache allows
        (raises OSError if the file ended early): for a body sent as one message."""
        chunks = read_fd(self.fd, segment.start, segment.end, self.inline, block=segment.end - segment.start)
        return b"".join([chunk async for chunk in chunks])

    def close(self) -> None:
        os.close(self.fd)


class StoreBody(Body):
    """Bytes straight from the store: a cold range, a file not (yet) admitted to the disk tier,
    or a cache that could not help.

    Pinned to ``meta``'s version: :class:`~servefiles.errors.ContentChanged` rather than
    bytes of another version (see :meth:`Store.read`). With the ``head`` fetched along with
    the metadata, its bytes are used and the rest read by blob id (:meth:`Store.read_from`)."""

    def __init__(self, store: Store, meta: FileMeta, metrics: Metrics, head: Head | None = None) -> None:
        self.store = store
        self.meta = meta
        self.metrics = metrics
        self.head = head if head is not None and head.meta == meta else None

    async def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        head = self.head
        if head is None or not head.data:  # a head with bytes was counted when fetched
            self.metrics.store_fetches.inc()
        if head is not None:
            reading = self.store.read_from(head, segment.start, segment.end)
        else:
            reading = self.store.read(self.meta.key, segment.start, segment.end, version=self.meta.version)
        async for chunk in self.metrics.fetched(reading, held_bytes(head, segment.start, segment.end)):
            yield chunk


class FillBody(Body):
    """The bytes of a fill in progress: from its temp file as they land, or the store behind it."""

    def __init__(self, reader: FillReader) -> None:
        self.reader = reader

    def chunks(self, segment: ByteRange) -> AsyncIterator[bytes]:
        return self.reader.chunks(segment)

    def close(self) -> None:
        self.reader.close()


class PrimedBody(Body):
    """A body whose first chunk was fetched before the reply was sent, so a file that changed
    between the metadata query and the fetch is asked for again rather than cut mid-response."""

    def __init__(self, inner: Body, segment: ByteRange, first: bytes, rest: AsyncIterator[bytes]) -> None:
        self.inner = inner
        self.path = inner.path
        self._segment = segment
        self._first: bytes | None = first
        self._rest = rest

    @classmethod
    async def prime(cls, inner: Body, segment: ByteRange) -> PrimedBody:
        """Fetch the first chunk of ``segment``; raises what the source raises (ContentChanged,
        NotFound, StoreUnavailable) before any of the reply has gone out."""
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
