"""The admin example (examples/admin), end to end.

It runs as a user runs it — ``uvicorn examples.admin.app:app`` in a process of its own, on a
fresh SQLite database — and is driven by headless Chromium through its forms (log in, upload,
see the thumbnail, delete), and by httpx for what a browser would never send (a cross-site
POST, a key the gate rejects). Chromium and chromedriver are Debian's; Selenium Manager is
never asked to download anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from servefiles import open_store

from .installs import install_once
from .servers import free_port, listening

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "correct horse battery staple"
START_TIMEOUT = 20.0
WAIT = 10.0
"""Longest wait for anything in the browser: a page, the thumbnail."""
STATUS = (By.CSS_SELECTOR, "[role=status]")
"""The admin page's confirmation line."""


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG with a colour gradient, built by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# -- the browser ------------------------------------------------------------------------


def have_chromium() -> bool:
    return all(os.access(path, os.X_OK) for path in (CHROMIUM, CHROMEDRIVER))


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's chromium and chromedriver, installed by scripts/install-chromium if need be.

    Missing is a skip on a developer's machine and a failure under CI=true."""
    install = install_once("install-chromium", have_chromium, timeout=900)
    if have_chromium():
        return
    assert install is not None  # not installed, so the script ran
    missing = " and ".join(str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK))
    said = install.stderr.strip()[-500:] or "nothing"
    reason = f"{missing} not found; scripts/install-chromium exited {install.returncode} and said: {said}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # as tests/conftest.py reads CI
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def browser(chromium: None) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))  # a path: no Selenium Manager
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


# -- the admin app, for real ------------------------------------------------------------


@dataclass(frozen=True)
class Admin:
    base: str
    db: str

    def stored_keys(self) -> list[str]:
        """Every live key, straight from the database: what an upload did or did not store."""

        async def keys() -> list[str]:
            async with open_store(self.db) as store:
                return [meta.key for meta in await store.list(limit=10_000)]

        return asyncio.run(keys())


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    """``python -m uvicorn examples.admin.app:app`` on a free loopback port, a fresh database and cache dir."""
    tmp = tmp_path_factory.mktemp("admin")
    port = free_port()
    running = Admin(f"http://127.0.0.1:{port}", f"sqlite:///{tmp / 'files.db'}")
    env = {**os.environ, "SERVEFILES_DB": running.db, "SERVEFILES_CACHE_DIR": str(tmp / "cache")}
    env.update(ADMIN_PASSWORD=PASSWORD)
    env.pop("ADMIN_SECRET", None)
    log = tmp / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "examples.admin.app:app", "--host", "127.0.0.1", "--port", str(port)]
    with listening(command, port, log, cwd=ROOT, env=env, ready_path="/admin/login", what="the admin app"):
        yield running
    output = log.read_text(errors="replace")
    assert "Application shutdown complete." in output, output
    assert "Traceback" not in output and "ERROR" not in output, output


@contextlib.contextmanager
def session(admin: Admin) -> Iterator[httpx.Client]:
    """An httpx client logged in through the form, sending this site's Origin as a browser does."""
    with httpx.Client(base_url=admin.base, headers={"Origin": admin.base}, timeout=10) as client:
        response = client.post("/admin/login", data={"password": PASSWORD})
        assert response.status_code == 303 and response.headers["location"] == "/admin/", response.text
        yield client


# -- in the browser ---------------------------------------------------------------------


