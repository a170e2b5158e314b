"""Hits answered inside uvicorn's protocol, without an ASGI task: ``servefiles serve``'s hot path.

uvicorn runs every request as an asyncio task: the app's coroutine and each middleware's around
it, an ``asyncio.Event``, the task's steps on the loop, two ``send`` coroutines. A cache hit needs
none of it: :meth:`ServeFiles.answer_now` decides it synchronously (:meth:`Mount.cached`, the
same decision the ASGI path makes first) and, when its body is in hand (a memory hit, a small disk
hit read whole, a 304, a HEAD), returns what to write. :class:`InlineHits`, uvicorn's httptools
protocol with one method changed, writes it the moment the request's head is parsed, completes
the response as uvicorn's ``send`` would, and starts nothing. Everything else (a miss, a file sent
by ``sendfile``, a range, a private file, a refusal, a write, a probe) goes to the app as before,
with the decision already made passed on (:data:`DECIDED_SLOT`), so nothing is looked up twice.

The head is the one uvicorn would write (its status line and default headers, then the file's
field lines and the Date, :data:`servefiles.middleware.zerocopy.HEAD_LINES`); where uvicorn would
write something else or wait — ``connection: close``, its own access log, a paused transport, a
client expecting ``100 Continue``, a request past uvicorn's concurrency limit — the request runs
as a task. One difference shows: a client that half-closes its side right after its request
(``shutdown(SHUT_WR)``, ``nc -N``) gets an answer written inline, while uvicorn drops a request
still waiting for its task then. This reaches into uvicorn's protocol (not its public API), like
:class:`ZeroCopySend`: :func:`inline_protocol` gives the class only for the uvicorn it was
written against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .zerocopy import httptools_cycle, uvicorn_defaults, uvicorn_head

Scope = MutableMapping[str, Any]
logger = logging.getLogger("servefiles")

DECIDED_SLOT = "servefiles.inline.decided"
"""A scope key: ``(reply, started)``, what :meth:`ServeFiles.answer_now` found but could not write
at once (a file to send by ``sendfile``, a range, a 404; None: no cached copy answers, a miss) and
when it began (``time.perf_counter()`` seconds), for the app to carry out instead of looking again."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A response written whole at once: ``status``; ``lines``, its header field lines (Date
    included, :func:`servefiles.http.model.field_lines`); ``body``, the bytes after the head (empty
    for a HEAD or a 304)."""

    status: int
    lines: bytes
    body: bytes


AnswerNow = Callable[[Scope], "Answer | None"]
"""What an app offers as ``answer_now``: the request's response if it can be written at once."""


def answer_now_of(app: object) -> AnswerNow | None:
    """``app.answer_now`` if it offers one (a middleware that passes it on does)."""
    found = getattr(app, "answer_now", None)
    return found if callable(found) else None


_PROTOCOL_METHODS = ("_start_asgi_task", "_unset_keepalive_if_required", "on_response_complete")


def inline_protocol() -> type | None:
    """:class:`InlineHits` for uvicorn's httptools protocol (None without httptools, or for a
    uvicorn whose protocol lacks what it uses: then every request runs as a task)."""
    if httptools_cycle() is None:  # no httptools (its status lines are loaded for uvicorn_head)
        return None
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if not all(hasattr(HttpToolsProtocol, name) for name in _PROTOCOL_METHODS):
        return None

    class InlineHits(HttpToolsProtocol):
        """uvicorn's httptools protocol; a request the app answers at once (``answer_now``) is
        written when its head is parsed, with no task."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._answer_now = answer_now_of(self.app)
            self._answering = False
            self._next: tuple[Any, Any] | None = None

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            # A keep-alive timer armed by an answer just written on this connection (the next
            # request came in the same read) must not run while this request does.
            self._unset_keepalive_if_required()
            if self._answering:  # the next pipelined request, started by an answer's end: below
                self._next = (cycle, app)
                return
            self._answering = True
            try:
                while self._answered(cycle, app):
                    if self._next is None:
                        return
                    (cycle, app), self._next = self._next, None
                super()._start_asgi_task(cycle, app)
            finally:
                self._answering = False

        def _answered(self, cycle: Any, app: Any) -> bool:
            """Write the app's answer to ``cycle``'s request and end the response as uvicorn's
            ``send`` would (True), or nothing (False: it runs as a task)."""
            answer_now = self._answer_now
            defaults = uvicorn_defaults(cycle)
            if (
                answer_now is None or defaults is None or app is not self.app
                or cycle.waiting_for_100_continue or self.transport.is_closing()
            ):  # fmt: skip
                return False
            try:
                answer = answer_now(cycle.scope)
            except Exception:  # a fault of the app's, not the client's: the task path answers it
                logger.exception("answering %s inline failed; it runs as a task", cycle.scope.get("path"))
                return False
            head = uvicorn_head(answer.status, defaults, answer.lines) if answer is not None else None
            if answer is None or head is None:
                return False
            cycle.response_started = True
            cycle.waiting_for_100_continue = False
            try:
                if answer.body:
                    self.transport.writelines((head, answer.body))
                else:
                    self.transport.write(head)
                cycle.response_complete = True
                # As uvicorn's send ends a response: the next pipelined request (handed back to
                # the loop above, not answered in this call: no recursion), or the keep-alive timer.
                self.on_response_complete()
            except Exception:  # never the parser's "invalid request" (a 400) for a fault of ours
                logger.exception("answering %s inline failed; connection closed", cycle.scope.get("path"))
                self.transport.close()
            return True

    return InlineHits
