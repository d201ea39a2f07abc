"""A xenstored-compatible daemon on unix sockets, for simulation, demos and tests.

Real xenstored needs a hypervisor. This one serves the same wire protocol on
``DIR/socket`` (the privileged, dom0 socket, like ``/run/xenstored/socket``)
and, for every introduced domain, on ``DIR/domain/<domid>/socket``: whoever
connects there *is* that domain, so relative paths, permissions and quotas
apply as on a real host. INTRODUCE also lays out ``/local/domain/<domid>`` as
libxl does (dom0-owned ``memory/``, guest-writable ``data/``), and RELEASE
removes it again.

One asyncio loop serves every connection; requests are handled to completion
in memory, so there is nothing to lock. A client that stops reading cannot
stall the others: its replies back up into a bounded queue (while it is full
the daemon stops reading its requests), identical pending watch events are
coalesced as C xenstored does, and a client whose queue still overflows is
disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import stat
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from orchestrator.errors import UsageError
from orchestrator.xenstore import paths, wire
from orchestrator.xenstore.errors import OversizedPacketError, ProtocolError
from orchestrator.xenstore.perms import DOMID_FIRST_RESERVED, Access, Perm
from orchestrator.xenstore.store import DOM0, Caller, Change, Quotas, Refused, Store, Transaction
from orchestrator.xenstore.watches import WatchTable
from orchestrator.xenstore.wire import Op, Packet

log = logging.getLogger("ballast.xenstored")


class _Answered(Exception):
    """Internal: the handler sent its reply itself (WATCH, whose first event follows it)."""


# sun_path is 108 bytes on Linux, including the terminating NUL (sys/un.h).
UNIX_PATH_MAX = 107
_ACK = wire.ACK
# Pause before accepting again after running out of file descriptors (as asyncio's
# own servers do).
_ACCEPT_RETRY_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """How the daemon limits its clients."""

    quotas: Quotas = field(default_factory=Quotas)
    """Per-domain quotas for unprivileged domains (C xenstored defaults)."""
    write_high_water_bytes: int = 64 * 1024
    """Socket send buffer above which a client counts as slow and its requests wait."""
    output_limit_bytes: int = 1024 * 1024
    """Output queued for a slow client beyond the send buffer before it is disconnected."""
    listen_backlog: int = 128
    """Pending connections per socket."""


class _Connection(asyncio.Protocol):
    """One client connection: framing, ordering, flow control."""

    def __init__(self, server: XenstoreServer, domid: int, *, privileged: bool) -> None:
        self.server = server
        self.domid = domid
        self.privileged = privileged
        self.caller = Caller(domid, privileged=privileged, target=server._targets.get(domid))
        self.transport: asyncio.Transport | None = None
        self.decoder = wire.Decoder()
        self.inbox: deque[Packet] = deque()
        self.outbox: deque[bytes] = deque()
        self.outbox_bytes = 0
        self.outbox_events: set[bytes] = set()
        self.write_paused = False
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self.closed = False

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.server.settings.write_high_water_bytes)
        self.server._attach(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.inbox.extend(self.decoder.feed(data))
        except OversizedPacketError as exc:
            # xenstored drops a client that announces an oversized payload.
            log.warning("closing connection of domain %d: %s", self.domid, exc)
            self.abort()
            return
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._detach(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        while self.outbox and not self.write_paused and self.transport is not None:
            data = self.outbox.popleft()
            self.outbox_bytes -= len(data)
            self.outbox_events.discard(data)
            self.transport.write(data)
        if not self.write_paused:
            self.process()
            if not self.write_paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # --- requests and output -----------------------------------------------------

    def process(self) -> None:
        """Handle queued requests until none is left or the client stops reading."""
        handle = self.server._handle
        while self.inbox and not self.write_paused and not self.closed:
            handle(self, self.inbox.popleft())

    def send(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        """Queue one reply."""
        self._out(wire.encode(Packet(op, req_id, tx_id, payload)), event=False)

    def send_event(self, path: str, token: str) -> None:
        """Queue one watch event (dropped if an identical one is still queued)."""
        self._out(
            wire.encode(Packet(Op.WATCH_EVENT, 0, 0, wire.join_strings(path, token))), event=True
        )

    def _out(self, data: bytes, *, event: bool) -> None:
        if self.closed or self.transport is None:
            return
        if not self.write_paused:
            self.transport.write(data)
            return
        if event:
            if data in self.outbox_events:
                return
            self.outbox_events.add(data)
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        if self.outbox_bytes > self.server.settings.output_limit_bytes:
            log.warning(
                "closing connection of domain %d: it does not read its socket "
                "(%d bytes queued)", self.domid, self.outbox_bytes,
            )
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, discarding queued output."""
        if self.closed:
            return
        self.closed = True
        self.outbox.clear()
        self.outbox_events.clear()
        if self.transport is not None:
            self.transport.abort()
        self.server._detach(self)


