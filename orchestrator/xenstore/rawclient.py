"""A minimal asyncio xenstore client on Ballast's own codec.

It pipelines requests over one unix socket and matches replies by request
id; nothing more (no reconnection, no validation beyond the codec's). The
tests use it to speak the protocol exactly, including malformed messages,
and the benchmark uses it as the baseline for the pyxs wrapper. Ballast's
components use :mod:`orchestrator.xenstore.client` instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from types import TracebackType

from orchestrator.xenstore import wire
from orchestrator.xenstore.errors import XenstoreConnectionError, error_for
from orchestrator.xenstore.perms import Perm
from orchestrator.xenstore.wire import Op, Packet, WatchEvent


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.decoder = wire.Decoder()

    def data_received(self, data: bytes) -> None:
        for packet in self.decoder.feed(data):
            self.client._received(packet)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class RawClient:
    """One connection; every request method may be awaited concurrently."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Packet]] = {}
        self._ids = itertools.count(1)
        self.events: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self.closed = asyncio.Event()

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> RawClient:
        """Open a connection to the socket at ``path``."""
        client = cls()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Protocol(client), os.fspath(path))
        assert isinstance(transport, asyncio.Transport)
        client._transport = transport
        return client

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()
        await self.closed.wait()

    def _received(self, packet: Packet) -> None:
        if packet.op == Op.WATCH_EVENT:
            self.events.put_nowait(wire.decode_watch_event(packet.payload))
            return
        future = self._pending.pop(packet.req_id, None)
        if future is not None and not future.done():
            future.set_result(packet)

    def _lost(self, exc: Exception | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    XenstoreConnectionError("ECONNRESET", detail="connection closed by xenstored")
                )
        self._pending.clear()
        self.closed.set()

    def send_bytes(self, data: bytes) -> None:
        """Write raw bytes (for tests of malformed input)."""
        assert self._transport is not None
        self._transport.write(data)

    async def call(self, op: int, payload: bytes, *, tx_id: int = 0) -> Packet:
        """Send one message and return the reply packet, ERROR included."""
        if self._transport is None or self.closed.is_set():
            raise XenstoreConnectionError("ENOTCONN", detail="not connected")
        req_id = next(self._ids)
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        self._transport.write(wire.encode(Packet(op, req_id, tx_id, payload)))
        return await future

    async def request(self, request: wire.Request, *, tx_id: int = 0, path: str = "") -> bytes:
        """Send a typed request; return the reply payload or raise its error."""
        op, payload = wire.encode_request(request)
        reply = await self.call(op, payload, tx_id=tx_id)
        if reply.op == Op.ERROR:
            raise error_for(wire.decode_error(reply.payload), op=op.name, path=path)
        return reply.payload

    # --- conveniences ----------------------------------------------------------------

    async def read(self, path: str, *, tx_id: int = 0) -> bytes:
        """READ."""
        return await self.request(wire.Read(path), tx_id=tx_id, path=path)

    async def write(self, path: str, value: bytes, *, tx_id: int = 0) -> None:
        """WRITE."""
        await self.request(wire.Write(path, value), tx_id=tx_id, path=path)

    async def mkdir(self, path: str, *, tx_id: int = 0) -> None:
        """MKDIR."""
        await self.request(wire.Mkdir(path), tx_id=tx_id, path=path)

    async def rm(self, path: str, *, tx_id: int = 0) -> None:
        """RM."""
        await self.request(wire.Rm(path), tx_id=tx_id, path=path)

    async def directory(self, path: str, *, tx_id: int = 0) -> list[str]:
        """DIRECTORY, falling back to DIRECTORY_PART for lists above 4096 bytes."""
        op, payload = wire.encode_request(wire.Directory(path))
        reply = await self.call(op, payload, tx_id=tx_id)
        if reply.op != Op.ERROR:
            return wire.decode_names(reply.payload)
        errno_name = wire.decode_error(reply.payload)
        if errno_name != "E2BIG":
            raise error_for(errno_name, op="DIRECTORY", path=path)
        return await self.directory_parts(path, tx_id=tx_id)

    async def directory_parts(self, path: str, *, tx_id: int = 0) -> list[str]:
        """The whole list through DIRECTORY_PART, restarting if the node changes."""
        while True:
            names: list[str] = []
            offset = 0
            generation: int | None = None
            while True:
                payload = await self.request(
                    wire.DirectoryPart(path, offset), tx_id=tx_id, path=path
                )
                chunk = wire.decode_directory_chunk(payload)
                if generation is None:
                    generation = chunk.generation
                elif chunk.generation != generation:
                    break  # the node changed under us: start again
                names.extend(chunk.names)
                offset += sum(len(n) + 1 for n in chunk.names)
                if chunk.complete:
                    return names

    async def get_perms(self, path: str, *, tx_id: int = 0) -> tuple[Perm, ...]:
        """GET_PERMS."""
        return wire.decode_perms(await self.request(wire.GetPerms(path), tx_id=tx_id, path=path))

    async def set_perms(self, path: str, perms: tuple[Perm, ...], *, tx_id: int = 0) -> None:
        """SET_PERMS."""
        await self.request(wire.SetPerms(path, perms), tx_id=tx_id, path=path)

    async def watch(self, path: str, token: str) -> None:
        """WATCH (events arrive on :attr:`events`)."""
        await self.request(wire.Watch(path, token), path=path)

    async def unwatch(self, path: str, token: str) -> None:
        """UNWATCH."""
        await self.request(wire.Unwatch(path, token), path=path)

    async def transaction_start(self) -> int:
        """TRANSACTION_START; returns the transaction id."""
        return wire.decode_int(await self.request(wire.TransactionStart()))

    async def transaction_end(self, tx_id: int, *, commit: bool = True) -> None:
        """TRANSACTION_END; raises ``ConflictError`` when the commit lost (EAGAIN)."""
        await self.request(wire.TransactionEnd(commit), tx_id=tx_id)