def test_log_in_upload_see_thumbnail_and_delete(admin: Admin, browser: webdriver.Chrome, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, WAIT)
    image = png(16, 16)
    name = f"sunset-{os.urandom(4).hex()}.png"
    key = f"blog/{name}"
    (tmp_path / name).write_bytes(image)

    browser.get(f"{admin.base}/admin/")
    assert browser.current_url == f"{admin.base}/admin/login"
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.XPATH, "//button[text()='Log in']").click()
    wait.until(expected_conditions.url_to_be(f"{admin.base}/admin/"))
    cookie = browser.get_cookie("admin_session")
    assert cookie is not None and (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/admin")
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script sees it

    browser.find_element(By.NAME, "folder").send_keys("blog")
    browser.find_element(By.NAME, "file").send_keys(str(tmp_path / name))
    browser.find_element(By.XPATH, "//button[text()='Upload']").click()
    wait.until(expected_conditions.text_to_be_present_in_element(STATUS, f"Uploaded {key}."))
    row = browser.find_element(By.XPATH, f"//tr[td/a[text()='{key}']]")
    assert row.find_element(By.TAG_NAME, "a").get_attribute("href") == f"{admin.base}/media/{key}"
    assert [cell.text for cell in row.find_elements(By.TAG_NAME, "td")[2:4]] == [str(len(image)), "image/png"]
    thumbnail = row.find_element(By.TAG_NAME, "img")
    natural_width = "return arguments[0].complete ? arguments[0].naturalWidth : 0"
    wait.until(lambda driver: driver.execute_script(natural_width, thumbnail) == 16, "the thumbnail did not load")

    served = httpx.get(f"{admin.base}/media/{key}")
    assert served.status_code == 200
    assert served.content == image
    assert served.headers["content-type"] == "image/png"
    assert served.headers["etag"] == '"' + hashlib.sha256(image).hexdigest() + '"'

    row.find_element(By.XPATH, f".//form[input[@name='key' and @value='{key}']]//button").click()
    wait.until(expected_conditions.text_to_be_present_in_element(STATUS, f"Deleted {key}."))
    assert browser.find_elements(By.XPATH, f"//a[text()='{key}']") == []
    assert httpx.get(f"{admin.base}/media/{key}").status_code == 404
    assert key not in admin.stored_keys()


# -- over HTTP, what a browser would not send --------------------------------------------


def test_admin_pages_need_the_session_cookie(admin: Admin) -> None:
    with httpx.Client(base_url=admin.base, headers={"Origin": admin.base}) as client:
        for method, path in (("GET", "/admin/"), ("GET", "/admin/anything"), ("POST", "/admin/delete")):
            response = client.request(method, path, data={"key": "blog/x"} if method == "POST" else None)
            assert (response.status_code, response.headers["location"]) == (303, "/admin/login"), path
        login = client.get("/admin/login")
    assert login.status_code == 200
    assert login.headers["content-security-policy"].startswith(
        "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'"
    )
    assert login.headers["x-content-type-options"] == "nosniff"


def test_the_session_cookie_is_httponly_strict_and_scoped_and_logout_drops_it(admin: Admin) -> None:
    with session(admin) as client:
        login = client.post("/admin/login", data={"password": PASSWORD})
        attributes = {part.strip().lower() for part in login.headers["set-cookie"].split(";")}
        assert {"httponly", "samesite=strict", "path=/admin"} <= attributes, attributes
        logout = client.post("/admin/logout")
        assert (logout.status_code, logout.headers["location"]) == (303, "/admin/login")
        assert "max-age=0" in logout.headers["set-cookie"].lower()
        assert client.get("/admin/").status_code == 303


def test_a_wrong_password_is_refused_and_sets_no_cookie(admin: Admin) -> None:
    with httpx.Client(base_url=admin.base, headers={"Origin": admin.base}) as client:
        response = client.post("/admin/login", data={"password": PASSWORD + "!"})
        assert response.status_code == 403
        assert "Wrong password." in response.text
        assert "set-cookie" not in response.headers
        assert client.get("/admin/").status_code == 303


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Referer": "http://evil.example/page"}, {}],
    ids=["foreign-origin", "null-origin", "foreign-referer", "neither"],
)
def test_a_cross_site_post_is_refused_and_stores_nothing(admin: Admin, headers: dict[str, str]) -> None:
    key = f"csrf/{os.urandom(4).hex()}.txt"
    with session(admin) as client:
        del client.headers["Origin"]
        refused = client.post(
            "/admin/upload", data={"folder": "csrf"}, files={"file": (key[5:], b"x")}, headers=headers
        )
        assert refused.status_code == 403
        assert key not in admin.stored_keys()
        assert client.get("/admin/").status_code == 200  # still logged in: only the request was refused
        # The same request from the site itself goes through (the refusal was the origin's).
        same_site = client.post(
            "/admin/upload", data={"folder": "csrf"}, files={"file": (key[5:], b"x")}, headers={"Origin": admin.base}
        )
        assert same_site.status_code == 303
        assert key in admin.stored_keys()


@pytest.mark.parametrize(
    ("folder", "filename", "content_type"),
    [
        ("../<b>x", "evil.png", "image/png"),
        ("blog\x01", "evil.png", "image/png"),
        ("blog", "evil.png", "image/<script>"),
    ],
    ids=["dot-dot-segment", "control-character", "bad-content-type"],
)
def test_a_rejected_upload_is_a_400_with_the_escaped_error(
    admin: Admin, folder: str, filename: str, content_type: str
) -> None:
    before = admin.stored_keys()
    with session(admin) as client:
        files = {"file": (filename, png(2, 2), content_type)}
        response = client.post("/admin/upload", data={"folder": folder}, files=files)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "<b>" not in response.text and "<script>" not in response.text and "\x01" not in response.text
    key = f"{folder}/{filename}"
    assert html.escape(f"Could not upload {key!r}: ") in response.text  # repr: the control character as \x01
    assert admin.stored_keys() == before


def test_an_html_upload_is_served_as_an_attachment(admin: Admin) -> None:
    page = b"<!doctype html><script>alert(document.domain)</script>"
    with session(admin) as client:
        response = client.post(
            "/admin/upload", data={"folder": "pages"}, files={"file": ("hi.html", page, "text/html")}
        )
        assert (response.status_code, response.headers["location"]) == (303, "/admin/?uploaded=pages%2Fhi.html")
        served = client.get("/media/pages/hi.html")
    assert served.status_code == 200 and served.content == page
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["x-content-type-options"] == "nosniff"


def test_the_listing_pages_fifty_at_a_time(admin: Admin) -> None:
    keys = [f"paged/{number:03}.txt" for number in range(51)]

    async def upload() -> None:
        async with open_store(admin.db) as store:
            for key in keys:
                await store.put(key, b"page")

    asyncio.run(upload())
    with session(admin) as client:
        first = client.get("/admin/", params={"prefix": "paged/"})
        assert first.text.count('action="/admin/delete"') == 50
        assert 'href="/admin/?prefix=paged%2F&amp;after=paged%2F049.txt">Next page' in first.text
        second = client.get("/admin/", params={"prefix": "paged/", "after": "paged/049.txt"})
    assert second.text.count('action="/admin/delete"') == 1 and ">paged/050.txt</a>" in second.text
    assert "Next page" not in second.text


def test_it_refuses_to_start_without_a_password() -> None:
    env = {name: value for name, value in os.environ.items() if name != "ADMIN_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-c", "import examples.admin.app"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "ADMIN_PASSWORD is not set" in result.stderr
