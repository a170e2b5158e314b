"""servefiles.pagecache: whether a file's bytes are in the page cache (cachestat(2)), on real files."""

from __future__ import annotations

import os
from pathlib import Path

from servefiles import pagecache

MiB = 1024 * 1024


def test_a_range_counts_as_cached_only_when_every_page_of_it_is(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(4 * MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert pagecache.cached(fd, 0, 4 * MiB) is False, f"{path}'s pages stayed cached (a tmpfs?)"
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead past what is read
        os.pread(fd, 2 * MiB, 0)  # the first half only
        assert pagecache.cached(fd, 0, 2 * MiB) is True
        assert pagecache.cached(fd, 1, 2 * MiB - 1) is True  # unaligned ends: the pages they touch
        assert pagecache.cached(fd, 2 * MiB - 1, 2 * MiB + 1) is False  # one byte over the edge
        assert pagecache.cached(fd, 0, 4 * MiB) is False
        assert pagecache.cached(fd, 3 * MiB, 4 * MiB) is False
        assert pagecache.cached(fd, 5, 5) is True  # nothing to read
    finally:
        os.close(fd)


def test_a_descriptor_that_is_not_open_cannot_be_told() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    assert pagecache.cached(fd, 0, 4096) is None
    assert pagecache.cached(fd, 0, 4096) is None  # still asked: a bad descriptor is no sign of an old kernel
