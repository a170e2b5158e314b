"""What the ASGI and WSGI adapters share: their options, how those become a
:class:`FileService` and a :class:`WriteApi`, and which request goes where.

So both adapters take the same arguments and route the same way; they differ
only in how bytes move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from .. import config
from ..access import AccessPolicy, Decision, with_cache_control
from ..api import FilesApi
from ..auth import TokenRing, UploadToken
from ..defaults import ACTIVE_CONTENT, CACHE_CONTROL, MAX_UPLOAD_BYTES, MAX_URL_EXPIRES, URL_EXPIRES
from ..http import HttpPolicy
from ..http.replies import forbidden, health, internal_error, metrics, ready
from ..keys import canonical_key
from ..nginx import ACCEL_LOCATION
from ..nginx.accel import AccelLayer
from ..nginx.tree import PublishedTree
from ..probes import health_report, readiness, ready_report
from ..service import CacheSettings, FileService, Reply
from ..signing import Signer
from ..store import Store
from ..write_api import WriteApi

HEALTH_PATH = "/_servefiles/health"
READY_PATH = "/_servefiles/ready"
METRICS_PATH = "/_servefiles/metrics"
Route = Literal["files", "writes", "health", "ready", "metrics", "app"]
Probe = Literal["health", "ready", "metrics"]
PROBE_PATHS: dict[str, Probe] = {HEALTH_PATH: "health", READY_PATH: "ready", METRICS_PATH: "metrics"}
"""What the admin listener answers (:meth:`Mount.admin_route`); the public one, metrics only with ``metrics``."""


class Options(TypedDict, total=False):
    """The keyword options of :class:`ServeFiles` and :class:`ServeFilesWSGI` (defaults in brackets).

    ``read_db``: a PostgreSQL read replica for content fetches [None].
    ``cache_control`` ["no-cache"]; ``active_content``: "attachment" or "sandbox".
    ``memory_bytes`` [16 MiB], ``memory_file_bytes`` [256 KiB], ``disk_bytes`` [1 GiB].
    ``freshness_seconds`` [1.0]: revalidation interval while the change feed is down.
    ``fill_wait_seconds`` [10], ``feed`` [True], ``feed_poll_seconds`` [0.2],
    ``feed_check_seconds`` [5], ``prefetch`` [False], ``metrics`` [False].
    ``cache_min_uses`` [2]: once the disk tier is full, a file is written to it on its 2nd miss
    within the admission window, served from the store fetch alone before that (while the tier
    has room, on its first); 1 writes every miss.
    ``upload_tokens`` [none: read-only], ``max_upload_bytes`` [1 GiB].
    ``nginx`` [None]: "accel" or "tree" when nginx runs in front with the block
    ``servefiles nginx-config`` prints; "tree" also needs ``publish_dir``.
    ``private`` [none]: folders whose files need a signed URL, the ``authorize`` hook or an
    upload token for that folder (:mod:`servefiles.access`). ``signing_keys`` [none]: secrets
    of at least 32 random bytes; the first signs, all verify. ``authorize`` [None]:
    ``authorize(request, key) -> bool`` (async allowed under ASGI; the request is the ASGI
    scope or WSGI environ). ``url_expires`` [3600]: life in seconds of a private key's URL from
    ``url(key)``; ``max_url_expires`` [7 days]: the longest life a signed URL may have.
    """

    read_db: str | None
    cache_control: str
    active_content: Literal["attachment", "sandbox"]
    memory_bytes: int
    memory_file_bytes: int
    disk_bytes: int
    freshness_seconds: float
    fill_wait_seconds: float
    feed: bool
    feed_poll_seconds: float
    feed_check_seconds: float
    prefetch: bool
    cache_min_uses: int
    metrics: bool
    upload_tokens: Iterable[str | UploadToken]
    max_upload_bytes: int
    nginx: Literal["accel", "tree"] | None
    publish_dir: str | Path | None
    private: Iterable[str]
    signing_keys: Iterable[str | bytes]
    authorize: Callable[[Any, str], Any] | None
    url_expires: int
    max_url_expires: int


@dataclass
class Mount:
    """A configured servefiles under one prefix."""

    service: FileService
    files: FilesApi
    writes: WriteApi
    prefix: str
    metrics: bool
    accel: AccelLayer | None = None
    """nginx in front (``nginx="accel"`` or ``"tree"``): the layer that answers with X-Accel-Redirect."""
    access: AccessPolicy | None = None
    """Private folders (None: every file is public, and no request is checked)."""

    async def serve(
        self,
        method: str,
        raw_key: str,
        headers: Mapping[str, str],
        access: Decision | None = None,
        *,
        asked: bool = False,
    ) -> Reply:
        """The reply to a request for a file: the file service's, through the accel layer if any.

        ``access``: the access check's final decision for a GET or HEAD of a private key (None: a
        public key). A refusal or a failed hook is answered here, before any tier or the store is
        asked; a grant is served as any file, with the private Cache-Control. ``asked``: the caller
        just had None from :meth:`cached` for this request, which is then not tried again."""
        if access is None:
            return await (self.accel or self.service).serve(method, raw_key, headers, asked=asked)
        if access.kind != "granted":
            return self._refused(access)
        reply = await (self.accel or self.service).serve(method, raw_key, headers, asked=asked)
        with_cache_control(reply.response, access.cache_control)
        return reply

    def cached(
        self, method: str, raw_key: str, headers: Mapping[str, str], access: Decision | None = None
    ) -> Reply | None:
        """:meth:`serve`'s reply when it needs no event loop — a refusal, or a fresh cached copy
        (:meth:`FileService.cached`, :meth:`AccelLayer.cached`) — else None. Safe on any thread:
        the WSGI adapter calls it on the request's own thread first."""
        if access is None:
            return (self.accel or self.service).cached(method, raw_key, headers)
        if access.kind != "granted":
            return self._refused(access)
        reply = (self.accel or self.service).cached(method, raw_key, headers)
        if reply is not None:
            with_cache_control(reply.response, access.cache_control)
        return reply

    def _refused(self, access: Decision) -> Reply:
        """The reply to a read the access check did not grant: 403 when refused, 500 when the hook failed."""
        if access.kind == "refused":
            self.service.metrics.rejected["private"].inc()
            return Reply(forbidden(access.expired))
        return Reply(internal_error())

    def url(self, key: str, expires_in: float | None = None) -> str:
        """The path ``key`` is served at, percent-encoded, signed as :meth:`AccessPolicy.url` says."""
        key = canonical_key(key)
        plain = self.writes.url(key)
        return plain if self.access is None else self.access.url(key, plain, expires_in)

    def route(self, method: str, path: str) -> tuple[Route, str]:
        """Where a request goes, and the raw key for the first two: the one routing rule of both adapters."""
        under = self.writes.prefix + "/"
        if path.startswith(under):
            raw_key = path[len(under) :]
            return ("writes" if self.writes.handles(method, raw_key) else "files"), raw_key
        if path == HEALTH_PATH:
            return "health", ""
        if path == READY_PATH:
            return "ready", ""
        if path == METRICS_PATH and self.metrics:
            return "metrics", ""
        return "app", ""

    @staticmethod
    def admin_route(path: str) -> Probe | None:
        """The admin listener's routing: health, ready and metrics; None for anything else (a 404)."""
        return PROBE_PATHS.get(path)

    async def probe(self, route: Probe, authorization: str | None, *, admin: bool = False) -> Reply:
        """The reply to a probe or a scrape (:mod:`servefiles.probes`): detailed on the admin listener
        (``admin``) or for a request carrying a valid upload token, status and reason otherwise.
        Runs on the event loop: it reads the loop's objects (and may begin a start-up)."""
        if route == "metrics":
            return Reply(metrics(self.service.metrics.render()))
        detailed = admin or (
            authorization is not None and isinstance(self.writes.tokens.authenticate(authorization), UploadToken)
        )
        levels = self.service.runtime.probe()
        if route == "health":
            return Reply(health(health_report(levels, detailed)))
        verdict = readiness(levels)
        return Reply(ready(verdict.ready, ready_report(levels, verdict, detailed)))


