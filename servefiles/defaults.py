"""Every default servefiles ships with, each written once.

The command line, both adapters, the Django integration and the generated nginx block
all read their defaults from here, so ``servefiles serve``, ``ServeFiles(app, db)`` and
``servefiles nginx-config`` agree without anyone keeping copies in step. The ground
floor: this module imports nothing from servefiles. Sizes are in bytes, times in seconds.
"""

from __future__ import annotations

from typing import Final, Literal

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

# -- serving ----------------------------------------------------------------------------------

PREFIX: Final = "/media"
"""The URL prefix files are served under (``{PREFIX}/{key}``); Django's MEDIA_URL, when set, wins."""
CACHE_CONTROL: Final = "no-cache"
"""Keys are mutable URLs: a cache may store a file but must revalidate it (a cheap ETag/304)
before each reuse (RFC 9111 §5.2.2.4)."""
ACTIVE_CONTENT: Final[Literal["attachment", "sandbox"]] = "attachment"
"""HTML, SVG, XML and JavaScript uploads are downloaded, never rendered on the app's origin."""
MAX_UPLOAD_BYTES: Final = 1 * GiB
"""The largest upload over HTTP; a bigger one gets 413 and stores nothing."""
URL_EXPIRES: Final = 3600
"""Life of a private file's URL signed by ``url(key)`` with no expiry given (Django's ``URL_EXPIRES``)."""
MAX_URL_EXPIRES: Final = 7 * 86400
"""The longest life a signed URL may be given or accepted with (S3's presigned-URL limit): a leaked
URL stops working within a week even when its signer meant otherwise."""

# -- caches -----------------------------------------------------------------------------------

MEMORY_BYTES: Final = 16 * MiB
"""The memory tier's budget for small hot files. Small, because the page cache keeps a hot disk
tier in memory anyway (a disk hit costs tens of µs more than a memory hit) while every MiB here
is resident. On the long-tail workload (benchmarks/RESULTS.md, 2026-11-30), peak RSS was
140-146 MiB at 64 MiB, 106-112 MiB at 32 MiB and 96-104 MiB at 16 MiB, with requests/s
within the run-to-run noise of each other (16 MiB was the fastest of the three runs)."""
MEMORY_FILE_BYTES: Final = 256 * KiB
"""The largest file the memory tier keeps."""
DISK_BYTES: Final = 1 * GiB
"""The disk tier's budget; least recently used files are evicted beyond it."""
FRESHNESS_SECONDS: Final = 1.0
"""How long a cached file is served before its version is checked again while the change feed is down."""
FILL_WAIT_SECONDS: Final = 10.0
"""How long a request waits for another process's fill of the same file before reading the store itself."""
FEED: Final = True
"""Follow the store's change feed: while it is healthy, hits need no query at all."""
FEED_POLL_SECONDS: Final = 0.2
"""How often a store that cannot notify (SQLite) is asked for changes."""
FEED_CHECK_SECONDS: Final = 5.0
"""How often an idle notifying feed (PostgreSQL) checks its connection."""
CACHE_MIN_USES: Final = 2
"""Once the disk tier is full, a file enters it on its 2nd request within the admission window
(nginx's ``proxy_cache_min_uses``); until then it is served from the store fetch and written
nowhere. While the tier has room, every file is written through on its first request (the
write evicts nothing). 1 writes every file through on its first request, full or not."""
PREFETCH: Final = False
"""Fetch new versions as soon as they are announced, so even first requests hit the disk."""

# -- the standalone server (servefiles serve) -------------------------------------------------

HOST: Final = "127.0.0.1"
PORT: Final = 8000
MAX_FIELD_LINE: Final = 8 * KiB
"""The largest header field line, ``name: value`` (nginx's ``large_client_header_buffers`` size)."""
MAX_HEADER_BLOCK: Final = 32 * KiB
"""The largest header block, all field lines with their CRLFs (nginx's 4 buffers)."""
MAX_FIELDS: Final = 100
"""The most header fields one request may carry."""
MAX_TARGET: Final = 8 * KiB
"""The longest request-target, path and query as sent."""
