"""The Django storage backend on both stores: in this process, and in the example project
(``examples/django_app``) as a user runs it.

The in-process tests configure Django's settings once (no apps, no Django database) and point
the storage at this test's store.

``manage.py test posts`` runs the project's own Django tests (model fields, the admin, the
storage API) in a fresh interpreter. Then the project runs for real under gunicorn, two
gthread workers: log in to the admin, upload a post with a PNG through the add form, find
its ``<img>`` on the home page and fetch it from ``/media/``; delete it from another
process and watch both workers stop serving it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import csv
import hashlib
import io
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from PIL import Image

from servefiles import ServeFilesWSGI, open_store
from servefiles.contrib import django as servefiles_django
from servefiles.contrib.django import ServeFilesStorage

from .servers import free_port, listening

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "django_app"
COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 20.0
FEED_TIMEOUT = 10.0
PASSWORD = "a password for the test admin"


@pytest.fixture
def django_env(store_url: str, tmp_path: Path) -> dict[str, str]:
    """The example's environment: this test's servefiles store, cache dir and Django database."""
    return {
        "SERVEFILES_DB": store_url,
        "SERVEFILES_CACHE_DIR": str(tmp_path / "cache"),
        "DJANGO_DB": str(tmp_path / "django.db"),
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }


def manage(*args: str, env: Mapping[str, str]) -> str:
    """``python manage.py ARGS`` in the project directory; its output, which must end with exit code 0."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=COMMAND_TIMEOUT,
    )  # fmt: skip
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"manage.py {' '.join(args)} exited with {done.returncode}:\n{output}"
    return output


def project_test_count() -> int:
    """How many test methods posts/tests.py defines."""
    tree = ast.parse((PROJECT / "posts" / "tests.py").read_text())
    return sum(
        isinstance(node, ast.FunctionDef) and node.name.startswith("test")
        for cls in tree.body if isinstance(cls, ast.ClassDef)
        for node in cls.body
    )  # fmt: skip


