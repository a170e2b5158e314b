"""Private files behind a real nginx, in both modes, on both stores: the block
``servefiles nginx-config --private`` prints in front of ``servefiles serve --private``.

Tree mode must never publish a private key (nginx would serve it unchecked), and must withdraw
one a previous run published while it was public; accel mode checks before it redirects.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servefiles import Signer

from .nginx_server import running_nginx, server_block
from .servers import Frontend, free_port

TOKEN = "nginx-private-token-0123456789abcdef"
SIGNING_KEY = "nginx-private-signing-key-0123456789-abcdefghijklmno"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(20_000)
PRIVATE_PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(20_000)


@contextlib.contextmanager
def private_stack(mode: str, store_url: str, tmp_path: Path) -> Iterator[tuple[str, Path, Frontend]]:
    """nginx in front of ``servefiles serve --private invoices``; yields nginx's base URL, the
    publish dir and the frontend. In tree mode, a private file left in the tree by an earlier run is
    planted first."""
    cache_dir, publish_dir = tmp_path / "cache", tmp_path / "published"
    if mode == "tree":
        leftover = publish_dir / "media" / "invoices" / "old.png"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(PRIVATE_PNG)  # published while invoices/ was public
    frontend = Frontend("--db", store_url, "--cache-dir", str(cache_dir), "--nginx", mode, "--publish-dir",
                        str(publish_dir), "--upload-token", TOKEN, "--cache-min-uses", "1", "--private", "invoices",
                        "--signing-key", SIGNING_KEY).start()  # fmt: skip
    try:
        port = free_port()
        block = server_block(mode, frontend.port, port, cache_dir, publish_dir, ("--private", "invoices"))
        if mode == "tree":
            assert "location ^~ /media/invoices/ {" in block
        with running_nginx(tmp_path / "nginx", block, port) as nginx:
            yield f"http://127.0.0.1:{port}", publish_dir, frontend
            assert "[alert]" not in nginx.errors() and "[crit]" not in nginx.errors(), nginx.errors()
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()


def signed(key: str, seconds: int = 300) -> str:
    return Signer([SIGNING_KEY], "/media", 7 * 86400).url(key, seconds, time.time())


def published_files(publish_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(publish_dir)) for path in publish_dir.rglob("*") if not path.is_dir())


@pytest.mark.parametrize("mode", ["accel", "tree"])
def test_private_files_behind_nginx_are_checked_and_never_published(mode: str, store_url: str, tmp_path: Path) -> None:
    with private_stack(mode, store_url, tmp_path) as (base, publish_dir, _frontend):
        assert published_files(publish_dir) == [], "the tree is emptied at start: a key now private is withdrawn"
        with httpx.Client(base_url=base, timeout=30) as client:
            auth = {"authorization": f"Bearer {TOKEN}", "content-type": "image/png"}
            for key, data in (("photo.png", PNG), ("invoices/a.png", PRIVATE_PNG), ("invoices/old.png", PRIVATE_PNG)):
                assert client.put(f"/media/{key}", content=data, headers=auth).status_code == 201
            url = signed("invoices/a.png")
            for _ in range(4):  # miss, fill, disk hits: each a chance to publish
                public = client.get("/media/photo.png")
                assert (public.status_code, public.content) == (200, PNG)
                private = client.get(url)
                assert (private.status_code, private.content) == (200, PRIVATE_PNG)
                assert private.headers["cache-control"].startswith("private"), private.headers
                assert "public" not in private.headers["cache-control"]
                part = client.get(url, headers={"range": "bytes=10-19"})
                assert (part.status_code, part.content) == (206, PRIVATE_PNG[10:20])
            for target in ("/media/invoices/a.png", "/media/invoices/old.png", "/media/invoices/none.png",
                           "/media/invoices/%2e%2e/invoices/a.png", "/media/photo.png/../invoices/a.png",
                           "/media//invoices/a.png", "/media/invoices//a.png"):  # fmt: skip
                refused = client.get(target)
                assert refused.status_code in (403, 404), (target, refused.status_code)
                assert PRIVATE_PNG[8:40] not in refused.content, target
                assert "x-accel-redirect" not in refused.headers
            assert client.get("/media/invoices/a.png").status_code == 403
            sent = hashlib.sha256(client.get(url).content).hexdigest()
            assert sent == hashlib.sha256(PRIVATE_PNG).hexdigest()
        deadline = time.monotonic() + 10
        while mode == "tree" and "media/photo.png" not in published_files(publish_dir):
            assert time.monotonic() < deadline, "the public file was never published: nothing is tested"
            time.sleep(0.05)
        assert not any("invoices" in path for path in published_files(publish_dir)), published_files(publish_dir)
