"""A blog's admin pages on Starlette: log in, upload, list and delete the files servefiles serves."""

from __future__ import annotations

import hashlib
import hmac
import html
import os
import secrets
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from servefiles import FileMeta, InvalidContentType, InvalidKey, ServeFiles, StoreUnavailable, config

DB_URL = os.environ.get("SERVEFILES_DB") or config.default_db_url()
CACHE_DIR = os.environ.get("SERVEFILES_CACHE_DIR") or None  # None: servefiles' default cache dir
PASSWORD = os.environ.get("ADMIN_PASSWORD", "")
if not PASSWORD:
    raise RuntimeError("ADMIN_PASSWORD is not set: the admin example will not start without a password")
# A fixed ADMIN_SECRET keeps sessions valid across restarts and worker processes; without it,
# each process makes its own and a restart logs everyone out.
SECRET = os.environ.get("ADMIN_SECRET", "").encode() or secrets.token_bytes(32)
SESSION = hmac.new(SECRET, b"servefiles example admin session", hashlib.sha256).hexdigest()
COOKIE = "admin_session"
LOGIN = "/admin/login"
PAGE_SIZE = 50
SECURITY_HEADERS = {
    # No script at all; images and forms only from this site; never framed (clickjacking).
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
STYLE = "body{font:15px sans-serif;margin:2em}td{padding:.2em .6em}img{max-height:64px}.error{color:#b00}"


def page(body: str, status: int = 200) -> HTMLResponse:
    """Every admin page: ``body`` must already be escaped."""
    return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>Admin</title><style>{STYLE}</style>{body}", status)


def same_origin(request: Request) -> bool:
    """Whether a POST comes from one of this site's pages: Origin (Referer when there is none)
    names the host the request was sent to. Browsers send Origin with every POST."""
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    netloc = urlsplit(source).netloc.lower()
    return netloc != "" and netloc == request.headers.get("host", "").lower()


def logged_in(request: Request) -> bool:
    return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), SESSION.encode())


async def guard(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """Every request to the app passes here: a POST from another site is refused (CSRF, on top of
    SameSite=Strict), only the login page is open without the session cookie, and every
    response gets the security headers."""
    if request.method == "POST" and not same_origin(request):
        response: Response = page('<p class="error">Cross-site request refused.</p>', 403)
    elif request.url.path != LOGIN and not logged_in(request):
        response = RedirectResponse(LOGIN, 303)
    else:
        response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    return response


def login_page(error: str = "", status: int = 200) -> HTMLResponse:
    return page(
        f'<h1>Admin</h1>{error}<form method="post" action="{LOGIN}">'
        '<label>Password <input type="password" name="password" required autofocus></label> '
        "<button>Log in</button></form>",
        status,
    )


async def login_form(request: Request) -> Response:
    return login_page()


async def login(request: Request) -> Response:
    """The right password gets the session cookie: HttpOnly (no script reads it), SameSite=Strict
    (no other site's page sends it), only sent to /admin (not to /media, nor the blog)."""
    async with request.form() as form:
        given = str(form.get("password") or "")
    if not hmac.compare_digest(given.encode(), PASSWORD.encode()):
        return login_page('<p class="error">Wrong password.</p>', 403)
    response = RedirectResponse("/admin/", 303)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, SESSION, httponly=True, samesite="strict", path="/admin", secure=secure)
    return response


async def logout(request: Request) -> Response:
    """Forget the cookie in this browser (the session value itself lives until the secret changes)."""
    response = RedirectResponse(LOGIN, 303)
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict")
    return response


def file_row(meta: FileMeta, prefix: str) -> str:
    url, key = html.escape(files.url(meta.key)), html.escape(meta.key)
    thumbnail = f'<img src="{url}" alt="">' if meta.content_type.startswith("image/") else ""
    return (
        f'<tr><td>{thumbnail}</td><td><a href="{url}">{key}</a></td><td>{meta.size}</td>'
        f"<td>{html.escape(meta.content_type)}</td>"
        f'<td><form method="post" action="/admin/delete"><input type="hidden" name="key" value="{key}">'
        f'<input type="hidden" name="prefix" value="{html.escape(prefix)}">'
        f'<button aria-label="Delete {key}">Delete</button></form></td></tr>'
    )


