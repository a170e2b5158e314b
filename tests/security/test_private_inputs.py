"""The private-file family of the hostile-input corpus (``PRIVATE_TARGETS``, ``PRIVATE_HEADERS``)
against both adapters and both stores, in process, with the audit hook armed.

The app has private folders ``members/docs`` and ``invoices`` and one signing key. Whatever
the input: never a 5xx, never a private file's bytes; a target whose canonical key is private
gets the one 403 (the same headers as the refusal of a missing private file), any other the
existing 404. What is expected is computed from the target alone (``expected_key``), never
from the code under test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from servefiles import ServeFiles, ServeFilesWSGI, Signer, open_store

from .corpus import MAX_UPLOAD_BYTES, PRIVATE_HEADERS, PRIVATE_PATH, PRIVATE_TARGETS
from .harness import TOKEN, Adapter, AsgiAdapter, Harness, WsgiAdapter, expected_key, target_for

SIGNING_KEY = "hostile-corpus-signing-key-0123456789-abcdefghijklm"
PRIVATE = ("members/docs/", "invoices/")
MAX_EXPIRES = 86400
PRIVATE_FILES = {
    "members/docs/x.pdf": b"PRIVATE-X-" + b"x" * 2000,
    "members/docs/y.pdf": b"PRIVATE-Y-" + b"y" * 2000,
    "members/docs/caf\u00e9.pdf": b"PRIVATE-CAFE-" + b"c" * 2000,
    "invoices/x.pdf": b"PRIVATE-INVOICE-" + b"i" * 2000,
}


@pytest.fixture
async def private_harness(adapter_name: str, store_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """Like ``harness``, with private folders and a signing key, and the private files uploaded."""
    options = {
        "cache_dir": tmp_path / "cache", "upload_tokens": [TOKEN], "max_upload_bytes": MAX_UPLOAD_BYTES,
        "private": list(PRIVATE), "signing_keys": [SIGNING_KEY], "max_url_expires": MAX_EXPIRES,
    }  # fmt: skip
    adapter: Adapter
    if adapter_name == "asgi":
        adapter = AsgiAdapter(ServeFiles(None, store_url, **options))  # type: ignore[arg-type]
    else:
        adapter = WsgiAdapter(ServeFilesWSGI(None, store_url, **options))  # type: ignore[arg-type]
    db_file = tmp_path / "files.db" if store_url.startswith("sqlite:") else None
    try:
        async with open_store(store_url) as store:
            harness = Harness(adapter, store, tmp_path, db_file)
            await harness.upload_ordinary_files()
            for key, data in PRIVATE_FILES.items():
                reply = await harness.request("PUT", target_for(key), body=data, auth=True)
                assert reply.status == 201, (key, reply.status)
            harness.plant_canaries()
            harness.configure_audit()
            yield harness
    finally:
        await adapter.close()


def placeholders(now: float) -> dict[str, str]:
    """The signed values the templates mangle, made with the documented format (:class:`Signer`)."""
    signer = Signer([SIGNING_KEY], "/media", MAX_EXPIRES)
    lenient = Signer([SIGNING_KEY], "/media", 100 * MAX_EXPIRES)

    def pair(signer: Signer, key: str, expires_in: float, at: float) -> tuple[str, str]:
        query = signer.query(key, expires_in, at)
        expires, signature = (part.partition("=")[2] for part in query.split("&"))
        return expires, signature

    e, s = pair(signer, "members/docs/x.pdf", 600, now)
    _, s_other = pair(signer, "members/docs/y.pdf", 600, now)
    e_past, s_past = pair(signer, "members/docs/x.pdf", 10, now - 3600)
    e_far, s_far = pair(lenient, "members/docs/x.pdf", 30 * MAX_EXPIRES, now)
    return {
        "{e}": e, "{s}": s, "{s_other}": s_other, "{e_past}": e_past, "{s_past}": s_past, "{e_far}": e_far,
        "{s_far}": s_far, "{s_trunc}": s[:-1], "{s_pct}": "".join(f"%{ord(c):02X}" for c in s),
        "{s_pct2}": "".join(f"%25{ord(c):02X}" for c in s),
    }  # fmt: skip


def fill(template: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):  # {s_other} before {s}
        template = template.replace(name, values[name])
    return template


def test_the_private_family_is_request_line_text() -> None:
    values = placeholders(time.time())
    assert len(PRIVATE_TARGETS) + len(PRIVATE_HEADERS) >= 80
    for template in PRIVATE_TARGETS:
        target = fill(template, values)
        assert target.isascii() and " " not in target and "{" not in target, template


async def test_private_files_under_hostile_signatures_and_paths(private_harness: Harness) -> None:
    harness = private_harness
    values = placeholders(time.time())
    secrets = [data[:16] for data in PRIVATE_FILES.values()]
    reference = await harness.request("GET", b"/media/members/docs/none.pdf")
    assert reference.status == 403
    valid = fill(PRIVATE_PATH + "?expires={e}&signature={s}", values).encode("ascii")
    before_outside = harness.outside_cache()
    with harness.armed():
        sanity = await harness.send("valid", "GET", valid)
        assert sanity is not None and sanity.status == 200, "the valid signature must pass, or nothing is tested"
        cases: list[tuple[bytes, tuple[tuple[bytes, bytes], ...]]] = [
            (fill(t, values).encode("ascii"), ()) for t in PRIVATE_TARGETS
        ]
        cases += [(PRIVATE_PATH.encode("ascii"), tuple((n, fill(v.decode(), values).encode()) for n, v in h))
                  for h in PRIVATE_HEADERS]  # fmt: skip
        for target, headers in cases:
            _, key = expected_key(target)
            private = key is not None and key.startswith(PRIVATE)
            label = f"{target.decode()[:140]} {[name for name, _ in headers]}"
            for method in ("GET", "HEAD"):
                reply = await harness.send(label, method, target, headers)
                if reply is None:
                    continue
                if any(secret in reply.body for secret in secrets):
                    harness.fail(label, f"{method}: a private file's bytes in the response")
                if private:
                    if reply.status != 403:
                        harness.fail(label, f"{method}: private key {key!r}: expected 403, got {reply.status}")
                    elif sorted(reply.headers) != sorted(reference.headers):
                        harness.fail(label, f"{method}: a 403 unlike the refusal of a missing file: {reply.headers}")
                    elif method == "GET" and reply.body != reference.body and b"expired" not in reply.body:
                        harness.fail(label, f"{method}: another refusal body {reply.body!r}")
                elif reply.status != 404:
                    harness.fail(label, f"{method}: not a private key ({key!r}): expected 404, got {reply.status}")
    expired = fill(PRIVATE_PATH + "?expires={e_past}&signature={s_past}", values).encode("ascii")
    said = await harness.request("GET", expired)
    if said.status != 403 or b"expired" not in said.body:
        harness.fail("expired", f"an expired signature: {said.status} {said.body!r}")
    harness.report(before_outside)


async def test_a_signed_nfd_spelling_names_the_same_private_key(private_harness: Harness) -> None:
    """The signature is over the canonical (NFC) key: a URL for either spelling is for that key."""
    now = time.time()
    query = Signer([SIGNING_KEY], "/media", MAX_EXPIRES).query("members/docs/caf\u00e9.pdf", 60, now)
    nfd = "/media/" + quote("members/docs/cafe\u0301.pdf") + "?" + query
    reply = await private_harness.request("GET", nfd.encode("ascii"))
    assert (reply.status, reply.body) == (200, PRIVATE_FILES["members/docs/caf\u00e9.pdf"])
