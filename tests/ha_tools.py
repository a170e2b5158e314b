"""What the high-availability tests share: frontends on a primary/standby pair, a load that records
every answer, and a cuttable proxy on a thread of its own (real frontends are other processes)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from servefiles import open_store

from .pg_pair import PgPair
from .servers import Frontend
from .tcp_proxy import TcpProxy

TOKEN = "ha-upload-token-0123456789abcdef"
REQUEST_TIMEOUT = 15.0
"""Longer than any answer may take (10 s), so a slow answer is seen as slow, not as a client timeout."""


@contextlib.contextmanager
def pair_with_database() -> Iterator[tuple[PgPair, str]]:
    """A started primary/standby pair and the name of a database on it (replayed on the standby)."""
    pair = PgPair()
    try:
        pair.start()
        name = f"ha_{uuid.uuid4().hex[:8]}"
        pair.create_database(name)
        yield pair, name
    finally:
        pair.remove()


def frontend(db: str, cache_dir: Path, *extra: str) -> Frontend:
    """A (not yet started) ``servefiles serve`` with uploads and metrics, logging warnings."""
    return Frontend("--db", db, "--cache-dir", str(cache_dir), "--upload-token", TOKEN, "--metrics", *extra)


def put_direct(dsn: str, key: str, data: bytes) -> None:
    """Write through the store API straight to one server (as another frontend would)."""

    async def go() -> None:
        async with open_store(dsn) as store:
            await store.put(key, data)

    asyncio.run(go())


def contents_direct(dsn: str, keys: list[str]) -> dict[str, bytes | None]:
    """What one server holds for ``keys`` (None: absent), read through the store API."""

    async def go() -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}
        async with open_store(dsn) as store:
            for key in keys:
                if await store.stat(key) is None:
                    found[key] = None
                else:
                    found[key] = b"".join([piece async for piece in store.read(key)])
        return found

    return asyncio.run(go())


def get(base: str, key: str) -> httpx.Response:
    return httpx.get(f"{base}/media/{key}", timeout=REQUEST_TIMEOUT)


def answers_with(base: str, key: str, data: bytes | None) -> bool:
    """Whether ``base`` now answers ``key`` with ``data`` (None: 404). Never bytes that disagree
    with their ETag, whatever it answers."""
    response = get(base, key)
    if response.status_code == 200:
        assert hashlib.sha256(response.content).hexdigest() == response.headers["etag"].strip('"'), key
    if data is None:
        return response.status_code == 404
    return response.status_code == 200 and response.content == data


def feed_healthy(base: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        detailed = {"authorization": f"Bearer {TOKEN}"}  # the feed's state is in the detailed report
        return bool(httpx.get(f"{base}/_servefiles/health", headers=detailed, timeout=5).json()["feed"]["healthy"])
    return False


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took. AssertionError after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Answer:
    base: str
    key: str
    status: int
    seconds: float
    right_bytes: bool
    retry_after: bool


@dataclass
class Load:
    """GETs in a loop, one thread per frontend, every answer recorded (a transport error as status 0)."""

    bases: list[str]
    expected: dict[str, bytes]
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for base in self.bases:
            thread = threading.Thread(target=self._run, args=(base,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)

    def _run(self, base: str) -> None:
        with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT) as client:
            while not self._stop.is_set():
                for key, data in self.expected.items():
                    started = time.monotonic()
                    try:
                        response = client.get(f"/media/{key}")
                    except httpx.TransportError:
                        self.answers.append(Answer(base, key, 0, time.monotonic() - started, False, False))
                        continue
                    self.answers.append(Answer(
                        base, key, response.status_code, time.monotonic() - started,
                        response.status_code == 200 and response.content == data, "retry-after" in response.headers,
                    ))  # fmt: skip
                    time.sleep(0.005)

    def refused(self, base: str, keys: set[str]) -> bool:
        """Whether ``base`` has answered one of ``keys`` with 503 yet."""
        return any(a.base == base and a.key in keys and a.status == 503 for a in list(self.answers))


class ThreadedProxy:
    """A :class:`TcpProxy` on an event loop thread of its own, so other processes can go through it."""

    def __init__(self, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.proxy = TcpProxy("127.0.0.1", port)

    @property
    def port(self) -> int:
        return self.proxy.port

    def _do(self, what: str) -> None:
        asyncio.run_coroutine_threadsafe(getattr(self.proxy, what)(), self._loop).result(10)

    def start(self) -> ThreadedProxy:
        self._thread.start()
        self._do("start")
        return self

    def cut(self) -> None:
        self._do("cut")

    def restore(self) -> None:
        self._do("restore")

    def close(self) -> None:
        self._do("cut")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
