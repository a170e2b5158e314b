"""How a reply's body goes out: the one sending decision both adapters carry out.

:func:`plan` looks at a :class:`~servefiles.service.Reply` once and says which way its body
takes — ``whole`` (one piece of bytes: a HEAD's nothing, an error page, a memory hit),
``file`` (a cache file the server sends itself by path: ASGI ``http.response.pathsend``,
WSGI ``wsgi.file_wrapper``/sendfile), ``sendfile`` (the open cache file handed to a server
that sends it with ``sendfile(2)``: ASGI ``http.response.zerocopysend``, only when all of it
is in the page cache), ``read`` (a cache file of at most :data:`ONE_MESSAGE_BYTES`, read
whole and sent as one message, as a memory hit is) or ``stream`` (segment by segment, chunk
by chunk) — and how many body bytes the hand-over counts. The ASGI and WSGI adapters only
carry the plan out with their own I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import pagecache
from ..bodies import DiskBody, MemoryBody
from ..http import ByteRange
from ..service import Reply


@dataclass(frozen=True, slots=True)
class Plan:
    """``way``: how the body goes out; ``data``: the whole body for ``whole``; ``counted``: the
    body bytes that count as sent at hand-over (a file or a memory hit; a stream counts its
    chunks as the server takes them, and error pages count nothing)."""

    way: Literal["whole", "file", "sendfile", "read", "stream"]
    data: bytes = b""
    counted: int = 0


HEAD_PLAN = Plan("whole")
ONE_MESSAGE_BYTES = 1024 * 1024
"""A whole cache file up to this size is read in one go and sent as one message, as a memory hit
is: a message per block costs a server send, a loop turn and a disconnect watch each, and a client
that leaves cannot waste more than this. Measured (benchmarks.compare, 2026-11-30, 1 MiB disk hits
under uvicorn): 1,910-1,948 requests/s as one message, 1,684-1,735 in 256 KiB messages — once the
read went into a reused buffer (fill._scratch); into a fresh 1 MiB buffer per read it was 830."""

SENDFILE_MIN_BYTES = 64 * 1024
"""A smaller cache file is read and sent as bytes even where the server offers ``sendfile``: its
copy costs less than asking the page cache (a ``cachestat`` call, about 4 µs) and the loop turn
that lets the head go out first."""


def plan(
    reply: Reply, method: str, server_sends_files: bool, reads_whole: bool = False, zero_copy: bool = False
) -> Plan:
    """The way ``reply``'s body goes out. ``server_sends_files``: the server can send a file
    itself by path (pathsend, a file wrapper); ``zero_copy``: it can send an open file with
    ``sendfile(2)`` on the event loop (zerocopysend), which is used for a whole file of at least
    :data:`SENDFILE_MIN_BYTES` all in the page cache (:func:`servefiles.pagecache.cached`: a page
    read from the disk would stall the loop); ``reads_whole``: the adapter can read a small cache
    file whole (``read``). A HEAD has the headers of a GET and never a body (RFC 9110 §9.3.2)."""
    response, body = reply.response, reply.body
    segments = response.body
    if method == "HEAD":
        return HEAD_PLAN
    if type(body) is MemoryBody and response.status == 200 and len(segments) == 1:
        return Plan("whole", body.data, len(body.data))  # the hot path, first: one message
    if body is None or not any(isinstance(segment, ByteRange) for segment in segments):
        return Plan("whole", b"".join(segment for segment in segments if isinstance(segment, bytes)))
    if response.status == 200 and len(segments) == 1:
        whole = segments[0]
        if isinstance(body, DiskBody) and isinstance(whole, ByteRange):
            size = whole.end - whole.start
            if server_sends_files:
                return Plan("file", counted=size)
            if zero_copy and size >= SENDFILE_MIN_BYTES and pagecache.cached(body.fd, whole.start, whole.end):
                return Plan("sendfile", counted=size)
            if reads_whole and size <= ONE_MESSAGE_BYTES:
                return Plan("read", counted=size)
    return Plan("stream")
