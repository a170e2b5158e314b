"""``serve --admin-port``: health, readiness and metrics on a listener of their own.

The public port then need not expose metrics (``--no-metrics``, the default) nor any detail
of the probes; the admin listener, bound where only operators and Prometheus reach it
(``--admin-host``, loopback unless told), answers ``/_servefiles/metrics``, ``/health`` and
``/ready`` in full (:meth:`servefiles.ServeFiles.admin_app`). Both listeners run on one event
loop, sharing one service; SIGINT or SIGTERM stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import click

from ..middleware.asgi import ASGIApp


def admin_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--admin-port`` (env ``SERVEFILES_ADMIN_PORT``) and ``--admin-host`` (env ``SERVEFILES_ADMIN_HOST``),
    passed to the command as ``admin_port`` (None: no admin listener) and ``admin_host``."""
    func = click.option(
        "--admin-host", envvar="SERVEFILES_ADMIN_HOST", default=None, metavar="HOST",
        help="Address of the admin listener (env SERVEFILES_ADMIN_HOST). Default: --host.",
    )(func)  # fmt: skip
    return click.option(
        "--admin-port", envvar="SERVEFILES_ADMIN_PORT", type=click.IntRange(1, 65535), default=None, metavar="PORT",
        help="Also listen on PORT for /_servefiles/metrics, /_servefiles/health and /_servefiles/ready, detailed "
        "for every caller: bind it where only operators and Prometheus reach it (env SERVEFILES_ADMIN_PORT). "
        "Metrics are served there whatever --metrics says.",
    )(func)  # fmt: skip


def run_uvicorn(app: ASGIApp, admin: ASGIApp | None, admin_host: str, admin_port: int | None, **config: Any) -> None:
    """``uvicorn.run(app, **config)``; with an ``admin_port``, ``admin`` served beside it on one loop
    (same options, no lifespan: ``app``'s starts and stops the service). SIGINT and SIGTERM stop
    both gracefully, together (uvicorn's own handling, for one server only, is replaced by a
    handler that tells both)."""
    import uvicorn

    if admin is None or admin_port is None:
        uvicorn.run(app, **config)
        return
    public = _unsignalled(uvicorn.Config(app, **config))
    private = _unsignalled(uvicorn.Config(admin, **{**config, "host": admin_host, "port": admin_port,
                                                    "lifespan": "off"}))  # fmt: skip

    def stop(signum: int, frame: FrameType | None) -> None:
        public.handle_exit(signum, frame)
        private.handle_exit(signum, frame)

    async def both() -> None:
        await asyncio.gather(public.serve(), private.serve())

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with asyncio.Runner(loop_factory=public.config.get_loop_factory()) as runner:
            runner.run(both())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _unsignalled(config: Any) -> Any:
    """A uvicorn server that installs no signal handler of its own (a second server's would replace
    the first's): :func:`run_uvicorn` tells it to stop. Made here: uvicorn is imported only by a
    command that serves."""
    import uvicorn

    class Unsignalled(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Unsignalled(config)
