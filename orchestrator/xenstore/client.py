"""Ballast's xenstore client: an async interface over pyxs 0.4.1 that never hangs.

The controller (on dom0's ``/run/xenstored/socket``), the guest agent (on
``/dev/xen/xenbus``) and the simulator (on the sockets of Ballast's own
daemon) all talk xenstore through :class:`PyxsClient`, and the rest of
Ballast depends only on the small :class:`XenstoreClient` protocol.

pyxs does the socket and device I/O: its router thread reads messages and
dispatches replies and watch events. This module neutralises the defects of
pyxs 0.4.1 that would hang or spin the controller:

* A request waits on a condition variable with no timeout, so a daemon that
  freezes or dies mid-request blocks the caller forever. Here every request
  has a deadline, the router thread reports its own death, and a failure
  becomes a :class:`~orchestrator.xenstore.errors.XenstoreError` (a
  ``TransientError``) naming the operation, the path and the errno.
* A pyxs client cannot be reconnected once closed (its router thread can only
  be started once). Here each connection gets a fresh router; a lost
  connection is rebuilt in the background with exponential backoff and every
  watch is registered again (xenstored fires a watch once on registration, so
  a watcher always sees an event after a reconnect).
* Two pyxs monitors sharing a token make ``Monitor.wait`` loop forever on
  ``dirname("/")``. Here every watch gets a unique token and events are
  routed by token into the watch's own queue; ``Monitor.wait`` is never used.
* pyxs refuses empty and non-ASCII values with a bare ``ValueError``.
  Here a value is checked before anything is sent: printable ASCII only, with
  a clear :class:`~orchestrator.xenstore.errors.InvalidRequestError`; an empty
  value is legitimate in xenstore and is written as a zero-length WRITE.

pyxs also sends with a blocking ``sendall`` from the caller's thread and does
not know DIRECTORY_PART; sends here are non-blocking on sockets, and large
directories are listed with DIRECTORY_PART.

Per request, pyxs makes two ``recv`` calls and one thread hand-off, and a
send is one more system call: a controller reading thousands of keys a cycle
would spend most of its time there. On a socket, every request made in one
turn of the event loop goes out in one ``send``; the router reads whatever has
arrived in one ``recv`` and hands all of it to the event loop in one
``call_soon_threadsafe`` (bench/controller.py measures both).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import random
import select
import socket
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

import pyxs
from pyxs._internal import Event as _PyxsEvent
from pyxs._internal import Packet as _PyxsPacket
from pyxs.connection import UnixSocketConnection, XenBusConnection

from orchestrator.xenstore import paths, wire
from orchestrator.xenstore.errors import (
    ConflictError,
    InvalidRequestError,
    OversizedPacketError,
    XenstoreConnectionError,
    XenstoreError,
    XenstoreTimeoutError,
    error_for,
)
from orchestrator.xenstore.perms import Perm
from orchestrator.xenstore.wire import Op

log = logging.getLogger("ballast.xenstore")

T = TypeVar("T")

# The privileged socket of a real dom0 (xenstored's default rundir) and the
# guest kernel's xenbus device (Linux xenbus_dev_frontend).
DOM0_SOCKET = "/run/xenstored/socket"
XENBUS_DEVICE = "/dev/xen/xenbus"

_TOKENS = itertools.count(1)
# Bytes the router reads at once: dozens of replies per system call.
_RECV_CHUNK = 256 * 1024


# --- the interface the rest of Ballast depends on -------------------------------------


class XenstoreOps(Protocol):
    """Operations on nodes; inside a transaction they act on its snapshot."""

    async def read(self, path: str) -> bytes:
        """The value of ``path``; ``NoEntryError`` if it does not exist."""
        ...

    async def write(self, path: str, value: bytes | str) -> None:
        """Set ``path`` (printable ASCII, may be empty), creating missing parents."""
        ...

    async def mkdir(self, path: str) -> None:
        """Create ``path`` with an empty value unless it exists."""
        ...

    async def rm(self, path: str) -> None:
        """Remove ``path`` and everything below it."""
        ...

    async def directory(self, path: str) -> list[str]:
        """Names of the children of ``path``."""
        ...

    async def get_perms(self, path: str) -> tuple[Perm, ...]:
        """The permission list of ``path``."""
        ...

    async def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        """Replace the permission list of ``path``."""
        ...


class WatchStream(Protocol):
    """Paths that changed at or below a watched path, as an async iterator.

    Use as ``async with client.watch(p) as changes: async for path in changes``.
    The first event arrives at once (xenstored fires a new watch), events for
    the same path still pending are coalesced, and a reconnect produces a
    fresh first event: treat an event as "look again", never as a diff.
    """

    token: str

    async def __aenter__(self) -> WatchStream: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> WatchStream: ...

    async def __anext__(self) -> str: ...

    async def aclose(self) -> None:
        """Unregister the watch and end the iteration."""
        ...


class XenstoreClient(XenstoreOps, Protocol):
    """What the agent, the controller and the simulator need from xenstore."""

    async def read_many(self, paths: Sequence[str]) -> list[bytes | XenstoreError]:
        """READ every path at once (pipelined); per path its value or its error.

        ``NoEntryError`` stands for a path that does not exist; one path's error
        never hides the others' values.
        """
        ...

    def watch(self, path: str) -> WatchStream:
        """A watch on ``path`` (relative paths resolve under the caller's home)."""
        ...

    async def transaction(self, body: Callable[[XenstoreOps], Awaitable[T]]) -> T:
        """Run ``body`` in a transaction, again from the start on ``EAGAIN``.

        ``body`` must only act through the ops it is given and be safe to repeat.
        """
        ...

    async def close(self) -> None:
        """Close the connection and end every watch."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """Timeouts and retry policy of :class:`PyxsClient`."""

    timeout_s: float = 5.0
    """Longest wait for one request, including reconnecting, seconds."""
    reconnect_min_s: float = 0.05
    """First delay before reconnecting after a failure, seconds."""
    reconnect_max_s: float = 5.0
    """Longest delay between reconnection attempts, seconds."""
    transaction_attempts: int = 16
    """Attempts of a transaction that keeps meeting ``EAGAIN`` before giving up."""
    watch_queue_max: int = 4096
    """Distinct pending paths kept per watch; the oldest are dropped beyond."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.reconnect_min_s <= 0:
            raise InvalidRequestError("xenstore timeouts must be positive")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise InvalidRequestError("reconnect_max_s must not be below reconnect_min_s")
        if self.transaction_attempts < 1 or self.watch_queue_max < 1:
            raise InvalidRequestError("transaction_attempts and watch_queue_max must be >= 1")


# --- validation -------------------------------------------------------------------------


def check_value(path: str, value: bytes | str) -> bytes:
    """The bytes to write, or :class:`InvalidRequestError` if they may not be written.

    Values are printable ASCII (0x20-0x7e), which is what every Ballast key
    holds and what pyxs can carry; an empty value is fine.
    """
    if isinstance(value, str):
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(
                f"value for {path} holds non-ASCII {value[exc.start]!r} at offset {exc.start}: "
                "xenstore values written by Ballast must be printable ASCII"
            ) from None
    else:
        data = bytes(value)
    for offset, byte in enumerate(data):
        if not 0x20 <= byte <= 0x7E:
            raise InvalidRequestError(
                f"value for {path} holds byte 0x{byte:02x} at offset {offset}: "
                "xenstore values written by Ballast must be printable ASCII"
            )
    if len(path) + 1 + len(data) > wire.PAYLOAD_MAX:
        raise InvalidRequestError(
            f"value for {path} is {len(data)} bytes: path and value must fit in "
            f"{wire.PAYLOAD_MAX} bytes"
        )
    return data


# --- pyxs plumbing ------------------------------------------------------------------------


class _Waiter:
    """Stands where pyxs puts its blocking RVar; resolves an asyncio future instead."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future

    def set(self, packet: Any) -> None:  # called by the router thread
        with suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(self._resolve, packet)

    def _resolve(self, packet: Any) -> None:
        if not self.future.done():
            self.future.set_result(packet)


class _EventSink:
    """Stands where pyxs puts a Monitor; ``events.put`` is all pyxs's router calls.

    ``local`` takes an event inside the event loop; Ballast's router batches
    calls to it, ``put`` hands over a single event from another thread.
    """

    __slots__ = ("events", "local", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, local: Callable[[Any], None]) -> None:
        self.events = self
        self.loop = loop
        self.local = local

    def put(self, event: Any) -> None:  # called by a router thread
        with suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(self.local, event)


def _run_batch(batch: list[tuple[Callable[[Any], None], Any]]) -> None:
    """In the event loop: hand replies and events to their owners, in arrival order."""
    for handler, item in batch:
        handler(item)


class _TolerantPackets:
    """Receive side of a pyxs connection that accepts every message type.

    pyxs 0.4.1 builds each incoming packet with a check against its own list of
    operations, which lacks RESET_WATCHES and DIRECTORY_PART: a reply to either
    would kill its router thread.
    """

    transport: Any
    path: str

    def recv(self) -> Any:
        if self.transport is None:
            raise pyxs.ConnectionError("not connected")
        try:
            header = self.transport.recv(wire.HEADER_SIZE)
            op, rq_id, tx_id, size = wire.HEADER.unpack(header)
            payload = self.transport.recv(size) if size else b""
        except OSError as exc:
            self.close()  # type: ignore[attr-defined]
            raise pyxs.ConnectionError(f"error while reading from {self.path!r}: {exc}") from exc
        return _PyxsPacket._make((op, rq_id, tx_id, size, payload))


class _SocketConnection(_TolerantPackets, UnixSocketConnection):  # type: ignore[misc]
    _decoder: wire.Decoder | None = None

    def recv_batch(self) -> list[Any]:
        """Every whole message readable now, from one ``recv`` (poll said readable)."""
        if self.transport is None:
            raise pyxs.ConnectionError("not connected")
        if self._decoder is None:
            self._decoder = wire.Decoder()
        try:
            data = self.transport.sock.recv(_RECV_CHUNK)
            if not data:
                raise ConnectionResetError("xenstored closed the connection")
            packets = self._decoder.feed(data)
        except (OSError, OversizedPacketError) as exc:
            self.close()
            raise pyxs.ConnectionError(f"error while reading from {self.path!r}: {exc}") from exc
        make = _PyxsPacket._make  # not its constructor, which refuses newer message types
        return [make((p.op, p.req_id, p.tx_id, len(p.payload), p.payload)) for p in packets]


class _XenBusConnection(_TolerantPackets, XenBusConnection):  # type: ignore[misc]
    pass


class _Router(pyxs.Router):  # type: ignore[misc]
    """pyxs's router thread, polling with ``poll()`` and reporting when it ends.

    pyxs 0.4.1 waits with ``select.select()``, which fails for file descriptors
    from 1024 on: in a process holding many connections (the simulator, a
    controller of a thousand guests) it could never connect. The loop below
    keeps pyxs's dispatch: replies go to the waiter registered under their
    request id, watch events to whatever subscribed to their token. On a
    socket it reads everything that has arrived at once, and hands each batch
    to the event loop in one call.
    """

    def __init__(
        self,
        connection: Any,
        on_exit: Callable[[BaseException | None], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(connection)
        self._on_exit = on_exit
        self._loop = loop
        self.thread.name = "pyxs-router"

    def __call__(self) -> None:
        error: BaseException | None = None
        try:
            self._serve()
        except BaseException as exc:  # the thread's end is reported, not printed
            error = exc
        finally:
            self.connection.close()
            self.r_terminator.close()
            self.w_terminator.close()
            self._on_exit(error)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLIN)
        stop_fd = self.r_terminator.fileno()
        poller.register(stop_fd, select.POLLIN)
        recv_batch = getattr(self.connection, "recv_batch", None)
        while True:
            ready = {fd for fd, _mask in poller.poll()}
            if stop_fd in ready:
                return
            self._dispatch(recv_batch() if recv_batch is not None else [self.connection.recv()])

    def _dispatch(self, packets: list[Any]) -> None:
        batch: list[tuple[Callable[[Any], None], Any]] = []
        try:
            for packet in packets:
                if packet.op == Op.WATCH_EVENT:
                    parts = packet.payload.split(b"\0")
                    if len(parts) >= 2:
                        event = _PyxsEvent(parts[0], parts[1])
                        for monitor in list(self.monitors.get(event.token, ())):
                            if isinstance(monitor, _EventSink):
                                batch.append((monitor.local, event))
                            else:
                                monitor.events.put(event)
                    continue
                waiter = self.rvars.pop(packet.rq_id, None)
                if waiter is None:
                    raise pyxs.UnexpectedPacket(packet)
                if isinstance(waiter, _Waiter):
                    batch.append((waiter._resolve, packet))
                else:
                    waiter.set(packet)
        finally:
            if batch:
                with suppress(RuntimeError):  # the loop is already closed
                    self._loop.call_soon_threadsafe(_run_batch, batch)


@functools.lru_cache(maxsize=16384)
def _path_bytes(path: str) -> bytes:
    """A valid path as sent, NUL-terminated; cached, as the controller reads the same
    keys of every domain again and again (an invalid path raises and is not cached)."""
    return paths.validate_path(path).encode("ascii") + b"\0"


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _expire_all(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        _expire(future)


class _NotSent(XenstoreConnectionError):
    """A request that could not be sent at all: retrying it elsewhere is safe."""


class _Link:
    """One live connection: a pyxs router thread and its pending requests."""

    def __init__(self, client: PyxsClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.alive = False
        self.router: Any = None
        self.send_sock: socket.socket | None = None
        self.pending: dict[int, _Waiter] = {}
        self.ids = itertools.count(1)
        self.send_lock = asyncio.Lock()
        # Socket sends: requests queued in this turn of the loop go out together.
        self._out = bytearray()
        self._out_futures: deque[tuple[int, asyncio.Future[Any]]] = deque()
        """(end offset in the stream, reply future) of requests not completely sent."""
        self._out_total = 0
        """Bytes sent on this connection so far."""
        self._flushing = False
        """A flush is scheduled, or the socket's writability is being watched."""
        self._writing = False

    def open_blocking(self) -> None:
        """Connect and start the router thread (runs in a worker thread)."""
        connection = self.client._new_connection()
        connection.connect()
        transport = connection.transport
        if isinstance(connection, _SocketConnection):
            sock: socket.socket = transport.sock
            # Bounded reads in the router thread; sends go through a non-blocking
            # duplicate so a daemon that stops reading cannot freeze the event loop.
            sock.settimeout(self.client.settings.timeout_s)
            self.send_sock = socket.socket(fileno=os.dup(sock.fileno()))
            self.send_sock.setblocking(False)
        self.router = _Router(connection, self._router_exit, self.loop)
        self.alive = True
        self.router.thread.start()

    def _router_exit(self, error: BaseException | None) -> None:  # router thread
        with suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.client._link_lost, self, error)

    def close(self) -> None:
        """Stop the router thread without waiting for it (it may be stuck in a read)."""
        was_alive, self.alive = self.alive, False
        self._drop_unsent("connection to xenstored lost")
        for waiter in self.pending.values():
            if not waiter.future.done():
                waiter.future.set_exception(
                    XenstoreConnectionError("ECONNRESET", detail="connection to xenstored lost")
                )
        self.pending.clear()
        router = self.router
        if router is not None and was_alive:
            with suppress(OSError):
                router.w_terminator.send(b"\0")
            transport = getattr(router.connection, "transport", None)
            sock = getattr(transport, "sock", None)
            if isinstance(sock, socket.socket):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self.send_sock is not None:
            self.send_sock.close()
            self.send_sock = None

    def _drop_unsent(self, why: str) -> None:
        """Fail the requests that never completely left: they may be sent again elsewhere
        (xenstored drops a partial message with its connection)."""
        if self._writing and self.send_sock is not None:
            with suppress(ValueError, OSError):
                self.loop.remove_writer(self.send_sock.fileno())
        self._writing = False
        for _end, future in self._out_futures:
            if not future.done():
                future.set_exception(_NotSent("ECONNRESET", detail=why))
        self._out_futures.clear()
        self._out.clear()

    def _queue(self, data: bytes, future: asyncio.Future[Any]) -> None:
        """Queue one request on the socket; it leaves with the others of this loop turn."""
        if not self.alive:
            raise _NotSent("ECONNRESET", detail="connection to xenstored lost")
        self._out += data
        self._out_futures.append((self._out_total + len(self._out), future))
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        sock = self.send_sock
        if not self.alive or sock is None:
            self._flushing = False
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._flushing = False
            self._drop_unsent(str(exc))
            self.client._link_failed(self)
            return
        if sent:
            del self._out[:sent]
            self._out_total += sent
            futures = self._out_futures
            while futures and futures[0][0] <= self._out_total:
                futures.popleft()
        if self._out:
            # The daemon is not reading fast enough: go on when the socket has room.
            if not self._writing:
                self.loop.add_writer(sock.fileno(), self._flush)
                self._writing = True
            return
        if self._writing:
            self.loop.remove_writer(sock.fileno())
            self._writing = False
        self._flushing = False

    async def call(
        self, op: int, payload: bytes, *, tx_id: int, deadline: float, what: tuple[str, str]
    ) -> bytes:
        """Send one request and wait for its reply until ``deadline``."""
        req_id = next(self.ids) & wire.U32_MAX
        future: asyncio.Future[Any] = self.loop.create_future()
        waiter = _Waiter(self.loop, future)
        self.pending[req_id] = waiter
        self.router.rvars[req_id] = waiter  # before sending: the reply may come at once
        opname, path = what
        data = wire.encode(wire.Packet(op, req_id, tx_id, payload))
        try:
            if self.send_sock is not None:
                try:
                    self._queue(data, future)
                except _NotSent as exc:
                    self.client._link_failed(self)
                    raise _NotSent("ECONNRESET", op=opname, path=path, detail=exc.detail) from exc
            else:
                try:
                    await self._send(data, deadline)
                except (OSError, pyxs.PyXSError, XenstoreConnectionError) as exc:
                    # Nothing reached the daemon (it drops partial messages with the
                    # connection), so the request may safely go out again on a new one.
                    self.client._link_failed(self)
                    raise _NotSent("ECONNRESET", op=opname, path=path, detail=str(exc)) from exc
            # A timer on the future itself: cheaper than wait_for on this hot path.
            timer = self.loop.call_at(deadline, _expire, future)
            try:
                reply = await future
            except _NotSent as exc:  # the queued request never left (see _drop_unsent)
                raise _NotSent("ECONNRESET", op=opname, path=path, detail=exc.detail) from None
            finally:
                timer.cancel()
        except TimeoutError:
            self.client._link_failed(self)
            raise XenstoreTimeoutError(
                "ETIMEDOUT",
                op=opname,
                path=path,
                detail=f"no answer from xenstored at {self.client.where} "
                f"within {self.client.settings.timeout_s:g} s",
            ) from None
        except XenstoreConnectionError as exc:
            if isinstance(exc, _NotSent):
                raise
            raise XenstoreConnectionError(
                exc.errno_name, op=opname, path=path, detail=exc.detail
            ) from None
        finally:
            self.pending.pop(req_id, None)
        if reply.op == Op.ERROR:
            raise error_for(wire.decode_error(reply.payload), op=opname, path=path)
        if reply.op != op:
            raise XenstoreError(
                "EIO", op=opname, path=path, detail=f"unexpected reply of type {reply.op}"
            )
        payload_in: bytes = reply.payload
        return payload_in

    def submit(self, op: int, payload: bytes) -> tuple[int, asyncio.Future[Any]]:
        """Queue one request on the socket without a coroutine (for batches); the
        caller awaits the future and calls :meth:`settle` with the request id."""
        req_id = next(self.ids) & wire.U32_MAX
        future: asyncio.Future[Any] = self.loop.create_future()
        waiter = _Waiter(self.loop, future)
        self.pending[req_id] = waiter
        self.router.rvars[req_id] = waiter
        try:
            self._queue(wire.encode(wire.Packet(op, req_id, 0, payload)), future)
        except _NotSent as exc:
            self.pending.pop(req_id, None)
            future.set_exception(exc)
        return req_id, future

    def settle(self, req_id: int) -> None:
        """Forget a request submitted with :meth:`submit`."""
        self.pending.pop(req_id, None)

    async def _send(self, data: bytes, deadline: float) -> None:
        """Send on the xenbus device (sockets go through :meth:`_queue`)."""
        if not self.alive:
            raise XenstoreConnectionError("ECONNRESET", detail="connection to xenstored lost")
        async with self.send_lock:
            # The xenbus device: pyxs writes it with blocking os.write calls.
            transport = self.router.connection.transport
            if transport is None:
                raise XenstoreConnectionError("ECONNRESET", detail="xenbus device closed")
            await asyncio.wait_for(
                asyncio.to_thread(transport.send, data), max(deadline - self.loop.time(), 0.0)
            )


