"""Hits answered inside uvicorn's protocol without a task (:mod:`servefiles.middleware.inline`).

A real uvicorn (httptools) on loopback runs :class:`InlineHits` with a device app that answers a
request both ways, and says which way answered (the ``x-by`` header): its ``answer_now`` answers
``/now/…``, its ASGI ``__call__`` everything (``/task/…`` after a pause). Then a real
``servefiles serve``: the same heads as the ASGI path, every request counted once.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from servefiles import open_store
from servefiles.http.model import field_lines
from servefiles.middleware import inline
from servefiles.middleware.inline import Answer

from .asgi_servers import Receive, Scope, Send, uvicorn_server
from .servers import cli, running

PROTOCOL = inline.inline_protocol()


class Twofold:
    """``answer_now``: an answer for ``/now/N`` (N bytes; none for HEAD). ``__call__``: every
    request, ``/task/S`` after S seconds; ``x-by`` tells which answered. ``calls``: paths asked."""

    def __init__(self) -> None:
        self.asked_now: list[str] = []

    def answer_now(self, scope: Scope) -> Answer | None:
        self.asked_now.append(scope["path"])
        parts = scope["path"].strip("/").split("/")
        if parts[0] == "boom":
            raise RuntimeError("a fault of the app's")
        if parts[0] == "odd":  # a status uvicorn has no line for
            return Answer(999, b"", b"")
        if parts[0] != "now":
            return None
        body = b"n" * int(parts[1])
        lines = field_lines([(b"content-length", str(len(body)).encode()), (b"x-by", b"inline")])
        assert lines is not None
        return Answer(200, lines, b"" if scope["method"] == "HEAD" else body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        parts = scope["path"].strip("/").split("/")
        if parts[0] == "task":
            await asyncio.sleep(float(parts[1]))
            body = b"t"
        elif parts[0] in ("boom", "odd"):
            body = b"t"
        else:
            body = b"n" * int(parts[1])
        headers = [(b"content-length", str(len(body)).encode()), (b"x-by", b"task")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def request(method: str, path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


async def read_response(reader: asyncio.StreamReader, method: str) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head)
    if method == "HEAD" or length is None:  # a HEAD, a 304
        return head, b""
    body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), 10)
    return head, body


def by(head: bytes) -> str:
    found = re.search(rb"\r\nx-by: (\w+)\r\n", head)
    assert found, head
    return found.group(1).decode()


pytestmark = pytest.mark.skipif(PROTOCOL is None, reason="uvicorn without httptools")


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


def test_pipelined_requests_are_answered_in_order_inline_or_as_tasks() -> None:
    """One write of seven requests: the ones the app answers at once are written when parsed, the
    others run as tasks, and each response comes whole in the order asked — also the answers
    that wait in uvicorn's pipeline behind a task (started as the task's response completes)."""
    asked = [("GET", "/now/10"), ("GET", "/task/0.2"), ("GET", "/now/3"), ("HEAD", "/now/5"),
             ("GET", "/now/0"), ("GET", "/task/0"), ("GET", "/now/70000")]  # fmt: skip

    async def main() -> None:
        app = Twofold()
        async with uvicorn_server(app, http=PROTOCOL, access_log=False, proxy_headers=False) as base:
            reader, writer = await connect(base)
            writer.write(b"".join(request(method, path) for method, path in asked))
            answers = [await read_response(reader, method) for method, _ in asked]
            writer.close()
        for (method, path), (head, body) in zip(asked, answers, strict=True):
            assert head.startswith(b"HTTP/1.1 200 "), (path, head)
            assert by(head) == ("inline" if path.startswith("/now") else "task"), (path, head)
            size = 1 if path.startswith("/task") else int(path.split("/")[2])
            assert body == (b"" if method == "HEAD" else (b"t" if size == 1 and "task" in path else b"n" * size))

    asyncio.run(main())


@pytest.mark.parametrize(
    ("version", "extra"),
    [("1.1", "Connection: close\r\n"), ("1.0", ""), ("1.1", "Expect: 100-continue\r\nContent-Length: 0\r\n")],
    ids=["connection-close", "http-1.0", "expect-100"],
)
def test_a_request_whose_head_uvicorn_would_write_otherwise_runs_as_a_task(version: str, extra: str) -> None:
    """A connection to close (uvicorn adds ``connection: close`` and closes it), and a client
    waiting for ``100 Continue``: the app's ASGI path answers, as without the protocol."""

    async def main() -> None:
        async with uvicorn_server(Twofold(), http=PROTOCOL, access_log=False, proxy_headers=False) as base:
            reader, writer = await connect(base)
            writer.write(request("GET", "/now/4", version, extra))
            head, body = await read_response(reader, "GET")
            writer.close()
        assert by(head) == "task" and body == b"nnnn", head
        if version == "1.0" or "close" in extra:
            assert b"\r\nconnection: close\r\n" in head

    asyncio.run(main())


