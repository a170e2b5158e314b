"""The ``servefiles`` command.

Every option can come from the environment (``SERVEFILES_DB``,
``SERVEFILES_CACHE_DIR``, ``SERVEFILES_UPLOAD_TOKEN``, ``SERVEFILES_HOST``,
``SERVEFILES_PORT``, ``SERVEFILES_PREFIX``) and every command shares the same
defaults (:mod:`servefiles.config`). Errors are one line on stderr and a
non-zero exit, mapped from servefiles' error types in :class:`_Commands`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from . import config
from .auth import UploadToken
from .errors import InvalidKey, NotFound, ServeFilesError
from .keys import canonical_key, key_folder, key_under
from .store import Store, connect, mask_dsn
from .store.types import FileMeta

_T = TypeVar("_T")
HASH_BLOCK = 1024 * 1024
EXIT_ERROR = 1
EXIT_USAGE = 2


class ErrorLine(click.ClickException):
    """An error as the command shows it: ``servefiles: error: …``, one line on stderr, exit 1."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(line.strip() for line in message.splitlines() if line.strip()))

    def show(self, file: Any = None) -> None:
        click.echo(f"servefiles: error: {self.message}", file=file, err=True)


class UsageLine(ErrorLine):
    """A command line servefiles cannot run (bad option value, missing argument): one line, exit 2
    (as click's own usage errors), without click's usage block."""

    exit_code = EXIT_USAGE


_HELP_INSTEAD = getattr(click.exceptions, "NoArgsIsHelpError", ())
"""Click >= 8.2 shows the help for a bare ``servefiles`` through an error: that stays the help."""


def one_line(exc: click.ClickException) -> ErrorLine:
    """Click's error ``exc`` as one line: a usage error names the command and where its help is."""
    if isinstance(exc, ErrorLine):
        return exc
    if isinstance(exc, click.UsageError):
        help_hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return UsageLine(exc.format_message() + help_hint)
    return ErrorLine(exc.format_message())


class _Commands(click.Group):
    """The one place where errors become CLI exits: one line on stderr, never a traceback.

    servefiles' error types and OSError (a missing or unreadable local file, named) exit 1;
    click's usage errors (a bad option value, a missing argument, no such option or command)
    exit 2, as with click, but in one line instead of click's usage block. ``--help`` is click's.
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _HELP_INSTEAD:
            raise
        except click.ClickException as exc:  # the group's own options: `servefiles --bogus`
            raise one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _HELP_INSTEAD:
            raise
        except click.ClickException as exc:
            raise one_line(exc) from None
        except ServeFilesError as exc:
            raise ErrorLine(str(exc)) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise ErrorLine(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_url",
        envvar="SERVEFILES_DB",
        default=None,
        metavar="URL",
        help="postgresql://… or sqlite:///path (env SERVEFILES_DB). "
        "Default: an embedded SQLite file in the servefiles data directory.",
    )(func)


def _run(main: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(main)


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

        return _run(body())

    return db_option(wrapper)


def resolve_db_url(db_url: str | None) -> str:
    """The URL to use; the default embedded database's directory is created on demand."""
    if db_url:
        return db_url
    config.data_dir().mkdir(parents=True, exist_ok=True)
    return config.default_db_url()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="servefiles")
def main() -> None:
    """Serve uploaded files from the database, fast, on every frontend."""


# -- serve ------------------------------------------------------------------------------


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


def _positive_size(ctx: click.Context | None, param: click.Parameter | None, value: str | int) -> int:
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
    return click.option(
        "--cache-dir", envvar="SERVEFILES_CACHE_DIR", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Local cache directory (env SERVEFILES_CACHE_DIR). Default: the servefiles cache directory.",
    )(func)  # fmt: skip


def cache_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--cache-size", envvar="SERVEFILES_CACHE_SIZE", callback=parse_size, default="1GiB", show_default=True,
        help="Disk-tier budget; least recently used files are evicted beyond it.",
    )(func)  # fmt: skip


def publish_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--publish-dir", envvar="SERVEFILES_PUBLISH_DIR", type=click.Path(file_okay=False, path_type=Path),
        default=None, help="Where --nginx tree publishes files for nginx (env SERVEFILES_PUBLISH_DIR). "
        "Default: next to the cache dir.",
    )(func)  # fmt: skip


