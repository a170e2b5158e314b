"""Which cache files this process has checked against their sha256.

A small file read whole from the disk tier is hashed before it is served, so a file damaged in
place (same size, other bytes: someone editing the cache, a bad copy or restore) is refetched
rather than served. Hashing it on every read would cost more than the read itself (a 40 KB
avatar: about 60 µs of sha256 against about 10 µs of ``pread``), so a file is hashed once per
process, the first time this process reads it whole. Not when this process writes it: an
install may keep a file already in place (same name and size, bytes nobody here has hashed).

**What a mark vouches for.** Not a content name alone: the file that held it when it was hashed,
as its :data:`FileStamp` (inode and ctime, from the ``fstat`` the open makes anyway). Any write
to a file through the kernel moves its ctime (so does any change of its mtime), and nobody can set
a ctime back; a file replaced (a refetch renamed into place, another process's install) is another
inode. So a file
changed after it was verified — through the key it was verified by or any other key sharing its
content — no longer matches its mark and is hashed again, and a wrong byte is refetched, not served.

A timestamp only moves by whole ticks of the file system's clock (a jiffy on ext4, xfs, btrfs
and tmpfs, at most 10 ms; a second on the coarsest), and the kernel's clock for them lags the
wall clock by up to one tick: a file read within a tick of its last change could change again
with the same ctime. A file read less than the settle time after its last change is therefore
hashed but not marked (git's "racily clean" entries, the same problem). The settle time is
:data:`SETTLE_SECONDS` until a ctime shows that the cache dir's file system keeps timestamps finer
than 10 ms (one not on a 10 ms boundary: a file system's granularity divides every timestamp it
records, and all of a cache dir's content files are on one), then :data:`FINE_SETTLE_SECONDS`;
and only on a local file system (:data:`LOCAL_FILE_SYSTEMS`), whose ctimes come from this
machine's clock: a network file system's come from its server's, which may be behind ours by more
than 0.1 s (a server behind by D makes a file look D seconds older than it is).
Until a file is marked, every read of it from the disk tier hashes it again: with two seconds, a
popular large file just filled was hashed on each of its first requests.

**Where a change is never lost in a tick.** Linux 6.13 and later keep *multigrain* timestamps on
ext4, xfs, btrfs and tmpfs: once a file's ctime has been read (``stat``), its next change takes a
fine-grained time, so it moves the ctime whatever the tick. There the stamp from an ``fstat`` is
exact, no settle time is needed (:attr:`VerifiedContents.changes_seen`), and a file this process
has just written and hashed is marked as it is installed (:meth:`VerifiedContents.wrote`): its
first read is not a second hash. Whether a cache dir's file system does this is not asked of
the kernel's version but seen (:func:`changes_seen_at_once`): one file written and stamped in a
row, every stamp must differ.

What no mark can see: bytes that rot on the medium under an unchanged inode, a write racing
one read between its ``fstat`` and its ``pread`` (microseconds), and one racing this process's own
write of a temp file (another writer in the cache dir with a random name to guess, in the
microseconds between one of its writes and the ``fstat`` after it, or between its last look at
the ctime and the stamp after the rename: :meth:`~servefiles.cache.writer.DiskWriter.commit`).
``sync --verify`` reads every file through. A file too large for the memory tier is hashed too,
in blocks and on a thread, before this process first serves it (:meth:`DiskCache.check_open`);
sent from the file, never held whole, it is read again after that hash, so a change while one
response is sent goes unseen there (the next open sees the new stamp).
"""

from __future__ import annotations

import hashlib
import os

VERIFIED_CONTENTS = 65536
"""Contents remembered (about 190 bytes each: at most about 12 MiB); beyond, the map starts again
(re-hashing is safe)."""
SETTLE_SECONDS = 2.0
"""How long after its last change (seconds, by its ctime) a file must have been read for its hash to be
remembered: twice the coarsest timestamp tick of a file system a cache dir lives on (see the module)."""
FINE_SETTLE_SECONDS = 0.1
"""The same on a file system seen to keep timestamps finer than :data:`FINE_TICK_NS` (ext4 with its
default 256-byte inodes, xfs, btrfs, tmpfs): ten ticks of the kernel's coarsest clock (``HZ`` 100)."""
FINE_TICK_NS = 10_000_000
"""A ctime not a whole multiple of this (10 ms) comes from a file system whose timestamps are finer."""
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs", "overlay"})
"""File system types (``/proc/self/mountinfo``) whose ctimes this machine's clock sets: the only ones
where the settle time may shorten (an ext4 with 1 s timestamps never shows a ctime that lets it)."""

PROBE_ROUNDS = 64
"""Writes, each stamped, that :func:`changes_seen_at_once` makes in a row: all of them within one
tick of a coarse clock take (microseconds each), so on a file system without multigrain
timestamps some two stamps are equal."""

PROBE_GAP_NS = 250_000
"""The largest step between two stamps of the probe that still shows a fine clock: a quarter of the
shortest kernel tick (``HZ`` is at most 1000, and a tick then about 1 ms, a little less under NTP's
adjustment), where a round of the probe takes microseconds."""

FileStamp = int
"""A file as ``fstat`` saw it: ``st_ctime_ns << 64 | st_ino``, one int (a tuple cost 330 bytes a mark,
this 190; every content file of a cache dir is on one device)."""


def stamp_of(status: os.stat_result) -> FileStamp:
    return status.st_ctime_ns << 64 | status.st_ino


def changed_at(stamp: FileStamp) -> float:
    """The stamped file's last change (ctime), in wall-clock seconds."""
    return (stamp >> 64) / 1e9


