"""Run a WSGI app for tests under a real wsgiref server (what Django's runserver is) on a thread."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

POLL_SECONDS = 0.02
"""How often ``serve_forever`` looks for a shutdown request: ``shutdown()`` waits up to this long
(socketserver's default, 0.5 s, was half a second of every wsgiref test's teardown)."""


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref, one thread per request."""

    daemon_threads = True


@contextlib.contextmanager
def wsgiref_serving(app: Any) -> Iterator[str]:
    """``app`` under a threaded wsgiref server on a free loopback port; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(POLL_SECONDS,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def call_wsgi(
    app: Callable[[dict[str, Any], Any], Iterable[bytes]], method: str, path: str, **extra: Any
) -> tuple[str, dict[str, str], bytes]:
    """Call a WSGI app as a server's request thread would (``extra``: more environ, a
    ``wsgi.file_wrapper`` say), and collect the response: status, headers by lower-case name, body."""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "test",
        "SERVER_PORT": "80", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http", **extra,
    }  # fmt: skip
    status, headers, body = run_wsgi(app, environ)
    return status, {name.lower(): value for name, value in headers}, body


def run_wsgi(
    app: Callable[[dict[str, Any], Any], Iterable[bytes]], environ: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call a WSGI app with ``environ`` and collect its response as the app gave it: the status
    line, the headers, and the whole body, its iterable closed afterwards (PEP 3333)."""
    started: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started["status"], started["headers"] = status, headers

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started["status"], started["headers"], body
