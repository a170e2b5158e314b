"""The body of a miss: which store read answers it, and whether it is written to the disk tier.

:meth:`~servefiles.service.FileService.decide` has decided the response of a request no tier
could answer; :class:`Misses` picks the body that carries it out — a fill under way is joined;
a file admitted to the disk tier (:mod:`servefiles.cache.admission`) is filled, written through
from the request path's head on; one not admitted is written nowhere on disk. A complete head
(a small file fetched whole with its metadata) answers at once from its bytes.
"""

from __future__ import annotations

import logging

from .bodies import Body, FillBody, MemoryBody, StoreBody
from .cache.fill import FillReader
from .cache.memory import MemoryEntry
from .http import PreparedFile
from .runtime import Runtime
from .store.types import FileMeta, Head

logger = logging.getLogger("servefiles")


class Misses:
    """Bodies of misses for one frontend's :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def body(self, file: PreparedFile, ranged: bool, head: Head | None, *, held: bool, sighted: bool) -> Body:
        """The body of a miss of ``file`` (``ranged``: a 206). ``head``: what the request path's one
        query brought (None: nothing). ``held``: a tier held another copy of the key (it is
        admitted at once: a popular file that changes keeps its disk place). ``sighted``: the
        request was already counted by the admission filter when it went to the store.

        A complete head answers from its bytes (offered to the memory tier, which keeps them if
        the key is asked for more often than what they would evict); a cold range, or a large file not admitted, is read
        from the store for what is asked."""
        runtime, meta = self.runtime, file.meta
        filler = runtime.filler
        assert filler is not None
        logger.debug("miss: %s version %d", meta.key, meta.version)
        fill = filler.get(meta)
        if fill is not None:
            return FillBody(FillReader(fill, runtime.store, runtime.metrics))
        complete = head is not None and head.complete
        if self._admit(meta, held, sighted, ranged) and (not ranged or meta.size <= runtime.settings.disk_bytes):
            # All the bytes in hand: written behind the reply, with no fill to join (write_soon).
            written = head is not None and complete and filler.write_soon(meta, head.data)
            if not written:
                fill = filler.start(meta, file, head)
                if not ranged and not complete:
                    return FillBody(FillReader(fill, runtime.store, runtime.metrics))
        if head is not None and complete:
            # Offered now, not only by the fill's task: a request that comes before that task
            # runs is then a memory hit, not a second query.
            runtime.memory.offer(meta.key, MemoryEntry(file, head.data))
            return MemoryBody(head.data)
        return StoreBody(runtime.store, meta, runtime.metrics, head)

    def _admit(self, meta: FileMeta, held: bool, sighted: bool, ranged: bool) -> bool:
        """Whether this miss writes ``meta``'s file to the disk tier (counted either way):
        held before, or :meth:`Runtime.worth_a_disk_write`. A request is sighted as it goes to the
        store (see ``FileService.lookup``), so requests that waited for the same query all count
        before any decides: a burst of them shares one fill. A range (``ranged``) is not taken
        in on room alone: its fill reads the whole file from the store, where the request itself
        needs only the range (a one-off ``bytes=0-0`` probe would cost a whole-file read)."""
        metrics = self.runtime.metrics
        if held or self.runtime.worth_a_disk_write(meta, sighted=sighted, room_admits=not ranged):
            metrics.admissions.inc()
            return True
        metrics.admission_rejections.inc()
        return False