@main.command()
@db_option
@click.option("--read-db", envvar="SERVEFILES_READ_DB", default=None, metavar="URL",
              help="A PostgreSQL read replica for content fetches (env SERVEFILES_READ_DB).")
@cache_dir_option
@click.option("--host", envvar="SERVEFILES_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="SERVEFILES_PORT", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--prefix", envvar="SERVEFILES_PREFIX", default="/media", show_default=True,
              help="URL prefix the files are served under: {prefix}/{key}.")
@click.option("--upload-token", "upload_tokens", envvar="SERVEFILES_UPLOAD_TOKEN", multiple=True,
              metavar="TOKEN[:PREFIX]",
              help="Allow PUT/DELETE and the JSON listing for this bearer token, optionally only for keys under "
              "PREFIX/. Repeat for rotation (env SERVEFILES_UPLOAD_TOKEN, space-separated). No token: read-only.")
@click.option("--upload-token-file", type=click.File("r"), envvar="SERVEFILES_UPLOAD_TOKEN_FILE", default=None,
              help="Read TOKEN[:PREFIX] lines from a file (keeps secrets out of `ps`).")
@click.option("--max-upload-size", envvar="SERVEFILES_MAX_UPLOAD_SIZE", callback=parse_size, default="1GiB",
              show_default=True, help="Largest HTTP upload; bigger ones get 413 and store nothing.")
@cache_size_option
@click.option("--memory-size", envvar="SERVEFILES_MEMORY_SIZE", callback=parse_size, default="64MiB", show_default=True,
              help="Memory-tier budget for small hot files.")