def png_bytes() -> bytes:
    """A small real PNG, different on every call."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), tuple(uuid.uuid4().bytes[:3])).save(buffer, "PNG")
    return buffer.getvalue()


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def csrf_token(page: httpx.Response) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, f"no CSRF token in {page.url}:\n{page.text[:2000]}"
    return match.group(1)


def test_the_projects_own_tests_pass(django_env: dict[str, str]) -> None:
    output = manage("test", "posts", env=django_env)
    ran = re.search(r"^Ran (\d+) tests? in ", output, re.MULTILINE)
    assert ran and int(ran.group(1)) == project_test_count(), output
    assert re.search(r"^OK( \(.*\))?$", output, re.MULTILINE), output


@contextlib.contextmanager
def gunicorn(env: Mapping[str, str], log: Path) -> Iterator[str]:
    """``gunicorn blog.wsgi`` in the project directory on a free port, until it listens; stopped with SIGTERM."""
    port = free_port()
    workers = ["--workers", "2", "--worker-class", "gthread", "--threads", "2"]
    command = [sys.executable, "-m", "gunicorn", "blog.wsgi", "--bind", f"127.0.0.1:{port}", *workers,
               "--no-control-socket", "--graceful-timeout", "5"]  # fmt: skip
    with listening(command, port, log, cwd=PROJECT, env=env, what="gunicorn"):
        yield f"http://127.0.0.1:{port}"


def admin_upload(client: httpx.Client, title: str, name: str, data: bytes,
                 members_file: tuple[str, bytes] | None = None) -> None:  # fmt: skip
    """Log in to the admin and add a post with ``data`` as its image (and ``members_file``, a name
    and its bytes, as its members-only file), as a browser would."""
    login = client.get("/admin/login/?next=/admin/")
    assert login.status_code == 200
    answer = client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": csrf_token(login), "username": "admin", "password": PASSWORD, "next": "/admin/"},
    )
    assert (answer.status_code, answer.headers.get("location")) == (302, "/admin/"), answer.text[:2000]

    form = client.get("/admin/posts/post/add/")
    assert form.status_code == 200
    added = client.post(
        "/admin/posts/post/add/",
        data={"csrfmiddlewaretoken": csrf_token(form), "title": title, "_save": "Save"},
        files={"image": (name, data, "image/png"),
               **({"members_file": (*members_file, "application/pdf")} if members_file else {})},
    )  # fmt: skip
    assert (added.status_code, added.headers.get("location")) == (302, "/admin/posts/post/"), added.text[:2000]
    listing = client.get("/admin/posts/post/")
    assert listing.status_code == 200 and title in listing.text


def test_admin_upload_served_under_gunicorn(django_env: dict[str, str], store_url: str, tmp_path: Path) -> None:
    manage("migrate", "--noinput", env=django_env)
    manage("createsuperuser", "--noinput", env=django_env)
    data, name, title = png_bytes(), f"photo-{uuid.uuid4().hex[:8]}.png", "A post with a picture"
    key = f"blog/{name}"
    log = tmp_path / "gunicorn.log"

    with gunicorn(django_env, log) as base, httpx.Client(base_url=base, timeout=30) as client:
        admin_upload(client, title, name, data)

        home = client.get("/")
        assert home.status_code == 200 and title in home.text
        assert re.findall(r'<img src="([^"]*)"', home.text) == [f"/media/{key}"]

        for _ in range(4):  # both workers, cold and then from their caches
            image = client.get(f"/media/{key}")
            assert image.status_code == 200
            assert image.content == data
            assert image.headers["content-type"] == "image/png"
            assert image.headers["etag"] == etag(data)
        revalidated = client.get(f"/media/{key}", headers={"If-None-Match": etag(data)})
        assert (revalidated.status_code, revalidated.content) == (304, b"")

        # The file is in the servefiles database; the post, users and sessions in Django's.
        async def stat() -> tuple[str, int] | None:
            async with open_store(store_url) as store:
                meta = await store.stat(key)
            return (meta.sha256, meta.size) if meta else None

        assert asyncio.run(stat()) == (hashlib.sha256(data).hexdigest(), len(data))
        with contextlib.closing(sqlite3.connect(django_env["DJANGO_DB"])) as django_db:
            assert django_db.execute("SELECT title, image FROM posts_post").fetchall() == [(title, key)]
            tables = {row[0] for row in django_db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "posts_post" in tables and not any(table.startswith("servefiles") for table in tables)

        # Deleted by another process: both workers learn it from the change feed.
        manage("shell", "-c", f"from django.core.files.storage import default_storage; default_storage.delete({key!r})",
               env=django_env)  # fmt: skip
        deadline, gone_in_a_row = time.monotonic() + FEED_TIMEOUT, 0
        while gone_in_a_row < 6:
            assert time.monotonic() < deadline, "a worker still serves the deleted file"
            gone_in_a_row = gone_in_a_row + 1 if client.get(f"/media/{key}").status_code == 404 else 0
            time.sleep(0.02)

    output = log.read_text(errors="replace")
    assert "Booting worker" in output and "Shutting down" in output, output
    assert "Traceback" not in output and "ERROR" not in output, output


def test_a_members_file_is_served_to_logged_in_users_only(django_env: dict[str, str], tmp_path: Path) -> None:
    """The example's private folder: the admin uploads a post with a members-only file; the
    members' page links it; servefiles serves it to the logged-in session (the example's
    authorize hook reads Django's session) and the one 403 to anyone else, on both workers."""
    manage("migrate", "--noinput", env=django_env)
    manage("createsuperuser", "--noinput", env=django_env)
    pdf, name = b"%PDF-1.7 members only " + uuid.uuid4().bytes * 100, f"rules-{uuid.uuid4().hex[:8]}.pdf"
    log = tmp_path / "gunicorn.log"
    with gunicorn(django_env, log) as base, httpx.Client(base_url=base, timeout=30) as member, \
            httpx.Client(base_url=base, timeout=30) as stranger:  # fmt: skip
        admin_upload(member, "Rules for members", "cover.png", png_bytes(), members_file=(name, pdf))
        page = member.get("/members/")
        assert page.status_code == 200
        links = re.findall(r'<a href="([^"]*)"', page.text)
        assert links == [f"/media/members/{name}"], page.text
        for _ in range(4):  # both workers
            served = member.get(links[0])
            assert (served.status_code, served.content) == (200, pdf)
            assert served.headers["cache-control"] == "private, no-cache"
            refused = stranger.get(links[0])
            assert refused.status_code == 403 and pdf[:30] not in refused.content
        assert stranger.get("/members/").status_code == 302, "the page itself is Django's login_required"
        assert stranger.get(f"/media/members/{name}x").status_code == 403, "the same 403 for a missing file"
    output = log.read_text(errors="replace")
    assert "Traceback" not in output and "ERROR" not in output, output