@dataclass(eq=False)
class _Listener:
    """A listening socket and who its clients are."""

    path: Path
    sock: socket.socket
    domid: int
    privileged: bool


@dataclass(eq=False)
class _Domain:
    domid: int
    listener: _Listener
    connections: set[_Connection] = field(default_factory=set)


class XenstoreServer:
    """The daemon. Use as ``async with XenstoreServer(dir) as srv: await srv.introduce(5)``."""

    def __init__(
        self, directory: str | os.PathLike[str], *, settings: ServerSettings | None = None
    ) -> None:
        self.directory = Path(directory)
        self.settings = settings or ServerSettings()
        self.store = Store(quotas=self.settings.quotas)
        self.watches = WatchTable()
        self.requests: Counter[int] = Counter()
        """Requests received per message type, for statistics and tests."""
        self._targets: dict[int, int] = {}
        self._domains: dict[int, _Domain] = {}
        self._connections: set[_Connection] = set()
        self._privileged: _Listener | None = None
        self._accepting: dict[asyncio.Task[object], socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seed_tree()

    # --- lifecycle ---------------------------------------------------------------

    @property
    def privileged_socket(self) -> Path:
        """The dom0 socket, ``DIR/socket``."""
        return self.directory / "socket"

    def domain_socket(self, domid: int) -> Path:
        """The socket of an introduced domain, ``DIR/domain/<domid>/socket``."""
        return self.directory / "domain" / str(domid) / "socket"

    @property
    def domids(self) -> list[int]:
        """Introduced domains, in ascending order."""
        return sorted(self._domains)

    async def __aenter__(self) -> XenstoreServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create ``DIR`` if needed and listen on the privileged socket."""
        self._loop = asyncio.get_running_loop()
        _raise_fd_limit()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._privileged = self._serve(self.privileged_socket, 0, privileged=True)
        log.info("xenstored serving %s", self.privileged_socket)

    async def stop(self) -> None:
        """Close every socket and connection, and remove the socket files."""
        for domid in list(self._domains):
            self._close_domain(self._domains.pop(domid))
        if self._privileged is not None:
            self._close_listener(self._privileged)
            self._privileged = None
        for task in list(self._accepting):
            task.cancel()
        for conn in list(self._connections):
            conn.abort()
        await asyncio.sleep(0)  # let the transports and accept tasks finish closing

    def _serve(self, path: Path, domid: int, *, privileged: bool) -> _Listener:
        assert self._loop is not None, "server not started"
        sock = self._listen(path, mode=0o600, backlog=self.settings.listen_backlog)
        listener = _Listener(path, sock, domid, privileged)
        self._loop.add_reader(listener.sock.fileno(), self._accept, listener)
        return listener

    def _close_listener(self, listener: _Listener) -> None:
        assert self._loop is not None
        self._loop.remove_reader(listener.sock.fileno())
        listener.sock.close()
        _unlink(listener.path)

    def _accept(self, listener: _Listener) -> None:
        # Our own accept loop: asyncio's Server leaks a connection accepted just
        # before it is closed, which would leave that client hanging.
        assert self._loop is not None
        for _ in range(self.settings.listen_backlog):
            try:
                sock, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors (EMFILE, ENFILE...): the pending client stays
                # queued and the socket stays readable, so stop watching it for a
                # while rather than being woken for it on every turn of the loop.
                log.warning("accept on %s failed: %s; retrying in %g s", listener.path,
                            exc, _ACCEPT_RETRY_S)  # fmt: skip
                fd = listener.sock.fileno()
                self._loop.remove_reader(fd)
                self._loop.call_later(_ACCEPT_RETRY_S, self._resume_accepting, listener)
                return
            sock.setblocking(False)
            task: asyncio.Task[object] = self._loop.create_task(
                self._loop.connect_accepted_socket(
                    lambda: _Connection(self, listener.domid, privileged=listener.privileged),
                    sock,
                )
            )
            self._accepting[task] = sock
            task.add_done_callback(self._accepted)

    def _resume_accepting(self, listener: _Listener) -> None:
        if self._loop is not None and listener.sock.fileno() != -1:
            self._loop.add_reader(listener.sock.fileno(), self._accept, listener)

    def _accepted(self, task: asyncio.Task[object]) -> None:
        sock = self._accepting.pop(task)
        if task.cancelled() or task.exception() is not None:
            sock.close()

    @staticmethod
    def _listen(path: Path, *, mode: int, backlog: int = 128) -> socket.socket:
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise UsageError(
                f"socket path {path} is longer than {UNIX_PATH_MAX} bytes; choose a shorter --dir"
            )
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise UsageError(f"{path} exists and is not a socket")
            if _answers(path):
                raise UsageError(f"another xenstored is already serving {path}")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, mode)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot listen on {path}: {exc.strerror}") from exc
        return sock

    # --- domains -----------------------------------------------------------------

    async def introduce(self, domid: int, *, name: str | None = None) -> Path:
        """Start serving a domain: its socket, its home in the tree, ``@introduceDomain``.

        Introducing a domain again is harmless. Returns the domain's socket path.
        """
        if not 0 < domid < DOMID_FIRST_RESERVED:
            raise UsageError(f"cannot introduce domain {domid}: use 1..{DOMID_FIRST_RESERVED - 1}")
        domain = self._introduce(domid)
        if name is not None:
            self._fire(self.store.write(DOM0, f"{paths.domain_path(domid)}/name", name.encode()))
        return domain.listener.path

    async def release(self, domid: int) -> None:
        """Stop serving a domain: close its connections, remove its home, ``@releaseDomain``."""
        if domid not in self._domains:
            raise UsageError(f"domain {domid} is not introduced")
        self._release(domid)

    def is_introduced(self, domid: int) -> bool:
        """Whether ``domid`` is served (dom0 always is)."""
        return domid == 0 or domid in self._domains

    def _introduce(self, domid: int) -> _Domain:
        existing = self._domains.get(domid)
        if existing is not None:
            return existing
        sock_path = self.domain_socket(domid)
        sock_path.parent.mkdir(parents=True, exist_ok=True)
        domain = _Domain(domid, self._serve(sock_path, domid, privileged=False))
        self._domains[domid] = domain
        self._lay_out_domain(domid)
        self._fire_special(paths.INTRODUCE_DOMAIN)
        return domain

    def _release(self, domid: int) -> None:
        domain = self._domains.pop(domid)
        self._close_domain(domain)
        self._targets.pop(domid, None)
        home = paths.domain_path(domid)
        if self.store.node(home) is not None:
            self._fire(self.store.rm(DOM0, home))
        self._fire_special(paths.RELEASE_DOMAIN)

    def _close_domain(self, domain: _Domain) -> None:
        self._close_listener(domain.listener)
        for conn in list(domain.connections):
            conn.abort()
        with contextlib.suppress(OSError):
            domain.listener.path.parent.rmdir()

    def _seed_tree(self) -> None:
        # What a freshly booted host holds: the domain directory and dom0's home.
        self.store.mkdir(DOM0, "/local/domain/0")
        self.store.mkdir(DOM0, "/tool")

    def _lay_out_domain(self, domid: int) -> None:
        # libxl__domain_make: the home and memory/ are dom0's and readable by the
        # guest ("n0 r<domid>"); data/ belongs to the guest ("n<domid>").
        home = paths.domain_path(domid)
        read_only = (Perm(Access.NONE, 0), Perm(Access.READ, domid))
        writable = (Perm(Access.NONE, domid),)
        for path, perms in ((home, read_only), (f"{home}/memory", read_only),
                            (f"{home}/data", writable)):  # fmt: skip
            self._fire(self.store.mkdir(DOM0, path))
            self._fire(self.store.set_perms(DOM0, path, perms))
        self._fire(self.store.write(DOM0, f"{home}/domid", str(domid).encode()))

    # --- connections -------------------------------------------------------------

    def _attach(self, conn: _Connection) -> None:
        if conn.privileged and self._privileged is None:  # stopped meanwhile
            conn.abort()
            return
        if not conn.privileged:
            domain = self._domains.get(conn.domid)
            if domain is None:  # released while the connection was being accepted
                conn.abort()
                return
            domain.connections.add(conn)
        self._connections.add(conn)

    def _detach(self, conn: _Connection) -> None:
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        domain = self._domains.get(conn.domid)
        if domain is not None:
            domain.connections.discard(conn)
        self.watches.remove_owner(conn)
        for tx in conn.transactions.values():
            self.store.abort(tx)
        conn.transactions.clear()

    # --- events ------------------------------------------------------------------

    def _fire(self, changes: Iterable[Change]) -> None:
        matches = self.watches.matches
        for change in changes:
            for reg, event_path in matches(change, self.store):
                conn = reg.owner
                assert isinstance(conn, _Connection)
                conn.send_event(event_path, reg.token)

    def _fire_special(self, name: str) -> None:
        for reg in self.watches.special(name):
            conn = reg.owner
            assert isinstance(conn, _Connection)
            conn.send_event(name, reg.token)

    # --- request dispatch ----------------------------------------------------------

    def _handle(self, conn: _Connection, packet: Packet) -> None:
        self.requests[packet.op] += 1
        try:
            request = wire.decode_request(packet.op, packet.payload)
        except ProtocolError as exc:
            conn.send(Op.ERROR, packet.req_id, packet.tx_id, wire.encode_error(exc.errno_name))
            return
        try:
            op, payload, changes = self._execute(conn, packet, request)
        except _Answered:
            return
        except Refused as exc:
            conn.send(Op.ERROR, packet.req_id, packet.tx_id, wire.encode_error(exc.errno_name))
            return
        except Exception:
            # A bug or an environment failure (say, no room for a domain's socket)
            # must cost one request, not the connection: answer EIO and log it.
            log.exception("request of type %d from domain %d failed", packet.op, conn.domid)
            conn.send(Op.ERROR, packet.req_id, packet.tx_id, wire.encode_error("EIO"))
            return
        if len(payload) > wire.PAYLOAD_MAX:
            conn.send(Op.ERROR, packet.req_id, packet.tx_id, wire.encode_error("E2BIG"))
            return
        conn.send(op, packet.req_id, packet.tx_id, payload)
        if changes:
            self._fire(changes)

    def _transaction(self, conn: _Connection, tx_id: int) -> Transaction | None:
        if tx_id == 0:
            return None
        tx = conn.transactions.get(tx_id)
        if tx is None:
            raise Refused("ENOENT")
        return tx

    def _execute(
        self, conn: _Connection, packet: Packet, request: wire.Request
    ) -> tuple[int, bytes, list[Change]]:
        caller = conn.caller
        store = self.store
        match request:
            case wire.Read(path):
                value = store.read(caller, path, self._transaction(conn, packet.tx_id))
                return Op.READ, value, []
            case wire.Write(path, value):
                tx = self._transaction(conn, packet.tx_id)
                return Op.WRITE, _ACK, store.write(caller, path, value, tx)
            case wire.Directory(path):
                listing = store.directory(caller, path, self._transaction(conn, packet.tx_id))
                return Op.DIRECTORY, listing, []
            case wire.DirectoryPart(path, offset):
                tx = self._transaction(conn, packet.tx_id)
                chunk = store.directory_part(caller, path, offset, tx)
                return Op.DIRECTORY_PART, wire.encode_directory_chunk(chunk), []
            case wire.Mkdir(path):
                tx = self._transaction(conn, packet.tx_id)
                return Op.MKDIR, _ACK, store.mkdir(caller, path, tx)
            case wire.Rm(path):
                tx = self._transaction(conn, packet.tx_id)
                return Op.RM, _ACK, store.rm(caller, path, tx)
            case wire.GetPerms(path):
                perms = store.get_perms(caller, path, self._transaction(conn, packet.tx_id))
                return Op.GET_PERMS, wire.encode_perms(perms), []
            case wire.SetPerms(path, perms):
                tx = self._transaction(conn, packet.tx_id)
                return Op.SET_PERMS, _ACK, store.set_perms(caller, path, perms, tx)
            case wire.Watch(path, token):
                limit = self.settings.quotas.watches_per_domain
                reg = self.watches.add(conn, caller, path, token, limit=limit)
                conn.send(Op.WATCH, packet.req_id, packet.tx_id, _ACK)
                # A new watch fires once straight away (xenstored), after its reply.
                conn.send_event(reg.path, reg.token)
                raise _Answered
            case wire.Unwatch(path, token):
                self.watches.remove(conn, path, token)
                return Op.UNWATCH, _ACK, []
            case wire.TransactionStart():
                return Op.TRANSACTION_START, wire.encode_int(self._begin(conn, packet)), []
            case wire.TransactionEnd(commit):
                return Op.TRANSACTION_END, _ACK, self._end(conn, packet, commit=commit)
            case wire.GetDomainPath(domid):
                return Op.GET_DOMAIN_PATH, wire.encode_text(paths.domain_path(domid)), []
            case wire.IsDomainIntroduced(domid):
                # DOMID_SELF asks about the caller itself.
                known = domid == DOMID_FIRST_RESERVED or self.is_introduced(domid)
                return Op.IS_DOMAIN_INTRODUCED, wire.encode_bool(known), []
            case wire.Introduce(domid, _mfn, _port):
                self._privileged_only(caller)
                if not 0 < domid < DOMID_FIRST_RESERVED:
                    raise Refused("EINVAL")
                self._introduce(domid)
                return Op.INTRODUCE, _ACK, []
            case wire.Release(domid):
                self._privileged_only(caller)
                if domid not in self._domains:
                    raise Refused("ENOENT")
                self._release(domid)
                return Op.RELEASE, _ACK, []
            case wire.Resume(domid):
                self._privileged_only(caller)
                if domid not in self._domains:
                    raise Refused("ENOENT")
                return Op.RESUME, _ACK, []
            case wire.SetTarget(domid, target):
                self._privileged_only(caller)
                if domid not in self._domains or target not in self._domains:
                    raise Refused("ENOENT")
                self._set_target(domid, target)
                return Op.SET_TARGET, _ACK, []
            case wire.ResetWatches():
                self.watches.remove_owner(conn)
                for tx in conn.transactions.values():
                    store.abort(tx)
                conn.transactions.clear()
                return Op.RESET_WATCHES, _ACK, []
            case wire.Control(args):
                self._privileged_only(caller)
                return Op.CONTROL, self._control(args), []
        raise Refused("ENOSYS")  # pragma: no cover - decode_request is exhaustive

    @staticmethod
    def _privileged_only(caller: Caller) -> None:
        if not caller.privileged:
            raise Refused("EACCES")

    def _begin(self, conn: _Connection, packet: Packet) -> int:
        if packet.tx_id != 0:
            raise Refused("EBUSY")
        limit = self.settings.quotas.transactions_per_connection
        if not conn.privileged and len(conn.transactions) > limit:
            raise Refused("ENOSPC")
        tx_id = conn.next_tx_id
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & wire.U32_MAX
        conn.next_tx_id = (tx_id + 1) & wire.U32_MAX
        conn.transactions[tx_id] = self.store.begin(conn.caller, tx_id)
        return tx_id

    def _end(self, conn: _Connection, packet: Packet, *, commit: bool) -> list[Change]:
        tx = conn.transactions.pop(packet.tx_id, None)
        if tx is None:
            raise Refused("ENOENT")
        if not commit:
            self.store.abort(tx)
            return []
        return self.store.commit(tx)

    def _set_target(self, domid: int, target: int) -> None:
        self._targets[domid] = target
        domain = self._domains[domid]
        for conn in domain.connections:
            conn.caller = Caller(domid, privileged=False, target=target)

    def _control(self, args: tuple[str, ...]) -> bytes:
        command = args[0] if args else ""
        if command == "print" and len(args) == 2:
            log.info("xenstore-control print: %s", args[1])
            return _ACK
        if command == "quota" and len(args) == 1:
            q = self.settings.quotas
            text = (
                f"nodes {q.nodes_per_domain}\nwatches {q.watches_per_domain}\n"
                f"transactions {q.transactions_per_connection}\nvalue-bytes {q.value_bytes}\n"
                f"transaction-nodes {q.nodes_per_transaction}\n"
            )
            return wire.encode_text(text)
        if command == "help" and len(args) == 1:
            return wire.encode_text("help\nprint <text>\nquota\n")
        raise Refused("EINVAL")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one: every domain costs a
    listening socket plus its connections, and a simulated host has hundreds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
        return True


async def serve(
    directory: str | os.PathLike[str],
    *,
    domains: Iterable[int] = (),
    settings: ServerSettings | None = None,
    on_ready: Callable[[XenstoreServer], None] | None = None,
) -> None:
    """Run a daemon until SIGTERM or SIGINT, then shut it down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with XenstoreServer(directory, settings=settings) as server:
            for domid in domains:
                await server.introduce(domid)
            if on_ready is not None:
                on_ready(server)
            await stop.wait()
            log.info("xenstored shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
