"""Which cache file contents this process has checked against their sha256.

A small file read whole from the disk tier is hashed before it is served, so a file damaged in
place (same size, other bytes: bit rot, someone editing the cache) is refetched rather than
served. Hashing it on every read would cost more than the read itself (a 40 KB avatar: about
60 µs of sha256 against about 10 µs of ``pread``), so a content is hashed once per process,
the first time this process reads it whole. Not when this process writes it: an install may
keep a file already in place (same name and size, bytes nobody here has hashed).
"""

from __future__ import annotations

VERIFIED_CONTENTS = 65536
"""Contents remembered (about 150 bytes each: at most about 10 MB); beyond, the set starts again
(re-hashing is safe)."""


class VerifiedContents:
    """A bounded set of sha256 hex names. Thread-safe enough: single set operations under the GIL."""

    def __init__(self, limit: int = VERIFIED_CONTENTS) -> None:
        self._limit = limit
        self._names: set[str] = set()

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._names

    def add(self, sha256: str) -> None:
        if len(self._names) >= self._limit:
            self._names.clear()
        self._names.add(sha256)

    def discard(self, sha256: str) -> None:
        self._names.discard(sha256)
