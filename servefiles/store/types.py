"""Plain data types the store hands out: file metadata and change-feed entries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What the store knows about one live file.

    ``version`` comes from one monotonic sequence shared by every write and
    delete; ``sha256`` (hex) names the content and becomes the HTTP ETag;
    ``updated_at`` (UTC, the database's clock) becomes Last-Modified.
    """

    key: str
    version: int
    sha256: str
    size: int
    content_type: str
    created_at: datetime
    updated_at: datetime

    @property
    def revision(self) -> tuple[int, str]:
        """What a cached copy must match to be this file: version AND content hash.

        The version alone is not enough: two databases (a cache dir reused
        against another one, a restored backup) hand out the same numbers.
        """
        return (self.version, self.sha256)


class Change(NamedTuple):
    """One entry of the change feed: the key's newest version, or its tombstone."""

    key: str
    version: int
    deleted: bool
