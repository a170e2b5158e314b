"""The store contract: what every backend promises, checked on SQLite and PostgreSQL alike.

Every test here takes the ``store``/``store_url`` fixtures, so it runs once per
backend against a real database (a SQLite file, the real PostgreSQL). Each test
is named after the rule it checks. A few tests at the end exercise failure modes
that only one backend can produce (a connection killed by the server; SQLite's
write lock) and say so in their names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import random
import sqlite3
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from servefiles import (
    Change,
    ContentChanged,
    FileMeta,
    InvalidContentType,
    InvalidKey,
    NotFound,
    PreconditionFailed,
    Store,
    StoreUnavailable,
    UploadAborted,
    open_store,
)
from servefiles.store import connect, sqlite_path
from servefiles.store.base import CHUNK_SIZE, READ_BATCH_CHUNKS, STAGE_BATCH_CHUNKS, STALE_UPLOAD_SECONDS
from servefiles.store.postgres import PostgresStore

from .db_tables import age_staged_uploads, assert_only_live_chunks, storage
from .instrument import record_chunk_fetches

CS = CHUNK_SIZE
KIB = 1024

# -- helpers ----------------------------------------------------------------------------


def content(size: int, seed: int = 0) -> bytes:
    """Reproducible bytes that differ everywhere, so a misplaced chunk shows."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def read_all(
    store: Store, key: str, start: int = 0, end: int | None = None, *, version: int | None = None
) -> bytes:
    return b"".join([piece async for piece in store.read(key, start, end, version=version)])


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    """An upload that arrives in the given pieces, yielding to the loop between them."""
    for part in parts:
        await asyncio.sleep(0)
        yield part


def split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes (the rest in a last piece)."""
    out, at = [], 0
    for size in sizes:
        out.append(data[at : at + size])
        at += size
    if at < len(data):
        out.append(data[at:])
    return out


class AsyncReader:
    """A binary file with ``async def read(n)`` (the aiofiles shape) that records its calls."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data = data
        self._at = 0
        self._most = most
        self.requested: list[int] = []

    async def read(self, size: int = -1, /) -> bytes:
        self.requested.append(size)
        await asyncio.sleep(0)
        if size < 0:
            size = len(self._data)
        size = min(size, self._most)
        piece = self._data[self._at : self._at + size]
        self._at += len(piece)
        return piece


