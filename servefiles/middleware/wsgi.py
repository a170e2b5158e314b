"""``ServeFilesWSGI``: the same servefiles for WSGI apps (Django, Flask) under gunicorn or any
WSGI server.

Every decision is the ASGI path's: the same :class:`~servefiles.middleware.wiring.Mount`
(key gate, HTTP decisions, memory and disk tiers, change feed, write API) runs on one
private event loop per process, on a daemon thread. A hit — a fresh memory or disk copy —
is answered on the request's own thread (:meth:`Mount.cached`: it reads only state shared
under locks, and sees the change feed's drops as soon as they are made); misses,
revalidations, writes and probes are handed to the loop as coroutines, and the request
thread waits. Only the I/O differs: disk hits go out through ``wsgi.file_wrapper``
(sendfile under gunicorn), other bodies as an iterator pulling chunks from the loop.

Fork safety: nothing is created until a process serves its first request (or calls the
Python API), and a forked child (gunicorn ``--preload`` forks the master) forgets its
parent's state at the fork (``os.register_at_fork``) and starts its own loop, pool and disk
index: a parent's loop, connections and SQLite handles are never touched in a child.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar, Unpack

from .. import defaults, http
from ..access import Decision
from ..bodies import Body, DiskBody
from ..errors import NotFound, ServeFilesError, StoreUnavailable, UploadAborted
from ..metrics import Timings
from ..service import Reply
from ..store import FileMeta, PutSource, Store
from ..store.base import WritePrecondition
from ..write_api import REQUEST_HEADERS as WRITE_HEADERS
from .asgi import REQUEST_HEADERS
from .sending import plan
from .wiring import Mount, Options, mount

logger = logging.getLogger("servefiles")

_T = TypeVar("_T")
WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

INPUT_READ_BYTES = 256 * 1024
"""Bytes read from ``wsgi.input`` at a time: one store chunk."""
FILE_WRAPPER_BLOCK = 256 * 1024
LOOP_CHECK_SECONDS = 1.0
"""How often a request thread waiting for the loop looks whether it still runs (seconds)."""
INPUT_READERS = 64
"""Uploads read at once per process; more wait (reads only: serving never does)."""
_ENVIRON_NAMES = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


@functools.lru_cache(maxsize=8)
def _environ_names(wanted: frozenset[bytes]) -> tuple[tuple[str, str], ...]:
    """(lower-case name, environ key) of each header in ``wanted``, worked out once per set."""
    names = (raw.decode("ascii") for raw in wanted)
    return tuple((name, _ENVIRON_NAMES.get(name) or "HTTP_" + name.upper().replace("-", "_")) for name in names)


def request_headers(environ: WSGIEnviron, wanted: frozenset[bytes]) -> dict[str, str]:
    """The headers a decision reads, by lower-case name, from a WSGI environ.

    The server has already joined repeated fields with "," (PEP 3333 follows CGI),
    and values are latin-1 strings, as the ASGI adapter decodes them. wsgiref (Django's
    runserver) fills in CONTENT_TYPE=text/plain when the client sent none: that one is
    taken as absent, so an upload's type is guessed from its key, as under other servers.
    """
    found: dict[str, str] = {}
    for name, environ_name in _environ_names(wanted):
        value = environ.get(environ_name)
        if value is not None and (value != "" or name not in _ENVIRON_NAMES):
            found[name] = value
    if found.get("content-type") == "text/plain" and environ.get("SERVER_SOFTWARE", "").startswith("WSGIServer/"):
        del found["content-type"]
    return found


_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
"""PEP 3333's status strings ("200 OK"), by code."""


def request_path(environ: WSGIEnviron) -> str:
    """PATH_INFO as text: PEP 3333 hands over the percent-decoded bytes as latin-1; decode them
    as UTF-8, invalid bytes becoming U+FFFD, exactly as uvicorn decodes an ASGI path."""
    raw = environ.get("PATH_INFO", "")
    try:
        return str(raw.encode("latin-1").decode("utf-8", "replace"))
    except UnicodeEncodeError:  # a server that already decoded it as UTF-8 (against PEP 3333): as it is
        return str(raw)


