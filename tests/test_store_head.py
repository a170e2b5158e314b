"""The store contract for a file's head: its metadata and first bytes in one query, and a
continued read of the same version by blob id (``Store.fetch_head``, ``Store.read_from``).

Every test takes the ``store``/``store_url`` fixtures, so it runs on SQLite and on the
real PostgreSQL alike. Queries are counted by wrapping the real store's primitives
(:mod:`tests.instrument`): every call still reaches the database.
"""

from __future__ import annotations

import random

import pytest

from servefiles import ContentChanged, Store, open_store
from servefiles.store.base import CHUNK_SIZE, READ_BATCH_CHUNKS
from servefiles.store.types import Head

from .instrument import count_store_reads, record_chunk_fetches

CS = CHUNK_SIZE


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def continued(store: Store, head: Head, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([piece async for piece in store.read_from(head, start, end)])


@pytest.mark.parametrize("size", [0, 1, 40_000, CS], ids=["empty", "one-byte", "avatar", "one-chunk"])
async def test_a_head_of_a_small_file_is_its_whole_content_in_one_query(store: Store, size: int) -> None:
    data = content(size, seed=size)
    meta = await store.put("avatar.jpg", data)
    queries = count_store_reads(store)
    head = await store.fetch_head("avatar.jpg")
    assert head is not None
    assert queries == ["_locate_head"]
    assert head.meta == meta
    assert head.data == data
    assert head.complete
    assert await continued(store, head) == data
    assert await continued(store, head, 1, 3) == data[1:3]
    assert queries == ["_locate_head"]  # everything came from the head


async def test_a_head_of_a_large_file_is_its_first_chunk_and_the_rest_follows_by_blob(store: Store) -> None:
    data = content(3 * CS + 123, seed=1)
    meta = await store.put("photo.bin", data)
    queries = count_store_reads(store)
    fetched = record_chunk_fetches(store)
    head = await store.fetch_head("photo.bin")
    assert head is not None and head.meta == meta
    assert head.data == data[:CS] and not head.complete
    assert await continued(store, head) == data
    assert fetched == [(1, 3)]  # only what the head did not hold
    assert "_locate" not in queries  # no second LOCATE
    assert await continued(store, head, CS - 10, CS + 10) == data[CS - 10 : CS + 10]
    assert await continued(store, head, 2 * CS + 5, 2 * CS + 9) == data[2 * CS + 5 : 2 * CS + 9]


async def test_max_bytes_bounds_the_head(store: Store) -> None:
    data = content(2 * CS + 5, seed=2)
    await store.put("k", data)
    for max_bytes in (0, 1, CS - 1, CS + 1, 2 * CS, 10 * CS):
        head = await store.fetch_head("k", max_bytes)
        assert head is not None
        assert head.data == data[:max_bytes]
        assert head.complete == (max_bytes >= len(data))
        assert await continued(store, head) == data
    with pytest.raises(ValueError):
        await store.fetch_head("k", -1)


async def test_a_continued_read_fetches_a_bounded_number_of_chunks_per_query(store: Store) -> None:
    data = content((2 * READ_BATCH_CHUNKS + 2) * CS, seed=3)
    await store.put("k", data)
    head = await store.fetch_head("k")
    assert head is not None
    fetched = record_chunk_fetches(store)
    assert await continued(store, head) == data
    assert all(last - first + 1 <= READ_BATCH_CHUNKS for first, last in fetched)


async def test_a_missing_or_deleted_key_has_no_head(store: Store) -> None:
    assert await store.fetch_head("never.bin") is None
    await store.put("gone.bin", b"x")
    await store.delete("gone.bin")
    assert await store.fetch_head("gone.bin") is None


async def test_a_replace_between_head_and_continuation_raises_content_changed_before_any_byte(
    store: Store, store_url: str
) -> None:
    old, new = content(3 * CS, seed=4), content(3 * CS, seed=5)
    await store.put("k", old)
    head = await store.fetch_head("k")
    assert head is not None
    async with open_store(store_url) as writer:
        await writer.put("k", new)
    received = bytearray()
    with pytest.raises(ContentChanged):
        async for piece in store.read_from(head):
            received += piece
    assert received == b""  # the first batch past the head is fetched before the head's bytes go
    # What the head holds is still that version's, whole and alone.
    assert await continued(store, head, 0, CS) == old[:CS]
    fresh = await store.fetch_head("k")
    assert fresh is not None and await continued(store, fresh) == new


async def test_a_delete_between_head_and_continuation_raises_content_changed(store: Store) -> None:
    await store.put("k", content(2 * CS, seed=6))
    head = await store.fetch_head("k")
    assert head is not None
    await store.delete("k")
    with pytest.raises(ContentChanged):
        await continued(store, head)


async def test_a_continued_read_with_a_bad_range_raises_value_error(store: Store) -> None:
    await store.put("k", b"abc")
    head = await store.fetch_head("k")
    assert head is not None
    for start, end in ((-1, None), (2, 1)):
        with pytest.raises(ValueError):
            await continued(store, head, start, end)
    assert await continued(store, head, 3, 10) == b""


async def test_a_head_is_taken_under_the_canonical_key(store: Store) -> None:
    await store.put("caf\u00e9.txt", b"nfc")
    head = await store.fetch_head("cafe\u0301.txt")
    assert head is not None and head.meta.key == "caf\u00e9.txt" and head.data == b"nfc"


async def test_a_whole_head_carries_a_small_file_and_none_of_a_large_one(store: Store) -> None:
    small, large = content(CS, seed=7), content(CS + 1, seed=8)
    await store.put("small", small)
    await store.put("large", large)
    head = await store.fetch_head("small", CS, whole=True)
    assert head is not None and head.complete and head.data == small
    head = await store.fetch_head("large", CS, whole=True)
    assert head is not None and head.data == b"" and not head.complete
    fetched = record_chunk_fetches(store)
    assert await continued(store, head) == large
    assert fetched == [(0, 1)]  # the continued read starts at byte 0, by blob, no LOCATE