class RecordingBytesIO(io.BytesIO):
    """A BytesIO that records the sizes it was asked to read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requested: list[int | None] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.requested.append(size)
        return super().read(size)


def assert_utc(moment: datetime) -> None:
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5)


async def assert_empty(store: Store) -> None:
    assert await store.list() == []
    assert await store.changes() == []
    assert await store.last_version() == 0


# -- put: what it accepts, what it returns -------------------------------------------------


async def test_put_bytes_returns_its_metadata(store: Store) -> None:
    data = b"hello, world\n"
    meta = await store.put("docs/hello.txt", data)
    assert meta.key == "docs/hello.txt"
    assert meta.sha256 == sha(data)
    assert meta.size == len(data)
    assert meta.version > 0
    assert meta.content_type == "text/plain"
    assert_utc(meta.created_at)
    assert_utc(meta.updated_at)
    assert meta.updated_at >= meta.created_at
    assert await store.stat("docs/hello.txt") == meta
    assert await read_all(store, "docs/hello.txt") == data


async def test_put_accepts_bytearray_and_memoryview(store: Store) -> None:
    data = content(CS + 17, seed=1)
    for key, source in [("a", bytearray(data)), ("b", memoryview(data)), ("c", memoryview(b"xx" + data)[2:])]:
        meta = await store.put(key, source)
        assert (meta.size, meta.sha256) == (len(data), sha(data))
        assert await read_all(store, key) == data


async def test_put_from_bytesio_reads_in_bounded_pieces(store: Store) -> None:
    data = content(3 * CS + 5, seed=2)
    source = RecordingBytesIO(data)
    meta = await store.put("f.bin", source)
    assert (meta.size, meta.sha256) == (len(data), sha(data))
    assert await read_all(store, "f.bin") == data
    # Never "read everything": memory stays bounded whatever the file's size.
    assert source.requested and all(size is not None and 0 < size <= 4 * CS for size in source.requested)


async def test_put_from_real_file_opened_rb(store: Store, tmp_path: Path) -> None:
    data = content(2 * CS + 123, seed=3)
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    with path.open("rb") as source:
        meta = await store.put("img/upload.png", source)
    assert (meta.size, meta.sha256, meta.content_type) == (len(data), sha(data), "image/png")
    assert await read_all(store, "img/upload.png") == data


async def test_put_from_async_iterator_of_uneven_pieces(store: Store) -> None:
    sizes = [1, 300 * KIB, 7, 0, CS, CS - 1, 2, 3, 70 * KIB, 1]
    data = content(sum(sizes), seed=4)
    parts = split(data, sizes)
    assert b"".join(parts) == data and len(parts) == len(sizes)
    meta = await store.put("uneven.bin", pieces(*parts))
    assert (meta.size, meta.sha256) == (len(data), sha(data))
    assert await read_all(store, "uneven.bin") == data
    for start, end in [(0, 1), (1, 300 * KIB + 8), (CS - 1, CS + 1), (len(data) - 3, len(data))]:
        assert await read_all(store, "uneven.bin", start, end) == data[start:end]


async def test_put_from_async_iterator_of_bytes_like_pieces(store: Store) -> None:
    data = content(CS + 10, seed=5)

    async def source() -> AsyncIterator[bytes]:
        yield bytearray(data[:10])  # type: ignore[misc]
        yield memoryview(data)[10:]  # type: ignore[misc]

    meta = await store.put("bl.bin", source())
    assert meta.sha256 == sha(data)
    assert await read_all(store, "bl.bin") == data


async def test_put_from_object_with_async_read(store: Store) -> None:
    data = content(2 * CS + 999, seed=6)
    source = AsyncReader(data, most=100 * KIB)  # returns less than asked: must keep reading
    meta = await store.put("async.bin", source)
    assert (meta.size, meta.sha256) == (len(data), sha(data))
    assert await read_all(store, "async.bin") == data
    assert source.requested and all(0 < size <= 4 * CS for size in source.requested)


async def test_put_empty_file(store: Store) -> None:
    meta = await store.put("empty.txt", b"")
    assert (meta.size, meta.sha256) == (0, sha(b""))
    assert await store.stat("empty.txt") == meta
    assert [piece async for piece in store.read("empty.txt")] == []
    from_iterator = await store.put("empty2", pieces(b"", b""))
    assert (from_iterator.size, from_iterator.sha256) == (0, sha(b""))
    assert [piece async for piece in store.read("empty2")] == []
    assert [m.key for m in await store.list()] == ["empty.txt", "empty2"]


async def test_put_of_unusable_source_raises_type_error_and_stores_nothing(store: Store, tmp_path: Path) -> None:
    text_file = tmp_path / "t.txt"
    text_file.write_text("text, not bytes")

    async def yields_text() -> AsyncIterator[str]:
        yield "text"

    with pytest.raises(TypeError):
        await store.put("a", "a str is not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.put("b", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.put("c", yields_text())  # type: ignore[arg-type]
    with text_file.open() as opened_as_text, pytest.raises(TypeError):
        await store.put("d", opened_as_text)  # type: ignore[arg-type]
    await assert_empty(store)
    await assert_only_live_chunks(store.url)


# -- content types --------------------------------------------------------------------------


async def test_content_type_is_guessed_from_the_extension(store: Store) -> None:
    assert (await store.put("photos/cat.jpg", b"\xff\xd8")).content_type == "image/jpeg"
    assert (await store.put("x/y.PDF", b"%PDF")).content_type == "application/pdf"
    stat = await store.stat("photos/cat.jpg")
    assert stat is not None and stat.content_type == "image/jpeg"


async def test_content_type_falls_back_to_octet_stream(store: Store) -> None:
    assert (await store.put("README", b"x")).content_type == "application/octet-stream"
    assert (await store.put("a.unknown-ext", b"x")).content_type == "application/octet-stream"


async def test_explicit_content_type_is_honoured(store: Store) -> None:
    meta = await store.put("cat.jpg", b"text really", content_type="text/plain; charset=utf-8")
    assert meta.content_type == "text/plain; charset=utf-8"
    stat = await store.stat("cat.jpg")
    assert stat is not None and stat.content_type == "text/plain; charset=utf-8"


@pytest.mark.parametrize("bad", ["text/plain\r\nX-Evil: 1", "text/html\n", "not a type"])
async def test_invalid_content_type_raises_and_stores_nothing(store: Store, bad: str) -> None:
    with pytest.raises(InvalidContentType):
        await store.put("a.txt", b"data", content_type=bad)
    assert await store.stat("a.txt") is None
    await assert_empty(store)
    await assert_only_live_chunks(store.url)


async def test_replace_can_change_the_content_type(store: Store) -> None:
    await store.put("blob", b"1", content_type="image/png")
    await store.put("blob", b"2", content_type="image/gif")
    stat = await store.stat("blob")
    assert stat is not None and stat.content_type == "image/gif"


# -- keys ---------------------------------------------------------------------------------


async def test_stat_of_missing_key_is_none(store: Store) -> None:
    assert await store.stat("nope.txt") is None
    await store.put("nope.txt.bak", b"x")
    assert await store.stat("nope.txt") is None
    assert await store.stat("nope") is None


@pytest.mark.parametrize(
    "bad_key",
    ["../x", "a//b", "/abs", "a\\b", "a\x00b", "a/", "", "a/./b", "a\nb", "a\u2028b"],
    ids=["dotdot", "double-slash", "absolute", "backslash", "nul", "trailing-slash", "empty", "dot", "lf", "u2028"],
)
async def test_invalid_key_raises_and_nothing_is_written(store: Store, bad_key: str) -> None:
    await store.put("good", b"keep")
    before = await store.last_version()
    with pytest.raises(InvalidKey):
        await store.put(bad_key, b"data")
    with pytest.raises(InvalidKey):
        await store.put(bad_key, pieces(b"data" * 1000))
    with pytest.raises(InvalidKey):
        await store.stat(bad_key)
    with pytest.raises(InvalidKey):
        await store.delete(bad_key)
    with pytest.raises(InvalidKey):
        await read_all(store, bad_key)
    assert [m.key for m in await store.list()] == ["good"]
    assert await store.last_version() == before
    assert [c.key for c in await store.changes()] == ["good"]
    await assert_only_live_chunks(store.url)


async def test_key_given_in_nfd_is_stored_and_found_under_nfc(store: Store) -> None:
    nfc = "caf\u00e9/r\u00e9sum\u00e9.txt"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    meta = await store.put(nfd, b"v1")
    assert meta.key == nfc
    assert await store.stat(nfc) == meta
    assert await store.stat(nfd) == meta
    assert await read_all(store, nfd) == b"v1"
    replaced = await store.put(nfc, b"v2")  # the same key, not a second one
    assert [m.key for m in await store.list()] == [nfc]
    assert await store.stat(nfd) == replaced
    assert await store.delete(nfd) is not None
    assert await store.stat(nfc) is None


# -- reads ----------------------------------------------------------------------------------


async def test_full_read_returns_the_content(store: Store) -> None:
    data = content(4 * CS + 1, seed=7)
    await store.put("k", data)
    assert await read_all(store, "k") == data
    assert await read_all(store, "k", 0, None) == data
    assert await read_all(store, "k", 0, len(data)) == data


def _ranges(size: int) -> list[tuple[int, int | None]]:
    return [
        (0, None), (0, 1), (1, 2), (10, 20),  # inside the first chunk
        (CS - 1, CS), (CS - 1, CS + 1), (CS, CS + 1), (CS + 1, CS + 2),  # around the first boundary
        (CS - 1, None), (CS, None), (CS + 1, None),
        (0, CS - 1), (0, CS), (0, CS + 1),
        (CS + 5, CS + 100),  # inside one middle chunk
        (CS, 2 * CS), (CS - 1, 2 * CS + 1), (CS + 1, 3 * CS - 1),  # spanning several chunks
        (2 * CS - 1, 2 * CS + 1), (3 * CS, 3 * CS + 1),
        (size - 1, None), (size - 1, size), (0, size),
        (5, size + 10_000), (size - 3, size + 1),  # end beyond the size clamps
        (7, 7), (size, None), (size, size + 5), (size + 10, size + 20), (size + 10, None),  # nothing
    ]  # fmt: skip


async def test_range_read_returns_exactly_the_requested_bytes(store: Store) -> None:
    data = content(3 * CS + 12345, seed=8)
    await store.put("r.bin", data)
    for start, end in _ranges(len(data)):
        got = await read_all(store, "r.bin", start, end)
        assert got == data[start:end], (start, end)


async def test_range_read_fetches_only_the_chunks_covering_the_range(store: Store) -> None:
    data = content(5 * CS + 777, seed=9)
    await store.put("r.bin", data)
    calls = record_chunk_fetches(store)
    for start, end in _ranges(len(data)):
        calls.clear()
        got = await read_all(store, "r.bin", start, end)
        assert got == data[start:end]
        stop = len(data) if end is None else min(end, len(data))
        expected = list(range(start // CS, (stop - 1) // CS + 1)) if start < stop else []
        fetched = [seq for first, last in calls for seq in range(first, last + 1)]
        assert fetched == expected, (start, end, calls)


async def test_read_fetches_a_bounded_number_of_chunks_per_query(store: Store) -> None:
    data = content(10 * CS, seed=10)
    await store.put("big.bin", data)
    calls = record_chunk_fetches(store)
    assert await read_all(store, "big.bin") == data
    assert len(calls) > 1
    assert all(last - first + 1 <= READ_BATCH_CHUNKS for first, last in calls)


async def test_read_with_bad_range_raises_value_error(store: Store) -> None:
    await store.put("k", b"0123456789")
    for start, end in [(-1, None), (-1, 5), (5, 4), (0, -1), (10, 9)]:
        with pytest.raises(ValueError):
            await read_all(store, "k", start, end)
    with pytest.raises(ValueError):
        await read_all(store, "missing", -1)  # the range is checked whether or not the key exists


async def test_read_of_missing_key_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await read_all(store, "missing")
    with pytest.raises(NotFound):
        await read_all(store, "missing", 5, 10)
    await store.put("missing.txt", b"x")
    with pytest.raises(NotFound) as caught:
        await read_all(store, "missing")
    assert caught.value.key == "missing"


async def test_read_of_an_older_version_raises_content_changed(store: Store) -> None:
    v1 = await store.put("k", content(2 * CS, seed=11))
    data = content(2 * CS, seed=12)
    v2 = await store.put("k", data)
    with pytest.raises(ContentChanged):
        await read_all(store, "k", version=v1.version)
    with pytest.raises(ContentChanged):
        await read_all(store, "k", 0, 10, version=v1.version)
    assert await read_all(store, "k", version=v2.version) == data
    assert await read_all(store, "k", CS - 1, CS + 1, version=v2.version) == data[CS - 1 : CS + 1]


# -- replace and delete ---------------------------------------------------------------------


async def test_replace_gives_a_new_version_with_the_new_content(store: Store) -> None:
    old = content(3 * CS + 1, seed=13)
    new = content(CS // 2, seed=14)  # shorter: none of the old chunks may show through
    v1 = await store.put("k.bin", old)
    v2 = await store.put("k.bin", new)
    assert v2.version > v1.version
    assert (v2.sha256, v2.size) == (sha(new), len(new))
    assert await store.stat("k.bin") == v2
    assert await read_all(store, "k.bin") == new
    assert await read_all(store, "k.bin", CS - 1, CS + 1) == b""
    assert v2.created_at == v1.created_at
    assert v2.updated_at >= v1.updated_at
    assert [m.key for m in await store.list()] == ["k.bin"]
    await assert_only_live_chunks(store.url)


async def test_replace_with_identical_content_still_takes_a_new_version(store: Store) -> None:
    v1 = await store.put("k", b"same")
    v2 = await store.put("k", b"same")
    assert v2.version > v1.version
    assert v2.sha256 == v1.sha256
    assert await store.stat("k") == v2


async def test_delete_leaves_a_tombstone(store: Store) -> None:
    put = await store.put("gone.txt", content(2 * CS, seed=15))
    assert await store.delete("gone.txt") is not None
    assert await store.delete("gone.txt") is None
    assert await store.stat("gone.txt") is None
    with pytest.raises(NotFound):
        await read_all(store, "gone.txt")
    changes = await store.changes(put.version)
    assert len(changes) == 1
    tombstone = changes[0]
    assert tombstone.key == "gone.txt" and tombstone.deleted is True
    assert tombstone.version > put.version
    assert await store.changes() == [tombstone]  # the tombstone replaces the key's older entry
    assert await store.last_version() == tombstone.version  # the second delete took no version
    assert await store.list() == []
    await assert_only_live_chunks(store.url)


async def test_delete_of_missing_key_returns_false_and_writes_nothing(store: Store) -> None:
    assert await store.delete("never") is None
    await assert_empty(store)


# -- conditional writes: the check and the change are one atomic step -----------------------


async def test_put_whose_expectation_fails_changes_nothing(store: Store) -> None:
    v1 = await store.put("k.bin", b"old")
    seen: list[str | None] = []

    def expect(live: str | None) -> bool:
        seen.append(live)
        return False

    with pytest.raises(PreconditionFailed):
        await store.put("k.bin", content(3 * CHUNK_SIZE), expect=expect)
    assert seen == [v1.sha256], "the expectation is shown the live file's hash"
    assert await store.stat("k.bin") == v1
    assert await read_all(store, "k.bin") == b"old"
    assert await store.last_version() == v1.version
    await assert_only_live_chunks(store.url)


async def test_put_expectation_sees_none_for_a_missing_or_deleted_key(store: Store) -> None:
    seen: list[str | None] = []

    def expect(live: str | None) -> bool:
        seen.append(live)
        return True

    first = await store.put("k.bin", b"a", expect=expect)
    await store.delete("k.bin")
    await store.put("k.bin", b"b", expect=expect)
    await store.put("k.bin", b"c", expect=expect)
    assert first.sha256 == sha(b"a")
    assert seen == [None, None, sha(b"b")]


async def test_delete_whose_expectation_fails_changes_nothing(store: Store) -> None:
    v1 = await store.put("k.bin", b"keep")
    with pytest.raises(PreconditionFailed):
        await store.delete("k.bin", expect=lambda live: live is None)
    assert await store.stat("k.bin") == v1
    assert await store.delete("k.bin", expect=lambda live: live == v1.sha256) is not None
    assert await store.stat("k.bin") is None


async def test_only_one_of_concurrent_create_only_puts_wins(store: Store) -> None:
    """``expect=absent`` from ten writers at once: exactly one commits, however they interleave."""

    async def create(n: int) -> FileMeta | None:
        try:
            return await store.put("once.bin", content(CHUNK_SIZE + n, seed=n), expect=lambda live: live is None)
        except PreconditionFailed:
            return None

    results = await asyncio.gather(*(create(n) for n in range(10)))
    winners = [meta for meta in results if meta is not None]
    assert len(winners) == 1
    assert await store.stat("once.bin") == winners[0]
    assert await store.changes() == [Change("once.bin", winners[0].version, False)]
    await assert_only_live_chunks(store.url)


async def test_put_after_delete_revives_the_key(store: Store) -> None:
    v1 = await store.put("k", b"first life")
    assert await store.delete("k") is not None
    tombstone_version = await store.last_version()
    v2 = await store.put("k", b"second life")
    assert v2.version > tombstone_version > v1.version
    assert await store.stat("k") == v2
    assert await read_all(store, "k") == b"second life"
    assert v2.created_at > v1.created_at  # a new file, not the old one's history
    assert await store.changes() == [Change("k", v2.version, False)]
    assert [m.key for m in await store.list()] == ["k"]


# -- versions and the change feed ---------------------------------------------------------


async def _mixed_history(store: Store) -> list[tuple[str, int, bool]]:
    """Puts and deletes over several keys; returns (key, version, deleted) per write, in order."""
    history: list[tuple[str, int, bool]] = []

    async def put(key: str) -> None:
        meta = await store.put(key, content(100, seed=len(history)))
        history.append((key, meta.version, False))

    async def delete(key: str) -> None:
        before = await store.last_version()
        deleted = await store.delete(key)
        after = await store.last_version()
        if deleted is not None:
            assert deleted == after, "delete returns its tombstone's version"
            history.append((key, after, True))
        else:
            assert after == before

    for op, key in [
        (put, "a"), (put, "b"), (put, "a"), (delete, "b"), (put, "c"), (delete, "a"), (delete, "zz"),
        (put, "b"), (put, "d"), (delete, "a"), (put, "c"), (put, "e"), (delete, "e"),
    ]:  # fmt: skip
        await op(key)
    return history


async def test_versions_strictly_increase_across_puts_and_deletes(store: Store) -> None:
    assert await store.last_version() == 0
    history = await _mixed_history(store)
    versions = [version for _, version, _ in history]
    assert all(v > 0 for v in versions)
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


async def test_changes_report_each_keys_newest_state_in_version_order(store: Store) -> None:
    history = await _mixed_history(store)
    newest: dict[str, tuple[int, bool]] = {}
    for key, version, deleted in history:
        newest[key] = (version, deleted)
    expected = sorted((Change(k, v, d) for k, (v, d) in newest.items()), key=lambda c: c.version)
    assert await store.changes() == expected
    assert await store.changes(0) == expected
    assert [c.key for c in expected] == ["a", "b", "d", "c", "e"]
    assert [c.deleted for c in expected] == [True, False, False, False, True]


async def test_changes_respect_since_and_limit(store: Store) -> None:
    await _mixed_history(store)
    everything = await store.changes()
    for i, change in enumerate(everything):
        assert await store.changes(change.version) == everything[i + 1 :]
        assert await store.changes(change.version - 1) == everything[i:]
    assert await store.changes(everything[-1].version) == []
    assert await store.changes(10**12) == []
    for limit in (1, 2, 3):
        assert await store.changes(0, limit=limit) == everything[:limit]
    paged: list[Change] = []
    since = 0
    while page := await store.changes(since, limit=2):
        assert len(paged) <= len(everything), "paging through changes does not advance"
        paged += page
        since = page[-1].version
    assert paged == everything
    for bad in (0, -1, 10_001):
        with pytest.raises(ValueError):
            await store.changes(0, limit=bad)


async def test_last_version_is_the_newest_version(store: Store) -> None:
    assert await store.last_version() == 0
    meta = await store.put("x", b"1")
    assert await store.last_version() == meta.version
    history = await _mixed_history(store)
    assert await store.last_version() == max(version for _, version, _ in history)
    assert await store.last_version() == max(c.version for c in await store.changes())


# -- list -------------------------------------------------------------------------------------

LIST_KEYS = [
    "a", "a/b", "a/b/c.txt", "a/c.txt", "a-b", "ab", "ab/x", "b", "B", "z",
    "\u00e9t\u00e9/1", "\u00e9t\u00e9/2", "\u00e9tage", "e\u0301x",  # NFD: stored as "\u00e9x"
    "\u65e5\u672c/\u8a9e", "\ud7ff/a", "\ue000/b", "\U0001f600/smile", "\U0010ffff/last", "~tilde",
]  # fmt: skip
LIST_CANONICAL = sorted(unicodedata.normalize("NFC", k) for k in LIST_KEYS)  # code-point order


async def _put_list_keys(store: Store) -> dict[str, FileMeta]:
    return {(meta := await store.put(key, key.encode())).key: meta for key in LIST_KEYS}


async def test_list_returns_live_keys_in_code_point_order(store: Store) -> None:
    metas = await _put_list_keys(store)
    listed = await store.list()
    assert [m.key for m in listed] == LIST_CANONICAL
    assert listed == [metas[key] for key in LIST_CANONICAL]  # the same metadata stat gives


@pytest.mark.parametrize(
    "prefix",
    ["", "a", "a/", "a/b", "a/b/", "ab", "b", "B", "c", "\u00e9", "\u00e9t\u00e9/", "e\u0301", "\u65e5",
     "\ud7ff", "\ue000", "\U0001f600", "\U0010ffff", "\U0010ffff/", "~", "zz"],
)  # fmt: skip
async def test_list_filters_by_prefix(store: Store, prefix: str) -> None:
    await _put_list_keys(store)
    wanted = unicodedata.normalize("NFC", prefix)
    expected = [k for k in LIST_CANONICAL if k.startswith(wanted)]
    assert [m.key for m in await store.list(prefix)] == expected


async def test_list_pagination_visits_every_key_once(store: Store) -> None:
    await _put_list_keys(store)
    for prefix in ("", "a", "\u00e9"):
        expected = [k for k in LIST_CANONICAL if k.startswith(prefix)]
        for limit in (1, 2, 3, 1000):
            seen: list[str] = []
            after: str | None = None
            while page := await store.list(prefix, limit=limit, after=after):
                assert len(page) <= limit
                assert len(seen) <= len(expected), "pagination does not advance"
                seen += [m.key for m in page]
                after = page[-1].key
            assert seen == expected, (prefix, limit)


async def test_list_after_is_exclusive_and_works_outside_the_prefix(store: Store) -> None:
    await _put_list_keys(store)
    assert [m.key for m in await store.list(after="ab")] == [k for k in LIST_CANONICAL if k > "ab"]
    assert [m.key for m in await store.list(after="aa")] == [k for k in LIST_CANONICAL if k > "aa"]
    assert [m.key for m in await store.list("a/", after="")] == ["a/b", "a/b/c.txt", "a/c.txt"]
    assert [m.key for m in await store.list("a/", after="0")] == ["a/b", "a/b/c.txt", "a/c.txt"]  # before prefix
    assert [m.key for m in await store.list("a/", after="a/b")] == ["a/b/c.txt", "a/c.txt"]
    assert [m.key for m in await store.list("a/", after="b")] == []  # beyond the prefix
    assert await store.list(after="\U0010ffff/last") == []


async def test_list_after_given_in_nfd_resumes_after_the_nfc_key(store: Store) -> None:
    await _put_list_keys(store)
    nfc = "\u00e9t\u00e9/1"
    expected = [k for k in LIST_CANONICAL if k > nfc]
    assert [m.key for m in await store.list(after=nfc)] == expected
    assert [m.key for m in await store.list(after=unicodedata.normalize("NFD", nfc))] == expected


async def test_list_excludes_deleted_keys(store: Store) -> None:
    await _put_list_keys(store)
    for key in ("a/b", "z", "\u00e9t\u00e9/1"):
        assert await store.delete(key) is not None
    remaining = [k for k in LIST_CANONICAL if k not in ("a/b", "z", "\u00e9t\u00e9/1")]
    assert [m.key for m in await store.list()] == remaining
    assert [m.key for m in await store.list("a/")] == ["a/b/c.txt", "a/c.txt"]
    assert [m.key for m in await store.list(limit=2, after="a-b")] == ["a/b/c.txt", "a/c.txt"]


async def test_list_with_bad_limit_raises_value_error(store: Store) -> None:
    for bad in (0, -1, 10_001):
        with pytest.raises(ValueError):
            await store.list(limit=bad)
    assert await store.list(limit=10_000) == []


# -- concurrency ----------------------------------------------------------------------------


async def test_concurrent_writers_to_one_key_leave_one_consistent_version(store: Store, store_url: str) -> None:
    writers = 8
    contents = [content(CS + 1000 * i + 1, seed=100 + i) for i in range(writers)]
    ready = asyncio.Barrier(writers)

    async def write(data: bytes) -> FileMeta:
        async with open_store(store_url) as own:  # its own store: its own connections
            await ready.wait()
            return await own.put("shared.bin", pieces(*split(data, [1000, CS // 2, 7])))

    async with asyncio.timeout(60):
        metas = await asyncio.gather(*(write(data) for data in contents))
    versions = [meta.version for meta in metas]
    assert len(set(versions)) == writers
    for meta, data in zip(metas, contents, strict=True):
        assert (meta.sha256, meta.size) == (sha(data), len(data))
    winner = max(metas, key=lambda meta: meta.version)  # the last write wins
    final = await store.stat("shared.bin")
    assert final == winner
    data = await read_all(store, "shared.bin")
    assert sha(data) == final.sha256
    assert data == contents[metas.index(winner)]
    assert await store.last_version() == winner.version
    assert await store.changes() == [Change("shared.bin", winner.version, False)]
    await assert_only_live_chunks(store_url)


async def test_concurrent_writers_to_different_keys_all_land(store: Store, store_url: str) -> None:
    contents = {f"k{i}": content(CS // 3 + i, seed=200 + i) for i in range(8)}

    async def write(key: str, data: bytes) -> FileMeta:
        async with open_store(store_url) as own:
            return await own.put(key, pieces(*split(data, [10, 20_000])))

    metas = await asyncio.gather(*(write(k, v) for k, v in contents.items()))
    assert len({meta.version for meta in metas}) == len(contents)
    for key, data in contents.items():
        assert await read_all(store, key) == data
    assert [c.version for c in await store.changes()] == sorted(meta.version for meta in metas)
    await assert_only_live_chunks(store_url)


# -- failed and cancelled uploads ----------------------------------------------------------


class UploadFailed(Exception):
    pass


async def test_failed_upload_leaves_the_previous_version_intact(store: Store) -> None:
    old = content(CS + 10, seed=20)
    v1 = await store.put("k.bin", old)

    async def failing() -> AsyncIterator[bytes]:
        for i in range(10):  # 2.5 MiB: more than one write batch has gone to the database
            yield content(CS, seed=300 + i)
        raise UploadFailed("the client went away")

    with pytest.raises(UploadFailed):
        await store.put("k.bin", failing())
    assert await store.stat("k.bin") == v1
    assert await read_all(store, "k.bin") == old
    assert await store.last_version() == v1.version
    assert await store.changes() == [Change("k.bin", v1.version, False)]
    await assert_only_live_chunks(store.url)


async def test_failed_first_upload_leaves_no_key(store: Store) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield content(9 * CS, seed=21)
        raise UploadFailed

    with pytest.raises(UploadFailed):
        await store.put("new.bin", failing())
    assert await store.stat("new.bin") is None
    with pytest.raises(NotFound):
        await read_all(store, "new.bin")
    await assert_empty(store)
    await assert_only_live_chunks(store.url)


async def test_cancelled_upload_leaves_the_previous_version_intact(store: Store) -> None:
    old = content(2 * CS + 3, seed=22)
    v1 = await store.put("k.bin", old)
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for i in range(10):
            yield content(CS, seed=400 + i)
        started.set()
        await asyncio.Event().wait()  # never comes: the upload is cancelled here
        yield b"unreachable"

    task = asyncio.create_task(store.put("k.bin", stalls()))
    async with asyncio.timeout(30):
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await store.stat("k.bin") == v1
    assert await read_all(store, "k.bin") == old
    assert await store.last_version() == v1.version
    await assert_only_live_chunks(store.url)
    # and the store is still usable
    v2 = await store.put("k.bin", b"after")
    assert v2.version > v1.version


async def test_opening_a_store_does_not_wait_for_an_upload_in_progress(store: Store, store_url: str) -> None:
    old = content(CS + 1, seed=23)
    v1 = await store.put("k", old)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield content(9 * CS, seed=24)  # more than one write batch: rows are in the database
        started.set()
        await release.wait()
        yield b"tail"

    task = asyncio.create_task(store.put("k", slow()))
    try:
        await started.wait()
        async with asyncio.timeout(5):  # a new frontend starting up must not wait for the upload
            async with open_store(store_url) as other:
                assert await other.stat("k") == v1
                assert await read_all(other, "k") == old
            assert await read_all(store, "k") == old
    finally:
        release.set()
        v2 = await task
    assert v2.version > v1.version
    await assert_only_live_chunks(store_url)


# -- reads racing writes ----------------------------------------------------------------------


async def _read_slowly_while(store: Store, key: str, during: AsyncIterator[None]) -> tuple[bytes, bool]:
    """Read ``key`` piece by piece; after the first piece run ``during``; (bytes read, completed?)."""
    received = bytearray()
    try:
        async with asyncio.timeout(30):
            async for piece in store.read(key):
                received += piece
                await anext(during, None)
                await asyncio.sleep(0)
    except ContentChanged:
        return bytes(received), False
    return bytes(received), True


async def test_read_racing_a_replace_never_mixes_versions(store: Store, store_url: str) -> None:
    old = content(10 * CS + 5, seed=30)
    replacements = [content(len(old), seed=31), content(2 * CS, seed=32), content(12 * CS, seed=33)]
    async with open_store(store_url) as writer:  # another frontend
        for new in replacements:
            await store.put("k", old)

            async def replace(new: bytes = new) -> AsyncIterator[None]:
                await writer.put("k", new)
                yield

            received, completed = await _read_slowly_while(store, "k", replace())
            assert len(received) > 0  # the replace really happened mid-read
            if completed:
                assert received == old
            else:
                assert old.startswith(received)  # only bytes of the old version, in order
            assert await read_all(store, "k") == new


async def test_read_racing_a_delete_never_yields_other_bytes(store: Store, store_url: str) -> None:
    old = content(10 * CS, seed=34)
    await store.put("k", old)
    async with open_store(store_url) as writer:

        async def delete() -> AsyncIterator[None]:
            assert await writer.delete("k") is not None
            yield

        received, completed = await _read_slowly_while(store, "k", delete())
    assert received == old if completed else old.startswith(received)
    assert await store.stat("k") is None


async def test_replace_between_locating_and_fetching_raises_content_changed(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = content(3 * CS, seed=35), content(3 * CS, seed=36)
    await store.put("k", old)
    original = store._fetch_chunks
    async with open_store(store_url) as writer:
        replaced = False

        async def replace_first(blob_id: int, first: int, last: int) -> Sequence[bytes]:
            nonlocal replaced
            if not replaced:
                replaced = True
                await writer.put("k", new)
            return await original(blob_id, first, last)

        monkeypatch.setattr(store, "_fetch_chunks", replace_first)
        received = bytearray()
        with contextlib.suppress(ContentChanged):
            async with asyncio.timeout(30):
                async for piece in store.read("k"):
                    received += piece
        assert replaced
        assert bytes(received) == old or old.startswith(bytes(received))
        monkeypatch.undo()
        assert await read_all(store, "k") == new


# -- persistence --------------------------------------------------------------------------------


async def test_data_persists_across_reopening(store_url: str) -> None:
    data = content(2 * CS + 9, seed=40)
    async with open_store(store_url) as first:
        meta = await first.put("keep/me.bin", data)
        await first.put("drop", b"x")
        await first.delete("drop")
        changes = await first.changes()
        last = await first.last_version()
    for _ in range(2):  # reopening is idempotent: the schema is there, nothing is reset
        async with open_store(store_url) as again:
            assert await again.stat("keep/me.bin") == meta
            assert await read_all(again, "keep/me.bin") == data
            assert await again.stat("drop") is None
            assert await again.changes() == changes
            assert await again.last_version() == last
            assert [m.key for m in await again.list()] == ["keep/me.bin"]
    async with open_store(store_url) as later:
        assert (await later.put("new", b"y")).version > last


async def test_concurrent_first_opens_create_the_schema_once(store_url: str) -> None:
    async def open_and_put(i: int) -> FileMeta:
        async with open_store(store_url) as opened:
            return await opened.put(f"k{i}", b"%d" % i)

    async with asyncio.timeout(60):
        metas = await asyncio.gather(*(open_and_put(i) for i in range(6)))
    assert len({meta.version for meta in metas}) == 6
    async with open_store(store_url) as store:
        assert [m.key for m in await store.list()] == sorted(f"k{i}" for i in range(6))


async def test_closed_store_can_be_used_as_context_manager(store_url: str) -> None:
    async with open_store(store_url) as opened, opened as same:
        assert same is opened
        await same.put("a", b"1")
    async with open_store(store_url) as reopened:
        assert await read_all(reopened, "a") == b"1"


# -- backend-specific failure modes -----------------------------------------------------------


async def test_postgres_connection_killed_mid_upload_raises_store_unavailable(pg_url: str) -> None:
    """The backend is killed in the middle of a staging statement: made to wait on a table
    lock first, so the kill lands inside it every time."""
    application = f"servefiles_victim_{uuid.uuid4().hex[:8]}"
    victim_url = f"{pg_url}&application_name={application}"
    old = content(CS + 100, seed=50)
    async with open_store(victim_url) as store:
        v1 = await store.put("k.bin", old)
        started, proceed = asyncio.Event(), asyncio.Event()

        async def large() -> AsyncIterator[bytes]:
            for i in range(STAGE_BATCH_CHUNKS + 2):  # the first batch is committed
                yield content(CS, seed=500 + i)
            started.set()
            await proceed.wait()
            for i in range(STAGE_BATCH_CHUNKS):  # the second batch's statement waits on the lock
                yield content(CS, seed=600 + i)

        task = asyncio.create_task(store.put("k.bin", large()))
        # Two connections: pg_stat_activity is a snapshot inside the locker's transaction.
        locker, killer = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
        try:
            async with asyncio.timeout(30):
                await started.wait()
                lock = locker.transaction()
                await lock.start()
                await locker.execute("LOCK TABLE servefiles_uploads IN EXCLUSIVE MODE")
                proceed.set()
                while True:  # until the upload's next statement is waiting on that lock
                    killed = await killer.fetch(
                        """SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
                           WHERE datname = current_database() AND application_name = $1
                             AND state = 'active' AND wait_event_type = 'Lock'""",
                        application,
                    )
                    if killed:
                        break
                    await asyncio.sleep(0.01)
                await lock.rollback()
                assert [row[0] for row in killed] == [True]  # exactly the uploading connection
                with pytest.raises(StoreUnavailable):
                    await task
        finally:
            await locker.close()
            await killer.close()
        # The previous version is intact, what was staged is freed, and the store recovers.
        assert await store.stat("k.bin") == v1
        assert await read_all(store, "k.bin") == old
        assert await store.last_version() == v1.version
        await assert_only_live_chunks(pg_url)
        v2 = await store.put("k.bin", b"after")
        assert v2.version > v1.version
        assert await read_all(store, "k.bin") == b"after"


async def test_postgres_connections_kept_between_statements_are_replaced_once_killed(pg_url: str) -> None:
    """The store keeps a connection aside between statements (no pool round per query); killed
    while kept (a restart, pg_terminate_backend), it is noticed and replaced, not reused."""
    store = await PostgresStore.open(pg_url, pool_size=2)
    try:
        await store.put("kept.bin", b"kept")
        gate = asyncio.Event()

        async def held_stat() -> object:
            async with store._connection() as conn:  # two at once: both end up kept aside
                await gate.wait()
                return await conn.fetchval("SELECT 1")

        both = asyncio.gather(held_stat(), held_stat())
        await asyncio.sleep(0.05)
        gate.set()
        await both
        pids = [conn.get_server_pid() for conn, _used in store._idle]
        assert len(pids) == 2, "connections were given back to the pool after each statement"
        killer = await asyncpg.connect(pg_url)
        try:
            assert all(await killer.fetch("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids))
        finally:
            await killer.close()
        async with asyncio.timeout(10):
            while True:  # the first statement may meet a connection not yet seen closed: a 503 then
                with contextlib.suppress(StoreUnavailable):
                    if (meta := await store.stat("kept.bin")) is not None:
                        break
                await asyncio.sleep(0.05)
        assert meta.size == 4
        async with store._connection() as conn:
            assert conn.get_server_pid() not in pids
    finally:
        await store.close()


async def test_postgres_slow_uploads_hold_no_pooled_connection(pg_url: str) -> None:
    """More stalled uploads than the pool has connections: reads and other writes go on."""
    store = await PostgresStore.open(pg_url, pool_size=2)
    try:
        await store.put("read.bin", b"still readable")
        stalled = asyncio.Event()

        async def stalls() -> AsyncIterator[bytes]:
            yield content(CS * STAGE_BATCH_CHUNKS + 1, seed=7)  # one batch staged, then nothing
            await stalled.wait()

        uploads = [asyncio.create_task(store.put(f"slow-{n}.bin", stalls())) for n in range(4)]
        try:
            async with asyncio.timeout(10):
                while True:
                    if len((await storage(pg_url)).chunks) == 1 + len(uploads):  # each has staged a batch
                        break
                    await asyncio.sleep(0.02)
                assert await read_all(store, "read.bin") == b"still readable"
                assert (await store.put("quick.bin", b"quick")).size == 5
                assert [meta.key for meta in await store.list("slow-")] == []  # staged is not published
        finally:
            for upload in uploads:
                upload.cancel()
            await asyncio.gather(*uploads, return_exceptions=True)
        await assert_only_live_chunks(pg_url)
    finally:
        await store.close()


async def test_an_upload_swept_while_idle_is_refused_and_leaves_nothing(store_url: str) -> None:
    """The next open sweeps an upload idle past STALE_UPLOAD_SECONDS (its clock moved back
    here): the upload that comes back to it is aborted, and the old version stays."""
    async with open_store(store_url) as store:
        await store.put("k.bin", b"old")
        idle, resume = asyncio.Event(), asyncio.Event()

        async def comes_back_late() -> AsyncIterator[bytes]:
            yield content(CS * STAGE_BATCH_CHUNKS, seed=8)
            idle.set()
            await resume.wait()
            yield b"the rest"

        task = asyncio.create_task(store.put("k.bin", comes_back_late()))
        async with asyncio.timeout(10):
            await idle.wait()
            while True:
                if len((await storage(store_url)).chunks) == 2:  # its first batch is staged
                    break
                await asyncio.sleep(0.02)
        await age_staged_uploads(store_url, seconds=STALE_UPLOAD_SECONDS + 60)
        async with open_store(store_url):
            pass  # another frontend starts, and sweeps
        resume.set()
        with pytest.raises(UploadAborted):
            await task
        assert await read_all(store, "k.bin") == b"old"
    await assert_only_live_chunks(store_url)


async def test_sqlite_upload_cancelled_as_it_publishes_leaves_a_readable_key(sqlite_url: str) -> None:
    """The cancel arrives after the publishing transaction committed, before the put saw it."""
    path = sqlite_path(sqlite_url)
    old, new = content(CS + 1, seed=60), content(8 * CS, seed=61)  # exactly one write batch
    async with open_store(sqlite_url) as store:
        v1 = await store.put("k", old)
        locker = sqlite3.connect(path, isolation_level=None)
        locked = asyncio.Event()

        async def source() -> AsyncIterator[bytes]:
            for part in split(new, [CS] * 8):
                yield part
            # Everything is staged; what follows is the publish. Hold SQLite's write lock
            # so that the publish waits for us.
            locker.execute("BEGIN IMMEDIATE")
            locked.set()

        task = asyncio.create_task(store.put("k", source()))
        try:
            async with asyncio.timeout(30):
                await locked.wait()  # the put is now waiting for its publish transaction
        finally:
            locker.execute("COMMIT")
            locker.close()
        # Let the publish commit, without letting the event loop deliver its result...
        deadline = time.monotonic() + 10
        with contextlib.closing(sqlite3.connect(path)) as probe:
            while probe.execute("SELECT version FROM servefiles_files WHERE key = 'k'").fetchone()[0] == v1.version:
                assert time.monotonic() < deadline, "the publish never committed"
                time.sleep(0.002)  # noqa: ASYNC251 - blocking on purpose: the loop must not run yet
        # ...then cancel the put: it sees CancelledError although its version is committed.
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        meta = await store.stat("k")
        assert meta is not None
        data = await read_all(store, "k")  # must not raise ContentChanged: the bytes are there
        assert sha(data) == meta.sha256
        assert data in (old, new)
        await assert_only_live_chunks(sqlite_url)


async def test_sqlite_upload_cancelled_while_staging_leaves_no_orphan_chunks(sqlite_url: str) -> None:
    """The cancel arrives while a staging transaction waits for SQLite's write lock."""
    path = sqlite_path(sqlite_url)
    old = content(CS + 1, seed=70)
    async with open_store(sqlite_url) as store:
        v1 = await store.put("k", old)
        locker = sqlite3.connect(path, isolation_level=None)
        locked = asyncio.Event()

        async def source() -> AsyncIterator[bytes]:
            for i in range(7):
                yield content(CS, seed=700 + i)
            locker.execute("BEGIN IMMEDIATE")  # the 8th chunk completes a batch: its staging must wait
            locked.set()
            yield content(CS, seed=707)
            await asyncio.Event().wait()
            yield b"unreachable"

        task = asyncio.create_task(store.put("k", source()))
        try:
            async with asyncio.timeout(30):
                await locked.wait()
                # The staging transaction is waiting for the lock in a worker thread. Keep it
                # waiting a little, cancel the put (its clean-up then waits for the lock too),
                # then let both go, in whichever order SQLite picks.
                await asyncio.sleep(0.3)
                task.cancel()
                await asyncio.sleep(0.005)
        finally:
            locker.execute("COMMIT")
            locker.close()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Closing the store waits for its worker threads: the staging transaction has run by now.
    # Whatever the order it ran in, no staged chunk may outlive the cancelled upload.
    await assert_only_live_chunks(sqlite_url)
    async with open_store(sqlite_url) as store:
        assert await store.stat("k") == v1
        assert await read_all(store, "k") == old


