"""The miss path: one query for a small cold miss; admission to the disk tier at once while it
has room, on repeat once it is full.

Real stores (SQLite and PostgreSQL) behind the ASGI app; queries are counted by wrapping
the real store's primitives (:mod:`tests.instrument`), every call still reaching the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest

from servefiles import ServeFiles, Store, open_store
from servefiles.cache.fill import INLINE_STREAM_BYTES, Filler
from servefiles.cache.writer import DiskWriter
from servefiles.service import DISK_RECENCY_EVERY, HEAD_BYTES
from servefiles.store.base import CHUNK_SIZE

from .instrument import count_store_reads
from .tools import fills_ended

TEMP_PREFIX = ".tmp-"


@contextlib.asynccontextmanager
async def serving(store: Store, cache_dir: Path, **options: int) -> AsyncIterator[tuple[ServeFiles, httpx.AsyncClient]]:
    app = ServeFiles(None, db=store, cache_dir=cache_dir, **options)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            yield app, client
    finally:
        await app.aclose()


def counter(app: ServeFiles, name: str) -> float:
    return app.service.metrics.value(name)


def disk_files(cache_dir: Path) -> list[Path]:
    """Content and temp files of the disk tier (its index and cursor aside)."""
    return [p for p in cache_dir.rglob("*") if p.is_file() and ("objects" in p.parts or p.name.startswith(TEMP_PREFIX))]


async def started_filler(app: ServeFiles) -> Filler:
    """The service started, and its filler (there once it has started)."""
    await app.service.start()
    filler = app.service.runtime.filler
    assert filler is not None
    return filler


async def settle(app: ServeFiles) -> None:
    """Until no fill runs (a write behind the response ends)."""
    assert app.service.runtime.filler is not None
    await fills_ended(app.service.runtime.filler)


RESIDENT_BYTES = 2 * HEAD_BYTES
"""A disk tier of this many bytes (``disk_bytes``), held whole by one file (:func:`full_tier`)."""


async def full_tier(app: ServeFiles, client: httpx.AsyncClient, store: Store) -> Path:
    """Fill the disk tier, of :data:`RESIDENT_BYTES`, with one file asked for once while it had
    room (so written at once): from then on a write would evict it, and admission asks for the
    sightings. Returns the file's path."""
    data = os.urandom(RESIDENT_BYTES)
    await store.put("resident.bin", data)
    assert (await client.get("/media/resident.bin")).content == data
    await settle(app)
    entry = app.service.disk.get("resident.bin")
    assert entry is not None, "a tier with room takes a file on its first miss"
    return entry.path


async def get_settled(app: ServeFiles, client: httpx.AsyncClient, files: dict[str, bytes], key: str) -> None:
    """GET ``key``, check it is answered with its bytes, and wait until its fill (if any) ends."""
    response = await client.get(f"/media/{key}")
    assert response.status_code == 200 and response.content == files[key]
    await settle(app)


async def test_a_small_cold_miss_costs_one_query_and_writes_nothing_to_a_full_disk_tier(
    store: Store, tmp_path: Path
) -> None:
    data = os.urandom(30_000)
    await store.put("avatar.png", data)
    async with serving(store, tmp_path / "cache", disk_bytes=RESIDENT_BYTES) as (app, client):
        resident = await full_tier(app, client, store)
        queries = count_store_reads(store)
        response = await client.get("/media/avatar.png")
        assert response.status_code == 200 and response.content == data
        assert queries == ["_locate_head"]  # metadata and content together
        await settle(app)
        assert app.service.disk.get("avatar.png") is None
        assert disk_files(tmp_path / "cache") == [resident]
        assert counter(app, "servefiles_admission_rejections_total") == 1
        assert counter(app, "servefiles_store_fetches_total") == 2  # the resident's, this one's
        assert counter(app, "servefiles_misses_total") == 2
        # The memory tier kept the bytes: the next request costs no query at all.
        again = await client.get("/media/avatar.png")
        assert again.content == data and queries == ["_locate_head"]
        assert app.service.metrics.value("servefiles_hits_total", tier="memory") == 1