# --- watches --------------------------------------------------------------------------------


class _Watch:
    """A :class:`WatchStream` of :class:`PyxsClient`."""

    def __init__(self, client: PyxsClient, path: str) -> None:
        self.client = client
        self.path = path
        # Unique per watch: pyxs spins when two monitors share a token.
        self.token = f"ballast-{os.getpid()}-{next(_TOKENS)}"
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._ready = asyncio.Event()
        self.registered = False
        self.closed = False
        self.dropped = 0

    async def __aenter__(self) -> _Watch:
        await self.client._register(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> str:
        if not self.registered and not self.closed:
            await self.client._register(self)
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        path = self._queue.popleft()
        self._queued.discard(path)
        return path

    def _deliver(self, path: str) -> None:
        if self.closed or path in self._queued:
            return
        if len(self._queue) >= self.client.settings.watch_queue_max:
            self._queued.discard(self._queue.popleft())
            self.dropped += 1
        self._queue.append(path)
        self._queued.add(path)
        self._ready.set()

    def _end(self) -> None:
        self.closed = True
        self._ready.set()

    async def aclose(self) -> None:
        """Unregister the watch and end the iteration."""
        if self.closed:
            return
        self._end()
        await self.client._unregister(self)


# --- the client -----------------------------------------------------------------------------


class _TransactionOps:
    """The :class:`XenstoreOps` handed to a transaction body."""

    def __init__(self, client: PyxsClient, link: _Link, tx_id: int) -> None:
        self._client = client
        self._link = link
        self.tx_id = tx_id

    async def read(self, path: str) -> bytes:
        return await self._client._read(path, tx=self)

    async def write(self, path: str, value: bytes | str) -> None:
        await self._client._write(path, value, tx=self)

    async def mkdir(self, path: str) -> None:
        await self._client._simple(Op.MKDIR, path, tx=self)

    async def rm(self, path: str) -> None:
        await self._client._simple(Op.RM, path, tx=self)

    async def directory(self, path: str) -> list[str]:
        return await self._client._directory(path, tx=self)

    async def get_perms(self, path: str) -> tuple[Perm, ...]:
        return await self._client._get_perms(path, tx=self)

    async def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        await self._client._set_perms(path, perms, tx=self)


class PyxsClient:
    """A :class:`XenstoreClient` over pyxs, on a unix socket or the xenbus device."""

    def __init__(
        self,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        xenbus_path: str | os.PathLike[str] | None = None,
        settings: ClientSettings | None = None,
    ) -> None:
        if (socket_path is None) == (xenbus_path is None):
            raise InvalidRequestError("give exactly one of socket_path and xenbus_path")
        self._socket_path = os.fspath(socket_path) if socket_path is not None else None
        self._xenbus_path = os.fspath(xenbus_path) if xenbus_path is not None else None
        self.settings = settings or ClientSettings()
        self._link: _Link | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._watches: dict[str, _Watch] = {}
        self._closed = False
        self._last_error = "not connected yet"
        self._connects = 0

    @property
    def where(self) -> str:
        """The socket or device this client talks to."""
        return self._socket_path or self._xenbus_path or "?"

    @property
    def connects(self) -> int:
        """How many connections this client has opened (1 + reconnections)."""
        return self._connects

    def _new_connection(self) -> Any:
        if self._socket_path is not None:
            return _SocketConnection(self._socket_path)
        return _XenBusConnection(self._xenbus_path)

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> PyxsClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect now (also after :meth:`close`); ``XenstoreConnectionError`` if impossible."""
        self._closed = False
        loop = asyncio.get_running_loop()
        await self._live_link(loop.time() + self.settings.timeout_s, "CONNECT", "")

    async def close(self) -> None:
        """Close the connection and end every watch; :meth:`connect` reopens."""
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        for watch in list(self._watches.values()):
            watch._end()
        self._watches.clear()
        if self._link is not None:
            self._link.close()
            self._link = None

    async def _open_link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = _Link(self, loop)
        opening = loop.run_in_executor(None, link.open_blocking)
        try:
            await asyncio.wait_for(asyncio.shield(opening), self.settings.timeout_s)
        except TimeoutError:
            # A connect stuck in the kernel: whatever it opens later is closed.
            opening.add_done_callback(lambda _f: loop.call_soon_threadsafe(link.close))
            raise XenstoreConnectionError(
                "ETIMEDOUT", detail=f"connecting to {self.where}"
            ) from None
        except (OSError, pyxs.PyXSError) as exc:
            raise XenstoreConnectionError("ECONNREFUSED", detail=f"{self.where}: {exc}") from exc
        return link

    async def _reconnect(self) -> None:
        """Connect, with exponential backoff, until it works or the client closes."""
        delay = self.settings.reconnect_min_s
        while not self._closed:
            try:
                link = await self._open_link()
            except XenstoreError as exc:
                self._last_error = str(exc)
            else:
                self._link = link
                self._connects += 1
                try:
                    for watch in list(self._watches.values()):
                        await self._send_watch(link, watch)
                    return
                except XenstoreError as exc:
                    self._last_error = f"re-registering watches: {exc}"
                    self._link_failed(link)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _live_link(self, deadline: float, opname: str, path: str) -> _Link:
        if self._closed:
            raise XenstoreConnectionError(
                "ENOTCONN", op=opname, path=path, detail="client closed; call connect() to reopen"
            )
        link = self._link
        if link is not None and link.alive:
            return link
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name=f"xenstore-reconnect {self.where}"
            )
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(asyncio.shield(self._reconnecting), max(remaining, 0.0))
        except TimeoutError:
            raise XenstoreConnectionError(
                "ENOTCONN", op=opname, path=path,
                detail=f"xenstored at {self.where} unavailable: {self._last_error}",
            ) from None
        link = self._link
        if link is None or not link.alive:
            raise XenstoreConnectionError("ENOTCONN", op=opname, path=path, detail=self._last_error)
        return link

    def _link_failed(self, link: _Link) -> None:
        """A request on ``link`` failed: drop the connection; reconnect later."""
        self._link_lost(link, None)

    def _link_lost(self, link: _Link, error: BaseException | None) -> None:
        if error is not None:
            self._last_error = f"connection lost: {error}"
        link.close()
        if self._link is link:
            self._link = None
            idle = self._reconnecting is None or self._reconnecting.done()
            if self._watches and not self._closed and idle:
                # Watches resume by themselves: reconnect now, not on the next request.
                self._reconnecting = asyncio.get_running_loop().create_task(
                    self._reconnect(), name=f"xenstore-reconnect {self.where}"
                )

    # --- requests ------------------------------------------------------------------------

    async def _call(
        self, op: Op, payload: bytes, path: str, tx: _TransactionOps | None = None
    ) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        if tx is not None:
            link = tx._link
            if not link.alive:
                raise XenstoreConnectionError(
                    "ECONNRESET", op=op.name, path=path,
                    detail="connection to xenstored lost during the transaction",
                )
            return await link.call(
                op, payload, tx_id=tx.tx_id, deadline=deadline, what=(op.name, path)
            )
        while True:
            link = await self._live_link(deadline, op.name, path)
            try:
                return await link.call(
                    op, payload, tx_id=0, deadline=deadline, what=(op.name, path)
                )
            except _NotSent as exc:
                if loop.time() >= deadline:
                    raise XenstoreConnectionError(
                        exc.errno_name, op=op.name, path=path, detail=exc.detail
                    ) from None

    @staticmethod
    def _path(path: str) -> bytes:
        return _path_bytes(path)

    async def _read(self, path: str, tx: _TransactionOps | None = None) -> bytes:
        return await self._call(Op.READ, self._path(path), path, tx)

    async def _write(self, path: str, value: bytes | str, tx: _TransactionOps | None) -> None:
        data = check_value(path, value)
        await self._call(Op.WRITE, self._path(path) + data, path, tx)

    async def _simple(self, op: Op, path: str, tx: _TransactionOps | None) -> None:
        await self._call(op, self._path(path), path, tx)

    async def _directory(self, path: str, tx: _TransactionOps | None = None) -> list[str]:
        try:
            return wire.decode_names(await self._call(Op.DIRECTORY, self._path(path), path, tx))
        except XenstoreError as exc:
            if exc.errno_name != "E2BIG":
                raise
        # Above 4096 bytes of names: page through DIRECTORY_PART, restarting if the
        # node's generation changes under us (as libxenstore does).
        for _ in range(self.settings.transaction_attempts):
            names: list[str] = []
            offset = 0
            generation: int | None = None
            while True:
                payload = self._path(path) + f"{offset}\0".encode()
                chunk = wire.decode_directory_chunk(
                    await self._call(Op.DIRECTORY_PART, payload, path, tx)
                )
                if generation is not None and chunk.generation != generation:
                    break
                generation = chunk.generation
                names.extend(chunk.names)
                offset += sum(len(n) + 1 for n in chunk.names)
                if chunk.complete:
                    return names
        raise ConflictError(
            "EAGAIN", op="DIRECTORY_PART", path=path,
            detail="the directory kept changing while being listed",
        )

    async def _get_perms(self, path: str, tx: _TransactionOps | None = None) -> tuple[Perm, ...]:
        return wire.decode_perms(await self._call(Op.GET_PERMS, self._path(path), path, tx))

    async def _set_perms(
        self, path: str, perms: Sequence[Perm], tx: _TransactionOps | None = None
    ) -> None:
        if not perms:
            raise InvalidRequestError(f"set_perms {path}: at least the owner entry is needed")
        payload = self._path(path) + wire.join_strings(*(str(p) for p in perms))
        await self._call(Op.SET_PERMS, payload, path, tx)

    # --- the XenstoreClient interface ---------------------------------------------------------

    async def read(self, path: str) -> bytes:
        """The value of ``path``; ``NoEntryError`` if it does not exist."""
        return await self._read(path)

    async def read_many(self, paths: Sequence[str]) -> list[bytes | XenstoreError]:
        """READ every path at once; per path its value or its error (see
        :class:`XenstoreClient`). On a socket the reads leave together and are
        awaited without a task each; reads that never left (the connection
        broke first) are sent again on a new connection until the deadline. An
        invalid path raises :class:`InvalidRequestError` before anything is sent.
        """
        encoded = {i: self._path(path) for i, path in enumerate(paths)}  # bad paths raise
        results: list[bytes | XenstoreError | None] = [None] * len(paths)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        todo = sorted(encoded)
        while todo:
            try:
                link = await self._live_link(deadline, "READ", paths[todo[0]])
            except XenstoreConnectionError as exc:
                for i in todo:
                    results[i] = XenstoreConnectionError(exc.errno_name, op="READ",
                                                         path=paths[i], detail=exc.detail)
                break
            if link.send_sock is None:  # the xenbus device: one request at a time
                values = await asyncio.gather(*(self._read(paths[i]) for i in todo),
                                              return_exceptions=True)
                for i, value in zip(todo, values, strict=True):
                    if not isinstance(value, bytes | XenstoreError):
                        raise value
                    results[i] = value
                break
            todo = await self._read_batch(link, paths, encoded, todo, results, deadline)
        return [r if r is not None else XenstoreError("EIO") for r in results]

    async def _read_batch(
        self,
        link: _Link,
        paths: Sequence[str],
        encoded: dict[int, bytes],
        todo: list[int],
        results: list[bytes | XenstoreError | None],
        deadline: float,
    ) -> list[int]:
        """One round of :meth:`read_many` on ``link``; returns the reads to send again."""
        loop = asyncio.get_running_loop()
        submitted = [(i, *link.submit(Op.READ, encoded[i])) for i in todo]
        futures = [future for _i, _req, future in submitted]
        timer = loop.call_at(deadline, _expire_all, futures)
        again: list[int] = []
        timed_out = False
        try:
            for i, req_id, future in submitted:
                path = paths[i]
                try:
                    reply = await future
                except _NotSent:
                    again.append(i)
                    continue
                except TimeoutError:
                    timed_out = True
                    results[i] = XenstoreTimeoutError(
                        "ETIMEDOUT", op="READ", path=path,
                        detail=f"no answer from xenstored at {self.where} "
                        f"within {self.settings.timeout_s:g} s",
                    )
                    continue
                except XenstoreConnectionError as exc:
                    results[i] = XenstoreConnectionError(exc.errno_name, op="READ", path=path,
                                                         detail=exc.detail)
                    continue
                finally:
                    link.settle(req_id)
                if reply.op == Op.ERROR:
                    results[i] = error_for(wire.decode_error(reply.payload), op="READ", path=path)
                elif reply.op != Op.READ:
                    results[i] = XenstoreError("EIO", op="READ", path=path,
                                               detail=f"unexpected reply of type {reply.op}")
                else:
                    results[i] = reply.payload
        finally:
            timer.cancel()
        if timed_out:
            self._link_failed(link)
        if again and link.alive:
            self._link_failed(link)
        if again and loop.time() >= deadline:
            for i in again:
                results[i] = XenstoreConnectionError("ECONNRESET", op="READ", path=paths[i],
                                                     detail="connection to xenstored lost")
            return []
        return again

    async def write(self, path: str, value: bytes | str) -> None:
        """Set ``path`` (printable ASCII, may be empty), creating missing parents."""
        await self._write(path, value, None)

    async def mkdir(self, path: str) -> None:
        """Create ``path`` with an empty value unless it exists."""
        await self._simple(Op.MKDIR, path, None)

    async def rm(self, path: str) -> None:
        """Remove ``path`` and everything below it."""
        await self._simple(Op.RM, path, None)

    async def directory(self, path: str) -> list[str]:
        """Names of the children of ``path``, however many."""
        return await self._directory(path)

    async def get_perms(self, path: str) -> tuple[Perm, ...]:
        """The permission list of ``path``."""
        return await self._get_perms(path)

    async def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        """Replace the permission list of ``path``."""
        await self._set_perms(path, perms)

    def watch(self, path: str) -> _Watch:
        """A watch on ``path``; see :class:`WatchStream`."""
        paths.validate_path(path, allow_special=True)
        return _Watch(self, path)

    async def transaction(self, body: Callable[[XenstoreOps], Awaitable[T]]) -> T:
        """Run ``body`` in a transaction, again from the start on ``EAGAIN``."""
        attempts = self.settings.transaction_attempts
        for attempt in range(attempts):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.timeout_s
            link = await self._live_link(deadline, "TRANSACTION_START", "")
            reply = await link.call(
                Op.TRANSACTION_START, b"\0", tx_id=0, deadline=deadline,
                what=("TRANSACTION_START", ""),
            )
            tx_id = wire.decode_int(reply)
            ops = _TransactionOps(self, link, tx_id)
            try:
                result = await body(ops)
            except BaseException:
                with suppress(XenstoreError):
                    await self._call(Op.TRANSACTION_END, b"F\0", "", ops)
                raise
            try:
                await self._call(Op.TRANSACTION_END, b"T\0", "", ops)
            except ConflictError:
                # Someone changed what we read: wait a little (jittered, growing) and redo.
                await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
                continue
            return result
        raise ConflictError(
            "EAGAIN", op="TRANSACTION_END", detail=f"gave up after {attempts} conflicting attempts"
        )

    async def _register(self, watch: _Watch) -> None:
        if watch.registered or watch.closed:
            return
        loop = asyncio.get_running_loop()
        self._watches[watch.token] = watch
        try:
            link = await self._live_link(loop.time() + self.settings.timeout_s, "WATCH", watch.path)
            await self._send_watch(link, watch)
        except BaseException:
            self._watches.pop(watch.token, None)
            raise
        watch.registered = True

    async def _send_watch(self, link: _Link, watch: _Watch) -> None:
        loop = asyncio.get_running_loop()

        def deliver(event: Any) -> None:  # in the event loop
            watch._deliver(event.path.decode("latin-1"))

        token = watch.token.encode("ascii")
        link.router.subscribe(token, _EventSink(loop, deliver))
        payload = wire.join_strings(watch.path, watch.token)
        deadline = loop.time() + self.settings.timeout_s
        await link.call(Op.WATCH, payload, tx_id=0, deadline=deadline, what=("WATCH", watch.path))

    async def _unregister(self, watch: _Watch) -> None:
        if self._watches.pop(watch.token, None) is None:
            return
        link = self._link
        if link is None or not link.alive:
            return
        token = watch.token.encode("ascii")
        with suppress(ValueError, KeyError):
            link.router.monitors.pop(token, None)
        with suppress(XenstoreError):
            payload = wire.join_strings(watch.path, watch.token)
            await self._call(Op.UNWATCH, payload, watch.path)


def open_client(
    *, path: str | os.PathLike[str] | None = None, settings: ClientSettings | None = None
) -> PyxsClient:
    """A client for this host: ``path`` if given (a socket, or a character device such
    as ``/dev/xen/xenbus``), else ``$XENSTORED_PATH``, else dom0's socket if present,
    else the guest's xenbus device."""
    chosen = os.fspath(path) if path is not None else os.environ.get("XENSTORED_PATH")
    if chosen is None:
        chosen = DOM0_SOCKET if os.path.exists(DOM0_SOCKET) else XENBUS_DEVICE
    try:
        is_device = stat.S_ISCHR(os.stat(chosen).st_mode)
    except OSError:
        is_device = chosen == XENBUS_DEVICE
    if is_device:
        return PyxsClient(xenbus_path=chosen, settings=settings)
    return PyxsClient(socket_path=chosen, settings=settings)


def _conforms(client: PyxsClient) -> XenstoreClient:
    """Static check (mypy): PyxsClient implements the XenstoreClient protocol."""
    return client


__all__ = [
    "DOM0_SOCKET",
    "XENBUS_DEVICE",
    "ClientSettings",
    "PyxsClient",
    "WatchStream",
    "XenstoreClient",
    "XenstoreOps",
    "check_value",
    "open_client",
]