@pytest.mark.parametrize("path", ["/boom/1", "/odd/1"])
def test_an_answer_that_fails_or_cannot_be_written_runs_as_a_task(path: str, caplog: pytest.LogCaptureFixture) -> None:
    """``answer_now`` raising (a fault of the app's, logged) or answering what uvicorn has no status
    line for: the request runs as a task, which answers it; never uvicorn's 400 for a bad request."""

    async def main() -> None:
        async with uvicorn_server(Twofold(), http=PROTOCOL, access_log=False, proxy_headers=False) as base:
            reader, writer = await connect(base)
            writer.write(request("GET", path) + request("GET", "/now/2"))
            first, body = await read_response(reader, "GET")
            second, _ = await read_response(reader, "GET")
            writer.close()
        assert first.startswith(b"HTTP/1.1 200 ") and by(first) == "task" and body == b"t", first
        assert by(second) == "inline"

    asyncio.run(main())
    assert any("inline failed" in record.getMessage() for record in caplog.records) is (path == "/boom/1")


def test_uvicorns_access_log_keeps_every_request_a_task() -> None:
    async def main() -> None:
        async with uvicorn_server(Twofold(), http=PROTOCOL, access_log=True, proxy_headers=False, log_level="info",
                                  log_config=None) as base:  # fmt: skip
            reader, writer = await connect(base)
            writer.write(request("GET", "/now/4"))
            head, _ = await read_response(reader, "GET")
            writer.close()
        assert by(head) == "task"

    asyncio.run(main())


def test_the_keep_alive_timeout_of_an_inline_answer_does_not_cut_the_next_request() -> None:
    """An answer written inline arms uvicorn's keep-alive timer (1 s here), as a response does;
    a request that came in the same read and runs longer than that is not cut by it, and an idle
    connection after an inline answer is still closed when the timer runs out."""

    async def main() -> None:
        options: dict[str, Any] = {"access_log": False, "proxy_headers": False, "timeout_keep_alive": 1}
        async with uvicorn_server(Twofold(), http=PROTOCOL, **options) as base:
            reader, writer = await connect(base)
            writer.write(request("GET", "/now/2") + request("GET", "/task/1.6"))
            first, _ = await read_response(reader, "GET")
            second, body = await read_response(reader, "GET")
            assert (by(first), by(second), body) == ("inline", "task", b"t")
            writer.write(request("GET", "/now/2"))
            third, _ = await read_response(reader, "GET")
            assert by(third) == "inline"
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the keep-alive timer
            assert 0.5 < asyncio.get_running_loop().time() - started < 4
            writer.close()

    asyncio.run(main())


def test_a_client_that_stops_reading_gets_its_answers_as_tasks_once_writing_is_paused() -> None:
    """Answers pile up in the transport while the client reads nothing; once uvicorn's flow
    control pauses writing, requests run as tasks (which wait for the client), and every
    response arrives whole and in order when it reads again."""
    count = 60

    async def main() -> None:
        app = Twofold()
        async with uvicorn_server(app, http=PROTOCOL, access_log=False, proxy_headers=False) as base:
            reader, writer = await connect(base)
            for _ in range(count):
                writer.write(request("GET", "/now/200000"))
            await writer.drain()
            await asyncio.sleep(0.5)
            ways = []
            for _ in range(count):
                head, body = await read_response(reader, "GET")
                assert body == b"n" * 200_000
                ways.append(by(head))
            writer.close()
        assert ways[0] == "inline" and "task" in ways, ways

    asyncio.run(main())