# -- the storage in this process ---------------------------------------------------------------


@pytest.fixture
def served(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeFilesWSGI]:
    """Django's settings (configured once per process) and the storage's servefiles on this test's store."""
    if not settings.configured:
        settings.configure(USE_TZ=True, TIME_ZONE="UTC", MEDIA_URL="/media/")
    files = ServeFilesWSGI(None, store_url, "/media", tmp_path / "cache")
    monkeypatch.setattr(servefiles_django, "_files", files)
    yield files
    files.close()


@pytest.fixture
def rival(store_url: str, tmp_path: Path) -> Iterator[ServeFilesWSGI]:
    """Another frontend on the same store: its own loop, connections and cache."""
    files = ServeFilesWSGI(None, store_url, "/media", tmp_path / "rival-cache")
    yield files
    files.close()


def test_text_mode_reads_str_as_filesystem_storage_does(served: ServeFilesWSGI, tmp_path: Path) -> None:
    """open(name, "r") gives text, so csv.reader(storage.open(name, "r")) works as on Django's
    FileSystemStorage; "rb" (the default) still gives the stored bytes."""
    rows = [["name", "city"], ["Zoë", "Kraków"], ["Łukasz", "Zürich"], ["€ sign", "Paris, France"]]
    written = io.StringIO()
    csv.writer(written).writerows(rows)  # \r\n line ends
    data = written.getvalue().encode("utf-8")
    storage = ServeFilesStorage()
    name = storage.save("files/people.csv", ContentFile(data))
    reference = FileSystemStorage(location=tmp_path / "filesystem")
    reference_name = reference.save("people.csv", ContentFile(data))

    for mode in ("r", "rt"):
        with storage.open(name, mode) as opened:
            assert list(csv.reader(opened)) == rows
        with storage.open(name, mode) as opened, reference.open(reference_name, mode) as expected:
            text = opened.read()
            assert isinstance(text, str)
            assert text == expected.read()
        with storage.open(name, mode) as opened, reference.open(reference_name, mode) as expected:
            assert list(opened) == list(expected)  # Django's File iterates lines, as str
    for mode in ("rb", "br"):
        with storage.open(name, mode) as opened:
            assert opened.read() == data
    with storage.open(name) as opened:
        assert opened.read() == data

    # A closed file reopens in the mode it was opened in, or the one asked for (as Django's File does).
    opened = storage.open(name, "r")
    opened.close()
    opened.open()
    assert list(csv.reader(opened)) == rows
    opened.close()
    opened.open("rb")
    assert opened.read() == data
    opened.close()


def test_modes_that_write_are_refused(served: ServeFilesWSGI) -> None:
    """Files are written by save(); an open() for writing fails at once, and nothing changes."""
    storage = ServeFilesStorage()
    name = storage.save("files/notes.txt", ContentFile(b"notes\n"))
    for mode in ("w", "wb", "wt", "a", "ab", "x", "xb", "r+", "rb+", "w+b"):
        with pytest.raises(ValueError, match="save"):
            storage.open(name, mode)
    for mode in ("rbt", "b", "t", "", "q", "rr"):
        with pytest.raises(ValueError, match="mode"):
            storage.open(name, mode)
    with storage.open(name) as opened:
        assert opened.read() == b"notes\n"