def changes_seen_at_once(fd: int, rounds: int = PROBE_ROUNDS) -> bool:
    """Whether every change to a file moves its ctime, however soon after the last ``stat`` it
    comes (multigrain timestamps; see the module): ``rounds`` one-byte writes to ``fd``, an empty
    regular file of the file system in question (the caller's to remove), each followed by an
    ``fstat``; True when every stamp is later than the one before by less than
    :data:`PROBE_GAP_NS`. A coarse clock moves by whole ticks, several times that: rounds slow
    enough to see a new tick each time (a synchronous mount on a slow device) prove nothing, and
    neither does a round held up by the scheduler, so either says no (the settle time then stands).
    Raises OSError if the file cannot be written."""
    os.write(fd, b"x")  # the first gap is then one round's, not the time since the file was made
    seen = os.fstat(fd).st_ctime_ns
    for _ in range(rounds):
        os.write(fd, b"x")
        stamped = os.fstat(fd).st_ctime_ns
        if not 0 < stamped - seen < PROBE_GAP_NS:
            return False
        seen = stamped
    return True


class VerifiedContents:
    """A bounded map of sha256 hex name → the stamp of the file verified to hold it.
    Thread-safe enough: single dict operations under the GIL."""

    def __init__(self, limit: int = VERIFIED_CONTENTS, settle_seconds: float = SETTLE_SECONDS, *,
                 local: bool = False) -> None:  # fmt: skip
        self._limit = limit
        self.local = local
        """Whether the files are on a local file system (:data:`LOCAL_FILE_SYSTEMS`): only then may
        the settle time shorten. :class:`DiskCache` sets it when it opens its dir."""
        self.settle_seconds = settle_seconds
        """:data:`SETTLE_SECONDS` (a test shortens it rather than wait)."""
        self.hashed = 0
        """Files hashed (or tried: a read that failed) so far, :meth:`check` without a mark and every
        :meth:`found`: the ``servefiles_cache_files_hashed_total`` counter. Counted under the GIL
        without a lock: a count lost to two threads at once is possible, and no more than a count."""
        self.fine = False
        """Whether a stamp has shown timestamps finer than :data:`FINE_TICK_NS` on a :attr:`local`
        file system: the settle time is then at most :data:`FINE_SETTLE_SECONDS`."""
        self.changes_seen = False
        """Whether every change moves a file's ctime once it has been stamped (multigrain
        timestamps, :func:`changes_seen_at_once`), on a :attr:`local` file system: no settle time
        then. :class:`DiskCache` sets it when it opens its dir."""
        self._stamps: dict[str, FileStamp] = {}

    @property
    def exact(self) -> bool:
        """Whether a stamp sees every later change: :attr:`changes_seen` on a :attr:`local` file
        system. No settle time then, and a file written here is marked as installed (:meth:`wrote`)."""
        return self.changes_seen and self.local

    def settle_time(self) -> float:
        """The settle time now, in seconds (see the module)."""
        if self.exact:
            return 0.0
        return min(self.settle_seconds, FINE_SETTLE_SECONDS) if self.fine else self.settle_seconds

    def __contains__(self, sha256: str) -> bool:
        """Whether some file was verified to hold ``sha256`` (not necessarily the one there now)."""
        return sha256 in self._stamps

    def vouches(self, sha256: str, stamp: FileStamp) -> bool:
        """Whether the file stamped ``stamp`` was verified to hold ``sha256``, unchanged since."""
        return self._stamps.get(sha256) == stamp

    def check(self, sha256: str, stamp: FileStamp, data: bytes, read_at: float) -> bool:
        """Whether ``data``, read whole from the file stamped ``stamp`` from ``read_at`` on (wall-clock
        seconds, taken before the read), is the content named ``sha256``: hashed unless the file was
        verified before; a match is remembered for that file once it has settled (see the module)."""
        if self.vouches(sha256, stamp):
            return True
        return self.found(sha256, stamp, hashlib.sha256(data).hexdigest(), read_at)

    def found(self, sha256: str, stamp: FileStamp, digest: str, read_at: float) -> bool:
        """Whether ``digest`` (hex), hashed from the file stamped ``stamp`` from ``read_at`` on, is
        ``sha256``; a match is remembered as :meth:`check`'s is (for a file hashed in blocks)."""
        self.hashed += 1
        if digest != sha256:
            return False
        if not self.fine and self.local and (stamp >> 64) % FINE_TICK_NS:
            self.fine = True
        settle = self.settle_time()
        if not settle or read_at - changed_at(stamp) >= settle:
            self._remember(sha256, stamp)
        return True

    def wrote(self, sha256: str, stamp: FileStamp) -> bool:
        """A file this process has just written, whose bytes it hashed as it wrote them and found to
        be ``sha256``, renamed into place and stamped ``stamp`` (an ``fstat`` after the rename, the
        file's last change): marked at once where every later change moves the ctime
        (:attr:`exact`), so its first read is not a second hash; else not marked, and read as any
        file is. Whether it was marked. Not a count of :attr:`hashed`: nothing is read."""
        if not self.exact:
            return False
        self._remember(sha256, stamp)
        return True

    def _remember(self, sha256: str, stamp: FileStamp) -> None:
        if len(self._stamps) >= self._limit:
            self._stamps.clear()
        self._stamps[sha256] = stamp

    def discard(self, sha256: str) -> None:
        """Forget ``sha256``'s file (dropped as damaged): every key sharing it is hashed again."""
        self._stamps.pop(sha256, None)
