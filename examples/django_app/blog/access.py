"""Who may read the members' files (``SERVEFILES["PRIVATE"]``): logged-in users.

servefiles calls :func:`logged_in` for every request of a key under ``members/``, in the
request's own thread, before it looks the file up; anything but ``True`` is a 403.
"""

from typing import Any

from django.contrib.auth import get_user
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.wsgi import WSGIRequest
from django.db import close_old_connections
from django.http import HttpResponse


def logged_in(environ: dict[str, Any], key: str) -> bool:
    """servefiles' ``authorize`` hook: whether the session cookie is a logged-in user's.

    The request never reaches Django's middleware (servefiles answers it), so the session is
    read here the way SessionMiddleware and AuthenticationMiddleware would."""
    request = WSGIRequest(environ)
    SessionMiddleware(lambda request: HttpResponse()).process_request(request)
    try:
        return bool(get_user(request).is_authenticated)
    finally:
        close_old_connections()  # as at the end of a Django request: this thread's connection is not kept
