"""Private files across real processes: ``servefiles serve`` and gunicorn frontends sharing one
store and the signing keys, and the ``sign`` / ``new-signing-key`` commands and ``serve``'s
refusal of a weak key, as a user runs them."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx

from servefiles import ServeFilesWSGI, open_store

from .servers import Frontend, WsgiFrontend, cli

DATA = b"%PDF-1.7 private invoice\n" * 100


def new_key() -> str:
    done = cli("new-signing-key")
    assert done.returncode == 0, done.stderr
    key = done.stdout.decode().strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key), key
    return key


def put(store_url: str, key: str, data: bytes) -> None:
    async def go() -> None:
        async with open_store(store_url) as store:
            await store.put(key, data)

    asyncio.run(go())


def test_a_url_signed_on_one_frontend_works_on_the_other(store_url: str, tmp_path: Path) -> None:
    """Frontend A (``servefiles serve``, keys from a file) and B (gunicorn, ``ServeFilesWSGI``, the
    same two keys in the other order: B signs with what A only verifies, as during a rotation)."""
    first, second = new_key(), new_key()
    assert first != second
    put(store_url, "invoices/a.pdf", DATA)
    key_file = tmp_path / "keys"
    key_file.write_text(f"# signing keys\n{first}\n\n{second}\n")
    a = Frontend("--db", store_url, "--cache-dir", str(tmp_path / "a"), "--private", "invoices",
                 "--signing-key-file", str(key_file))  # fmt: skip
    options = {"db": store_url, "cache_dir": str(tmp_path / "b"), "private": ["invoices"],
               "signing_keys": [second, first]}  # fmt: skip
    b = WsgiFrontend(options)
    try:
        a.start()
        b.start()
        signed_by_a = cli("sign", "invoices/a.pdf", "--expires", "10m", env={"SERVEFILES_SIGNING_KEY": first})
        assert signed_by_a.returncode == 0, signed_by_a.stderr
        url_a = signed_by_a.stdout.decode().strip()
        b_config = ServeFilesWSGI(None, store_url, cache_dir=tmp_path / "c", private=["invoices"],
                                  signing_keys=[second, first])  # fmt: skip
        url_b = b_config.url("invoices/a.pdf")  # B's own url(): private, so signed, with B's first key
        b_config.close()
        assert url_a != url_b
        for frontend in (a, b):
            for url in (url_a, url_b):
                response = httpx.get(frontend.base + url, timeout=10)
                assert (response.status_code, response.content) == (200, DATA), (frontend.base, url)
                assert response.headers["cache-control"].startswith("private")
            refused = httpx.get(frontend.base + "/media/invoices/a.pdf", timeout=10)
            assert refused.status_code == 403 and DATA[:20] not in refused.content
    finally:
        a.stop()
        b.stop()
    for frontend in (a, b):
        assert "Traceback" not in frontend.output(), frontend.output()
        assert first not in frontend.output() and second not in frontend.output()


def test_serve_refuses_a_weak_signing_key_in_one_line(tmp_path: Path) -> None:
    weak = "not-random-enough"
    done = cli("serve", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--private", "x", "--signing-key", weak,
               "--port", "0")  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "signing key" in stderr and weak not in stderr
    assert "Traceback" not in stderr


def test_sign_without_a_key_is_a_one_line_error() -> None:
    done = cli("sign", "invoices/a.pdf", env={"SERVEFILES_SIGNING_KEY": ""})
    stderr = done.stderr.decode()
    assert done.returncode == 1 and done.stdout == b""
    assert stderr.strip().splitlines() == ["servefiles: error: no signing key: pass --signing-key, "
                                           "--signing-key-file or set SERVEFILES_SIGNING_KEY"]  # fmt: skip


def test_sign_takes_durations_prefixes_and_a_base_url() -> None:
    key = new_key()
    before = time.time()
    done = cli("sign", "a b/ç.pdf", "--expires", "90s", "--prefix", "/files/", "--base-url", "https://cdn.example/",
               "--signing-key", key)  # fmt: skip
    assert done.returncode == 0, done.stderr
    url = done.stdout.decode().strip()
    match = re.fullmatch(r"https://cdn\.example/files/a%20b/%C3%A7\.pdf\?expires=(\d+)&signature=[A-Za-z0-9_-]{43}",
                         url)  # fmt: skip
    assert match, url
    assert before + 89 <= int(match.group(1)) <= time.time() + 91
    for expires, seconds in (("15m", 900), ("1h", 3600), ("7d", 7 * 86400), ("120", 120)):
        done = cli("sign", "k", "--expires", expires, "--signing-key", key)
        moment = int(re.search(rb"expires=(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
        assert abs(moment - (time.time() + seconds)) < 5, expires
    too_long = cli("sign", "k", "--expires", "8d", "--signing-key", key)
    assert too_long.returncode == 1 and len(too_long.stderr.decode().strip().splitlines()) == 1
    for bogus in ("soon", "0s", "-1h", "1w", "1.5h"):
        refused = cli("sign", "k", "--expires", bogus, "--signing-key", key)
        assert refused.returncode == 2 and len(refused.stderr.decode().strip().splitlines()) == 1, bogus
    bad_key = cli("sign", "a/../b", "--signing-key", key)
    assert bad_key.returncode == 1 and "Traceback" not in bad_key.stderr.decode()
