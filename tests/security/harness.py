"""The machinery behind the hostile-input tests: both adapters called in process (so an audit
hook sees every file the process opens), canary files next to the cache dir, and the checks
every response must pass whatever the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import secrets
import site
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes
from wsgiref.util import FileWrapper

from servefiles import ServeFiles, ServeFilesWSGI, Store
from servefiles.errors import InvalidKey
from servefiles.keys import canonical_key

from ..asgi_servers import Message, Scope, asgi_request
from ..wsgi_servers import run_wsgi

TOKEN = "sec-corpus-token-0123456789abc"
"""The upload token the apps under test accept: 30 characters."""
BLOG_TOKEN = "sec-corpus-blog-only-987654321"
"""A second token, limited to keys under ``blog/``."""
PREFIX = "/media/"
REQUEST_SECONDS = 2.0
"""Every request, however hostile, is answered within this."""
HANG_SECONDS = 20.0
"""A request still running after this is reported as hung (and the test goes on)."""

ORDINARY_FILES: dict[str, tuple[bytes, str | None]] = {
    "image.png": (b"\x89PNG\r\n\x1a\n" + hashlib.sha256(b"png").digest() * 625, "image/png"),  # 20,008 bytes
    "page.html": (b"<!doctype html><title>x</title><script>alert(1)</script>", None),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', None),
    "notes.txt": (b"ordinary notes\n" * 20, None),
    "a/b/c.txt": (b"nested file\n", None),
    "big.bin": (hashlib.sha256(b"big").digest() * 10_000, "application/octet-stream"),  # 320,000: the disk tier
}


# -- the audit hook ---------------------------------------------------------------------------------------------

# Events that name a path (sys.audit events table): "open" is raised by builtins.open, io.open,
# os.open and os.fdopen (an int path: a descriptor already opened, skipped); the rest change or
# list the filesystem. sqlite3.connect names the database file.
_PATH_EVENTS = frozenset(
    {
        "open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.link", "os.symlink", "os.mkdir",
        "os.rmdir", "os.truncate", "os.chmod", "os.chown", "os.utime", "os.chdir", "os.chroot", "os.mkfifo",
        "os.mknod", "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.rmtree",
        "shutil.move", "shutil.chown", "shutil.make_archive", "shutil.unpack_archive", "sqlite3.connect",
    }
)  # fmt: skip
# Events that are a violation wherever they point: no request may start a process or load code.
_FORBIDDEN_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
     "os.startfile", "ctypes.dlopen", "pty.spawn", "webbrowser.open"}
)  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _code_roots() -> tuple[str, ...]:
    """Where Python may read code from while serving (a lazy import, linecache for a logged
    traceback): the standard library, site-packages, the venv, and this repository's packages."""
    repository = Path(__file__).resolve().parents[2]
    roots = {
        os.path.dirname(os.__file__), sys.prefix, sys.exec_prefix, sys.base_prefix + "/lib",
        *site.getsitepackages(), str(repository / "servefiles"), str(repository / "tests"),
    }  # fmt: skip
    return tuple(sorted({_real(root) for root in roots}))


@dataclass
class AuditLog:
    """What the hook saw while armed. Audit hooks cannot be removed, so there is one hook per
    session; it does nothing at all unless ``armed``."""

    armed: bool = False
    label: str = ""
    read_roots: tuple[str, ...] = ()
    write_roots: tuple[str, ...] = ()
    write_files: frozenset[str] = frozenset()
    violations: list[str] = field(default_factory=list)

    def check_path(self, event: str, raw: Any, writing: bool) -> None:
        if isinstance(raw, int) or raw is None:
            return  # a descriptor opened earlier (os.fdopen, fd-relative scandir): its open was seen
        path = _real(os.fsdecode(raw))
        if path in self.write_files or _under(path, self.write_roots):
            return
        if not writing and _under(path, self.read_roots):
            return
        self.violations.append(f"{event} {'write' if writing else 'read'} {path} during {self.label!r}")


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


AUDIT = AuditLog()
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    log = AUDIT
    if not log.armed:
        return
    try:
        if event in _FORBIDDEN_EVENTS:
            log.violations.append(f"{event} {args!r:.200} during {log.label!r}")
        elif event == "open":
            path, mode, flags = args
            writing = bool(flags & _WRITE_FLAGS) if isinstance(flags, int) and flags else False
            writing = writing or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            log.check_path(event, path, writing)
        elif event == "sqlite3.connect":
            database = os.fsdecode(args[0]) if args and not isinstance(args[0], int) else ""
            if database != ":memory:":
                log.check_path(event, database.removeprefix("file:").partition("?")[0], True)
        elif event in _PATH_EVENTS:
            writing = event not in ("os.listdir", "os.scandir")
            for arg in args[:2] if event in ("os.rename", "os.link", "os.symlink", "shutil.move") else args[:1]:
                log.check_path(event, arg, writing)
    except Exception as exc:  # a hook must never raise into the code it watches
        log.violations.append(f"audit hook failed on {event}: {exc!r}")


