"""Which processes use a cache dir now: each holds a flock on a file of its own in ``procs/``.

A process alone in the dir needs no cross-process machinery (no fill lock files, SQLite
written behind; see disk.py). Whether it is still alone costs one ``stat`` of ``procs/``:
a newcomer's file changes the directory's mtime, and the newcomer touches the directory
again a clock tick after creating its file, so an mtime read in the same coarse tick as the
creation cannot hide it. The answer is sticky: once another process was seen, this one
stays in shared mode until it reopens. A killed process's file is unlocked (flock dies with
its holder) and removed by whoever scans next.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..localfs import ensure_dir, remove_any
from . import locks
from .layout import scandir_own

__all__ = ["Members"]

TICK_SECONDS = 0.02
"""Longer than the kernel's timestamp granularity (one jiffy: 1-10 ms)."""
RECHECK_SECONDS = 0.002
"""How long an "alone" answer stands before :meth:`Members.alone` looks at ``procs/`` again. A
fill asks at each of its steps: one ``stat`` each, up to four per small fill (benchmarks/RESULTS.md,
2026-12-01, twelfth run). A newcomer's :meth:`Members.join` waits this long after its last touch
of ``procs/``, so it is seen before that returns, and before it does anything in the dir, as when
every call looked — even on a clock so coarse that only that touch moved the mtime."""


class Members:
    """This process's membership of one cache dir's ``procs/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        self._path: Path | None = None
        self._seen: tuple[int, int] | None = None
        self._alone_until = 0.0  # monotonic seconds: the last "alone" stands until then
        self.shared = False
        """Whether another live process was seen since :meth:`join` (sticky)."""

    def join(self) -> bool:
        """Register this process; whether it is alone. Call under the dir's open lock."""
        ensure_dir(self.directory)
        fd, path = locks.create_locked_temp(self.directory, f"{os.getpid()}-")
        self._fd, self._path = fd, Path(path)
        time.sleep(TICK_SECONDS)
        os.utime(self.directory)  # a later mtime than the creation's, for whoever read it in that tick
        # and one that whoever answered "alone" just before it looks at again before we go on: an
        # answer stands RECHECK_SECONDS (on a coarse clock the creation may not have moved the mtime)
        time.sleep(RECHECK_SECONDS)
        self._seen = None
        self._alone_until = 0.0
        self.shared = False
        return self.alone()

    def alone(self) -> bool:
        """Whether no other live process has joined (one stat while nothing changed, at most one
        per :data:`RECHECK_SECONDS`)."""
        if self.shared or self._path is None:
            return False
        now = time.monotonic()
        if now < self._alone_until:
            return True
        try:
            found = os.stat(self.directory, follow_symlinks=False)
        except OSError:
            self.shared = True  # cannot tell: assume company
            return False
        seen = (found.st_mtime_ns, found.st_ino)
        if seen == self._seen:
            self._alone_until = now + RECHECK_SECONDS
            return True
        if self.others_alive():
            self.shared = True
            return False
        self._seen = seen  # the mtime from before the scan: a file created during it changes it
        return True

    def others_alive(self) -> bool:
        """Whether a process other than this one holds a file in ``procs/`` (stale ones go)."""
        others = False
        with contextlib.suppress(FileNotFoundError), scandir_own(self.directory) as it:
            for item in it:
                path = Path(item.path)
                if path == self._path:
                    continue
                if not item.is_file(follow_symlinks=False):
                    remove_any(path)
                elif not locks.remove_if_unlocked(path) and path.exists():
                    others = True
        return others

    def leave(self) -> None:
        """Unregister (idempotent); the flock would go with the process anyway."""
        fd, self._fd = self._fd, None
        path, self._path = self._path, None
        if fd is not None and path is not None:
            with contextlib.suppress(OSError):
                locks.unlink_then_unlock(path, fd)