async def test_sqlite_store_opens_while_another_connection_writes_the_fresh_file(sqlite_url: str) -> None:
    """Switching a new file to WAL must wait for another writer, not fail with "database is locked".

    Several processes opening one new file at once race to switch it to WAL mode;
    SQLite tells the losers "database is locked" without waiting (it would be a
    deadlock for its busy handler). Here another connection holds the fresh
    file's write lock, as the winner of that race does for a moment.
    """
    path = sqlite_path(sqlite_url)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        opening = asyncio.create_task(connect(sqlite_url))
        await asyncio.sleep(0.05)
        assert not opening.done() or opening.exception() is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with asyncio.timeout(10):
        store = await opening
    try:
        assert (await store.put("k", b"v")).version == 1
    finally:
        await store.close()


async def test_a_keys_versions_never_share_a_second(store: Store) -> None:
    """Last-Modified and nginx's "mtime-size" ETag have whole seconds: each version (and
    tombstone) of a key gets a later validator second than the one before, however fast
    they come."""
    seconds = []
    for n in range(4):
        meta = await store.put("k", b"same size %d" % n)
        assert meta.last_modified.microsecond == 0 and meta.last_modified.utcoffset() == timedelta(0)
        seconds.append(int(meta.last_modified.timestamp()))
    assert await store.delete("k") is not None
    seconds.append(int((await store.put("k", b"same size 0")).last_modified.timestamp()))
    assert all(earlier < later for earlier, later in itertools.pairwise(seconds)), seconds
    assert seconds[-1] - seconds[-2] >= 2, "the tombstone between them took a second of its own"
    other = await store.put("other", b"x")  # other keys are not pushed along
    assert other.last_modified <= datetime.now(UTC) + timedelta(seconds=1)