async def test_a_file_asked_for_again_is_written_to_a_full_disk_tier(store: Store, tmp_path: Path) -> None:
    data = os.urandom(30_000)
    await store.put("photo.jpg", data)
    # No memory tier: every request reaches the store until the disk tier has the file.
    async with serving(store, tmp_path / "cache", memory_bytes=1, disk_bytes=RESIDENT_BYTES) as (app, client):
        await full_tier(app, client, store)
        admitted = counter(app, "servefiles_admissions_total")
        queries = count_store_reads(store)
        assert (await client.get("/media/photo.jpg")).content == data
        await settle(app)
        assert app.service.disk.get("photo.jpg") is None
        assert (await client.get("/media/photo.jpg")).content == data  # the second sighting: admitted
        await settle(app)
        entry = app.service.disk.get("photo.jpg")
        assert entry is not None and entry.meta.size == len(data)
        assert app.service.disk.get("resident.bin") is None, "asked for more often than what it evicted"
        assert counter(app, "servefiles_admissions_total") == admitted + 1
        assert queries == ["_locate_head", "_locate_head"]  # the fill wrote the fetched bytes: no query
        third = await client.get("/media/photo.jpg")
        assert third.content == data
        assert app.service.metrics.value("servefiles_hits_total", tier="disk") == 1
        assert queries == ["_locate_head", "_locate_head"]


