"""Run an ASGI app for tests: a real uvicorn server in this event loop, ASGI lifespan by hand,
and requests whose target no HTTP client library would send as is (``/media/../x``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

START_TIMEOUT = 20.0
MAX_REQUEST_HEAD_BYTES = 1024 * 1024
"""uvicorn's h11 refuses request heads over 16 KiB with a 400 of its own; the tests send
larger ones (a Range header with 10,000 ranges) to reach the app, so the limit is raised."""


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header_names(self) -> set[str]:
        return {name for name, _ in self.headers}

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None


@contextlib.asynccontextmanager
async def uvicorn_server(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """A real uvicorn server (lifespan on) on a free loopback port, in this event loop; yields its
    base URL. ``options``: more of uvicorn's settings (``http="h11"``; ``log_level`` "warning" unless given)."""
    # proto=IPPROTO_TCP, as uvicorn's own sockets: asyncio sets TCP_NODELAY only on those, and
    # without it every response written in two parts waits for a delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        **{"log_level": "warning", **options},
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn on {port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it (SystemExit on a failed lifespan startup)
                raise RuntimeError("uvicorn stopped before it started listening")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start listening")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(SystemExit):
            await asyncio.wait_for(task, START_TIMEOUT)
        sock.close()


@contextlib.asynccontextmanager
async def asgi_lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Drive the ASGI lifespan protocol the way a server does: startup on entry, shutdown on exit."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def send(message: Message) -> None:
        await outbox.put(message)

    async def run() -> None:
        await app(scope, inbox.get, send)

    task = asyncio.create_task(run())
    try:
        await inbox.put({"type": "lifespan.startup"})
        reply = await asyncio.wait_for(outbox.get(), START_TIMEOUT)
        assert reply["type"] == "lifespan.startup.complete", reply
        yield
        await inbox.put({"type": "lifespan.shutdown"})
        reply = await asyncio.wait_for(outbox.get(), START_TIMEOUT)
        assert reply["type"] == "lifespan.shutdown.complete", reply
        await asyncio.wait_for(task, START_TIMEOUT)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def asgi_request(
    app: ASGIApp, method: str, target: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> RawResponse:
    """Call ``app`` with the scope a server builds for the request line ``METHOD target HTTP/1.1``.

    The path is percent-decoded as uvicorn decodes it (UTF-8, invalid bytes to U+FFFD);
    dot segments and empty segments are left as they came.
    """
    raw_path, _, query = target.partition(b"?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"test"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "state": {},
    }
    sent: list[Message] = []
    request_sent = False

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent and sent[0]["type"] == "http.response.start", sent
    body = b"".join(m.get("body", b"") for m in sent[1:] if m["type"] == "http.response.body")
    raw_headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in sent[0]["headers"]]
    return RawResponse(sent[0]["status"], raw_headers, body)


async def http_request(
    base_url: str, method: str, target: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> RawResponse:
    """Send ``METHOD target HTTP/1.1`` byte for byte to a server and read its whole response."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [method.encode("ascii") + b" " + target + b" HTTP/1.1", b"Host: " + host.encode("ascii")]
        lines += [name + b": " + value for name, value in headers or []]
        writer.write(b"\r\n".join([*lines, b"Connection: close", b"", b""]))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), START_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no complete response head: {data[:200]!r}"
    status_line, *header_lines = head.split(b"\r\n")
    version, status, _reason = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1", status_line
    parsed: list[tuple[str, str]] = []
    for line in header_lines:
        name, colon, value = line.partition(b":")
        assert colon, f"malformed header line {line!r}"
        parsed.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
    lengths = [value for name, value in parsed if name == "content-length"]
    if lengths and method != "HEAD":
        assert len(body) == int(lengths[0]), f"body of {len(body)} bytes, Content-Length {lengths[0]}"
    return RawResponse(int(status), parsed, body)