@click.option("--freshness", envvar="SERVEFILES_FRESHNESS", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds a cached file is served before its version is checked against the database again.")
@click.option("--cache-control", envvar="SERVEFILES_CACHE_CONTROL", default="no-cache", show_default=True,
              help="Cache-Control sent with files.")
@click.option("--active-content", envvar="SERVEFILES_ACTIVE_CONTENT", default="attachment", show_default=True,
              type=click.Choice(["attachment", "sandbox"]),
              help="How HTML, SVG, XML and JavaScript uploads are kept from running on this origin.")
@click.option("--prefetch/--no-prefetch", envvar="SERVEFILES_PREFETCH", default=False, show_default=True,
              help="Download new versions as soon as the change feed announces them.")
@click.option("--metrics/--no-metrics", envvar="SERVEFILES_METRICS", default=False, show_default=True,
              help="Expose Prometheus counters at /_servefiles/metrics.")
@click.option("--nginx", "nginx_mode", envvar="SERVEFILES_NGINX", type=click.Choice(["off", "accel", "tree"]),
              default="off", show_default=True,
              help="nginx runs in front with the block `servefiles nginx-config` prints: hand it the bytes "
              "(accel: X-Accel-Redirect) or also publish files for its try_files (tree).")
@publish_dir_option
@click.option("--log-level", envvar="SERVEFILES_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--max-header-line", envvar="SERVEFILES_MAX_HEADER_LINE", callback=_positive_size, default="8KiB",
              show_default=True, help="Largest header field line (name: value); over it, 431.")
@click.option("--max-header-size", envvar="SERVEFILES_MAX_HEADER_SIZE", callback=_positive_size, default="32KiB",
              show_default=True, help="Largest header block (all field lines); over it, 431.")
@click.option("--max-header-count", envvar="SERVEFILES_MAX_HEADER_COUNT", type=click.IntRange(1), default=100,
              show_default=True, help="Most header fields in one request; over it, 431.")
@click.option("--max-url-size", envvar="SERVEFILES_MAX_URL_SIZE", callback=_positive_size, default="8KiB",
              show_default=True, help="Longest request-target (path and query); over it, 414.")
def serve(db_url: str | None, read_db: str | None, cache_dir: Path | None, host: str, port: int, prefix: str,
          upload_tokens: tuple[str, ...], upload_token_file: Any, max_upload_size: int, cache_size: int,
          memory_size: int, freshness: float, cache_control: str,
          active_content: str, prefetch: bool, metrics: bool, nginx_mode: str, publish_dir: Path | None,
          log_level: str, max_header_line: int, max_header_size: int, max_header_count: int,
          max_url_size: int) -> None:  # fmt: skip
    """Run a standalone file server: GET {prefix}/{key}."""
    import uvicorn

    from .middleware import ServeFiles
    from .middleware.limits import BoundedRequests, RequestLimits

    limits = RequestLimits(max_header_line, max_header_size, max_header_count, max_url_size)

    url = resolve_db_url(db_url)
    specs = [*upload_tokens, *(upload_token_file or ())]
    try:
        tokens = [UploadToken.parse(spec) for spec in specs if spec.strip() and not spec.strip().startswith("#")]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--upload-token") from None

    app = ServeFiles(
        None, db=url, read_db=read_db, prefix=prefix, cache_dir=cache_dir or config.default_cache_dir(),
        disk_bytes=cache_size, memory_bytes=memory_size, freshness_seconds=freshness,
        cache_control=cache_control, active_content="sandbox" if active_content == "sandbox" else "attachment",
        prefetch=prefetch, metrics=metrics, upload_tokens=tokens, max_upload_bytes=max_upload_size,
        nginx=None if nginx_mode == "off" else "tree" if nginx_mode == "tree" else "accel",
        publish_dir=publish_dir or config.default_publish_dir(), date_header=True,
    )  # fmt: skip
    if app.mount.accel is not None:
        app.mount.accel.withdraw_tree()  # first: even if the database is not there, nginx must not serve it unchecked

    async def check() -> None:  # fail fast, in one line, if the database is not there
        store = await connect(url, read_db)
        await store.close()

    _run(check())
    _check_writable_dir(cache_dir or config.default_cache_dir(), "--cache-dir")
    _check_listen(host, port)
    writes = f", uploads with {len(tokens)} token(s)" if tokens else ", read-only (no --upload-token)"
    click.echo(f"servefiles: serving {mask_dsn(url)} at http://{host}:{port}{app.prefix}/{writes}", err=True)
    # Every request passes the head limits before servefiles looks at it; h11 may buffer an
    # incomplete head up to what those limits allow (httptools has no such bound of its own).
    # servefiles stamps Date itself: uvicorn's is refreshed once a second, and could name a
    # second before the Last-Modified of a file written a moment ago (RFC 9110 §8.8.2.1).
    bounded = BoundedRequests(app, limits, date_header=True)
    uvicorn.run(bounded, host=host, port=port, log_level=log_level, lifespan="on",
                h11_max_incomplete_event_size=limits.head_bytes, date_header=False)  # fmt: skip


@main.command("nginx-config")
@click.option("--mode", type=click.Choice(["accel", "tree"]), default="accel", show_default=True)
@click.option("--upstream", default="127.0.0.1:8000", show_default=True, help="Where servefiles listens.")
@click.option("--listen", default="80", show_default=True, help="nginx's listen directive.")
@click.option("--server-name", default="_", show_default=True)
@click.option("--prefix", envvar="SERVEFILES_PREFIX", default="/media", show_default=True)
@cache_dir_option
@publish_dir_option
@click.option("--max-upload-size", envvar="SERVEFILES_MAX_UPLOAD_SIZE", callback=parse_size, default="1GiB",
              show_default=True)
@click.option("--cache-control", envvar="SERVEFILES_CACHE_CONTROL", default="no-cache", show_default=True)
def nginx_config(mode: str, upstream: str, listen: str, server_name: str, prefix: str, cache_dir: Path | None,
                 publish_dir: Path | None, max_upload_size: int, cache_control: str) -> None:  # fmt: skip
    """Print an nginx server block for servefiles behind nginx (include it in nginx's http block)."""
    from .nginx import NginxSettings, render

    click.echo(render(NginxSettings(
        mode="tree" if mode == "tree" else "accel", upstream=upstream, prefix=prefix,
        cache_dir=cache_dir or config.default_cache_dir(), publish_dir=publish_dir or config.default_publish_dir(),
        listen=listen, server_name=server_name, max_upload_bytes=max_upload_size, cache_control=cache_control,
    )), nl=False)  # fmt: skip


@main.command("new-token")
@click.option("--prefix", default="", callback=parse_folder,
              help="Limit the token to keys under this folder: 'blog' and 'blog/' both mean blog/….")
def new_token(prefix: str) -> None:
    """Print a fresh random upload token (TOKEN or TOKEN:PREFIX) for --upload-token."""
    import secrets

    token = secrets.token_urlsafe(32)
    click.echo(f"{token}:{prefix.rstrip('/')}" if prefix else token)


async def _maintain(store: Store, cache_dir: Path | None, cache_size: int, work: Callable[[Any], Any]) -> None:
    """Open the cache dir for ``warm``/``sync`` and run ``work(maintainer)``; print the report."""
    from .cache.disk import DiskCache
    from .cache.warm import CacheMaintainer

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


async def _warm_with_progress(maintainer: Any, prefix: str) -> None:
    missing, cursor = await maintainer.plan(prefix)
    total = sum(meta.size for meta in missing)
    with click.progressbar(length=total, label="warming", file=sys.stderr, show_pos=False) as bar:
        await maintainer.fetch(missing, bar.update)
    await maintainer.finish(cursor)


@main.command()
@click.argument("prefix", default="")
@cache_dir_option
@cache_size_option
@with_store
async def warm(store: Store, prefix: str, cache_dir: Path | None, cache_size: int) -> None:
    """Pre-fill a cache dir from the database (incremental: only what changed since the last run).

    PREFIX is a plain string prefix, as in ls: 'blog' also takes blogroll.png; 'blog/' only the folder.
    """
    await _maintain(store, cache_dir, cache_size, lambda m: _warm_with_progress(m, prefix))


@main.command()
@click.option("--verify", is_flag=True, help="Also re-hash every cached file and drop those that do not match.")
@cache_dir_option
@cache_size_option
@with_store
async def sync(store: Store, verify: bool, cache_dir: Path | None, cache_size: int) -> None:
    """Reconcile a cache dir with the database: drop what it deleted or changed, fetch what is missing."""

    async def work(maintainer: Any) -> None:
        entries = await asyncio.to_thread(maintainer.disk.stats)
        with click.progressbar(length=entries.bytes, label="checking", file=sys.stderr, show_pos=False) as bar:
            await maintainer.reconcile(verify, bar.update)
        await _warm_with_progress(maintainer, "")

    await _maintain(store, cache_dir, cache_size, work)


@main.command()
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def stats(cache_dir: Path | None, as_json: bool) -> None:
    """Show what a cache directory holds."""
    from .cache.disk import DiskCache

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


# -- one-shot commands -------------------------------------------------------------------


@main.command()
@with_store
async def init(store: Store) -> None:
    """Create the database schema (it is also created on first use)."""
    click.echo(f"schema ready in {mask_dsn(store.url)}")


@main.command()
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


@main.command()
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


@main.command()
@click.argument("key")
@with_store
async def rm(store: Store, key: str) -> None:
    """Delete KEY (a tombstone version tells every frontend)."""
    if not await store.delete(key):
        raise NotFound(canonical_key(key))


@main.command(name="ls")
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


@main.command(name="import")
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


@main.command()
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


# -- helpers -------------------------------------------------------------------------------


def _check_writable_dir(path: Path, option: str) -> None:
    """Fail in one line, before uvicorn starts, when ``path`` cannot be created or written: the
    disk tier opens it in the ASGI lifespan, where a failure is a traceback among log lines."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ErrorLine(f"{option} {path}: {exc.strerror or exc}") from None


def _check_listen(host: str, port: int) -> None:
    """Fail in one line, before uvicorn starts, when ``host:port`` cannot be listened on (in use,
    a privileged port, an unknown host); uvicorn would report it among its start-up log lines."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
            probe.bind(address)
    except OSError as exc:
        raise ErrorLine(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


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
    def digest() -> str:
        hasher = hashlib.sha256()
        with open(path, "rb") as source:
            while block := source.read(HASH_BLOCK):
                hasher.update(block)
        return hasher.hexdigest()

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