# -- servefiles serve ---------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def past_last_modified() -> None:
    """Until the second after a file just written: before it, its Last-Modified is stated as the
    response's own time (RFC 9110 §8.8.2.1), which two servers asked one after the other differ in."""
    time.sleep(1.05 - time.time() % 1 + 1)


def settled(client: httpx.Client, before: dict[str, float], requests: int) -> dict[str, float]:
    """The counters once all ``requests`` are timed: a task observes its duration after its last
    write, so the client may read the response (and ask for the metrics) a moment before."""
    deadline = time.monotonic() + 5
    while (after := counters(client))["timed"] - before["timed"] < requests and time.monotonic() < deadline:
        time.sleep(0.02)
    return after


def counters(client: httpx.Client) -> dict[str, float]:
    text = client.get("/_servefiles/metrics").text
    return {
        "memory": metric(text, 'servefiles_hits_total{tier="memory"}'),
        "disk": metric(text, 'servefiles_hits_total{tier="disk"}'),
        "misses": metric(text, "servefiles_misses_total"),
        "bytes": metric(text, "servefiles_bytes_sent_total"),
        "timed": metric(text, "servefiles_request_duration_seconds_count"),
    }


def test_servefiles_serve_answers_hits_with_the_heads_and_counts_of_its_asgi_path(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The same requests to ``servefiles serve`` (hits answered inline) and to ``servefiles serve
    --access-log`` (every request a task): the same heads but the date, the same bodies, and each
    request counted once — a memory hit, a small disk hit, a 304, a HEAD, a range, a large file
    sent by sendfile (decided inline, sent by the task), a missing key."""
    files = {"a.png": os.urandom(5_000), "b.jpg": os.urandom(300_000)}
    for key, data in files.items():
        (tmp_path / key).write_bytes(data)
        assert cli("put", "--db", sqlite_url, str(tmp_path / key), key).returncode == 0
    past_last_modified()
    heads: list[list[bytes]] = []
    deltas: list[dict[str, float]] = []
    for way, extra in (("inline", []), ("task", ["--access-log"])):
        args = ["--db", sqlite_url, "--cache-dir", str(tmp_path / way), "--metrics", *extra]
        with running(*args) as frontend, httpx.Client(base_url=frontend.base) as client:
            etags = {}
            for key in files:  # misses, then each file's first read
                for _ in range(3):
                    response = client.get(f"/media/{key}")
                    assert response.content == files[key]
                    etags[key] = response.headers["etag"]
            before = counters(client)
            asked: list[tuple[str, str, dict[str, str]]] = [
                ("GET", "a.png", {}), ("HEAD", "a.png", {}), ("GET", "a.png", {"if-none-match": etags["a.png"]}),
                ("GET", "a.png", {"range": "bytes=1-3"}), ("GET", "b.jpg", {}), ("HEAD", "b.jpg", {}),
                ("GET", "nothing-here.png", {}),
            ]  # fmt: skip
            answers = asyncio.run(exchange_all(frontend.base, asked))
            after = settled(client, before, len(asked))
        heads.append([re.sub(rb"\r\ndate: [^\r]*", b"", head) for head, _ in answers])
        deltas.append({name: after[name] - before[name] for name in after})
        bodies = [body for _, body in answers]
        assert bodies == [files["a.png"], b"", b"", files["a.png"][1:4], files["b.jpg"], b"", bodies[-1]]
    assert heads[0] == heads[1]
    assert [head[:12] for head in heads[0]] == [b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 304",
                                                b"HTTP/1.1 206", b"HTTP/1.1 200", b"HTTP/1.1 200",
                                                b"HTTP/1.1 404"]  # fmt: skip
    assert deltas[0] == deltas[1]
    assert deltas[0]["timed"] == 7 and deltas[0]["memory"] + deltas[0]["disk"] == 6, deltas


async def exchange_all(base: str, asked: list[tuple[str, str, dict[str, str]]]) -> list[tuple[bytes, bytes]]:
    """The requests pipelined in one write on one connection; each response read whole."""
    reader, writer = await connect(base)
    extra = ["".join(f"{name}: {value}\r\n" for name, value in headers.items()) for _, _, headers in asked]
    writer.write(b"".join(request(method, f"/media/{key}", extra=fields)
                          for (method, key, _), fields in zip(asked, extra, strict=True)))  # fmt: skip
    answers = []
    for method, _, _ in asked:
        answers.append(await read_response(reader, method))
    writer.close()
    return answers


def test_a_request_not_answered_inline_is_looked_up_once(sqlite_url: str, tmp_path: Path) -> None:
    """What ``answer_now`` found (a 404, a miss, a file for ``sendfile``) is what the ASGI path
    carries out: the cached tiers are asked once per request, as without the protocol (a second
    look counts a copy's hit twice, opens a file twice). Counted by a pass-through wrapper."""
    from servefiles import ServeFiles
    from servefiles.middleware.zerocopy import ZeroCopySend

    async def main() -> None:
        async with open_store(sqlite_url) as store:
            await store.put("small.png", os.urandom(2_000))
            await store.put("large.jpg", os.urandom(300_000))
        app = ServeFiles(None, db=sqlite_url, cache_dir=tmp_path / "c")
        looks: list[str] = []
        cached = app.mount.cached

        def counted(method: str, raw_key: str, *args: Any) -> Any:
            looks.append(raw_key)
            return cached(method, raw_key, *args)

        app.mount.cached = counted  # type: ignore[method-assign]
        options: dict[str, Any] = {"http": PROTOCOL, "access_log": False, "proxy_headers": False}
        async with uvicorn_server(ZeroCopySend(app), **options) as base, httpx.AsyncClient(base_url=base) as client:
            for key in ("missing.png", "small.png", "large.jpg") * 4:
                await client.get(f"/media/{key}")
        assert sorted(looks) == sorted(["missing.png", "small.png", "large.jpg"] * 4), looks

    asyncio.run(main())


def test_answer_now_leaves_private_files_probes_and_writes_to_the_asgi_path(sqlite_url: str, tmp_path: Path) -> None:
    from servefiles import ServeFiles

    app: Any = ServeFiles(None, db=sqlite_url, cache_dir=tmp_path / "c", private=["secret"],
                          signing_keys=[os.urandom(32)])  # fmt: skip
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/media/a.png", "headers": []}
    assert app.answer_now(scope) is None and inline.DECIDED_SLOT not in scope
    public: Any = ServeFiles(None, db=sqlite_url, cache_dir=tmp_path / "d")
    for method, path in [("GET", "/_servefiles/health"), ("PUT", "/media/a.png"), ("DELETE", "/media/a.png"),
                         ("GET", "/elsewhere")]:  # fmt: skip
        scope = {"type": "http", "method": method, "path": path, "headers": []}
        assert public.answer_now(scope) is None and inline.DECIDED_SLOT not in scope, (method, path)


def test_servefiles_serve_accel_redirects_are_answered_with_the_heads_of_its_asgi_path(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``--nginx accel``: a GET's redirect (``X-Accel-Redirect``, rendered once per version), its
    304, a HEAD and a range (servefiles answers those itself), inline and as tasks (``--access-log``):
    the same heads but the date, the same bodies, the same counts."""
    data = os.urandom(5_000)
    (tmp_path / "a.png").write_bytes(data)
    assert cli("put", "--db", sqlite_url, str(tmp_path / "a.png"), "a.png").returncode == 0
    past_last_modified()
    heads: list[list[bytes]] = []
    deltas: list[dict[str, float]] = []
    for way, extra in (("inline", []), ("task", ["--access-log"])):
        args = ["--db", sqlite_url, "--cache-dir", str(tmp_path / way), "--metrics", "--nginx", "accel", *extra]
        with running(*args) as frontend, httpx.Client(base_url=frontend.base) as client:
            for _ in range(3):  # the miss, then the copy on disk hashed once
                etag = client.get("/media/a.png").headers["etag"]
            before = counters(client)
            asked: list[tuple[str, str, dict[str, str]]] = [
                ("GET", "a.png", {}), ("GET", "a.png", {"if-none-match": etag}), ("HEAD", "a.png", {}),
                ("GET", "a.png", {"range": "bytes=0-1"}), ("GET", "a.png", {}),
            ]  # fmt: skip
            answers = asyncio.run(exchange_all(frontend.base, asked))
            after = settled(client, before, len(asked))
        heads.append([re.sub(rb"\r\ndate: [^\r]*", b"", head) for head, _ in answers])
        deltas.append({name: after[name] - before[name] for name in after})
        assert [body for _, body in answers] == [b"", b"", b"", data[:2], b""]
    assert heads[0] == heads[1]
    assert b"\r\nx-accel-redirect: " in heads[0][0] and heads[0][1].startswith(b"HTTP/1.1 304 ")
    assert deltas[0] == deltas[1] and deltas[0]["timed"] == 5, deltas


@pytest.mark.parametrize("nginx", [None, "accel"])
def test_answer_now_answers_hits_whose_bodies_are_in_hand_and_hands_the_rest_on(
    nginx: str | None, sqlite_url: str, tmp_path: Path
) -> None:
    """In process, on a started ServeFiles: a small file's GET (its bytes, or with ``nginx="accel"``
    the redirect to its cache file), HEAD and 304 are answers, head lines and all; a file too large
    to read whole, a range and a missing key are not, and what was found is in the scope."""
    from servefiles import ServeFiles

    from .asgi_servers import asgi_lifespan

    small, large = os.urandom(5_000), os.urandom(300_000)

    def scope_of(method: str, key: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": f"/media/{key}", "headers": headers or []}

    async def main() -> None:
        async with open_store(sqlite_url) as store:
            await store.put("a.png", small)
            await store.put("b.jpg", large)
        app: Any = ServeFiles(None, db=sqlite_url, cache_dir=tmp_path / "c", nginx=nginx, date_header=True)
        async with (
            asgi_lifespan(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
        ):
            for _ in range(3):  # misses, then the copies' first reads
                etag = (await client.get("/media/a.png")).headers["etag"]
                await client.get("/media/b.jpg")
            get = app.answer_now(scope_of("GET", "a.png"))
            assert get is not None and get.status == 200 and b"\r\ndate: " in b"\r\n" + get.lines
            if nginx == "accel":
                assert get.body == b"" and b"x-accel-redirect: " in get.lines and b"content-length: 0\r\n" in get.lines
            else:
                assert get.body == small and b"content-length: 5000\r\n" in get.lines
            assert f"etag: {etag}\r\n".encode() in get.lines
            head = app.answer_now(scope_of("HEAD", "a.png"))
            assert (
                head is not None
                and (head.status, head.body) == (200, b"")
                and b"content-length: 5000\r\n" in head.lines
            )
            not_modified = app.answer_now(scope_of("GET", "a.png", [(b"if-none-match", etag.encode())]))
            assert not_modified is not None and (not_modified.status, not_modified.body) == (304, b"")
            if nginx == "accel":  # a file of any size is nginx's to send: a redirect
                large_get = app.answer_now(scope_of("GET", "b.jpg"))
                assert large_get is not None and b"x-accel-redirect: " in large_get.lines
            handed_on = [("a.png", [(b"range", b"bytes=0-1")], 206), ("none.png", [], None)]
            if nginx is None:  # a file for sendfile
                handed_on.append(("b.jpg", [], 200))
            for key, headers, status in handed_on:
                scope = scope_of("GET", key, headers)
                assert app.answer_now(scope) is None, key
                reply, _ = scope[inline.DECIDED_SLOT]
                assert (None if reply is None else reply.response.status) in (status, 404), (key, reply)
                if reply is not None and reply.body is not None:
                    reply.body.close()

    asyncio.run(main())
