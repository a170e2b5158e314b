"""The one-shot commands on the database: ``init``, ``put``, ``get``, ``rm``, ``ls``, ``import``, ``export``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from ..errors import InvalidKey, NotFound
from ..keys import canonical_key, key_under
from ..localfs import sha256_of_fd
from ..store import Store, mask_dsn
from ..store.types import FileMeta
from .exits import EXIT_ERROR
from .options import parse_folder, with_store


@click.command()
@with_store
async def init(store: Store) -> None:
    """Create the database schema (it is also created on first use)."""
    click.echo(f"schema ready in {mask_dsn(store.url)}")


@click.command()
@click.argument("local_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=str))
@click.argument("key", required=False)
@click.option("--content-type", "-t", default=None, help="Stored type; default: guessed from the key.")
@with_store
async def put(store: Store, local_file: str, key: str | None, content_type: str | None) -> None:
    """Upload LOCAL_FILE (or - for stdin) as KEY (default: the file's name)."""
    if key is None:
        if local_file == "-":
            raise click.ClickException("reading from stdin (-) needs a KEY")
        key = Path(local_file).name
    if local_file == "-":
        meta = await store.put(key, sys.stdin.buffer, content_type)
    else:
        with open(local_file, "rb") as source:
            meta = await store.put(key, source, content_type)
    click.echo(_describe(meta))


@click.command()
@click.argument("key")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (atomically) instead of stdout.")
@with_store
async def get(store: Store, key: str, output: Path | None) -> None:
    """Write KEY's content to stdout or to a file."""
    meta = await store.stat(key)
    if meta is None:
        raise NotFound(canonical_key(key))
    if output is None:
        out = sys.stdout.buffer
        async for chunk in store.read(meta.key, version=meta.version):
            out.write(chunk)
        out.flush()
        return
    await _download(store, meta, output)


@click.command()
@click.argument("key")
@with_store
async def rm(store: Store, key: str) -> None:
    """Delete KEY (a tombstone version tells every frontend)."""
    if not await store.delete(key):
        raise NotFound(canonical_key(key))


@click.command(name="ls")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, as a JSON array.")
@with_store
async def ls(store: Store, prefix: str, as_json: bool) -> None:
    """List files whose key starts with PREFIX.

    PREFIX is a plain string prefix: 'blog' also lists blogroll.png; 'blog/' lists only the folder blog.
    """
    first = True
    if as_json:
        click.echo("[", nl=False)
    async for meta in store.iter_files(prefix):
        if as_json:
            click.echo(("" if first else ",") + "\n  " + json.dumps(_as_json(meta)), nl=False)
        else:
            stamp = meta.updated_at.strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{meta.size:>12}  {stamp}  {meta.content_type:<24}  {meta.key}")
        first = False
    if as_json:
        click.echo("\n]" if not first else "]")


@click.command(name="import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--prefix", default="", callback=parse_folder,
              help="Folder to place the files in: 'blog' and 'blog/' both store a/b.txt as blog/a/b.txt. "
              "Default: the root.")
@with_store
async def import_(store: Store, directory: Path, prefix: str) -> None:
    """Upload every file under DIRECTORY, as PREFIX/its path, skipping those whose content is unchanged."""
    files = sorted(_walk(directory))
    uploaded = unchanged = 0
    problems: list[str] = []
    total = sum(size for _, size in files)
    with click.progressbar(length=total, label="importing", file=sys.stderr, show_pos=False) as bar:
        for path, size in files:
            relative = path.relative_to(directory).as_posix()
            try:
                key = key_under(prefix, relative)
                current = await store.stat(key)
                if current is not None and current.size == size and current.sha256 == await _sha256_of(path):
                    unchanged += 1
                else:
                    with open(path, "rb") as source:
                        await store.put(key, source)
                    uploaded += 1
            except (InvalidKey, OSError) as exc:  # this file's problem; a store failure stops the run
                problems.append(f"{relative}: {exc}")
            bar.update(size)
    click.echo(f"imported {uploaded}, unchanged {unchanged}, failed {len(problems)}")
    for problem in problems:
        click.echo(f"  skipped {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(EXIT_ERROR)


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", default="", help="Export only keys starting with this, a plain string prefix "
              "('blog' also takes blogroll.png; 'blog/' only the folder). Files keep their whole key.")
@with_store
async def export(store: Store, directory: Path, prefix: str) -> None:
    """Write every file to DIRECTORY/KEY (atomically, one file at a time)."""
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    written = 0
    problems: list[str] = []
    async for meta in store.iter_files(prefix):
        target = root.joinpath(*meta.key.split("/"))
        try:
            await _download(store, meta, target)
            written += 1
        except OSError as exc:  # e.g. key "a" and key "a/b": a file where a directory must be
            problems.append(f"{meta.key}: {exc.strerror or exc}")
    click.echo(f"exported {written} files to {directory}, failed {len(problems)}")
    for problem in problems:
        click.echo(f"  skipped {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(EXIT_ERROR)


def _describe(meta: FileMeta) -> str:
    return f"{meta.key}  version {meta.version}  {meta.size} bytes  {meta.content_type}  sha256:{meta.sha256}"


def _as_json(meta: FileMeta) -> dict[str, Any]:
    return {
        "key": meta.key,
        "version": meta.version,
        "size": meta.size,
        "content_type": meta.content_type,
        "sha256": meta.sha256,
        "created_at": meta.created_at.isoformat(),
        "updated_at": meta.updated_at.isoformat(),
    }


def _walk(directory: Path) -> Iterator[tuple[Path, int]]:
    """Regular files under ``directory`` with their sizes; symlinked directories are not entered."""
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root, name)
            if path.is_file():
                yield path, path.stat().st_size


async def _sha256_of(path: Path) -> str:
    """The sha256 of a local file, hashed on a thread (the user's own file: a symlink is followed)."""

    def digest() -> str:
        with open(path, "rb") as source:
            return sha256_of_fd(source.fileno())

    return await asyncio.to_thread(digest)


async def _download(store: Store, meta: FileMeta, target: Path) -> None:
    """Write ``meta``'s content to ``target`` via a temp file and a rename: never a half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".servefiles-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            await _copy_to(store, meta, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException:
        os.unlink(temp_name)
        raise


async def _copy_to(store: Store, meta: FileMeta, out: BinaryIO) -> None:
    async for chunk in store.read(meta.key, version=meta.version):
        await asyncio.to_thread(out.write, chunk)