async def test_a_miss_of_a_file_of_several_chunks_up_to_head_bytes_is_one_query(store: Store, tmp_path: Path) -> None:
    data = os.urandom(HEAD_BYTES - CHUNK_SIZE // 2)  # 3.5 chunks: one row each, all in the first query
    await store.put("photo.jpg", data)
    async with serving(store, tmp_path / "cache") as (_app, client):
        queries = count_store_reads(store)
        response = await client.get("/media/photo.jpg")
        assert response.status_code == 200 and response.content == data
        assert queries == ["_locate_head"]


async def test_a_large_cold_miss_streams_from_the_store_without_a_second_locate(store: Store, tmp_path: Path) -> None:
    data = os.urandom(HEAD_BYTES + CHUNK_SIZE + 17)
    await store.put("video.mp4", data)
    async with serving(store, tmp_path / "cache", disk_bytes=RESIDENT_BYTES) as (app, client):
        resident = await full_tier(app, client, store)
        queries = count_store_reads(store)
        response = await client.get("/media/video.mp4")
        assert response.status_code == 200 and response.content == data
        assert "_locate" not in queries and queries[0] == "_locate_head"
        assert set(queries[1:]) == {"_fetch_chunks"}
        await settle(app)
        assert disk_files(tmp_path / "cache") == [resident]  # asked for once: not written
        second = await client.get("/media/video.mp4")  # asked for again: filled as it streams
        assert second.content == data
        await settle(app)
        assert app.service.disk.get("video.mp4") is not None
        assert counter(app, "servefiles_store_fetches_total") == 3  # the resident's, then two


@pytest.mark.parametrize("size", [30_000, HEAD_BYTES + CHUNK_SIZE + 17], ids=["small", "streamed"])
async def test_a_disk_tier_with_room_takes_a_file_on_its_first_miss(store: Store, tmp_path: Path, size: int) -> None:
    """With the default ``cache_min_uses`` 2: a write that evicts nothing is not held back (the
    file would only be fetched again on its next request), and that next request is a disk hit."""
    data = os.urandom(size)
    await store.put("photo.jpg", data)
    async with serving(store, tmp_path / "cache", memory_bytes=1) as (app, client):
        queries = count_store_reads(store)
        assert (await client.get("/media/photo.jpg")).content == data
        await settle(app)
        entry = app.service.disk.get("photo.jpg")
        assert entry is not None and entry.meta.size == size
        assert counter(app, "servefiles_admissions_total") == 1
        assert counter(app, "servefiles_admission_rejections_total") == 0
        asked = list(queries)
        assert (await client.get("/media/photo.jpg")).content == data
        assert app.service.metrics.value("servefiles_hits_total", tier="disk") == 1
        assert queries == asked, "a disk hit asks the store nothing"


async def test_room_does_not_take_in_a_range_nor_a_file_larger_than_the_tier(store: Store, tmp_path: Path) -> None:
    """A range's fill would read the whole file where the request needs a range (a one-off
    ``bytes=0-0`` probe), so a range waits for its sightings; a file larger than the whole tier is
    never admitted, so it costs no refused write."""
    video, huge = os.urandom(HEAD_BYTES + CHUNK_SIZE + 17), os.urandom(RESIDENT_BYTES + 1)
    await store.put("video.mp4", video)
    await store.put("huge.bin", huge)
    async with serving(store, tmp_path / "cache", memory_bytes=1, disk_bytes=RESIDENT_BYTES) as (app, client):
        probe = await client.get("/media/video.mp4", headers={"range": "bytes=0-0"})
        assert probe.status_code == 206 and probe.content == video[:1]
        for _ in range(2):
            assert (await client.get("/media/huge.bin")).content == huge
        await settle(app)
        assert disk_files(tmp_path / "cache") == []
        assert counter(app, "servefiles_admissions_total") == 0
        assert counter(app, "servefiles_admission_rejections_total") == 3
        assert counter(app, "servefiles_cache_write_failures_total") == 0
        assert (await client.get("/media/video.mp4")).content == video  # not a range, room: taken in
        await settle(app)
        assert app.service.disk.get("video.mp4") is not None


async def test_a_shared_cache_dir_waits_for_the_sightings(store: Store, tmp_path: Path) -> None:
    """Room is judged from this process's index, which does not see another process's installs:
    while the dir is shared, a first miss is not taken in on room alone."""
    data = os.urandom(30_000)
    await store.put("photo.jpg", data)
    other = ServeFiles(None, db=store, cache_dir=tmp_path / "cache")
    try:
        await other.service.start()  # another member of the dir (its own registration in procs/)
        async with serving(store, tmp_path / "cache", memory_bytes=1) as (app, client):
            assert not app.service.disk.alone()
            assert (await client.get("/media/photo.jpg")).content == data
            await settle(app)
            assert app.service.disk.get("photo.jpg") is None
            assert (await client.get("/media/photo.jpg")).content == data  # the second sighting
            await settle(app)
            assert app.service.disk.get("photo.jpg") is not None
    finally:
        await other.aclose()


async def test_room_counts_the_fills_under_way(store: Store, tmp_path: Path) -> None:
    """Concurrent first misses each see the room the others will take: a fill under way counts as
    installed, so no more files are taken in on room than the tier holds."""
    files = {f"f{i}.bin": os.urandom(HEAD_BYTES + CHUNK_SIZE) for i in range(4)}  # streamed: fills last
    for key, data in files.items():
        await store.put(key, data)
    budget = 2 * (HEAD_BYTES + CHUNK_SIZE)
    async with serving(store, tmp_path / "cache", memory_bytes=1, disk_bytes=budget) as (app, client):
        responses = await asyncio.gather(*(client.get(f"/media/{key}") for key in files))
        assert [r.content for r in responses] == list(files.values())
        await settle(app)
        assert counter(app, "servefiles_admissions_total") == 2, "room for two"
        assert counter(app, "servefiles_evictions_total") == 0
        assert sum(app.service.disk.get(key) is not None for key in files) == 2


async def test_min_uses_1_fills_on_the_first_request(store: Store, tmp_path: Path) -> None:
    small, large = os.urandom(1000), os.urandom(HEAD_BYTES + 1)
    await store.put("s.bin", small)
    await store.put("l.bin", large)
    async with serving(store, tmp_path / "cache", cache_min_uses=1) as (app, client):
        queries = count_store_reads(store)
        assert (await client.get("/media/s.bin")).content == small
        assert queries == ["_locate_head"]  # written through from the fetched bytes
        assert (await client.get("/media/l.bin")).content == large
        await settle(app)
        assert app.service.disk.get("s.bin") is not None
        assert app.service.disk.get("l.bin") is not None
        assert "_locate" not in queries
        assert counter(app, "servefiles_admission_rejections_total") == 0


async def test_concurrent_cold_requests_share_one_query_and_one_fill(store: Store, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    await store.put("hot.png", data)
    async with serving(store, tmp_path / "cache") as (app, client):
        queries = count_store_reads(store)
        responses = await asyncio.gather(*(client.get("/media/hot.png") for _ in range(30)))
        assert all(r.status_code == 200 and r.content == data for r in responses)
        assert queries == ["_locate_head"]
        await settle(app)
        assert app.service.disk.get("hot.png") is not None  # a burst is popular: admitted
        assert counter(app, "servefiles_store_fetches_total") == 1
        assert counter(app, "servefiles_fill_duration_seconds_count") == 1, "written once"
        assert [p.name for p in disk_files(tmp_path / "cache")] == [app.service.disk.get("hot.png").meta.sha256]


async def test_a_file_fetched_whole_is_written_behind_its_reply_without_a_fill(store: Store, tmp_path: Path) -> None:
    """All of a small file came with its metadata: the reply is sent from those bytes and the same
    bytes are written to the disk tier in a callback after it (``Filler.write_soon``), with no
    fill for later requests to join and no second query; the write is counted in flight until
    it is made, and the file is a disk hit afterwards."""
    data = os.urandom(40_000)
    await store.put("avatar.png", data)
    async with serving(store, tmp_path / "cache", memory_bytes=1) as (app, client):
        filler = await started_filler(app)
        queries = count_store_reads(store)
        started = filler.start

        def no_fill(*args: object, **kwargs: object) -> object:
            raise AssertionError("a file whole in hand needs no fill")

        filler.start = no_fill  # type: ignore[method-assign]
        try:
            assert (await client.get("/media/avatar.png")).content == data
            await settle(app)
        finally:
            filler.start = started  # type: ignore[method-assign]
        assert queries == ["_locate_head"]
        entry = app.service.disk.get("avatar.png")
        assert entry is not None and await asyncio.to_thread(Path(entry.path).read_bytes) == data
        assert counter(app, "servefiles_fill_duration_seconds_count") == 1
        assert (await client.get("/media/avatar.png")).content == data
        assert app.service.metrics.value("servefiles_hits_total", tier="disk") == 1
        assert queries == ["_locate_head"]


@pytest.mark.parametrize(
    ("size", "on_loop"),
    [(HEAD_BYTES + CHUNK_SIZE + 17, True), (INLINE_STREAM_BYTES + 1, False)],
    ids=["photo", "video"],
)
async def test_a_streamed_fill_writes_on_the_loop_up_to_inline_stream_bytes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, on_loop: bool
) -> None:
    """A file larger than its first query brought is streamed into the tier chunk by chunk: on the
    event loop up to ``INLINE_STREAM_BYTES`` (a thread hop per chunk waited for the GIL), on a
    thread above it (a video's hashing may run beside the loop); whole and on disk either way."""
    data = os.urandom(size)
    await store.put("v.bin", data)
    loop_thread = threading.get_ident()
    where: list[bool] = []
    write = DiskWriter.write

    def spied(writer: DiskWriter, chunk: bytes) -> None:
        where.append(threading.get_ident() == loop_thread)
        write(writer, chunk)

    monkeypatch.setattr(DiskWriter, "write", spied)
    async with serving(store, tmp_path / "cache", memory_bytes=1) as (app, client):
        assert (await client.get("/media/v.bin")).content == data
        await settle(app)
        entry = app.service.disk.get("v.bin")
        assert entry is not None and entry.meta.size == size
    assert len(where) > 1 and set(where) == {on_loop}


async def test_a_write_behind_still_pending_at_shutdown_is_dropped_whole(store: Store, tmp_path: Path) -> None:
    """A shutdown that comes between the reply and its write behind: nothing is written, nothing
    half-written is left, and the count of writes in flight goes back to zero."""
    data = os.urandom(40_000)
    await store.put("avatar.png", data)
    async with serving(store, tmp_path / "cache", memory_bytes=1) as (app, _):
        filler = await started_filler(app)
        meta = await app.service.revalidate("avatar.png")
        assert meta is not None
        assert filler.write_soon(meta, data)
        assert filler.in_flight == 1 and filler.pending_bytes == len(data)
        assert filler.write_soon(meta, data) and filler.in_flight == 1, "one write per version"
        await filler.close()
        await settle(app)  # the callback runs after close: it writes nothing
        assert filler.in_flight == 0
        assert app.service.disk.get("avatar.png") is None
        assert disk_files(tmp_path / "cache") == []


async def test_a_shared_cache_dir_fills_a_small_file_on_a_thread(store: Store, tmp_path: Path) -> None:
    """Write-behind on the loop is for a process alone in its dir: sharing it, an install waits for
    SQLite's write lock, which the other process may hold, so the file goes through a fill."""
    data = os.urandom(30_000)
    await store.put("photo.jpg", data)
    other = ServeFiles(None, db=store, cache_dir=tmp_path / "cache")
    try:
        await other.service.start()
        async with serving(store, tmp_path / "cache", memory_bytes=1) as (app, _):
            filler = await started_filler(app)
            assert not app.service.disk.alone()
            meta = await app.service.revalidate("photo.jpg")
            assert meta is not None
            assert not filler.write_soon(meta, data)
            assert filler.in_flight == 0
    finally:
        await other.aclose()


async def test_head_and_conditional_requests_ask_for_metadata_only(store: Store, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    meta = await store.put("doc.pdf", data)
    async with serving(store, tmp_path / "cache") as (app, client):
        queries = count_store_reads(store)
        head = await client.head("/media/doc.pdf")
        assert head.status_code == 200 and queries == ["_locate"]
        not_modified = await client.get("/media/doc.pdf", headers={"If-None-Match": f'"{meta.sha256}"'})
        assert not_modified.status_code == 304
        assert counter(app, "servefiles_store_fetches_total") == 0
        assert disk_files(tmp_path / "cache") == []


async def test_a_missing_key_costs_one_query(store: Store, tmp_path: Path) -> None:
    async with serving(store, tmp_path / "cache") as (_app, client):
        queries = count_store_reads(store)
        assert (await client.get("/media/none.png")).status_code == 404
        assert queries == ["_locate_head"]


async def test_a_file_replaced_between_head_and_continuation_is_asked_for_again(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    old, new = os.urandom(HEAD_BYTES + CHUNK_SIZE), os.urandom(HEAD_BYTES + CHUNK_SIZE + 5)
    await store.put("clip.mp4", old)
    original = store._fetch_chunks
    replaced = False
    async with open_store(store_url) as writer, serving(store, tmp_path / "cache") as (_app, client):

        async def replace_first(blob_id: int, first: int, last: int) -> Sequence[bytes]:
            nonlocal replaced
            if not replaced:
                replaced = True
                await writer.put("clip.mp4", new)
            return await original(blob_id, first, last)

        store._fetch_chunks = replace_first  # type: ignore[method-assign]
        response = await client.get("/media/clip.mp4")
        assert replaced
        assert response.status_code == 200 and response.content == new  # never a cut or mixed body


async def test_a_full_disk_tier_keeps_files_asked_for_more_often_than_a_newcomer(store: Store, tmp_path: Path) -> None:
    """TinyLFU's admission rule on a full tier: a newcomer asked for a few times does not push
    out a cached file asked for more often (its disk hits count); once it has been asked for
    more often than that file, it takes its place. Every request is answered with the right
    bytes throughout."""
    files = {key: os.urandom(100_000) for key in ("a.bin", "b.bin", "c.bin")}
    for key, data in files.items():
        await store.put(key, data)
    cache = tmp_path / "cache"
    # Room for two of the three; no memory tier, so every hit is a disk hit the sketch counts.
    async with serving(store, cache, disk_bytes=250_000, memory_bytes=0, cache_min_uses=2) as (app, client):
        get = functools.partial(get_settled, app, client, files)
        for key in ("a.bin", "b.bin"):
            for _ in range(2):
                await get(key)
        disk = app.service.disk
        assert disk.get("a.bin") is not None and disk.get("b.bin") is not None
        for _ in range(4):
            for key in ("a.bin", "b.bin"):
                await get(key)  # disk hits: both now far more popular than any newcomer
        for _ in range(3):
            await get("c.bin")
        assert disk.get("c.bin") is None, "a newcomer asked for 3 times pushed out a file asked for 6"
        assert disk.get("a.bin") is not None and disk.get("b.bin") is not None
        for _ in range(6):
            await get("c.bin")
        assert disk.get("c.bin") is not None, "asked for more often than the least recent file, it is admitted"
        assert (disk.get("a.bin") is None) != (disk.get("b.bin") is None), "and took one file's place"


async def test_a_large_newcomer_must_outweigh_all_the_files_it_would_push_out(store: Store, tmp_path: Path) -> None:
    """The aggregated-victims rule on a real tier: a file twice the size of each cached one, asked
    for more often than either but not than both together, stays out; asked for more often than
    both, it takes both places. Every request is answered with the right bytes throughout."""
    files = {"a.bin": os.urandom(100_000), "b.bin": os.urandom(100_000), "large.bin": os.urandom(200_000)}
    for key, data in files.items():
        await store.put(key, data)
    cache = tmp_path / "cache"
    async with serving(store, cache, disk_bytes=250_000, memory_bytes=0, cache_min_uses=2) as (app, client):
        get = functools.partial(get_settled, app, client, files)
        for _ in range(3):
            for key in ("a.bin", "b.bin"):
                await get(key)  # 3 each: two misses (the second fills), one disk hit
        disk = app.service.disk
        assert disk.get("a.bin") is not None and disk.get("b.bin") is not None
        for _ in range(5):
            await get("large.bin")
        assert disk.get("large.bin") is None, "asked for 5 times, more than either (3) but not both (6)"
        assert disk.get("a.bin") is not None and disk.get("b.bin") is not None
        for _ in range(2):
            await get("large.bin")
        assert disk.get("large.bin") is not None, "asked for 7 times, more than both together"
        assert disk.get("a.bin") is None and disk.get("b.bin") is None


async def test_a_file_answered_from_memory_keeps_its_place_in_the_disk_tier(store: Store, tmp_path: Path) -> None:
    """A file hot in the memory tier is not the disk tier's least recently used for that: its
    memory hits refresh its disk recency (one in DISK_RECENCY_EVERY), so a newcomer evicts a file
    nobody asked for since, not the one everybody asks for."""
    files = {key: os.urandom(50_000) for key in ("hot.bin", "cold-1.bin", "cold-2.bin", "new.bin")}
    for key, data in files.items():
        await store.put(key, data)
    cache = tmp_path / "cache"
    # Room on disk for three of the four; every miss written through; memory holds them all.
    async with serving(store, cache, disk_bytes=160_000, memory_bytes=1_000_000, cache_min_uses=1) as (app, client):
        get = functools.partial(get_settled, app, client, files)
        for key in ("hot.bin", "cold-1.bin", "cold-2.bin"):
            await get(key)  # disk order, least recent first: hot, cold-1, cold-2
        disk = app.service.disk
        assert all(disk.get(key) is not None for key in ("hot.bin", "cold-1.bin", "cold-2.bin"))
        metrics = app.service.metrics
        memory_hits = metrics.value("servefiles_hits_total", tier="memory")
        for _ in range(DISK_RECENCY_EVERY):
            await get("hot.bin")
        assert metrics.value("servefiles_hits_total", tier="memory") - memory_hits == DISK_RECENCY_EVERY
        assert metrics.value("servefiles_hits_total", tier="disk") == 0, "all memory hits"
        await get("new.bin")
        assert disk.get("new.bin") is not None
        assert disk.get("hot.bin") is not None, "the file asked for most was evicted from disk"
        assert disk.get("cold-1.bin") is None, "the least recently asked for goes"
