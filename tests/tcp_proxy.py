"""A loopback TCP proxy that can be cut: a database outage produced for real.

The frontend under test talks to PostgreSQL through it. ``cut()`` closes the
listening socket (new connections are refused) and every open connection (as a
crashed or restarted server would); ``restore()`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

from .servers import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        self.delay = 0.0
        """Seconds each forwarded piece waits: a slow database, produced for real (the latency is on the wire)."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop listening: new connections are refused
        for writer in list(self._writers):
            writer.transport.abort()  # and every open one dies, as with a crashed server
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        await self.start()


def proxy_for(url: str) -> TcpProxy:
    """A (not yet started) proxy to the server a DSN names."""
    parts = urlsplit(url)
    return TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)


def with_netloc(url: str, netloc: str) -> str:
    """The same DSN, pointed at another host:port (a proxy, a list of hosts)."""
    return urlunsplit(urlsplit(url)._replace(netloc=netloc))
