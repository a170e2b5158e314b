"""``servefiles serve``, and the two commands that set up what runs beside it: ``nginx-config``, ``new-token``."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import config, defaults, logs
from ..auth import UploadToken
from ..middleware.inline import inline_protocol
from ..middleware.zerocopy import ZeroCopySend
from ..signing import Signer
from ..store import connect, mask_dsn
from .admin import admin_options, run_uvicorn
from .config_file import config_option
from .exits import ErrorLine
from .options import (
    cache_dir_option,
    cache_size_option,
    db_option,
    format_size,
    log_options,
    parse_folder,
    parse_size,
    positive_size,
    publish_dir_option,
    resolve_db_url,
)
from .signing import duration, private_folders, read_signing_keys, signing_key_options

if TYPE_CHECKING:
    from ..middleware import ServeFiles
    from ..middleware.asgi import ASGIApp
    from ..middleware.limits import RequestLimits


def serve_options() -> click.Command:
    """The command whose options a ``--config`` file holds, whichever command reads it: ``serve``."""
    return serve


@click.command()
@config_option(serve_options)
@db_option
@click.option("--read-db", envvar="SERVEFILES_READ_DB", default=None, metavar="URL",
              help="A PostgreSQL read replica for content fetches (env SERVEFILES_READ_DB).")
@cache_dir_option
@click.option("--host", envvar="SERVEFILES_HOST", default=defaults.HOST, show_default=True)
@click.option("--port", envvar="SERVEFILES_PORT", type=click.IntRange(0, 65535), default=defaults.PORT,
              show_default=True)
@click.option("--prefix", envvar="SERVEFILES_PREFIX", default=defaults.PREFIX, show_default=True,
              help="URL prefix the files are served under: {prefix}/{key}.")
@click.option("--upload-token", "upload_tokens", envvar="SERVEFILES_UPLOAD_TOKEN", multiple=True,
              metavar="TOKEN[:PREFIX]",
              help="Allow PUT/DELETE and the JSON listing for this bearer token, optionally only for keys under "
              "PREFIX/. Repeat for rotation (env SERVEFILES_UPLOAD_TOKEN, space-separated). No token: read-only.")
@click.option("--upload-token-file", type=click.File("r"), envvar="SERVEFILES_UPLOAD_TOKEN_FILE", default=None,
              help="Read TOKEN[:PREFIX] lines from a file (keeps secrets out of `ps`).")
@click.option("--max-upload-size", envvar="SERVEFILES_MAX_UPLOAD_SIZE", callback=parse_size,
              default=format_size(defaults.MAX_UPLOAD_BYTES), show_default=True,
              help="Largest HTTP upload; bigger ones get 413 and store nothing.")
@cache_size_option
@click.option("--memory-size", envvar="SERVEFILES_MEMORY_SIZE", callback=parse_size,
              default=format_size(defaults.MEMORY_BYTES), show_default=True,
              help="Memory-tier budget for small hot files.")
@click.option("--freshness", envvar="SERVEFILES_FRESHNESS", type=click.FloatRange(0),
              default=defaults.FRESHNESS_SECONDS, show_default=True,
              help="Seconds a cached file is served before its version is checked against the database again.")
@click.option("--cache-control", envvar="SERVEFILES_CACHE_CONTROL", default=defaults.CACHE_CONTROL, show_default=True,
              help="Cache-Control sent with files.")
@click.option("--active-content", envvar="SERVEFILES_ACTIVE_CONTENT", default=defaults.ACTIVE_CONTENT,
              show_default=True, type=click.Choice(["attachment", "sandbox"]),
              help="How HTML, SVG, XML and JavaScript uploads are kept from running on this origin.")
@click.option("--prefetch/--no-prefetch", envvar="SERVEFILES_PREFETCH", default=defaults.PREFETCH, show_default=True,
              help="Download new versions as soon as the change feed announces them.")
@click.option("--cache-min-uses", envvar="SERVEFILES_CACHE_MIN_USES", type=click.IntRange(1, 255),
              default=defaults.CACHE_MIN_USES, show_default=True,
              help="Once the disk cache is full, write a file to it on its Nth request within the admission "
              "window; before that it is served from the database fetch alone. While the cache has room, every "
              "miss is written. 1: every miss is written.")
@click.option("--metrics/--no-metrics", envvar="SERVEFILES_METRICS", default=False, show_default=True,
              help="Expose Prometheus counters at /_servefiles/metrics.")
@click.option("--nginx", "nginx_mode", envvar="SERVEFILES_NGINX", type=click.Choice(["off", "accel", "tree"]),
              default="off", show_default=True,
              help="nginx runs in front with the block `servefiles nginx-config` prints: hand it the bytes "
              "(accel: X-Accel-Redirect) or also publish files for its try_files (tree).")
@publish_dir_option
@click.option("--private", "private", envvar="SERVEFILES_PRIVATE", multiple=True, metavar="FOLDER",
              callback=private_folders,
              help="Serve files under FOLDER/ only with a signed URL (`servefiles sign`) or an upload token for "
              "that folder; repeat for more (env SERVEFILES_PRIVATE, space-separated).")
@signing_key_options
@click.option("--max-url-expires", envvar="SERVEFILES_MAX_URL_EXPIRES", callback=duration,
              default=f"{defaults.MAX_URL_EXPIRES // 86400}d", show_default=True,
              help="Refuse signed URLs that expire further ahead than this (90s, 15m, 1h, 7d).")
@click.option("--log-level", envvar="SERVEFILES_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@log_options
@click.option("--max-header-line", envvar="SERVEFILES_MAX_HEADER_LINE", callback=positive_size,
              default=format_size(defaults.MAX_FIELD_LINE), show_default=True,
              help="Largest header field line (name: value); over it, 431.")
@click.option("--max-header-size", envvar="SERVEFILES_MAX_HEADER_SIZE", callback=positive_size,
              default=format_size(defaults.MAX_HEADER_BLOCK), show_default=True,
              help="Largest header block (all field lines); over it, 431.")
@click.option("--max-header-count", envvar="SERVEFILES_MAX_HEADER_COUNT", type=click.IntRange(1),
              default=defaults.MAX_FIELDS, show_default=True, help="Most header fields in one request; over it, 431.")
@click.option("--max-url-size", envvar="SERVEFILES_MAX_URL_SIZE", callback=positive_size,
              default=format_size(defaults.MAX_TARGET), show_default=True,
              help="Longest request-target (path and query); over it, 414.")
@admin_options
def serve(db_url: str | None, read_db: str | None, cache_dir: Path | None, host: str, port: int, prefix: str,
          upload_tokens: tuple[str, ...], upload_token_file: Any, max_upload_size: int, cache_size: int,
          memory_size: int, freshness: float, cache_control: str, active_content: str, prefetch: bool,
          cache_min_uses: int, metrics: bool, nginx_mode: str, publish_dir: Path | None, private: list[str],
          signing_keys: tuple[str, ...], signing_key_file: Any, max_url_expires: int, log_level: str,
          log_format: logs.LogFormat, access_log: bool, max_header_line: int, max_header_size: int,
          max_header_count: int, max_url_size: int, admin_port: int | None,
          admin_host: str | None) -> None:  # fmt: skip
    """Run a standalone file server: GET {prefix}/{key}."""
    from ..middleware import ServeFiles
    from ..middleware.limits import RequestLimits
    from ..tuning import tune_process

    logs.configure(log_format, log_level)

    limits = RequestLimits(max_header_line, max_header_size, max_header_count, max_url_size)

    url = resolve_db_url(db_url)
    specs = [*upload_tokens, *(upload_token_file or ())]
    try:
        tokens = [UploadToken.parse(spec) for spec in specs if spec.strip() and not spec.strip().startswith("#")]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--upload-token") from None

    keys = read_signing_keys(signing_keys, signing_key_file)
    try:
        Signer(keys, "/", max_url_expires) if keys else None  # a weak key stops the start, in one line
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--signing-key") from None

    try:
        app = ServeFiles(
            None, db=url, read_db=read_db, prefix=prefix, cache_dir=cache_dir or config.default_cache_dir(),
            disk_bytes=cache_size, memory_bytes=memory_size, freshness_seconds=freshness,
            cache_control=cache_control, active_content="sandbox" if active_content == "sandbox" else "attachment",
            prefetch=prefetch, cache_min_uses=cache_min_uses, metrics=metrics, upload_tokens=tokens,
            max_upload_bytes=max_upload_size,
            nginx=None if nginx_mode == "off" else "tree" if nginx_mode == "tree" else "accel",
            publish_dir=publish_dir or config.default_publish_dir(), date_header=True, private=private,
            signing_keys=keys, max_url_expires=max_url_expires,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:  # an option servefiles refuses: one line, never a traceback
        raise ErrorLine(str(exc)) from None
    if app.mount.accel is not None:
        app.mount.accel.withdraw_tree()  # first: even if the database is not there, nginx must not serve it unchecked

    async def check() -> None:  # fail fast, in one line, if the database is not there
        # The read replica is not checked: content is read from the primary until it answers.
        store = await connect(url)
        await store.close()

    asyncio.run(check())
    _check_writable_dir(cache_dir or config.default_cache_dir(), "--cache-dir")
    _check_listen(host, port)
    admin_host = admin_host or host
    if admin_port is not None:  # --admin-port: probes and metrics on a listener of their own
        if admin_port == port:
            raise click.BadParameter("must differ from --port", param_hint="--admin-port")
        _check_listen(admin_host, admin_port)
    writes = f", uploads with {len(tokens)} token(s)" if tokens else ", read-only (no --upload-token)"
    if private:
        writes += f", private: {', '.join(folder.rstrip('/') or '/' for folder in private)}"
    if admin_port is not None:
        writes += f", admin at http://{admin_host}:{admin_port}/_servefiles/"
    listen = f"http://{host}:{port}{app.prefix}/"
    logging.getLogger(logs.STARTUP_LOGGER).info("serving %s at %s%s", mask_dsn(url), listen, writes,
                                                extra={"db": mask_dsn(url), "listen": listen})  # fmt: skip
    # Every request passes the head limits before servefiles looks at it; h11 may buffer an
    # incomplete head up to what those limits allow (httptools has no such bound of its own).
    # servefiles stamps Date itself: uvicorn's is refreshed once a second, and could name a
    # second before the Last-Modified of a file written a moment ago (RFC 9110 §8.8.2.1).
    served = served_app(app, limits, access_log)
    tune_process()  # the allocator's and the collector's settings: see servefiles.tuning
    # uvicorn keeps the logging set up above (log_config=None); its access log, which shows query
    # strings (a signed URL's signature), is replaced by servefiles' own (--access-log).
    # uvicorn's proxy headers (the client's address and scheme from X-Forwarded-*, nginx's) are
    # read by servefiles' access log alone: without it, their middleware is not run at all (10 KiB
    # memory hits, 10 alternating rounds: 31,069 requests/s on average without it, 29,719 with).
    # Hits whose bodies are in hand are written by uvicorn's protocol itself, without a task
    # (servefiles.middleware.inline); uvicorn picks its own protocol where that cannot be had.
    protocol = inline_protocol()
    more = {} if protocol is None else {"http": protocol}
    run_uvicorn(served, app.admin_app(), admin_host, admin_port, host=host,
                port=port, log_level=log_level, lifespan="on", h11_max_incomplete_event_size=limits.head_bytes,
                date_header=False, log_config=None, access_log=False, proxy_headers=access_log, **more)  # fmt: skip


def served_app(app: ServeFiles, limits: RequestLimits, access_log: bool) -> ASGIApp:
    """The ASGI app ``servefiles serve`` hands uvicorn: ``app`` behind the request-head limits
    (a 414 or 431, counted in ``servefiles_rejected_requests_total{reason="header_limits"}``),
    the access log when ``access_log``, and :class:`ZeroCopySend` outermost, so that it is
    handed uvicorn's own ``send`` (disk-tier hits in the page cache go out by sendfile)."""
    from ..middleware.access_log import AccessLog
    from ..middleware.limits import BoundedRequests

    refused = app.service.metrics.rejected["header_limits"].inc
    bounded = BoundedRequests(app, limits, date_header=True, on_refused=refused)
    return ZeroCopySend(AccessLog(bounded) if access_log else bounded)