def normal_prefix(prefix: str) -> str:
    """``media``, ``/media/`` -> ``/media``."""
    return "/" + prefix.strip("/")


def mount(db: str | Store, prefix: str, cache_dir: str | Path | None, options: Options) -> Mount:
    """Build the service and the write API from the adapters' arguments."""
    unknown = set(options) - set(Options.__annotations__)
    if unknown:
        raise TypeError(f"unknown servefiles option(s): {', '.join(sorted(unknown))}")
    defaults = CacheSettings()
    tokens = TokenRing(options.get("upload_tokens", ()))
    prefix = normal_prefix(prefix)
    nginx, publish_dir = options.get("nginx"), options.get("publish_dir")
    if nginx not in (None, "accel", "tree"):
        raise ValueError(f"nginx must be 'accel', 'tree' or None, not {nginx!r}")
    if nginx == "tree" and publish_dir is None:
        raise ValueError("nginx='tree' needs publish_dir: the directory nginx serves published files from")
    service = FileService(
        db,
        Path(cache_dir) if cache_dir is not None else config.default_cache_dir(),
        HttpPolicy(
            cache_control=options.get("cache_control", CACHE_CONTROL),
            active_content=options.get("active_content", ACTIVE_CONTENT),
            allow="GET, HEAD, PUT, DELETE" if tokens else "GET, HEAD",
        ),
        CacheSettings(
            memory_bytes=options.get("memory_bytes", defaults.memory_bytes),
            memory_file_bytes=options.get("memory_file_bytes", defaults.memory_file_bytes),
            disk_bytes=options.get("disk_bytes", defaults.disk_bytes),
            freshness_seconds=options.get("freshness_seconds", defaults.freshness_seconds),
            fill_wait_seconds=options.get("fill_wait_seconds", defaults.fill_wait_seconds),
            feed=options.get("feed", defaults.feed),
            feed_poll_seconds=options.get("feed_poll_seconds", defaults.feed_poll_seconds),
            feed_check_seconds=options.get("feed_check_seconds", defaults.feed_check_seconds),
            prefetch=options.get("prefetch", defaults.prefetch),
            cache_min_uses=options.get("cache_min_uses", defaults.cache_min_uses),
        ),
        read_url=options.get("read_db"),
    )
    accel = None
    if nginx is not None:
        tree = PublishedTree(Path(publish_dir), prefix) if nginx == "tree" and publish_dir is not None else None
        accel = AccelLayer(service, ACCEL_LOCATION, tree)
    files = FilesApi(service.runtime)
    writes = WriteApi(files, tokens, options.get("max_upload_bytes", MAX_UPLOAD_BYTES), prefix)
    access = _access(options, prefix, tokens, service.policy.cache_control)
    if access and accel is not None and accel.tree is not None:
        accel.tree.private = access.folders
    return Mount(service, files, writes, prefix, options.get("metrics", False), accel, access)


def _access(options: Options, prefix: str, tokens: TokenRing, cache_control: str) -> AccessPolicy | None:
    """The access policy the private options describe: None when there is nothing to check
    or sign (no private folder, no signing key)."""
    if isinstance(options.get("private", ()), str) or isinstance(options.get("signing_keys", ()), str | bytes):
        raise TypeError("private and signing_keys take a list (a lone string would be split into characters)")
    private = list(options.get("private", ()))
    keys = list(options.get("signing_keys", ()))
    authorize = options.get("authorize")
    if authorize is not None and not callable(authorize):
        raise TypeError("authorize must be a callable: authorize(request, key) -> bool")
    if authorize is not None and not private:
        raise ValueError("authorize runs for private keys only: name the private folders too (private=[...])")
    if not private and not keys:
        return None
    max_expires = options.get("max_url_expires", MAX_URL_EXPIRES)
    signer = Signer(keys, prefix, max_expires) if keys else None
    url_expires = options.get("url_expires", min(URL_EXPIRES, max_expires))  # a shorter maximum shortens the default
    return AccessPolicy(private, signer, tokens, authorize, cache_control, url_expires)
