"""nginx in front: ``X-Accel-Redirect`` as a layer in front of the file service.

:class:`AccelLayer` answers what nginx can send itself — with ``X-Accel-Redirect`` to
the published tree (tree mode: nginx judges preconditions and ranges against the tree
file) or to the disk tier's content file (a plain whole-file GET that servefiles has
judged) — and passes everything else to the :class:`~servefiles.service.FileService`
behind it, which never knows nginx exists. It keeps the published tree in step with the
service's life cycle and change feed through the runtime's hooks.

A miss is the file service's, as without nginx: streamed with servefiles' headers while it
is written through, never held back for the whole fill. Once that fill lands, the file is
published behind the reply, so the next request is nginx's alone. The first response thus
carries servefiles' ETag (the content hash) and later ones nginx's (``"mtime-size"``): a
client revalidating across that change re-downloads the same bytes once, and is never sent
a wrong byte (nginx's If-None-Match and If-Range never match the content hash).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Mapping
from urllib.parse import quote

from .. import http
from ..bodies import MemoryBody
from ..cache.disk import DiskEntry, content_name
from ..cache.fill import INLINE_WRITE_BYTES, Fill
from ..errors import InvalidKey, StoreUnavailable
from ..http import Header, PreparedFile
from ..keys import canonical_key
from ..service import PREPARED_CACHE_ENTRIES, FileService, Reply
from ..shared_lru import SharedLRU
from ..store.types import FileMeta
from ..threadwork import taken_on_thread
from .config import TREE_LOCATION
from .redirect import ACCEL_BLOCKERS, accel_redirect
from .tree import PublishedTree

logger = logging.getLogger("servefiles")

READ_CHECK_SECONDS = 2.0
"""How often tree mode looks for the published files nginx read (a stat-like open per disk entry,
on the loop in slices): a hot file is seen at least this often, however many times nginx sent it."""
READ_CHECK_SLICE = 128
"""Entries looked at between two turns of the event loop."""


class _Redirect:
    """What the redirect of one version needs, worked out once: the disk entry (its content file,
    for the ``lstat`` of each hit), the prepared headers, the internal location, and the redirect's
    headers (:func:`accel_redirect`) once its Last-Modified no longer depends on the clock."""

    __slots__ = ("_headers", "entry", "file", "location", "rendered")

    def __init__(self, entry: DiskEntry, file: PreparedFile, location: str) -> None:
        self.entry, self.file, self.location = entry, file, location
        self._headers: tuple[Header, ...] | None = None
        self.rendered: http.FieldLines | None = None
        """The headers as field lines, once they no longer depend on the clock."""

    def headers(self, now: float) -> list[Header]:
        """A fresh list of the redirect's headers at ``now`` (seconds since the epoch)."""
        held = self._headers
        if held is not None:
            return list(held)
        headers = accel_redirect(self.file, self.location, now).headers
        if now >= self.file.last_modified_epoch:  # stated() leaves Last-Modified as it is from now on
            self._headers = tuple(headers)
            self.rendered = http.FieldLines.render(self._headers)  # the same tuple, not a copy
        return headers