async def listing(prefix: str = "", after: str | None = None, notice: str = "", status: int = 200) -> Response:
    """The admin page: one page of files under ``prefix``, the upload form, and ``notice`` (escaped here)."""
    found = await files.list(prefix, PAGE_SIZE, after or None)
    rows = "".join(file_row(meta, prefix) for meta in found) or '<tr><td colspan="5">No files.</td></tr>'
    more = ""
    if len(found) == PAGE_SIZE:
        next_page = html.escape(urlencode({"prefix": prefix, "after": found[-1].key}))
        more = f'<p><a href="/admin/?{next_page}">Next page</a>'
    css_class = "error" if status >= 400 else "notice"
    message = f'<p class="{css_class}" role="status">{html.escape(notice)}</p>' if notice else ""
    return page(
        f'<h1>Files</h1>{message}<form method="post" action="/admin/upload" enctype="multipart/form-data">'
        '<label>Folder <input name="folder" placeholder="blog"></label> '
        '<label>File <input type="file" name="file" required></label> <button>Upload</button></form>'
        f'<form method="get" action="/admin/"><label>Prefix <input name="prefix" value="{html.escape(prefix)}">'
        "</label> <button>Filter</button></form>"
        f"<table><tr><th></th><th>Key</th><th>Size</th><th>Type</th><th></th></tr>{rows}</table>{more}"
        '<form method="post" action="/admin/logout"><button>Log out</button></form>',
        status,
    )


async def index(request: Request) -> Response:
    query = request.query_params
    notice = ""
    if "uploaded" in query:
        notice = f"Uploaded {query['uploaded']}."
    elif "deleted" in query:
        notice = f"Deleted {query['deleted']}."
    elif "missing" in query:
        notice = f"{query['missing']} was already gone."
    return await listing(query.get("prefix", ""), query.get("after"), notice)


async def upload(request: Request) -> Response:
    """Store the upload as ``folder/filename``; the key gate decides what is acceptable. A refused
    name is shown with repr(), so a control character in it cannot reach the page."""
    async with request.form() as form:
        file, folder = form.get("file"), str(form.get("folder") or "").strip("/")
        if not isinstance(file, UploadFile) or not file.filename:
            return await listing(notice="Choose a file to upload.", status=400)
        key = f"{folder}/{file.filename}" if folder else file.filename
        try:
            meta = await files.put(key, file, file.content_type)
        except (InvalidKey, InvalidContentType) as exc:
            return await listing(notice=f"Could not upload {key!r}: {exc}", status=400)
    return RedirectResponse("/admin/?" + urlencode({"uploaded": meta.key}), 303)


async def delete(request: Request) -> Response:
    async with request.form() as form:
        key, prefix = str(form.get("key") or ""), str(form.get("prefix") or "")
    try:
        deleted = await files.delete(key)
    except InvalidKey as exc:
        return await listing(prefix, notice=f"Could not delete {key!r}: {exc}", status=400)
    return RedirectResponse("/admin/?" + urlencode({"prefix": prefix, "deleted" if deleted else "missing": key}), 303)


async def unavailable(request: Request, exc: Exception) -> Response:
    """The database is down: a clear 503 the admin can retry, not a 500."""
    response = page('<p class="error">The file store is unavailable; try again in a moment.</p>', 503)
    response.headers["Retry-After"] = "5"
    return response


admin = Starlette(
    routes=[
        Route(LOGIN, login_form, methods=["GET"]),
        Route(LOGIN, login, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"]),
        Route("/admin/", index, methods=["GET"]),
        Route("/admin/upload", upload, methods=["POST"]),
        Route("/admin/delete", delete, methods=["POST"]),
    ],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
    exception_handlers={StoreUnavailable: unavailable},
)

# /media/* is served by servefiles, to everyone; everything else, lifespan included, goes to the admin app.
app = files = ServeFiles(admin, db=DB_URL, prefix="/media", cache_dir=CACHE_DIR)
