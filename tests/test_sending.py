"""The one sending decision both adapters carry out (servefiles.middleware.sending.plan)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servefiles import pagecache
from servefiles.bodies import DiskBody, MemoryBody
from servefiles.cache.fill import READ_BLOCK, read_fd
from servefiles.http import HttpPolicy, PreparedFile, respond
from servefiles.middleware.sending import ONE_MESSAGE_BYTES, SENDFILE_MIN_BYTES, plan
from servefiles.service import Reply
from servefiles.store.types import FileMeta

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def prepared(data: bytes) -> PreparedFile:
    meta = FileMeta("a.bin", 1, hashlib.sha256(data).hexdigest(), len(data), "application/octet-stream", WHEN, WHEN)
    return PreparedFile(meta, HttpPolicy())


def disk_reply(tmp_path: Path, data: bytes, headers: dict[str, str] | None = None) -> Reply:
    path = tmp_path / "content"
    path.write_bytes(data)
    return Reply(respond("GET", headers or {}, prepared(data)), DiskBody(os.open(path, os.O_RDONLY), path, False))


@pytest.mark.parametrize("size", [1, ONE_MESSAGE_BYTES // 2 + 1, ONE_MESSAGE_BYTES])
async def test_a_whole_cache_file_up_to_one_message_is_read_whole(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    reply = disk_reply(tmp_path, data)
    try:
        way = plan(reply, "GET", server_sends_files=False, reads_whole=True)
        assert (way.way, way.counted) == ("read", size)
        body = reply.body
        assert isinstance(body, DiskBody)
        assert await body.whole(reply.response.body[0]) == data  # type: ignore[arg-type]
        assert plan(reply, "GET", server_sends_files=False, reads_whole=False).way == "stream"  # WSGI
        assert plan(reply, "GET", server_sends_files=True, reads_whole=True).way == "file"  # pathsend first
        assert plan(reply, "HEAD", server_sends_files=False, reads_whole=True).way == "whole"
    finally:
        reply.body.close()  # type: ignore[union-attr]


async def test_a_larger_file_and_a_range_are_streamed(tmp_path: Path) -> None:
    big = disk_reply(tmp_path, os.urandom(ONE_MESSAGE_BYTES + 1))
    ranged = disk_reply(tmp_path, os.urandom(1000), {"range": "bytes=0-9"})
    try:
        assert plan(big, "GET", server_sends_files=False, reads_whole=True).way == "stream"
        assert ranged.response.status == 206
        assert plan(ranged, "GET", server_sends_files=False, reads_whole=True).way == "stream"
    finally:
        big.body.close()  # type: ignore[union-attr]
        ranged.body.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [SENDFILE_MIN_BYTES, ONE_MESSAGE_BYTES + 1])
def test_a_whole_cache_file_in_the_page_cache_is_handed_to_a_server_that_sends_it(tmp_path: Path, size: int) -> None:
    """zerocopysend: the server sends the open file with sendfile(2), on its event loop, so only
    while every page of it is cached; a file not (all) in the page cache is read, as without."""
    reply = disk_reply(tmp_path, os.urandom(size))
    body = reply.body
    assert isinstance(body, DiskBody)
    try:
        os.pread(body.fd, size, 0)  # in the page cache now (the write put it there too)
        assert pagecache.cached(body.fd, 0, size) is True
        way = plan(reply, "GET", server_sends_files=False, reads_whole=True, zero_copy=True)
        assert (way.way, way.counted) == ("sendfile", size)
        assert plan(reply, "GET", server_sends_files=True, reads_whole=True, zero_copy=True).way == "file"
        assert plan(reply, "HEAD", server_sends_files=False, reads_whole=True, zero_copy=True).way == "whole"
        os.fsync(body.fd)
        os.posix_fadvise(body.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert pagecache.cached(body.fd, 0, size) is False, "the page stayed cached (a tmpfs?)"
        expected = "read" if size <= ONE_MESSAGE_BYTES else "stream"
        assert plan(reply, "GET", server_sends_files=False, reads_whole=True, zero_copy=True).way == expected
    finally:
        body.close()


def test_a_small_cache_file_is_read_even_where_the_server_could_send_it(tmp_path: Path) -> None:
    """Below SENDFILE_MIN_BYTES the copy costs less than asking the page cache and the extra loop turn."""
    reply = disk_reply(tmp_path, os.urandom(SENDFILE_MIN_BYTES - 1))
    try:
        assert plan(reply, "GET", server_sends_files=False, reads_whole=True, zero_copy=True).way == "read"
    finally:
        reply.body.close()  # type: ignore[union-attr]


def test_a_memory_hit_is_one_message_counted_whole() -> None:
    data = b"x" * 5000
    reply = Reply(respond("GET", {}, prepared(data)), MemoryBody(data))
    way = plan(reply, "GET", server_sends_files=True, reads_whole=True)
    assert (way.way, way.data, way.counted) == ("whole", data, len(data))


async def test_cached_reads_share_a_buffer_but_never_each_others_bytes(tmp_path: Path) -> None:
    """Page-cache reads go through one reused buffer per thread (fill._scratch): what a read
    returned stays as it was after later reads into that buffer, of other files and sizes, on
    the loop and on other threads at the same time."""
    files = {size: os.urandom(size) for size in (100, 70_000, READ_BLOCK, READ_BLOCK + 5, 3 * READ_BLOCK)}
    for size, data in files.items():
        (tmp_path / str(size)).write_bytes(data)

    async def read(size: int) -> list[bytes]:
        """The chunks as read_fd gave them (kept, not joined: joining would copy them at once)."""
        fd = os.open(tmp_path / str(size), os.O_RDONLY)
        try:
            return [chunk async for chunk in read_fd(fd, 0, size, inline=False, block=size)]
        finally:
            os.close(fd)

    first = {size: await read(size) for size in files}
    again = {size: await read(size) for size in reversed(list(files))}

    def in_a_thread(size: int) -> bool:
        return all(b"".join(asyncio.run(read(size))) == files[size] for _ in range(20))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(in_a_thread, [size for size in files for _ in range(2)]))
    assert {size: b"".join(chunks) for size, chunks in first.items()} == files
    assert {size: b"".join(chunks) for size, chunks in again.items()} == files