class AccelLayer:
    """``serve`` as :meth:`FileService.serve`, nginx sending the bytes where it can.

    ``accel_prefix`` is nginx's internal location over the disk tier's ``objects/``;
    ``tree``, with nginx's tree mode, the published tree that nginx serves by itself.
    """

    def __init__(self, files: FileService, accel_prefix: str, tree: PublishedTree | None = None) -> None:
        self.files = files
        self.accel_prefix = accel_prefix.rstrip("/") + "/"
        self.tree = tree
        self._withdrawing = 0
        """Withdrawals of the whole tree under way (in threads)."""
        self._outages = 0
        """Feed outages so far: a publish on a thread that overlapped one withdraws what it published."""
        self._gate = threading.Lock()
        self._closed = False
        """Set at close under ``_gate``: a publish under way then never lands after the
        close emptied the tree."""
        self._redirects: SharedLRU[str, _Redirect] = SharedLRU(PREPARED_CACHE_ENTRIES)
        """The redirect of each key's version served lately (:meth:`_redirect_of`)."""
        self._behind: dict[str, asyncio.Task[None]] = {}
        """Publishes waiting behind a miss's reply for its fill to land, by key (one at a time).
        Not cancelled at close: each ends with its fill, which the close ends, and then finds
        the feed gone."""
        if tree is not None:
            files.runtime.admission.hits_seen = False  # nginx answers the tree's hits itself
            tree.follow(files.disk)  # a key's link is withdrawn with every change of its disk entry
            hooks = files.runtime.hooks
            hooks.before_start.append(self._open_tree)
            hooks.after_start.append(lambda: files.runtime.spawn(self._follow_reads()))
            hooks.after_close.append(self._close_tree)
            hooks.feed_down.append(self._feed_down)

    def withdraw_tree(self) -> None:
        """Empty the published tree, which nginx serves without asking anyone: at start (a stopped
        or crashed run left it, nobody has vouched for it since, and the database may be
        unreachable), at close (nothing keeps it current any more) and while the feed is down.
        Keys are published again as they are asked for."""
        if self.tree is not None:
            self._withdrawing += 1  # a publish meanwhile goes to a thread: the tree's lock is busy
            try:
                self.tree.clear()
            finally:
                self._withdrawing -= 1

    def _open_tree(self) -> None:
        with self._gate:
            self._closed = False
            self.withdraw_tree()

    def _close_tree(self) -> None:
        with self._gate:
            self._closed = True
            self.withdraw_tree()

    async def _follow_reads(self) -> None:
        """Every :data:`READ_CHECK_SECONDS`, count the published files nginx read since the last
        look (:meth:`PublishedTree.read_since_checked`) as disk hits: recency for eviction and a
        sighting for admission, as if this process had served them. Runs until the runtime closes.

        On the loop, :data:`READ_CHECK_SLICE` entries at a time (a few µs each: an open and an
        ``fstat`` of a file whose inode is cached) with the loop free between slices: on a thread,
        the scan would hold the GIL for up to the switch interval (5 ms) at a time, and every
        request waiting on the loop would wait that long."""
        tree, files = self.tree, self.files
        assert tree is not None
        while True:
            await asyncio.sleep(READ_CHECK_SECONDS)
            metas = files.disk.metas()
            for start in range(0, len(metas), READ_CHECK_SLICE):
                try:
                    read = tree.read_since_checked(metas[start : start + READ_CHECK_SLICE])
                except Exception as exc:  # the tree unreadable now, say: the next look tries again
                    logger.debug("could not check the nginx tree for reads: %s", exc)
                    break
                for key in read:
                    files.disk.touch(key)
                    files.runtime.admission.seen(key)
                await asyncio.sleep(0)

    def _feed_down(self) -> None:
        self._outages += 1
        self.files.runtime.spawn(asyncio.to_thread(self.withdraw_tree))

    async def serve(self, method: str, raw_key: str, headers: Mapping[str, str], *, asked: bool = False) -> Reply:
        """The reply, counted once: nginx's redirect where it applies, else the file service's
        (a miss of a file for the tree is then published behind it: :meth:`_publish_behind`).
        ``asked``: as for :meth:`FileService.serve` (the caller just had None from :meth:`cached`)."""
        reply = None if asked else self.cached(method, raw_key, headers)
        if reply is not None:
            return reply
        if method in ("GET", "HEAD"):
            try:
                key = canonical_key(raw_key)
                if not self.files.runtime.running:
                    await self.files.start()
            except (InvalidKey, StoreUnavailable) as exc:
                return self.files.count(self.files.refused(exc))
            reply = await self._accelerated(method, headers, key)
        if reply is None:
            reply = await self.files.answer(method, raw_key, headers)
            self._publish_behind(method, reply)
        return self.files.count(reply)

    def cached(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply | None:
        """:meth:`serve`'s reply, counted, when a fresh cached copy answers it without the event loop
        (None: the loop's :meth:`serve` answers), as :meth:`FileService.cached` for the file service;
        safe on any thread. Accel mode only: in tree mode a request reaching servefiles is one to
        publish (on the loop), a miss, or a file nginx cannot send from the tree.

        A whole-file GET of a fresh disk copy is redirected to its content file once one ``lstat``
        finds it in place (a regular file of the indexed size) and this process has hashed that very
        file (the loop's path does it once, :meth:`DiskCache.check_whole`, on a thread for a file too
        large to read whole); any doubt — no such file, another size, a file not vouched for, a copy
        to revalidate — goes to the loop, which opens the file, drops a damaged one and refetches:
        nginx is never sent to a file that is missing or not the indexed one."""
        files = self.files
        if self.tree is not None:
            return None
        if method != "GET" or not ACCEL_BLOCKERS.isdisjoint(headers) or not files.runtime.running:
            return files.cached(method, raw_key, headers)  # servefiles answers these itself
        try:
            key = canonical_key(raw_key)
        except InvalidKey:
            return None
        meta = files.disk.held(key)
        if meta is None:
            return files.cached(method, raw_key, headers)  # a memory-only copy, a known absence
        if not files.view.fresh(key, meta.revision, time.monotonic()):
            return None
        redirect = self._redirect_of(meta)
        stamp = files.disk.in_place(redirect.entry)
        if stamp is None:
            return None
        if not files.disk.vouched(redirect.entry, stamp):
            return None  # a file this process has not hashed yet: the loop checks it once
        return files.count(self._redirect(headers, redirect))

    def _redirect_of(self, meta: FileMeta) -> _Redirect:
        """The redirect of ``meta``'s version, made once per version and kept (by key: one per key)."""
        held = self._redirects.get(meta.key)
        if held is not None and (held.entry.meta is meta or held.entry.meta == meta):
            return held
        files = self.files
        redirect = _Redirect(DiskEntry(meta, files.disk.content_path(meta.sha256)), files.prepared(meta),
                             self.accel_prefix + content_name(meta.sha256))  # fmt: skip
        self._redirects[meta.key] = redirect
        return redirect

    def _redirect(self, headers: Mapping[str, str], redirect: _Redirect) -> Reply:
        """The reply to a whole-file GET of a fresh, intact disk copy: the redirect to its content
        file, or the 304 or 412 its preconditions call for."""
        file, meta = redirect.file, redirect.entry.meta
        now = time.time()
        response = http.respond("GET", headers, file, now)
        if response.status != 200:
            return Reply(response, None, "disk", meta, file)
        self.files.disk.touch(meta.key)
        self.files.runtime.admission.seen(meta.key)
        return Reply(http.Response(200, redirect.headers(now)), None, "disk", meta, rendered=redirect.rendered)

    async def _accelerated(self, method: str, headers: Mapping[str, str], key: str) -> Reply | None:
        """The redirect of a request for a file on disk, or None where it does not apply or
        cannot be done (no disk copy: a miss; a HEAD or a range that is not for the tree; a copy
        of another version; the cache file damaged; the database down): the file service then
        answers, streaming a miss as it writes it through, or from a stale copy."""
        files, tree = self.files, self.tree
        if tree is None and (method != "GET" or any(name in headers for name in ACCEL_BLOCKERS)):
            return None
        entry = files.disk.get(key)
        if entry is None:
            return None  # the file service looks it up once: memory, known absence, the store
        if not files.view.fresh(key, entry.meta.revision, time.monotonic()):
            try:
                meta = await files.revalidate(key)
            except StoreUnavailable:
                return None
            if meta is None:
                return Reply(http.not_found())
            if entry.meta.revision != meta.revision:
                return None
        opened = files.disk.open_stamped(entry)
        if opened is None:
            return None  # damaged or gone: the file service refetches it
        fd, stamp = opened
        if files.memory.fits(entry.meta.size):
            if not files.disk.check_whole(entry, fd, stamp):
                return None  # damaged in place, and dropped: the file service refetches it
        elif files.disk.vouched(entry, stamp):
            os.close(fd)
        # check_whole closes fd: the work must run even if this request is cancelled, and it need not wait.
        elif not await taken_on_thread(functools.partial(files.disk.check_whole, entry, fd, stamp, small=False),
                                       _nothing_to_give_back):  # fmt: skip
            return None  # too large to hash on the loop; damaged, and dropped: refetched
        if tree is not None and tree.accepts(entry.meta) and await self._publish(entry):
            location = TREE_LOCATION + quote(entry.meta.key, safe="/")
            return Reply(accel_redirect(files.prepared(entry.meta), location, time.time()), None, "disk", entry.meta)
        if method != "GET" or any(name in headers for name in ACCEL_BLOCKERS):
            return None
        return self._redirect(headers, self._redirect_of(entry.meta))

    def _publish_behind(self, method: str, reply: Reply) -> None:
        """A GET of a file for the tree that the file service answered: publish it in the
        background once it is in the disk tier; the reply waits for none of it. A miss lands
        there with its fill (if the tier takes it). A memory-only copy — a small file fetched
        whole but not admitted to the disk tier then — is written there from its bytes once the
        admission filter takes it (this request counts): else nginx would never serve it, and
        every request for a popular small file would cost a trip through Python."""
        meta, tree, files = reply.meta, self.tree, self.files
        if (
            tree is None
            or meta is None
            or method != "GET"
            or reply.source not in ("miss", "memory")
            or reply.response.status not in (200, 206)
            or meta.key in self._behind
            or not tree.accepts(meta)
            or not files.view.feed_healthy
        ):
            return
        if reply.source == "memory":
            held = files.disk.get(meta.key)
            if (
                not isinstance(reply.body, MemoryBody)
                or (held is not None and held.meta.revision == meta.revision)  # on disk: not publishable now
                or not files.view.fresh(meta.key, meta.revision, time.monotonic())
                or not files.runtime.worth_a_disk_write(meta, sighted=False)
            ):
                return
            landing: Awaitable[bool] = self._store_copy(meta, reply.body.data)
        else:
            filler = files.runtime.filler
            fill = filler.get(meta) if filler is not None else None
            # No fill for a file that came whole with its metadata: its write behind the reply
            # (Filler.write_soon) may still be queued.
            written = filler.landing(meta) if filler is not None and fill is None else None
            landing = self._wait_for(fill) if written is None else written
        task = asyncio.create_task(self._publish_when_landed(meta, landing), name=f"servefiles publish {meta.key}")
        self._behind[meta.key] = task
        task.add_done_callback(lambda _: self._behind.pop(meta.key, None))

    async def settle(self) -> None:
        """Wait until the publishes under way behind replies have ended (published or not)."""
        await asyncio.gather(*self._behind.values(), return_exceptions=True)

    @staticmethod
    async def _wait_for(fill: Fill | None) -> bool:
        """Whether ``fill`` put its file in the disk tier whole, once it ended (None: it ended
        already, or never ran; then the disk tier has no entry, and publishing finds none)."""
        if fill is None:
            return True
        await fill.wait_done()
        return fill.error is None and fill.disk_limit is None

    async def _store_copy(self, meta: FileMeta, data: bytes) -> bool:
        """Write a memory-only copy to the disk tier (verified against its sha256 there)."""
        try:
            await asyncio.to_thread(self.files.disk.store, meta, data)
        except Exception as exc:  # a write failure, or the tier closed meanwhile: no copy, no publish
            logger.warning("could not write %s to the disk cache: %s", meta.key, exc, extra={"key": meta.key})
            self.files.metrics.cache_write_failures.inc()
            return False
        if not self.files.view.fresh(meta.key, meta.revision, time.monotonic()):
            await self.files.runtime.discard(meta.key)  # outdated while it was written
            return False
        self.files.metrics.admissions.inc()
        return True

    async def _publish_when_landed(self, meta: FileMeta, landing: Awaitable[bool]) -> None:
        """Publish ``meta`` once ``landing`` put it in the disk tier (False: it did not)."""
        if not await landing:
            return
        if self.files.view.fresh(meta.key, meta.revision, time.monotonic()):
            try:
                await self._publish(DiskEntry(meta, self.files.disk.content_path(meta.sha256)))
            except Exception as exc:  # the index unreadable now: the next request publishes it
                logger.warning("could not publish %s for nginx: %s", meta.key, exc, extra={"key": meta.key})

    async def _publish(self, entry: DiskEntry) -> bool:
        """Publish ``entry`` in the tree, only while the feed is up: nginx would serve it
        unchecked.

        On the event loop when that is cheap and cannot wait long: a file of at most
        :data:`~servefiles.cache.fill.INLINE_WRITE_BYTES` (a copy instead of a link stays
        short), a process alone in its cache dir (no other process's transaction to wait
        for) and no withdrawal of the tree under way (it holds the tree's lock). Done in one
        step, it cannot overlap the feed noticing an outage. Otherwise on a thread; an outage
        that began meanwhile has cleared the tree already, perhaps before this file landed in
        it, so the file is withdrawn then."""
        view, tree = self.files.view, self.tree
        assert tree is not None
        if not view.feed_healthy:
            return False
        if entry.meta.size <= INLINE_WRITE_BYTES and not self._withdrawing and self.files.disk.alone():
            return self._publish_now(entry)
        outages = self._outages
        if not await asyncio.to_thread(self._publish_now, entry):
            return False
        if self._outages != outages or not view.feed_healthy:
            await asyncio.to_thread(tree.withdraw, entry.meta.key)
            return False
        return True

    def _publish_now(self, entry: DiskEntry) -> bool:
        """The check, link and timestamp of one publish, unless closed, inside one short
        transaction of the disk index (its write lock keeps the entry current while it is
        linked). On the loop (see :meth:`_publish`) it may wait for this process's own
        write-behind batch, a few ms; on a thread the same few calls cost more CPU than they
        take, as the GIL changes hands around every system call (tree mode, 256 MiB cache:
        0.90/0.74x DB-direct cold/warm with the thread hop, 1.05/0.86x without,
        benchmarks/RESULTS.md)."""
        assert self.tree is not None
        with self._gate:
            return not self._closed and self.tree.publish_entry(self.files.disk, entry)


def _nothing_to_give_back(intact: bool) -> None:
    """For work on a thread that keeps nothing for its caller (it closes what it was handed)."""
