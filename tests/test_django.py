"""The Django example (``examples/django_app``) as a user runs it, on both stores.

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
import hashlib
import io
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from PIL import Image

from servefiles import open_store

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


def admin_upload(client: httpx.Client, title: str, name: str, data: bytes) -> None:
    """Log in to the admin and add a post with ``data`` as its image, as a browser would."""
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
        files={"image": (name, data, "image/png")},
    )
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