@click.command("nginx-config")
@config_option(serve_options)
@click.option("--mode", type=click.Choice(["accel", "tree"]), default="accel", show_default=True)
@click.option("--upstream", default=f"{defaults.HOST}:{defaults.PORT}", show_default=True,
              help="Where servefiles listens.")
@click.option("--listen", default="80", show_default=True, help="nginx's listen directive.")
@click.option("--server-name", default="_", show_default=True)
@click.option("--prefix", envvar="SERVEFILES_PREFIX", default=defaults.PREFIX, show_default=True)
@cache_dir_option
@publish_dir_option
@click.option("--max-upload-size", envvar="SERVEFILES_MAX_UPLOAD_SIZE", callback=parse_size,
              default=format_size(defaults.MAX_UPLOAD_BYTES), show_default=True)
@click.option("--cache-control", envvar="SERVEFILES_CACHE_CONTROL", default=defaults.CACHE_CONTROL,
              show_default=True)
@click.option("--private", "private", envvar="SERVEFILES_PRIVATE", multiple=True, metavar="FOLDER",
              callback=private_folders, help="serve's --private folders: nginx never serves them from the tree.")
def nginx_config(mode: str, upstream: str, listen: str, server_name: str, prefix: str, cache_dir: Path | None,
                 publish_dir: Path | None, max_upload_size: int, cache_control: str,
                 private: list[str]) -> None:  # fmt: skip
    """Print an nginx server block for servefiles behind nginx (include it in nginx's http block)."""
    from ..nginx import NginxSettings, render

    try:
        block = render(NginxSettings(
            mode="tree" if mode == "tree" else "accel", upstream=upstream, prefix=prefix,
            cache_dir=cache_dir or config.default_cache_dir(), publish_dir=publish_dir or config.default_publish_dir(),
            listen=listen, server_name=server_name, max_upload_bytes=max_upload_size, cache_control=cache_control,
            private=tuple(private),
        ))  # fmt: skip
    except ValueError as exc:  # a prefix or directory nginx's config cannot hold: one line, never a traceback
        raise ErrorLine(str(exc)) from None
    click.echo(block, nl=False)


@click.command("new-token")
@click.option("--prefix", default="", callback=parse_folder,
              help="Limit the token to keys under this folder: 'blog' and 'blog/' both mean blog/….")
def new_token(prefix: str) -> None:
    """Print a fresh random upload token (TOKEN or TOKEN:PREFIX) for --upload-token."""
    import secrets

    token = secrets.token_urlsafe(32)
    click.echo(f"{token}:{prefix.rstrip('/')}" if prefix else token)


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
