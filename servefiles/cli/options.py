"""What several commands share: the ``--db`` option and the store it opens, sizes and folders
as people type them, and the cache and publish directory options."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import config, defaults
from ..errors import InvalidKey
from ..keys import key_folder
from ..store import connect
from .exits import JSON_ERRORS

_T = TypeVar("_T")


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--db URL`` (env ``SERVEFILES_DB``), passed to the command as ``db_url``: None for the default."""
    return click.option(
        "--db",
        "db_url",
        envvar="SERVEFILES_DB",
        default=None,
        metavar="URL",
        help="postgresql://… or sqlite:///path (env SERVEFILES_DB). "
        "Default: an embedded SQLite file in the servefiles data directory.",
    )(func)


def with_store(func: Callable[..., Coroutine[Any, Any, _T]]) -> Callable[..., _T]:
    """Open the store named by ``--db`` for an async command body, and close it after."""

    @functools.wraps(func)
    def wrapper(db_url: str | None, **kwargs: Any) -> _T:
        url = resolve_db_url(db_url)

        async def body() -> _T:
            store = await connect(url)
            try:
                return await func(store, **kwargs)
            finally:
                await store.close()

        return asyncio.run(body())

    return db_option(wrapper)


def resolve_db_url(db_url: str | None) -> str:
    """The URL to use; the default embedded database's directory is created on demand."""
    if db_url:
        return db_url
    config.data_dir().mkdir(parents=True, exist_ok=True)
    return config.default_db_url()


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(ctx: click.Context | None, param: click.Parameter | None, value: str | int) -> int:
    """``512M``, ``10GiB``, ``1048576``: sizes as people type them (powers of 1024)."""
    if isinstance(value, int):
        return value
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    number = text.rstrip("KMGT")
    try:
        size = int(float(number) * _SIZE_UNITS[text[len(number) :]])
    except (ValueError, KeyError, OverflowError):  # OverflowError: "inf", "1e400"
        raise click.BadParameter(f"not a size: {value!r} (try 512M or 10GiB)") from None
    if size < 0:
        raise click.BadParameter("a size cannot be negative")
    return size


def format_size(size: int) -> str:
    """``size`` bytes as :func:`parse_size` reads them back, in the largest unit that divides it
    (``1073741824`` -> ``"1GiB"``): how a default in ``servefiles.defaults`` shows in ``--help``."""
    for unit in "TGMK":
        scale = _SIZE_UNITS[unit]
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}iB"
    return str(size)


def positive_size(ctx: click.Context | None, param: click.Parameter | None, value: str | int) -> int:
    """A :func:`parse_size` that refuses 0: a request-head limit of nothing would refuse everything."""
    size = parse_size(ctx, param, value)
    if size < 1:
        raise click.BadParameter("must be at least 1 byte")
    return size


def parse_folder(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    """A ``--prefix`` that places files, as a key folder (``"blog/"``, ``""`` for the root):
    :func:`~servefiles.keys.key_folder`, its InvalidKey as click's BadParameter."""
    try:
        return key_folder(value)
    except InvalidKey as exc:
        raise click.BadParameter(str(exc)) from None


def cache_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--cache-dir`` (env ``SERVEFILES_CACHE_DIR``): a Path, None for the default."""
    return click.option(
        "--cache-dir", envvar="SERVEFILES_CACHE_DIR", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Local cache directory (env SERVEFILES_CACHE_DIR). Default: the servefiles cache directory.",
    )(func)  # fmt: skip


def cache_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--cache-size`` (env ``SERVEFILES_CACHE_SIZE``): the disk tier's budget in bytes."""
    return click.option(
        "--cache-size", envvar="SERVEFILES_CACHE_SIZE", callback=parse_size, default=format_size(defaults.DISK_BYTES),
        show_default=True,
        help="Disk-tier budget; least recently used files are evicted beyond it.",
    )(func)  # fmt: skip


def publish_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--publish-dir`` (env ``SERVEFILES_PUBLISH_DIR``): a Path, None for the default."""
    return click.option(
        "--publish-dir", envvar="SERVEFILES_PUBLISH_DIR", type=click.Path(file_okay=False, path_type=Path),
        default=None, help="Where --nginx tree publishes files for nginx (env SERVEFILES_PUBLISH_DIR). "
        "Default: next to the cache dir.",
    )(func)  # fmt: skip


def log_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-format text|json`` (env ``SERVEFILES_LOG_FORMAT``) and ``--access-log`` (env
    ``SERVEFILES_ACCESS_LOG``), passed as ``log_format`` and ``access_log``. The format is
    processed eagerly, so that an error about any later option is shown in it too."""
    func = click.option(
        "--access-log/--no-access-log", envvar="SERVEFILES_ACCESS_LOG", default=False, show_default=True,
        help="Log every request (method, path without its query, status, bytes, duration, tier) on the "
        "servefiles.access logger (env SERVEFILES_ACCESS_LOG).",
    )(func)  # fmt: skip
    return click.option(
        "--log-format", envvar="SERVEFILES_LOG_FORMAT", type=click.Choice(["text", "json"]), default="text",
        show_default=True, is_eager=True, callback=_errors_as_logged,
        help="text, or one JSON object a line for every line the server writes (env SERVEFILES_LOG_FORMAT).",
    )(func)  # fmt: skip


def _errors_as_logged(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value == "json":
        ctx.meta[JSON_ERRORS] = True
    return value