class RacedStorage(ServeFilesStorage):
    """A storage whose first choice of name, in each thread, is taken by another writer before
    it writes: the race between get_available_name and the write, for real.

    ``before`` runs first (a barrier, in the threaded test); ``writer`` then stores the chosen name.
    """

    def __init__(self, writer: Callable[[str], Any], before: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        self.writer, self.before = writer, before
        self.raced: list[str] = []
        self._raced_threads: set[int] = set()
        self._lock = threading.Lock()

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        chosen = super().get_available_name(name, max_length=max_length)
        with self._lock:
            first = threading.get_ident() not in self._raced_threads
            self._raced_threads.add(threading.get_ident())
        if first:
            self.before()
            self.writer(chosen)
            with self._lock:
                self.raced.append(chosen)
        return chosen


def test_a_save_that_loses_a_race_keeps_to_max_length(served: ServeFilesWSGI, rival: ServeFilesWSGI) -> None:
    """Another frontend stores the chosen name between get_available_name and the write: the
    retry takes the next free name within the max_length the FileField passed to save() (a
    longer name is a DataError on PostgreSQL when the model is saved)."""
    name = "files/" + "r" * 40 + ".txt"
    max_length = len(name)  # a free name that fills the field: any other name must be cut to fit
    storage = RacedStorage(lambda key: rival.put(key, b"theirs"))

    saved = storage.save(name, ContentFile(b"mine"), max_length=max_length)

    assert storage.raced == [name]
    assert saved != name
    assert len(saved) <= max_length
    assert saved.startswith("files/rrr") and saved.endswith(".txt")
    with storage.open(saved) as mine, storage.open(name) as theirs:
        assert (mine.read(), theirs.read()) == (b"mine", b"theirs")


def test_racing_saves_in_threads_each_keep_their_own_max_length(served: ServeFilesWSGI, rival: ServeFilesWSGI) -> None:
    """Two threads save through one storage (as through default_storage) with different
    max_lengths, both inside save() before either retries: each retry uses its own."""
    storage = RacedStorage(lambda key: rival.put(key, b"theirs"), threading.Barrier(2, timeout=30).wait)
    short, long = "files/" + "s" * 30 + ".txt", "files/" + "l" * 60 + ".txt"
    saved: dict[str, str] = {}
    failed: list[BaseException] = []

    def save(name: str) -> None:
        try:
            saved[name] = storage.save(name, ContentFile(name.encode()), max_length=len(name))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=save, args=(name,)) for name in (short, long)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failed, failed
    assert sorted(storage.raced) == sorted([short, long])
    assert len(saved[short]) <= len(short)
    assert len(short) < len(saved[long]) <= len(long)  # not cut to the other thread's max_length
    for name, stored in saved.items():
        assert stored != name
        with storage.open(stored) as opened:
            assert opened.read() == name.encode()


SIGNING_KEY = "django-test-signing-key-0123456789-abcdefghijklmnopq"


def test_url_signs_private_names_for_url_expires(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SERVEFILES["PRIVATE"]`` and ``["URL_EXPIRES"]``: url() of a private name is signed for that
    long (and served with its signature), of a public name plain; the hook given by dotted path."""
    if not settings.configured:
        settings.configure(USE_TZ=True, TIME_ZONE="UTC", MEDIA_URL="/media/")
    config = {"DB": store_url, "CACHE_DIR": tmp_path / "cache", "PRIVATE": ["invoices"], "SIGNING_KEYS": [SIGNING_KEY],
              "URL_EXPIRES": 600, "AUTHORIZE": "tests.test_django.nobody"}  # fmt: skip
    monkeypatch.setattr(settings, "SERVEFILES", config, raising=False)
    monkeypatch.setattr(servefiles_django, "_files", None)
    storage = ServeFilesStorage()
    try:
        private = storage.save("invoices/2026.pdf", ContentFile(b"an invoice"))
        public = storage.save("blog/a.txt", ContentFile(b"a post"))
        assert storage.url(public) == "/media/blog/a.txt"
        url = storage.url(private)
        match = re.fullmatch(r"/media/invoices/2026\.pdf\?expires=(\d+)&signature=[A-Za-z0-9_-]{43}", url)
        assert match, url
        assert abs(int(match.group(1)) - (time.time() + 600)) < 5
        app = servefiles_django.files()
        status, headers, body = _wsgi_get(app, url)
        assert (status, body) == ("200 OK", b"an invoice") and headers["cache-control"].startswith("private")
        assert _wsgi_get(app, "/media/invoices/2026.pdf")[0].startswith("403"), "the hook (nobody) refuses"
    finally:
        if servefiles_django._files is not None:
            servefiles_django._files.close()


def nobody(environ: dict[str, Any], key: str) -> bool:
    """An authorize hook, named by its dotted path in the settings above."""
    return False


def _wsgi_get(app: ServeFilesWSGI, target: str) -> tuple[str, dict[str, str], bytes]:
    from wsgiref.util import setup_testing_defaults

    path, _, query = target.partition("?")
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query}
    setup_testing_defaults(environ)
    started: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started.update(status=status, headers={name.lower(): value for name, value in headers})

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return started["status"], started["headers"], body
