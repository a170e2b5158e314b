"""nginx in front: the ``X-Accel-Redirect`` reply that hands a decided 200 to nginx."""

from __future__ import annotations

from ..http.model import ZERO_LENGTH, Response
from ..http.read import PreparedFile, stated

__all__ = ["ACCEL_BLOCKERS", "accel_redirect"]

ACCEL_BLOCKERS = frozenset(("if-match", "if-unmodified-since", "range", "if-range"))
"""Requests carrying these are answered by servefiles itself, never handed to nginx: nginx
would judge them against its own validators (mtime and size), not the content hash."""


def accel_redirect(file: PreparedFile, target: str, now: float | None = None) -> Response:
    """A 200 whose bytes nginx sends from ``target``, an internal location (``X-Accel-Redirect``).

    servefiles has already decided it is a 200 (preconditions evaluated); nginx keeps
    Content-Type, Content-Disposition, Cache-Control and Accept-Ranges from this
    response and sets ETag, Last-Modified, nosniff and the CSP from it as the generated
    internal location says. The body here is empty; nginx replaces it. ``now`` as for
    :func:`servefiles.http.read.respond`: nginx stamps Date after this decision, so no
    Last-Modified it passes on is later than that Date.
    """
    headers = [header for header in file.headers_200 if header[0] != b"content-length"]
    stated(headers, file, now)
    return Response(200, [*headers, ZERO_LENGTH, (b"x-accel-redirect", target.encode("ascii"))])
