"""The Python API of a mounted servefiles: writes with read-your-writes, and reads straight from the store.

Both adapters offer it (async on :class:`~servefiles.ServeFiles`, sync on
:class:`~servefiles.ServeFilesWSGI`, which runs these coroutines on its loop), and the
HTTP write API (:mod:`servefiles.write_api`) carries its requests out with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .keys import canonical_key
from .runtime import Runtime
from .store.base import PutSource, WritePrecondition
from .store.types import FileMeta


class FilesApi:
    """put, delete, stat, read and list over one frontend's :class:`Runtime`: every write reaches the
    store, then this frontend serves the new state at once; the others learn of it from the change feed."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def put(
        self, key: str, data: PutSource, content_type: str | None = None, *, expect: WritePrecondition | None = None
    ) -> FileMeta:
        """:meth:`Store.put`, then this frontend serves the new version at once (read-your-writes);
        the others learn of it from the change feed."""
        await self.runtime.start()
        meta = await self.runtime.store.put(key, data, content_type, expect=expect)
        await self.runtime.wrote(meta.key, meta.version, meta.revision)
        return meta

    async def delete(self, key: str, *, expect: WritePrecondition | None = None) -> int | None:
        """:meth:`Store.delete`, then this frontend answers 404 at once (read-your-writes)."""
        await self.runtime.start()
        key = canonical_key(key)
        version = await self.runtime.store.delete(key, expect=expect)
        if version is not None:
            await self.runtime.wrote(key, version, None)
        return version

    async def stat(self, key: str) -> FileMeta | None:
        """The live file's metadata, straight from the store."""
        await self.runtime.start()
        return await self.runtime.store.stat(key)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The bytes of ``key`` straight from the store (:meth:`Store.read`)."""
        await self.runtime.start()
        async for chunk in self.runtime.store.read(key):
            yield chunk

    async def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> list[FileMeta]:
        """One page of live files, as :meth:`Store.list`."""
        await self.runtime.start()
        return await self.runtime.store.list(prefix, limit, after)
