"""The example apps: in-process through their ASGI interface, and run for real with their documented command."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from starlette.testclient import TestClient

from servefiles import open_store

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {"starlette": "examples.starlette_app.app", "fastapi": "examples.fastapi_app.app"}
DATA = os.urandom(20_000)
ETAG = f'"{hashlib.sha256(DATA).hexdigest()}"'


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"SERVEFILES_DB": f"sqlite:///{tmp_path / 'files.db'}", "SERVEFILES_CACHE_DIR": str(tmp_path / "cache")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def upload() -> None:
        async with open_store(env["SERVEFILES_DB"]) as store:
            await store.put("blog/photo.jpg", DATA)

    asyncio.run(upload())
    return env


def load(module: str) -> ModuleType:
    """A fresh import, so the module reads this test's environment."""
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def check_app_and_files(responses: dict[str, httpx.Response], example: str) -> None:
    listing = responses["listing"]
    assert listing.status_code == 200
    if example == "fastapi":
        assert [entry["key"] for entry in listing.json()] == ["blog/photo.jpg"]
    else:
        assert "blog/photo.jpg" in listing.text and '<img src="/media/blog/photo.jpg"' in listing.text
    photo = responses["photo"]
    assert photo.status_code == 200 and photo.content == DATA
    assert photo.headers["etag"] == ETAG and photo.headers["content-type"] == "image/jpeg"
    assert responses["missing"].status_code == 404


PATHS = {"starlette": "/", "fastapi": "/api/files"}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_in_process(example: str, example_env: dict[str, str]) -> None:
    """Starlette's TestClient runs the lifespan, as a server would: the wrapped app's own must run."""
    app = load(EXAMPLES[example]).app
    with TestClient(app, base_url="http://example") as client:
        responses = {
            "listing": client.get(PATHS[example]),
            "photo": client.get("/media/blog/photo.jpg"),
            "missing": client.get("/media/blog/nothing.jpg"),
        }
    check_app_and_files(responses, example)


@pytest.fixture
def served(request: pytest.FixtureRequest, example_env: dict[str, str]) -> Iterator[str]:
    """The example run with its documented command: uvicorn examples.…:app."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{EXAMPLES[request.param]}:app", "--port", str(port)],
        cwd=ROOT, env={**os.environ, **example_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/media/", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the example did not start"
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("served", EXAMPLES, indirect=True)
def test_example_runs_with_its_documented_command(served: str, request: pytest.FixtureRequest) -> None:
    example = request.node.callspec.params["served"]
    with httpx.Client(base_url=served) as client:
        responses = {
            "listing": client.get(PATHS[example]),
            "photo": client.get("/media/blog/photo.jpg"),
            "missing": client.get("/media/blog/nothing.jpg"),
        }
    check_app_and_files(responses, example)
