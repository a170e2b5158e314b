"""The commands that work on a cache directory: ``warm``, ``sync``, ``stats``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .. import config
from ..store import Store
from .exits import EXIT_ERROR
from .options import cache_dir_option, cache_size_option, with_store

if TYPE_CHECKING:  # imported when a command runs: `servefiles --help` stays quick
    from ..cache.warm import CacheMaintainer


async def _maintain(
    store: Store, cache_dir: Path | None, cache_size: int, work: Callable[[CacheMaintainer], Awaitable[None]]
) -> None:
    """Open the cache dir for ``warm``/``sync`` and run ``work(maintainer)``; print the report."""
    from ..cache.disk import DiskCache
    from ..cache.warm import CacheMaintainer

    disk = DiskCache(cache_dir or config.default_cache_dir(), cache_size)
    opened = await asyncio.to_thread(disk.open)
    try:
        maintainer = CacheMaintainer(store, disk, opened.dropped_invalid)
        await work(maintainer)
        r = maintainer.report
        click.echo(f"fetched {r.fetched} ({r.fetched_bytes} bytes), already cached {r.present}, "
                   f"removed {r.removed}, corrupt {r.corrupt}, failed {r.failed}")  # fmt: skip
        if r.failed:
            raise click.exceptions.Exit(EXIT_ERROR)
    finally:
        await asyncio.to_thread(disk.close)


async def _warm_with_progress(maintainer: CacheMaintainer, prefix: str) -> None:
    missing, cursor = await maintainer.plan(prefix)
    total = sum(meta.size for meta in missing)
    with click.progressbar(length=total, label="warming", file=sys.stderr, show_pos=False) as bar:
        await maintainer.fetch(missing, bar.update)
    await maintainer.finish(cursor)


@click.command()
@click.argument("prefix", default="")
@cache_dir_option
@cache_size_option
@with_store
async def warm(store: Store, prefix: str, cache_dir: Path | None, cache_size: int) -> None:
    """Pre-fill a cache dir from the database (incremental: only what changed since the last run).

    PREFIX is a plain string prefix, as in ls: 'blog' also takes blogroll.png; 'blog/' only the folder.
    """
    await _maintain(store, cache_dir, cache_size, lambda m: _warm_with_progress(m, prefix))


@click.command()
@click.option("--verify", is_flag=True, help="Also re-hash every cached file and drop those that do not match.")
@cache_dir_option
@cache_size_option
@with_store
async def sync(store: Store, verify: bool, cache_dir: Path | None, cache_size: int) -> None:
    """Reconcile a cache dir with the database: drop what it deleted or changed, fetch what is missing."""

    async def work(maintainer: CacheMaintainer) -> None:
        entries = await asyncio.to_thread(maintainer.disk.stats)
        with click.progressbar(length=entries.bytes, label="checking", file=sys.stderr, show_pos=False) as bar:
            await maintainer.reconcile(verify, bar.update)
        await _warm_with_progress(maintainer, "")

    await _maintain(store, cache_dir, cache_size, work)


@click.command()
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def stats(cache_dir: Path | None, as_json: bool) -> None:
    """Show what a cache directory holds."""
    from ..cache.disk import DiskCache

    root = cache_dir or config.default_cache_dir()
    if not root.is_dir():
        raise click.ClickException(f"no cache directory at {root}")
    disk = DiskCache(root, max_bytes=0)
    report = disk.open(sweep=False)
    try:
        numbers = {"cache_dir": str(root), "entries": report.entries, "bytes": report.bytes}
    finally:
        disk.close()
    if as_json:
        click.echo(json.dumps(numbers))
    else:
        for name, value in numbers.items():
            click.echo(f"{name:<10} {value}")
