"""``AccessLog``: one line per HTTP request, for ``servefiles serve --access-log``.

Each line goes to the ``servefiles.access`` logger with the fields ``method``, ``path``,
``status``, ``bytes`` (body bytes handed to the server), ``duration`` (seconds, until the
response was complete), ``client`` and, for a file, ``key`` and ``tier`` (``memory``,
``disk``: the tier whose copy answered; ``miss``: none held it). The path is the one the
client sent, percent-encoded as sent and **without the query string**: a signed URL's
``signature`` never reaches the log, nor does any header (``Authorization`` carries upload
tokens). This replaces uvicorn's own access log, which shows the query string.

It wraps the whole application from outside, so a 414 or 431 is logged too. It learns the
tier and the key from :data:`~servefiles.middleware.asgi.REPLY_SLOT`, which it adds to the
scope; the file adapter fills that slot only when it is there, so with the access log off
(the default) nothing on the request path changes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from ..logs import ACCESS_LOGGER
from ..service import Reply
from .asgi import REPLY_SLOT, ASGIApp, Message, Receive, Scope, Send
from .zerocopy import EXTENSION as ZEROCOPYSEND
from .zerocopy import passed_on

__all__ = ["AccessLog"]

logger = logging.getLogger(ACCESS_LOGGER)

_UNPRINTABLE = re.compile(r'[^\x21-\x7e]|["\\]')
"""Bytes a log line shows percent-encoded: controls, spaces, quotes, backslashes, non-ASCII."""
_FILE_SENDS = frozenset(("http.response.pathsend", ZEROCOPYSEND))
"""ASGI messages by which the server sends a whole file body itself (its length is the Content-Length)."""


class AccessLog:
    """Log every HTTP request ``app`` answers (see the module); everything else passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope[REPLY_SLOT] = None
        status = 0
        length = sent = 0
        logged = False

        def log() -> None:
            nonlocal logged
            if not logged:
                logged = True
                _log(scope, status or 500, sent, time.perf_counter() - started)  # no start sent: the server's 500

        async def counting(message: Message) -> None:
            nonlocal status, length, sent
            await send(message)
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    log()  # the response is over: its line now, not after the app's clean-up
            elif kind == "http.response.start":
                status = message["status"]
                length = _content_length(message.get("headers", ()))
            elif kind in _FILE_SENDS:  # the server sends the whole file itself
                sent += length
                log()

        passed_on(scope, send, counting)  # every message goes on unchanged: zerocopysend too
        try:
            await self.app(scope, receive, counting)
        finally:
            log()  # a response cut short, or none at all


def _log(scope: Scope, status: int, sent: int, duration: float) -> None:
    reply = scope.get(REPLY_SLOT)
    tier = key = None
    if isinstance(reply, Reply):
        tier = reply.source
        key = reply.meta.key if reply.meta is not None else None
    method, path = scope["method"], shown_path(scope)
    client = scope.get("client")
    host = client[0] if client else "-"
    logger.info(
        '%s "%s %s" %d %d %.6f%s', host, method, path, status, sent, duration, f" {tier}" if tier else "",
        extra={"method": method, "path": path, "status": status, "bytes": sent, "duration": round(duration, 6),
               "client": host, "tier": tier, "key": key},
    )  # fmt: skip


def shown_path(scope: Scope) -> str:
    """The request's path as the client sent it (``raw_path``), without the query string, with
    anything that could break a log line or forge another one percent-encoded."""
    raw = scope.get("raw_path")
    text = raw.decode("latin-1") if isinstance(raw, bytes) else scope["path"]
    text = text.partition("?")[0]  # raw_path never holds the query; a server's bug must not leak one
    return _UNPRINTABLE.sub(_percent_encoded, text)


def _percent_encoded(found: re.Match[str]) -> str:
    char = found.group()
    return "".join(f"%{byte:02X}" for byte in char.encode("latin-1" if ord(char) < 256 else "utf-8"))


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)
    return 0