def install_audit_hook() -> AuditLog:
    """Install the session's one audit hook (idempotent)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    return AUDIT


# -- responses ----------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """A response as the client would see it: names lower-case, names and values as bytes."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    seconds: float

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


class Adapter(Protocol):
    async def call(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes | None, abort: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]: ...

    async def close(self) -> None: ...


BODY_CHUNK = 64 * 1024


class AsgiAdapter:
    """``ServeFiles`` called with hand-made scopes, as a server would call it."""

    def __init__(self, app: ServeFiles) -> None:
        self.app = app

    async def call(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes | None, abort: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if body is None:
            raw = await asgi_request(self.app, method, target, list(headers))
            return raw.status, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in raw.headers], raw.body
        return await self._with_body(method, target, headers, body, abort)

    async def _with_body(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes, abort: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Like ``asgi_request``, with a body delivered in chunks (and a disconnect after the first with ``abort``)."""
        raw_path, _, query = target.partition(b"?")
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
            "raw_path": raw_path, "query_string": query, "root_path": "",
            "headers": [(b"host", b"test"), *headers], "client": ("127.0.0.1", 50000), "server": ("test", 80),
            "state": {},
        }  # fmt: skip
        pieces = [body[i : i + BODY_CHUNK] for i in range(0, len(body), BODY_CHUNK)] or [b""]
        messages: list[Message] = [
            {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
        ]
        if abort:
            messages = [{**messages[0], "more_body": True}, {"type": "http.disconnect"}]
        sent: list[Message] = []

        async def receive() -> Message:
            if messages:
                return messages.pop(0)
            await asyncio.Event().wait()  # the client never disconnects on its own
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        if not sent or sent[0]["type"] != "http.response.start":
            raise AssertionError(f"no http.response.start: {sent!r:.300}")
        if sent[-1].get("more_body", False):
            raise AssertionError("the response body was never completed")
        data = b"".join(m.get("body", b"") for m in sent[1:] if m["type"] == "http.response.body")
        return sent[0]["status"], [(k.lower(), v) for k, v in sent[0]["headers"]], data

    async def close(self) -> None:
        await self.app.aclose()


class _FailingInput(io.RawIOBase):
    """``wsgi.input`` of a client that goes away after its first chunk."""

    def __init__(self, body: bytes) -> None:
        self.first: bytes | None = body[:BODY_CHUNK]

    def read(self, size: int = -1) -> bytes:
        if self.first is not None:
            first, self.first = self.first[: size if size >= 0 else None], None
            return first
        raise ConnectionResetError("the client went away")


class WsgiAdapter:
    """``ServeFilesWSGI`` called with hand-made environs, as a server would call it (PEP 3333)."""

    def __init__(self, app: ServeFilesWSGI) -> None:
        self.app = app

    def environ(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes | None, abort: bool
    ) -> dict[str, Any]:
        raw_path, _, query = target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "",
            # PEP 3333: PATH_INFO is the percent-decoded bytes, as a latin-1 str.
            "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"), "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": "test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "test", "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input": _FailingInput(body or b"") if abort else io.BytesIO(body or b""),
        }  # fmt: skip
        for name, value in headers:
            cgi = name.decode("latin-1").upper().replace("-", "_")
            key = cgi if cgi in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + cgi
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ and key != "HTTP_HOST" else text
        if body is not None and "CONTENT_LENGTH" not in environ:
            environ["wsgi.input_terminated"] = True  # a chunked request body (gunicorn sets this)
        return environ

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status_line, native, body = run_wsgi(self.app, environ)
        status = int(status_line.split(" ", 1)[0])
        # PEP 3333: header names and values are latin-1 str; a non-latin-1 one fails here, loudly.
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in native]
        return status, headers, body

    async def call(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes | None, abort: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        environ = self.environ(method, target, headers, body, abort)
        return await asyncio.to_thread(self._call, environ)

    async def close(self) -> None:
        await asyncio.to_thread(self.app.close)


# -- the harness ------------------------------------------------------------------------------------------------


def target_for(key: str) -> bytes:
    """The request target of a name: ``/media/`` + its UTF-8 bytes percent-encoded (lone surrogates included)."""
    return (PREFIX + quote_from_bytes(key.encode("utf-8", "surrogatepass"), safe="/")).encode("ascii")


def expected_key(target: bytes) -> tuple[bool, str | None]:
    """What a server makes of a target: (under the prefix?, the canonical key or None if the gate refuses it).

    Independent of the adapters: the path before ``?`` is percent-decoded to bytes (as uvicorn and
    gunicorn do), routed on the prefix, and what follows goes through the key gate as bytes.
    """
    path = unquote_to_bytes(target.partition(b"?")[0])
    if not path.startswith(PREFIX.encode()):
        return False, None
    try:
        return True, canonical_key(path[len(PREFIX) :])
    except InvalidKey:
        return True, None


class Harness:
    """One adapter over one store, with the ordinary files uploaded, canaries next to the cache
    dir, the audit hook configured for this test, and a list of failures to report at the end."""

    def __init__(self, adapter: Adapter, store: Store, tmp_path: Path, db_file: Path | None) -> None:
        self.adapter = adapter
        self.store = store
        self.tmp_path = tmp_path
        self.cache_dir = tmp_path / "cache"
        self.db_file = db_file
        self.files: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.canary = tmp_path / "canary.txt"
        self.secret = self.cache_dir / ".." / "secret.txt"
        self.canaries: list[bytes] = []
        self.audit = install_audit_hook()

    # -- set-up -------------------------------------------------------------------------

    def plant_canaries(self) -> None:
        for path in (self.canary, self.secret):
            data = b"CANARY-" + secrets.token_hex(32).encode("ascii")
            path.write_bytes(data)
            self.canaries.append(data)
            self.canaries.append(data[7:])  # the random part alone, in case of any re-encoding around it
        (self.tmp_path / "link-to-canary").symlink_to(self.canary)
        (self.cache_dir / "escape").symlink_to(self.secret.resolve())

    def configure_audit(self) -> None:
        write_roots = [_real(self.cache_dir), "/dev/null"]
        write_files = set()
        if self.db_file is not None:
            write_files = {_real(f"{self.db_file}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")}
        # /proc and /dev: Python and asyncio may read them (e.g. /proc/self/fd); never a canary.
        # No system files: servefiles' type table is built with MimeTypes(filenames=()), so not
        # even /etc/mime.types may be read while a request is served.
        read_roots = [*_code_roots(), "/proc", "/dev"]
        self.audit.write_roots = tuple(write_roots)
        self.audit.write_files = frozenset(write_files)
        self.audit.read_roots = tuple(read_roots)
        self.audit.violations.clear()

    async def upload_ordinary_files(self) -> None:
        for key, (data, content_type) in ORDINARY_FILES.items():
            headers = [(b"content-type", content_type.encode())] if content_type else []
            reply = await self.request("PUT", target_for(key), headers, data, auth=True)
            assert reply.status == 201, (key, reply.status, reply.body)
            self.files[key] = data
        for key in self.files:  # warm every tier and the loop before anything is armed
            reply = await self.request("GET", target_for(key))
            assert (reply.status, reply.body) == (200, self.files[key]), key
        deadline = time.monotonic() + 10
        while (await self.request("GET", target_for("big.bin"))).status == 200 and not self.on_disk("big.bin"):
            assert time.monotonic() < deadline, "big.bin never reached the disk tier"
            await asyncio.sleep(0.01)

    def on_disk(self, key: str) -> bool:
        sha = hashlib.sha256(self.files[key]).hexdigest()
        return (self.cache_dir / "objects" / sha[:2] / sha).is_file()

    def placeholders(self) -> dict[str, str]:
        sha = hashlib.sha256(self.files["big.bin"]).hexdigest()
        return {
            "{canary}": str(self.canary),
            "{canary_enc}": quote(str(self.canary), safe=""),
            "{secret}": os.path.normpath(self.secret),
            "{cache}": str(self.cache_dir),
            "{object}": f"objects/{sha[:2]}/{sha}",
        }

    def fill_target(self, template: str) -> bytes:
        for name, value in self.placeholders().items():
            template = template.replace(name, value)
        return template.encode("ascii")

    # -- requests -----------------------------------------------------------------------

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Record every file the process touches outside the allowed roots, while the body runs."""
        self.audit.armed = True
        try:
            yield
        finally:
            self.audit.armed = False
            self.audit.label = ""

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
        *,
        auth: bool | str = False,
        length: bool = True,
        abort: bool = False,
    ) -> Reply:
        """One request (``auth``: with the token, or with the token given); raises what the app
        raises (:meth:`send` records it instead)."""
        headers = list(headers)
        if auth:
            headers.append((b"authorization", f"Bearer {TOKEN if auth is True else auth}".encode()))
        if body is not None and length and not any(name == b"content-length" for name, _ in headers):
            headers.append((b"content-length", b"%d" % len(body)))
        started = time.perf_counter()
        status, reply_headers, reply_body = await asyncio.wait_for(
            self.adapter.call(method, target, headers, body, abort), HANG_SECONDS
        )
        return Reply(status, reply_headers, reply_body, time.perf_counter() - started)

    async def send(
        self,
        label: str,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
        **options: Any,
    ) -> Reply | None:
        """One hostile request: checked against the invariants every response keeps; a failure
        (or an exception: in process there is no server to turn it into a 500) is recorded."""
        self.audit.label = label
        try:
            reply = await self.request(method, target, headers, body, **options)
        except Exception as exc:
            self.fail(label, f"{method} raised {type(exc).__name__}: {exc!s:.300}")
            return None
        for problem in self.invariant_problems(method, reply):
            self.fail(label, f"{method} -> {reply.status}: {problem}")
        return reply

    def fail(self, label: str, problem: str) -> None:
        self.failures.append(f"[{label!r:.160}] {problem}")

    def invariant_problems(self, method: str, reply: Reply) -> list[str]:
        problems = []
        if reply.status >= 500:
            problems.append(f"server error, body {reply.body[:200]!r}")
        if reply.seconds > REQUEST_SECONDS:
            problems.append(f"took {reply.seconds:.2f} s")
        for name, value in reply.headers:
            if any(c in name + value for c in (b"\r", b"\n", b"\x00")):
                problems.append(f"CR, LF or NUL in header {name!r}: {value[:200]!r}")
            if name == b"set-cookie":
                problems.append(f"Set-Cookie sent: {value[:200]!r}")
        for name in (b"content-type", b"content-length", b"content-disposition", b"location", b"etag"):
            if len(reply.all(name)) > 1:
                problems.append(f"{name.decode()} sent {len(reply.all(name))} times")
        for canary in self.canaries:
            if canary in reply.body or any(canary in value for _, value in reply.headers):
                problems.append("the canary's bytes are in the response")
        if method == "HEAD" and reply.body:
            problems.append(f"HEAD with a body of {len(reply.body)} bytes")
        length = reply.header(b"content-length")
        if length is not None and method != "HEAD" and reply.status != 304 and length != b"%d" % len(reply.body):
            problems.append(f"Content-Length {length!r} but {len(reply.body)} bytes")
        if reply.status not in (204, 304) and reply.header(b"x-content-type-options") != b"nosniff":
            problems.append("no X-Content-Type-Options: nosniff")
        return problems

    # -- what must not change -------------------------------------------------------------

    async def store_state(self) -> tuple[int, list[tuple[str, str, int]]]:
        files = await self.store.list("", limit=10_000)
        return await self.store.last_version(), [(m.key, m.sha256, m.version) for m in files]

    def outside_cache(self) -> dict[str, bytes | str]:
        """Every path under the test's tmp dir except the cache dir, with contents or link targets."""
        found: dict[str, bytes | str] = {}
        for root, dirs, names in os.walk(self.tmp_path):
            if Path(root) == self.tmp_path and "cache" in dirs:
                dirs.remove("cache")
            for name in names + dirs:
                path = Path(root) / name
                if path.is_symlink():
                    found[str(path)] = "-> " + os.readlink(path)
                elif path.is_file() and not (self.db_file and str(path).startswith(str(self.db_file))):
                    found[str(path)] = path.read_bytes()  # the database changes with every write: listed only
                else:
                    found[str(path)] = "dir" if path.is_dir() else "file"
        return found

    def report(self, before_outside: dict[str, bytes | str]) -> None:
        """Fail the test with every problem found: recorded failures, audit violations, files
        that appeared or changed outside the cache dir."""
        problems = [f"audit: {violation}" for violation in self.audit.violations]  # the gravest first
        after = self.outside_cache()
        for path in sorted(set(before_outside) | set(after)):
            if before_outside.get(path) != after.get(path):
                problems.append(f"outside the cache dir, {path} changed: {before_outside.get(path)!r:.80} -> "
                                f"{after.get(path)!r:.80}")  # fmt: skip
        problems += self.failures
        shown = "\n".join(problems[:150])
        more = f"\n... and {len(problems) - 150} more" if len(problems) > 150 else ""
        assert not problems, f"{len(problems)} problem(s):\n{shown}{more}"
