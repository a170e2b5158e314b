"""SQL that both backends run alike, written once with the backend's placeholders filled in."""

from __future__ import annotations


def locate_head(max_bytes: str, whole: str, key: str) -> str:
    """The query behind :meth:`Store.fetch_head`: the live row of ``key`` with its chunks that
    begin before byte ``max_bytes`` (none when ``whole`` and the file is larger), one row per
    chunk in order, or one row with NULL data when none is wanted (LEFT JOIN). One statement
    sees one snapshot: a version and its own chunks, never another's. The arguments are the
    backend's placeholders (``$2``, ``:max``…), never values."""
    return f"""
    SELECT f.key, f.version, f.sha256, f.size, f.content_type, f.created_at, f.updated_at, f.last_modified,
        f.blob_id, f.chunk_size, c.data
    FROM servefiles_files f
    LEFT JOIN servefiles_chunks c
        ON c.blob_id = f.blob_id AND c.seq < ({max_bytes} + f.chunk_size - 1) / f.chunk_size
        AND (NOT {whole} OR f.size <= {max_bytes})
    WHERE f.key = {key} AND NOT f.deleted
    ORDER BY c.seq"""
