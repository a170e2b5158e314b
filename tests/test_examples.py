"""The example apps, as a user meets them.

In process: through their ASGI interface with httpx, lifespan included (a tiny stand-in for
the server: startup, requests that see the lifespan's state, shutdown). For real: started
with their documented command, ``uvicorn examples.<name>.app:app``, and fetched over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import importlib
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servefiles import ServeFiles, open_store

from .servers import free_port, listening

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

ROOT = Path(__file__).resolve().parent.parent
FILES = {"blog/photo.jpg": os.urandom(20_000), "docs/notes #1.txt": b"a key that needs percent-encoding\n"}
MISSING = "/media/blog/nothing.jpg"
LIFESPAN_TIMEOUT = 10.0
START_TIMEOUT = 20.0


def media_url(key: str) -> str:
    return f"/media/{quote(key)}"


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def html_links(page: httpx.Response) -> list[str]:
    """The Starlette home page: a link per file, and an <img> for the image."""
    assert page.headers["content-type"].startswith("text/html")
    assert f'<img src="{media_url("blog/photo.jpg")}"' in page.text
    return [html.unescape(href) for href in re.findall(r'<a href="([^"]*)"', page.text)]


def json_links(page: httpx.Response) -> list[str]:
    """The FastAPI listing: one JSON object per file."""
    entries = page.json()
    assert [(e["key"], e["size"], e["sha256"]) for e in entries] == [
        (key, len(data), hashlib.sha256(data).hexdigest()) for key, data in sorted(FILES.items())
    ]
    return [entry["url"] for entry in entries]


@dataclass(frozen=True)
class Example:
    module: str
    listing: str
    """The app's own page that lists the files."""
    links: Callable[[httpx.Response], list[str]]


EXAMPLES = {
    "starlette": Example("examples.starlette_app.app", "/", html_links),
    "fastapi": Example("examples.fastapi_app.app", "/api/files", json_links),
}


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh database holding FILES and a fresh cache dir, named in the environment as a user would."""
    env = {"SERVEFILES_DB": f"sqlite:///{tmp_path / 'files.db'}", "SERVEFILES_CACHE_DIR": str(tmp_path / "cache")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def upload() -> None:
        async with open_store(env["SERVEFILES_DB"]) as store:
            for key, data in FILES.items():
                await store.put(key, data)

    asyncio.run(upload())
    return env


def load(module: str) -> ModuleType:
    """A fresh import, so the module reads this test's environment."""
    sys.modules.pop(module, None)
    return importlib.import_module(module)


async def check_example(client: httpx.AsyncClient, example: Example) -> None:
    """The app's own route lists the files; each listed link is the file, from servefiles; a missing key is 404."""
    listing = await client.get(example.listing)
    assert listing.status_code == 200, listing.text
    links = example.links(listing)
    assert links == [media_url(key) for key in sorted(FILES)]
    for link, (_, data) in zip(links, sorted(FILES.items()), strict=True):
        response = await client.get(link)
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["etag"] == etag(data)
        revalidated = await client.get(link, headers={"If-None-Match": etag(data)})
        assert revalidated.status_code == 304
    assert (await client.get(MISSING)).status_code == 404


