"""The store: files in a database, behind one API whatever the database.

``open_store(url)`` picks the backend from the URL's scheme. Nothing outside
this package knows which database it talks to.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import InvalidURL
from .base import CHUNK_SIZE, PutSource, Store
from .dsn import mask_dsn
from .types import Change, FileMeta

__all__ = [
    "CHUNK_SIZE", "Change", "FileMeta", "PutSource", "Store", "connect", "mask_dsn", "open_store", "sqlite_path",
]  # fmt: skip

POSTGRES_SCHEMES = ("postgresql", "postgres")


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///path`` URL names (``sqlite:////abs`` for an absolute path); InvalidURL if none."""
    parts = _split(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/") or parts.query:
        raise InvalidURL(
            f"not a SQLite URL (want sqlite:///relative/path or sqlite:////absolute/path): {mask_dsn(url)}"
        )
    path = unquote(parts.path[1:])
    if not path or path == ":memory:":
        raise InvalidURL(f"a SQLite URL must name a database file: {mask_dsn(url)}")
    return Path(path)


async def connect(url: str, read_url: str | None = None) -> Store:
    """Open the store ``url`` names; the caller must ``await store.close()``.

    ``read_url`` (PostgreSQL only) is a read replica for content fetches.
    Prefer :func:`open_store`, which closes it for you. Raises :class:`InvalidURL` for a URL
    that names no database servefiles can open, :class:`StoreUnavailable` when the database
    cannot be reached; neither message shows a password (:func:`mask_dsn`).
    """
    scheme = _split(url).scheme
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        if read_url:
            raise InvalidURL("a read replica needs PostgreSQL; SQLite has none")
        return await SQLiteStore.open(sqlite_path(url))
    if scheme in POSTGRES_SCHEMES:
        from .postgres import PostgresStore

        return await PostgresStore.open(url, read_dsn=read_url)
    raise InvalidURL(f"unsupported database URL (want postgresql://… or sqlite:///path): {mask_dsn(url)}")


def _split(url: str) -> SplitResult:
    """``urlsplit``, with its ValueError (e.g. ``[::1`` without its ``]``) as :class:`InvalidURL`."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise InvalidURL(f"not a valid database URL ({exc}): {mask_dsn(url)}") from None


@contextlib.asynccontextmanager
async def open_store(url: str, read_url: str | None = None) -> AsyncIterator[Store]:
    """``async with open_store(url) as store:`` — the store for ``url``, closed on exit.

    ``postgresql://user@host/db`` (asyncpg DSN, multi-host included) or
    ``sqlite:///path/to/files.db``. The schema is created on first use.
    """
    store = await connect(url, read_url)
    try:
        yield store
    finally:
        await store.close()
