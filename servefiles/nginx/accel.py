"""nginx in front: ``X-Accel-Redirect`` as a layer in front of the file service.

:class:`AccelLayer` answers what nginx can send itself — with ``X-Accel-Redirect`` to
the published tree (tree mode: nginx judges preconditions and ranges against the tree
file) or to the disk tier's content file (a plain whole-file GET that servefiles has
judged) — and passes everything else to the :class:`~servefiles.service.FileService`
behind it, which never knows nginx exists. It keeps the published tree in step with the
service's life cycle and change feed through the runtime's hooks.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from urllib.parse import quote

from .. import http
from ..cache.disk import DiskEntry, content_name
from ..errors import InvalidKey, ServeFilesError, StoreUnavailable
from ..keys import canonical_key
from ..service import FileService, Reply, Source
from .config import TREE_LOCATION
from .redirect import ACCEL_BLOCKERS, accel_redirect
from .tree import PublishedTree


class AccelLayer:
    """``serve`` as :meth:`FileService.serve`, nginx sending the bytes where it can.

    ``accel_prefix`` is nginx's internal location over the disk tier's ``objects/``;
    ``tree``, with nginx's tree mode, the published tree that nginx serves by itself.
    """

    def __init__(self, files: FileService, accel_prefix: str, tree: PublishedTree | None = None) -> None:
        self.files = files
        self.accel_prefix = accel_prefix.rstrip("/") + "/"
        self.tree = tree
        self._outages = 0
        """Feed outages so far: a publish that overlapped one withdraws what it published."""
        if tree is not None:
            tree.follow(files.disk)  # a key's link is withdrawn with every change of its disk entry
            hooks = files.runtime.hooks
            hooks.before_start.append(self.withdraw_tree)
            hooks.after_close.append(self.withdraw_tree)
            hooks.feed_down.append(self._feed_down)

    def withdraw_tree(self) -> None:
        """Empty the published tree, which nginx serves without asking anyone: at start (a stopped
        or crashed run left it, nobody has vouched for it since, and the database may be
        unreachable), at close (nothing keeps it current any more) and while the feed is down.
        Keys are published again as they are asked for."""
        if self.tree is not None:
            self.tree.clear()

    def _feed_down(self) -> None:
        self._outages += 1
        self.files.runtime.spawn(asyncio.to_thread(self.withdraw_tree))

    async def serve(self, method: str, raw_key: str, headers: Mapping[str, str]) -> Reply:
        """The reply, counted once: nginx's redirect where it applies, else the file service's
        (a miss if this request's own fill put the file on disk)."""
        reply, filled = None, False
        if method in ("GET", "HEAD"):
            try:
                key = canonical_key(raw_key)
                if not self.files.runtime.running:
                    await self.files.start()
            except (InvalidKey, StoreUnavailable) as exc:
                return self.files.count(self.files.refused(exc))
            reply, filled = await self._accelerated(method, headers, key)
        if reply is None:
            reply = await self.files.answer(method, raw_key, headers)
            if filled and reply.source is not None:
                reply.source = "miss"  # on disk only because this request's own fill put it there
        return self.files.count(reply)

    async def _accelerated(self, method: str, headers: Mapping[str, str], key: str) -> tuple[Reply | None, bool]:
        """The redirect, or None where it does not apply or cannot be done (a HEAD or a range
        that is not for the tree, a miss of a file the tree will not take, the cache cannot take
        the file, the database is down): the file service then answers, streaming a miss as it
        writes it through, or from a stale copy. A miss of a file for the tree fills the disk
        tier first, so that even the first response carries nginx's validators, as every later
        hit will. The flag says whether this request filled the disk tier: its reply is a miss then.
        """
        files, tree = self.files, self.tree
        filler = files.runtime.filler
        assert filler is not None
        if tree is None and (method != "GET" or any(name in headers for name in ACCEL_BLOCKERS)):
            return None, False
        entry = files.disk.get(key)
        if entry is None and files.view.known_absent(key):
            return Reply(http.not_found()), False
        filled = False
        if entry is None or not files.view.fresh(key, entry.meta.revision, time.monotonic()):
            try:
                meta = await files.revalidate(key)
            except StoreUnavailable:
                return None, False
            if meta is None:
                return Reply(http.not_found()), False
            if entry is None or entry.meta.revision != meta.revision:
                if tree is None or not tree.accepts(meta):
                    return None, False  # streamed at once; the next request finds it on disk
                try:
                    if not await filler.fill(meta, files.prepared(meta)):
                        return None, False
                except ServeFilesError:
                    return None, False
                entry, filled = DiskEntry(meta, files.disk.content_path(meta.sha256)), True
        source: Source = "miss" if filled else "disk"
        fd = files.disk.open_entry(entry)
        if fd is None:
            return None, False  # damaged or gone: the file service refetches it
        os.close(fd)
        file = files.prepared(entry.meta)
        if tree is not None and tree.accepts(entry.meta) and await self._publish(entry):
            location = TREE_LOCATION + quote(entry.meta.key, safe="/")
            return Reply(accel_redirect(file, location, time.time()), None, source), False
        if method != "GET" or any(name in headers for name in ACCEL_BLOCKERS):
            return None, filled
        response = http.respond("GET", headers, file, time.time())
        if response.status != 200:
            return Reply(response, None, source), False
        files.disk.touch(key)
        location = self.accel_prefix + content_name(entry.meta.sha256)
        return Reply(accel_redirect(file, location, time.time()), None, source), False

    async def _publish(self, entry: DiskEntry) -> bool:
        """Publish ``entry`` in the tree, only while the feed is up: nginx would serve it
        unchecked. An outage that began while the publish ran has cleared the tree already,
        perhaps before this file landed in it: withdraw it then."""
        outages, view, tree = self._outages, self.files.view, self.tree
        assert tree is not None
        if not view.feed_healthy:
            return False
        if not await asyncio.to_thread(tree.publish_entry, self.files.disk, entry):
            return False
        if self._outages != outages or not view.feed_healthy:
            await asyncio.to_thread(tree.withdraw, entry.meta.key)
            return False
        return True
