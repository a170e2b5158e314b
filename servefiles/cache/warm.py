"""``servefiles warm`` and ``servefiles sync``: the cron job, for those who still want one.

Both work on a cache dir directly, through the same disk tier, fill path and
feed cursor the frontends use, so they can run while frontends serve from
that dir. ``warm`` is incremental by version: with a cursor for this
database it only applies the changes since, otherwise it starts from an
empty cache and lists everything. ``sync`` also checks every cached entry
against the database (and, with ``verify``, re-hashes its file).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..feed import FeedCursor
from ..localfs import sha256_of_fd
from ..metrics import Metrics
from ..store import Store
from ..store.types import Change, FileMeta
from .disk import DiskCache
from .fill import Filler

Progress = Callable[[int], None]
CHANGE_BATCH = 1000


@dataclass
class WarmReport:
    fetched: int = 0
    present: int = 0
    removed: int = 0
    corrupt: int = 0
    failed: int = 0
    fetched_bytes: int = 0


class CacheMaintainer:
    """Warms and reconciles one cache dir from one store."""

    def __init__(self, store: Store, disk: DiskCache, dropped_at_open: int = 0) -> None:
        self.store = store
        self.disk = disk
        self.cursor = FeedCursor(disk.root, store.store_id, store.history_id)
        self.filler = Filler(store, disk, None, Metrics(), wait_seconds=60.0)  # to disk only
        self.report = WarmReport(corrupt=dropped_at_open)  # truncated or replaced files the open found

    async def plan(self, prefix: str) -> tuple[list[FileMeta], int]:
        """What ``warm`` must fetch, and the cursor to save once it has.

        First the changes since the saved cursor are applied to the disk tier
        for every key (replaced or deleted: dropped), so the saved cursor stays
        true whatever ``prefix`` is; then every file under ``prefix`` whose
        version is not on disk yet is to be fetched. Without a cursor for this
        database, nothing cached can be vouched for: the cache starts empty.
        """
        start = await self.store.last_version()
        since = await asyncio.to_thread(self.cursor.load)
        if since is None:
            self.report.removed += await asyncio.to_thread(self.disk.clear)
        else:
            batch: list[Change] = []
            async for change in self.store.iter_changes(since):
                batch.append(change)
                if len(batch) == CHANGE_BATCH:
                    self.report.removed += await asyncio.to_thread(self.disk.drop_outdated, batch)
                    batch = []
            self.report.removed += await asyncio.to_thread(self.disk.drop_outdated, batch)
        missing = []
        async for meta in self.store.iter_files(prefix):
            entry = await asyncio.to_thread(self.disk.get, meta.key)
            if entry is not None and entry.meta.revision == meta.revision:
                self.report.present += 1
            else:
                missing.append(meta)
        return missing, start

    async def fetch(self, metas: list[FileMeta], progress: Progress) -> None:
        for meta in metas:
            if await self.filler.fill(meta):
                self.report.fetched += 1
                self.report.fetched_bytes += meta.size
            else:
                self.report.failed += 1
            progress(meta.size)

    async def finish(self, cursor: int) -> None:
        if self.report.failed == 0:
            await asyncio.to_thread(self.cursor.save, cursor)
        await self.filler.close()

    async def reconcile(self, verify: bool, progress: Progress) -> None:
        """Drop every entry the database no longer vouches for (and, with ``verify``, any whose bytes are wrong)."""
        for key in await asyncio.to_thread(self.disk.keys):
            entry = await asyncio.to_thread(self.disk.get, key)
            if entry is None:
                continue
            meta = await self.store.stat(key)
            if meta is None or meta.revision != entry.meta.revision:
                await asyncio.to_thread(self.disk.discard, key)
                self.report.removed += 1
            elif verify and not await asyncio.to_thread(self._intact, entry.meta):
                await asyncio.to_thread(self.disk.discard, key)
                self.report.corrupt += 1
            progress(entry.meta.size)

    def _intact(self, meta: FileMeta) -> bool:
        entry = self.disk.get(meta.key)
        fd = self.disk.open_entry(entry) if entry is not None else None
        if fd is None:
            return False
        try:
            return sha256_of_fd(fd) == meta.sha256
        finally:
            os.close(fd)
