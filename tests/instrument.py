"""Instrumentation of a real store: wrappers that record what it is asked, then call it.

Not fakes: every call still reaches the database. They let a test assert how
many queries, and which chunks, a code path costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from servefiles import Store


def record_chunk_fetches(store: Store) -> list[tuple[int, int]]:
    """Every ``(first, last)`` chunk run the store fetches from now on."""
    calls: list[tuple[int, int]] = []
    original = store._fetch_chunks

    async def recording(blob_id: int, first: int, last: int) -> Sequence[bytes]:
        calls.append((first, last))
        return await original(blob_id, first, last)

    store._fetch_chunks = recording  # type: ignore[method-assign]
    return calls


def count_store_reads(store: Store) -> list[str]:
    """The name of every metadata, listing and content query the store makes from now on."""
    calls: list[str] = []
    for name in ("_locate", "_locate_head", "_fetch_chunks", "_list"):
        original = getattr(store, name)

        def recorder(*args: Any, _original: Any = original, _name: str = name) -> Any:
            calls.append(_name)
            return _original(*args)

        setattr(store, name, recorder)
    return calls
