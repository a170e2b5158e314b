"""Plain data types the store hands out: file metadata, heads and change-feed entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

_FROM_UPDATED_AT = datetime(1, 1, 1, tzinfo=UTC)
"""Stands for "not given": :attr:`FileMeta.last_modified` then follows ``updated_at``."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What the store knows about one live file.

    ``version`` comes from one monotonic sequence shared by every write and
    delete; ``sha256`` (hex) names the content and becomes the HTTP ETag;
    ``created_at`` and ``updated_at`` are true times (UTC, the database's clock
    at the write).

    ``last_modified`` is the version's validator time, in whole seconds (UTC):
    the write's second, or the second after the key's previous version or
    tombstone if that is later, so no two versions of a key share one. HTTP's
    Last-Modified has whole seconds (RFC 9110 §5.6.7) and nginx's ETag for a
    published file is "mtime-size": sharing a second, two versions of one size
    would share a validator (a stale 304, a resumed download spliced from two
    versions). It may therefore lie a few seconds ahead of the clock after a
    burst of writes; a response never states it before its time (see
    :func:`servefiles.http.respond`). When not given, it is ``updated_at``'s
    whole second.
    """

    key: str
    version: int
    sha256: str
    size: int
    content_type: str
    created_at: datetime
    updated_at: datetime
    last_modified: datetime = field(default=_FROM_UPDATED_AT)

    def __post_init__(self) -> None:
        if self.last_modified is _FROM_UPDATED_AT:
            moment = self.updated_at if self.updated_at.tzinfo is not None else self.updated_at.replace(tzinfo=UTC)
            object.__setattr__(self, "last_modified", moment.astimezone(UTC).replace(microsecond=0))

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

    def outdates(self, cached_version: int | None) -> bool:
        """Whether a cached copy of ``cached_version`` (None: no copy) is stale once this change
        is known: it is older than the version announced. The one rule for dropping copies."""
        return cached_version is not None and cached_version < self.version


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where a version's content lives: a never-reused blob id and its chunk size (bytes).

    A blob's chunks are deleted in the transaction that replaces or deletes its version,
    so reading by blob id yields that version's bytes or finds them gone, never another's."""

    blob_id: int
    chunk_size: int


@dataclass(frozen=True, slots=True)
class Head:
    """A live file's metadata and its first bytes, read together in one query
    (:meth:`Store.fetch_head`): the whole content when :attr:`complete`, else its start,
    and where the rest is (:meth:`Store.read_from` continues without locating it again)."""

    meta: FileMeta
    data: bytes
    """The content's first ``min(size, max_bytes)`` bytes."""
    blob: BlobRef

    @property
    def complete(self) -> bool:
        """Whether :attr:`data` is the whole content."""
        return len(self.data) == self.meta.size