@dataclass
class _Process:
    """What one process owns: its loop thread and its mount."""

    pid: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    mount: Mount
    readers: ThreadPoolExecutor
    """Threads that read ``wsgi.input``: its own pool, so slow uploads never take the
    default executor's few threads from the disk tier's work."""


class ServeFilesWSGI:
    """Serve the store's files under ``prefix``; pass every other request to ``app``.

    Takes the same arguments as :class:`servefiles.ServeFiles`. ``app`` may be None
    for a standalone WSGI file server (404 outside the prefix). The sync Python
    API (:meth:`put`, :meth:`delete`, :meth:`list`, :meth:`stat`, :meth:`open`)
    is for the app's own views and the Django storage.
    """

    def __init__(  # the arguments of ServeFiles, but date_header (a WSGI server always sends Date)
        self, app: WSGIApp | None, db: str | Store, prefix: str = defaults.PREFIX, cache_dir: str | Path | None = None,
        **options: Unpack[Options],
    ) -> None:  # fmt: skip
        if not isinstance(db, str):
            raise TypeError("ServeFilesWSGI takes a database URL: an open Store belongs to another event loop")
        self.app = app
        self._arguments = (db, prefix, cache_dir, options)
        # Checks the options now, in the importing process; opens nothing (that waits for a request).
        self.prefix = mount(db, prefix, cache_dir, options).prefix
        self._process: _Process | None = None
        self._lock = threading.Lock()
        # A forked child forgets its parent's loop at once, so a request never checks the pid.
        os.register_at_fork(after_in_child=functools.partial(_forget_parent, weakref.ref(self)))

    # -- the per-process loop -------------------------------------------------------------

    def _current(self) -> _Process:
        process = self._process
        if process is not None:
            return process
        with self._lock:
            process = self._process
            if process is None:
                process = self._start_process()
                self._process = process
        return process

    def _after_fork(self) -> None:
        """In a forked child: the parent's loop thread does not exist here, and its lock may have
        been held by another thread at the fork; the first request starts this process's own."""
        self._process = None
        self._lock = threading.Lock()

    def _start_process(self) -> _Process:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="servefiles-loop", daemon=True)
        thread.start()
        db, prefix, cache_dir, options = self._arguments

        async def build() -> Mount:  # inside the loop: every asyncio object belongs to it
            return mount(db, prefix, cache_dir, options)

        built = asyncio.run_coroutine_threadsafe(build(), loop).result()
        readers = ThreadPoolExecutor(INPUT_READERS, thread_name_prefix="servefiles-input")
        process = _Process(os.getpid(), loop, thread, built, readers)
        _OPEN_AT_EXIT.add(process, functools.partial(self._close_process, process))
        return process

    def _run(self, coroutine: Coroutine[Any, Any, _T], process: _Process | None = None) -> _T:
        """Run a coroutine on this process's loop and wait for it. StoreUnavailable once the loop
        has stopped (the process is exiting, :class:`_ClosedAtExit`): a request thread still running
        then gets a 503 or a cut body, never a wait for a loop that will not run again (Python
        joins those threads after its exit hooks)."""
        process = process or self._current()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, process.loop)
        except RuntimeError:  # the loop is closed: the process is exiting (_close_process)
            coroutine.close()  # never started: no "never awaited" warning
            raise StoreUnavailable("servefiles is closing") from None
        while True:
            try:
                return future.result(timeout=LOOP_CHECK_SECONDS)
            except FutureTimeout:
                # A stopped loop never runs again (it is closed next): no cancel, which would be
                # delivered through it, and would raise in a callback if the close came between.
                if not process.loop.is_running():
                    raise StoreUnavailable("servefiles is closing") from None

    def _reply(self, coroutine: Coroutine[Any, Any, Reply], process: _Process) -> Reply:
        """:meth:`_run` for a reply: a 503 once the loop has stopped."""
        try:
            return self._run(coroutine, process)
        except StoreUnavailable as exc:
            if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
                coroutine.close()  # never started: no "never awaited" warning at exit
            return Reply(http.for_error(exc, "read"))

    def _close_process(self, process: _Process) -> None:
        _OPEN_AT_EXIT.discard(process)  # closed: nothing left to hold it (and its tiers) until exit
        if process.pid != os.getpid() or not process.loop.is_running():
            return
        loop = process.loop
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(process.mount.service.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        process.thread.join(timeout=10)
        process.readers.shutdown(wait=False, cancel_futures=True)
        if not process.thread.is_alive():
            # The service's close may have given up above (a disk tier still opening after 10 s):
            # the tier's own close waits for that open, then closes it (nothing, if it is closed).
            with contextlib.suppress(Exception):
                process.mount.service.runtime.disk.close()
            # Closed once its thread has ended (left to the collector, an unclosed loop is a
            # ResourceWarning): a request thread that still hands it work gets a 503 (_run), and
            # its default executor's idle threads are let go.
            with contextlib.suppress(Exception):
                loop.close()

    def close(self) -> None:
        """Close the store and the disk index, then stop and close this process's loop (also run at exit)."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            self._close_process(process)

    @property
    def mount(self) -> Mount:
        return self._current().mount

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method: str = environ["REQUEST_METHOD"]
        process = self._process or self._current()
        mounted = process.mount
        route, raw_key = mounted.route(method, request_path(environ))
        if route == "files":
            started = time.perf_counter()
            access = _access(mounted, environ, method, raw_key) if mounted.access else None
            headers = request_headers(environ, REQUEST_HEADERS)
            # A hit on this thread; anything else (a miss, a revalidation) on the loop.
            reply = mounted.cached(method, raw_key, headers, access) or self._reply(
                mounted.serve(method, raw_key, headers, access, asked=True), process
            )
            return self._send(reply, environ, start_response, process, started)
        if route == "writes":
            body = _input_body(environ, process.readers)
            query = environ.get("QUERY_STRING", "")
            headers = request_headers(environ, WRITE_HEADERS)
            root = environ.get("SCRIPT_NAME", "")
            writes = process.mount.writes.handle(method, raw_key, query, headers, body, root)
            return self._send(self._reply(writes, process), environ, start_response, process)
        if route != "app":  # health, ready, metrics
            probe = process.mount.probe(route, environ.get("HTTP_AUTHORIZATION"))
            return self._send(self._reply(probe, process), environ, start_response, process)
        if self.app is not None:
            return self.app(environ, start_response)
        return self._send(Reply(http.not_found()), environ, start_response, process)

    def _send(
        self,
        reply: Reply,
        environ: WSGIEnviron,
        start_response: StartResponse,
        process: _Process,
        started: float | None = None,
    ) -> Iterable[bytes]:
        """Carry ``reply`` out; with ``started`` (a read's arrival, ``perf_counter`` seconds), observe
        its duration once the reply is handed to the server (a streamed body: once it is closed)."""
        response, body, file = reply.response, reply.body, reply.file
        if file is not None and response.status == 200 and response.headers == file.headers_200:
            native = file.native_headers_200()  # a plain 200, the hit path's: decoded once per version
        else:
            native = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers]
        try:
            start_response(_STATUS_LINES[response.status], native)
        except BaseException:  # a server or a middleware that raises here: the body's descriptor goes too
            if body is not None:
                body.close()
            raise
        metrics = process.mount.service.metrics
        sent = metrics.bytes_sent
        wrapper = environ.get("wsgi.file_wrapper")
        way = plan(reply, environ["REQUEST_METHOD"], wrapper is not None)
        sent.inc(way.counted)
        timing = None if started is None else (metrics.request_timings(response.status, reply.source), started)
        if way.way != "stream" and timing is not None:
            timing[0].observe_locked(time.perf_counter() - timing[1])  # a request thread: the locked way
        if way.way == "whole":
            if body is not None:
                body.close()
            return [way.data] if way.data else []
        if way.way == "file":
            # The file object owns the descriptor now; the server closes it (sendfile under gunicorn).
            # Counted whole at hand-over: the server sends it itself, and stops itself when the
            # client goes (a sendfile to a closed socket fails); how far it got is not ours to see.
            assert isinstance(body, DiskBody) and wrapper is not None
            return wrapper(_OpenFile(body.fd), FILE_WRAPPER_BLOCK)  # type: ignore[no-any-return]
        assert body is not None
        return _Streamed(self, process, body, response.body, sent.inc, timing)

    # -- the Python API, for the app's own views ----------------------------------------------

    def put(
        self, key: str, data: PutSource, content_type: str | None = None, *, expect: WritePrecondition | None = None
    ) -> FileMeta:
        """Store a file; this process serves it at once, other frontends once the feed tells them."""
        return self._run(self.mount.files.put(key, data, content_type, expect=expect))

    def delete(self, key: str, *, expect: WritePrecondition | None = None) -> bool:
        """Delete a file; False when there was none."""
        return self._run(self.mount.files.delete(key, expect=expect)) is not None

    def stat(self, key: str) -> FileMeta | None:
        return self._run(self.mount.files.stat(key))

    def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> list[FileMeta]:
        """One page of files in key order; pass the last key as ``after`` for the next."""
        return self._run(self.mount.files.list(prefix, limit, after))

    def open(self, key: str) -> Iterator[bytes]:
        """The bytes of ``key``, streamed from the store a few chunks at a time (NotFound if missing)."""
        process = self._current()
        return _pull(self, process, process.mount.files.read(key))

    def url(self, key: str, expires_in: float | None = None) -> str:
        """The path ``key`` is served at, percent-encoded; signed as :meth:`servefiles.ServeFiles.url` says."""
        return self.mount.url(key, expires_in)

    def admin_app(self) -> WSGIApp:
        """A WSGI app for a separate, private listener: ``/_servefiles/metrics``, ``/health`` and
        ``/ready``, the last two always detailed; 404 for anything else. It reads this process's
        service, so serve it from the same process (a thread running ``wsgiref``, say): under a
        server with several worker processes, each has its own metrics."""

        def admin(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
            process = self._current()
            route = process.mount.admin_route(request_path(environ))
            if route is None:
                return self._send(Reply(http.not_found()), environ, start_response, process)
            return self._send(self._run(process.mount.probe(route, None, admin=True), process), environ,
                              start_response, process)  # fmt: skip

        return admin


def _forget_parent(adapter: weakref.ref[ServeFilesWSGI]) -> None:
    """``os.register_at_fork``'s child hook: the adapter (if it still exists) forgets its parent's loop."""
    found = adapter()
    if found is not None:
        found._after_fork()


class _OpenFile:
    """An open cache file for ``wsgi.file_wrapper``: the bare descriptor, nothing on top.

    gunicorn sends it with ``sendfile`` from ``fileno()`` (its length is the response's
    Content-Length, so it asks nothing more than the offset); a server that iterates instead
    calls :meth:`read`. ``os.fdopen`` would ``fstat`` the file once more and set up a buffer
    that sendfile never uses. :meth:`close` closes the descriptor once (PEP 3333: the server
    calls it when the response is over)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on closed file")
        return self._fd

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            chunks = []
            while chunk := os.read(self.fileno(), FILE_WRAPPER_BLOCK):
                chunks.append(chunk)
            return b"".join(chunks)
        return os.read(self.fileno(), size)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class _ClosedAtExit:
    """What must be closed when the interpreter exits (each adapter's open process), run by one
    exit hook for them all, before thread pools stop taking work.

    ``atexit`` runs after ``threading``'s own exit hooks, among them the one that shuts every
    ``concurrent.futures`` pool (the loop's default executor too): a close that then still needs a
    thread (the change feed catching up, the disk index) failed with "cannot schedule new futures
    after shutdown" and logged a traceback as a gunicorn worker exited (seen in the suite: 2 of
    2,186 tests, once). ``threading._register_atexit`` (CPython's own hook for those pools, run in
    reverse order of registration) runs the hook before them; where it is missing, or the
    interpreter is already exiting, ``atexit`` as before.

    One hook, and a process leaves the set when it is closed (:meth:`discard`): a hook per start
    held every closed adapter, with its memory tier, until exit (code that starts and closes
    adapters many times, a test suite's, grew without bound)."""

    def __init__(self) -> None:
        self._open: dict[int, Callable[[], None]] = {}
        """id(process) → its close; the close holds the process, so the id is not reused meanwhile."""
        self._lock = threading.Lock()
        self._hooked = False
        # A fork while another thread held the lock would leave the child's copy held for ever.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._open.clear()  # the parent's processes: not this one's to close

    def add(self, process: _Process, close: Callable[[], None]) -> None:
        with self._lock:
            self._open[id(process)] = close
            if not self._hooked:
                self._hooked = True
                _register_at_exit(self._close_all)

    def discard(self, process: _Process) -> None:
        with self._lock:
            self._open.pop(id(process), None)

    def __len__(self) -> int:
        return len(self._open)

    def _close_all(self) -> None:
        with self._lock:
            closes = list(self._open.values())
            self._hooked = False  # an adapter started after this (from another exit hook) hooks again
        for close in reversed(closes):  # the last started first, as separate hooks ran
            try:  # threading runs its exit hooks unguarded: one that raised would skip the rest
                close()
            except BaseException as exc:  # an interrupt during the waits, say: exit anyway
                logger.warning("servefiles could not close at exit: %s: %s", type(exc).__name__, exc)


def _register_at_exit(hook: Callable[[], None]) -> None:
    """``hook`` at interpreter exit, before the thread pools stop (:class:`_ClosedAtExit`)."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(hook)
            return
        except RuntimeError:  # threading's exit hooks have run already
            pass
    atexit.register(hook)


_OPEN_AT_EXIT = _ClosedAtExit()


def _access(mount: Mount, environ: WSGIEnviron, method: str, raw_key: str) -> Decision | None:
    """The access decision for a read of a private key (None: public, or not a read). The hook runs
    here, in the request's thread, where the app's own session and database connection live."""
    policy = mount.access
    if policy is None or method not in ("GET", "HEAD"):
        return None
    key = policy.private_key(raw_key)
    if key is None:
        return None
    decision = policy.check(key, environ.get("QUERY_STRING", ""), environ.get("HTTP_AUTHORIZATION"))
    return policy.ask_sync(environ, key, decision) if decision.kind == "ask" else decision


class _Streamed:
    """A response body pulled from the loop chunk by chunk; ``close()`` (called by the server,
    PEP 3333, also when the client went away mid-body) stops the reading there and releases
    the body source at once, whether or not it was read to the end. Each chunk is counted
    in ``servefiles_bytes_sent_total`` as the server takes it."""

    def __init__(
        self,
        adapter: ServeFilesWSGI,
        process: _Process,
        body: Body,
        segments: Iterable[Any],
        count: Callable[[int], None],
        timing: tuple[Timings, float] | None = None,
    ) -> None:
        self._adapter, self._process, self._body = adapter, process, body
        self._segments = list(segments)
        self._count = count
        self._timing = timing
        """Where to observe the request's duration at :meth:`close`, and when it arrived."""
        self._iterating: Generator[bytes, None, None] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._iterating = self._chunks()
        return self._iterating

    def _chunks(self) -> Generator[bytes, None, None]:
        for segment in self._segments:
            if isinstance(segment, bytes):
                yield segment
                continue
            body = self._body
            if isinstance(body, DiskBody):  # a cache file: read here, on the request's thread
                source: Generator[bytes, None, None] = _read_file(body.fd, segment.start, segment.end)
            else:
                source = _pull(self._adapter, self._process, body.chunks(segment))
            with contextlib.closing(source) as chunks:
                for chunk in chunks:
                    self._count(len(chunk))
                    yield chunk

    def close(self) -> None:
        iterating, self._iterating = self._iterating, None
        if iterating is not None:
            with contextlib.suppress(ValueError):  # still running in another thread: it ends by itself
                iterating.close()  # the store read or fill reader stops and gives back what it holds
        self._body.close()
        timing, self._timing = self._timing, None
        if timing is not None:
            timing[0].observe_locked(time.perf_counter() - timing[1])

    def __enter__(self) -> _Streamed:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _read_file(fd: int, start: int, end: int) -> Generator[bytes, None, None]:
    """Bytes ``[start, end)`` of an open cache file, :data:`FILE_WRAPPER_BLOCK` at a time, read on the
    calling (request) thread: a disk hit the server cannot send itself (no ``wsgi.file_wrapper``,
    a range) never waits for the event loop. A file that ends early raises (the server then cuts
    the connection: a short response, never bytes that do not match the headers)."""
    position = start
    while position < end:
        chunk = os.pread(fd, min(FILE_WRAPPER_BLOCK, end - position), position)
        if not chunk:
            raise OSError(f"cache file ended at byte {position} of {end}")
        position += len(chunk)
        yield chunk


def _pull(adapter: ServeFilesWSGI, process: _Process, chunks: AsyncIterator[bytes]) -> Generator[bytes, None, None]:
    """Iterate an async iterator that lives on the loop, from a request thread.

    An error mid-body propagates: the server then cuts the connection, so the client
    sees a short response rather than bytes that do not match the headers.
    """
    iterator = chunks.__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return None

    try:
        while (chunk := adapter._run(next_chunk(), process)) is not None:
            yield chunk
    except NotFound:
        raise  # the Python API's open() of a missing key: the caller's to handle, no response involved
    except (ServeFilesError, OSError) as exc:
        logger.warning("aborting response: %s", exc)
        raise
    finally:
        closer = getattr(iterator, "aclose", None)
        if closer is not None and process.loop.is_running():

            async def close() -> None:  # an abandoned body still gives back what it holds
                await closer()

            with contextlib.suppress(Exception):
                adapter._run(close(), process)


async def _input_body(environ: WSGIEnviron, readers: ThreadPoolExecutor) -> AsyncIterator[bytes]:
    """``wsgi.input`` as an async iterator, read in ``readers`` so the loop never blocks.

    With a Content-Length, exactly that many bytes (fewer means the client went away);
    without one, until EOF when the server says the input is terminated (chunked
    requests under gunicorn), else nothing (PEP 3333: never read past the length). A
    chunked body the server cannot end for us is refused, not taken as empty: storing
    nothing in place of the file would lose the version it replaces.
    """
    stream: IO[bytes] = environ["wsgi.input"]
    # Parsed as the size check parsed it (that check refused a malformed one): "5 " is 5 bytes.
    remaining = http.content_length(environ.get("CONTENT_LENGTH") or None)
    loop = asyncio.get_running_loop()
    if remaining is None and not environ.get("wsgi.input_terminated", False):
        if environ.get("HTTP_TRANSFER_ENCODING"):
            raise UploadAborted("this WSGI server cannot pass on a chunked body: send a Content-Length")
        return
    while remaining is None or remaining > 0:
        size = INPUT_READ_BYTES if remaining is None else min(INPUT_READ_BYTES, remaining)
        try:
            piece = await loop.run_in_executor(readers, stream.read, size)
        except OSError as exc:
            raise UploadAborted(f"the client went away mid-upload: {exc}") from exc
        if not piece:
            if remaining:
                raise UploadAborted("the client sent fewer bytes than its Content-Length")
            return
        if remaining is not None:
            remaining -= len(piece)
        yield piece