# -- in process -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def asgi_server(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """Do what uvicorn does around ``app``: lifespan startup, requests that see its state, shutdown.

    httpx.ASGITransport sends no lifespan events, so the examples' own lifespan (which
    opens the store their pages list from) would never run without this.
    """
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}

    async def run_lifespan() -> None:
        await app(lifespan_scope, inbox.get, outbox.put)

    lifespan = asyncio.create_task(run_lifespan())

    async def lifespan_event(event: str) -> None:
        await inbox.put({"type": f"lifespan.{event}"})
        reply = asyncio.ensure_future(outbox.get())
        await asyncio.wait({reply, lifespan}, timeout=LIFESPAN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            if lifespan.done():
                lifespan.result()  # the app's own error, if it raised one
            raise AssertionError(f"the app did not answer lifespan.{event}")
        assert reply.result() == {"type": f"lifespan.{event}.complete"}, reply.result()

    async def with_state(scope: Message, receive: Callable[[], Awaitable[Message]],
                         send: Callable[[Message], Awaitable[None]]) -> None:  # fmt: skip
        scope["state"] = dict(state)  # a shallow copy per request, as servers make
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=with_state)
    await lifespan_event("startup")
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
            yield client
    finally:
        await lifespan_event("shutdown")
        await asyncio.wait_for(lifespan, LIFESPAN_TIMEOUT)


def servefiles_in(app: Any) -> ServeFiles:
    """The ServeFiles instance in ``app``: the app itself, or in its (built) middleware stack."""
    while not isinstance(app, ServeFiles):
        app = getattr(app, "middleware_stack", None) or app.app
    return app


@pytest.mark.parametrize("name", EXAMPLES)
async def test_example_in_process(name: str, example_env: dict[str, str]) -> None:
    example = EXAMPLES[name]
    app = load(example.module).app
    async with asgi_server(app) as client:
        await check_example(client, example)
    # ServeFiles closes itself once the wrapped app's lifespan shutdown is complete.
    assert servefiles_in(app).service.feed is None, "ServeFiles should be closed after the app's shutdown"


# -- for real, with the documented command ----------------------------------------------


def test_flask_example_in_process(example_env: dict[str, str]) -> None:
    """Flask's test client calls the WSGI stack: the home page is Flask's, /media/ is servefiles'."""
    module = load("examples.flask_app.app")
    try:
        client = module.app.test_client()
        page = client.get("/")
        assert page.status_code == 200
        links = html_links(httpx.Response(200, headers=dict(page.headers), content=page.data))
        assert links == [media_url(key) for key in sorted(FILES)]
        for link, (_, data) in zip(links, sorted(FILES.items()), strict=True):
            response = client.get(link)
            assert (response.status_code, response.data, response.headers["etag"]) == (200, data, etag(data))
            assert client.get(link, headers={"If-None-Match": etag(data)}).status_code == 304
        assert client.get(MISSING).status_code == 404
    finally:
        module.files.close()


@dataclass
class Running:
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_example(module: str, env: Mapping[str, str], log: Path, server: str = "uvicorn") -> Iterator[Running]:
    """``python -m uvicorn <module>:app --port N`` (or gunicorn) from the project root, until it listens;
    stopped with SIGTERM."""
    port = free_port()
    running = Running(f"http://127.0.0.1:{port}", log)
    command = {
        "uvicorn": [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port)],
        "gunicorn": [sys.executable, "-m", "gunicorn", f"{module}:app", "--bind", f"127.0.0.1:{port}",
                     "--no-control-socket"],
    }[server]  # fmt: skip
    with listening(command, port, log, cwd=ROOT, env=env, what="the example"):
        yield running


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_with_its_documented_command(name: str, example_env: dict[str, str], tmp_path: Path) -> None:
    example = EXAMPLES[name]

    async def check(base: str) -> None:
        async with httpx.AsyncClient(base_url=base) as client:
            await check_example(client, example)

    with run_example(example.module, example_env, tmp_path / "uvicorn.log") as running:
        asyncio.run(check(running.base))
    output = running.output()
    assert "Application startup complete." in output and "Application shutdown complete." in output, output
    assert "Traceback" not in output and "ERROR" not in output, output


def test_flask_example_runs_with_its_documented_command(example_env: dict[str, str], tmp_path: Path) -> None:
    async def check(base: str) -> None:
        async with httpx.AsyncClient(base_url=base) as client:
            await check_example(client, Example("examples.flask_app.app", "/", html_links))

    with run_example("examples.flask_app.app", example_env, tmp_path / "gunicorn.log", "gunicorn") as running:
        asyncio.run(check(running.base))
    output = running.output()
    assert "Booting worker" in output and "Shutting down" in output, output
    assert "Traceback" not in output and "ERROR" not in output, output
