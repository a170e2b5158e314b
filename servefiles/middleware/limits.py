"""``BoundedRequests``: what one request may carry, for the standalone server (``servefiles serve``).

uvicorn bounds a request head only while it is incomplete (h11's
``max_incomplete_event_size``) or not at all (httptools): a complete header block of any
size that arrives in one read reaches the app. This ASGI wrapper answers 431 (too many
header fields, a field line or the whole block too large: RFC 6585 §5) or 414 (the
request-target too long: RFC 9110 §15.5.15) before the app does any work, with nginx's
defaults in mind (``large_client_header_buffers 4 8k``). It reads only what the server put
in the scope, so it holds whichever HTTP implementation uvicorn runs.

Mounted in someone else's app, or under a WSGI server, the server in front owns these
limits: this wrapper is for ``servefiles serve`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import defaults, http
from .asgi import ASGIApp, Receive, Scope, Send, date_header
from .inline import Answer, answer_now_of

__all__ = ["BoundedRequests", "RequestLimits"]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on one request's head, in bytes except ``max_fields``.

    ``max_field_line``: one field line, ``name: value`` (8 KiB, nginx's buffer size).
    ``max_header_block``: all field lines with their CRLFs (32 KiB, nginx's 4 buffers).
    ``max_fields``: header fields (100). ``max_target``: the request-target, path and
    query as sent (8 KiB). Each must be positive (ValueError otherwise).
    """

    max_field_line: int = defaults.MAX_FIELD_LINE
    max_header_block: int = defaults.MAX_HEADER_BLOCK
    max_fields: int = defaults.MAX_FIELDS
    max_target: int = defaults.MAX_TARGET

    def __post_init__(self) -> None:
        for name in ("max_field_line", "max_header_block", "max_fields", "max_target"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")

    @property
    def head_bytes(self) -> int:
        """The most a request head within these limits can take: what the server may buffer."""
        return self.max_target + self.max_header_block + 1024  # + method, version, CRLFs

    def refusal(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> http.Response | None:
        """414 or 431 when the request is over a limit, else None. Linear in the head."""
        if len(target) > self.max_target:
            return http.head_too_large(414, f"the request-target is over {self.max_target} bytes")
        if len(headers) > self.max_fields:
            return http.head_too_large(431, f"more than {self.max_fields} header fields")
        block = 0
        for name, value in headers:
            line = len(name) + 2 + len(value)  # name ": " value
            if line > self.max_field_line:
                return http.head_too_large(431, f"a header field line is over {self.max_field_line} bytes")
            block += line + 2
        if block > self.max_header_block:
            return http.head_too_large(431, f"the header fields are over {self.max_header_block} bytes in all")
        return None


class BoundedRequests:
    """Answer over-limit HTTP requests with 414 or 431; pass everything else to ``app``.

    ``date_header``: stamp Date on the refusal, for a server whose own Date is off (as
    ``servefiles serve`` runs uvicorn); a 4xx carries one (RFC 9110 §6.6.1). ``on_refused``:
    called once per refusal (``servefiles_rejected_requests_total{reason="header_limits"}``).
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: RequestLimits,
        date_header: bool = False,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.date_header = date_header
        self.on_refused = on_refused

    def answer_now(self, scope: Scope) -> Answer | None:
        """The app's ``answer_now`` for a request within the limits (:mod:`.inline`); None for one
        over them, which :meth:`__call__` then refuses and counts."""
        inner = answer_now_of(self.app)
        if inner is None or self.limits.refusal(_target(scope), scope["headers"]) is not None:
            return None
        return inner(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.limits.refusal(_target(scope), scope["headers"])
            if refusal is not None:
                if self.on_refused is not None:
                    self.on_refused()
                headers = [*refusal.headers, date_header()] if self.date_header else refusal.headers
                await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
                await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else
                            b"".join(s for s in refusal.body if isinstance(s, bytes))})  # fmt: skip
                return
        await self.app(scope, receive, send)


def _target(scope: Scope) -> bytes:
    """The request-target as the client sent it: ``raw_path`` and the query string."""
    raw_path = scope.get("raw_path")
    path: bytes = raw_path if isinstance(raw_path, bytes) else scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    return path + b"?" + query if query else path