async def test_updated_at_is_the_true_time_of_each_write(store: Store) -> None:
    """Only the validator second is pushed ahead by a burst of writes: ``updated_at`` (what
    the Python API, the listing and Django report) is the database's clock at the write."""
    # Start the burst just after a second begins: six quick writes then share that second, and the
    # last one's validator is pushed ahead by 5 s less its fraction. A burst that straddled a second
    # boundary could end 3.99 s behind (seen on CI: 42.005 against 46).
    await asyncio.sleep(1.01 - time.time() % 1)
    for n in range(6):
        before = datetime.now(UTC)
        meta = await store.put("k", b"same size %d" % n)
        after = datetime.now(UTC)
        assert before - timedelta(milliseconds=500) <= meta.updated_at <= after + timedelta(milliseconds=500)
        assert meta.last_modified >= meta.updated_at.replace(microsecond=0)
        assert await store.stat("k") == meta
        assert await store.list() == [meta]
    assert meta.last_modified - meta.updated_at >= timedelta(seconds=4), "six versions in about a second"


async def test_a_schema_1_database_is_migrated_with_last_modified_from_updated_at(store_url: str) -> None:
    """Schema 1 had no ``last_modified``: its ``updated_at`` kept the one-second rule, so it becomes
    the validator second; writes after the upgrade go on from there."""
    async with open_store(store_url) as store:
        v1 = await store.put("k", b"same size 1")
        await store.put("gone", b"x")
        await store.delete("gone")
    pushed = v1.updated_at.replace(microsecond=0) + timedelta(seconds=3)  # as the old rule could have left it
    statements = [
        "ALTER TABLE servefiles_files DROP COLUMN last_modified",
        "UPDATE servefiles_files SET updated_at = updated_at + {}",
        "UPDATE servefiles_meta SET value = '1' WHERE name = 'schema_version'",
    ]
    if store_url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(sqlite_path(store_url))) as conn:
            for statement in statements:
                conn.execute(statement.format(3_000_000 - v1.updated_at.microsecond))
            conn.commit()
    else:
        conn = await asyncpg.connect(store_url)
        try:
            for statement in statements:
                await conn.execute(statement.format(f"interval '{3_000_000 - v1.updated_at.microsecond} microseconds'"))
        finally:
            await conn.close()
    async with open_store(store_url) as store:
        migrated = await store.stat("k")
        assert migrated is not None and migrated.last_modified == pushed == migrated.updated_at
        v2 = await store.put("k", b"same size 2")
        assert v2.last_modified == pushed + timedelta(seconds=1)
        assert (await store.put("gone", b"y")).last_modified > pushed
    async with open_store(store_url) as store:  # opening again leaves it as it is
        assert await store.stat("k") == v2


async def test_the_history_id_stays_while_the_database_keeps_its_history(store: Store) -> None:
    """``read_history_id`` names the database's history: the same on every call and every open.
    (It changes when the history may have gone back, as when a standby is promoted: tests/test_failover.py.)"""
    first = await store.read_history_id()
    assert first == store.history_id
    await store.put("history.txt", b"x")
    assert await store.read_history_id() == first
    async with open_store(store.url) as again:
        assert again.history_id == first
