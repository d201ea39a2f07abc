"""Fault injection for the reliability tests and the soak (bench/soak.py).

The pieces a simulated Xen host needs so that each part can be hurt for real:

* :class:`Xenstored`: Ballast's xenstore server as a child process. It can be
  killed (SIGKILL, as a crashing xenstored dies) and brought back *with the
  toolstack's keys*: the new daemon is started in a staging directory, the
  domains are introduced and laid out there as libxl would, and only then
  are its sockets renamed over the dead one's, so clients that reconnect see
  a daemon that already holds the tree (as after a xenstored live update),
  never a half-built one. Guest-written keys are not carried over: the
  agents write them again.
* :class:`HypervisorService`: a :class:`SimulatedHypervisor` (the one fake
  seam: there is no Xen here) answered over a unix socket with the line
  protocol of ``orchestrator.sim.wire.hostlink``, so that a controller in
  another process (which the tests SIGKILL) sees the same allocations as the
  balloon drivers that move them; :class:`RemoteHypervisor` is the
  controller's side.
* :func:`follow_targets` (the guests' balloon drivers), :class:`TargetWatcher`
  (an independent dom0 client that records every ``memory/target`` write),
  :class:`DatabaseLock` (another process holding SQLite's write lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import TransientError
from orchestrator.hypervisor import DomainMemory, HostMemory
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.sim.wire.hostlink import (
    SingleFlightHypervisor,
    decode,
    encode,
    memory_message,
    parse_memory,
)
from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.errors import XenstoreError
from orchestrator.xenstore.runner import ServerProcess

GIB_KB = 1024 * 1024
MIB_KB = 1024
ROOT = Path(__file__).parents[2]

# Reconnect fast in tests: the default backoff (50 ms doubling to 5 s) is for
# production; a test waiting out a 5 s step learns nothing more.
FAST_RECONNECT = ClientSettings(timeout_s=5.0, reconnect_min_s=0.02, reconnect_max_s=0.5)


@dataclass(slots=True)
class Domain:
    """What the toolstack knows of one domain (and lays out in xenstore)."""

    domid: int
    name: str
    static_max_kb: int
    target_kb: int
    uuid: str = ""

    def __post_init__(self) -> None:
        if not self.uuid:
            self.uuid = f"00000000-0000-4000-8000-{self.domid:012d}"


class Xenstored:
    """The project's xenstored as a child process that can die and come back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "xs"
        self.process: ServerProcess | None = None
        self._generation = 0
        self.restarts = 0

    @property
    def privileged_socket(self) -> Path:
        """``DIR/socket``: dom0's."""
        return self.dir / "socket"

    def domain_socket(self, domid: int) -> Path:
        """``DIR/domain/<domid>/socket``: the guest's own."""
        return self.dir / "domain" / str(domid) / "socket"

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None and self.process.process is not None
        return self.process.process.pid

    async def start(self, domains: Sequence[Domain]) -> None:
        """Start the first daemon and lay the domains out."""
        self.process = ServerProcess(self.dir, domains=[d.domid for d in domains])
        await asyncio.to_thread(self.process.start)
        await lay_out(self.privileged_socket, domains)

    def kill(self) -> None:
        """SIGKILL: the daemon dies at once; its connections reset."""
        if self.process is not None:
            self.process.kill()

    def freeze(self) -> None:
        """SIGSTOP: the daemon stops answering; connections stay open."""
        if self.process is not None:
            self.process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT."""
        if self.process is not None:
            self.process.signal(signal.SIGCONT)

    async def restart(
        self,
        domains: Sequence[Domain],
        *,
        before_live: Callable[[Path], Awaitable[None]] | None = None,
    ) -> None:
        """Kill the daemon (if alive) and bring a new one up holding the toolstack's keys.

        ``before_live(privileged_socket)`` runs once the new daemon is laid
        out but before any client can reach it (to register a watcher first).
        """
        self.kill()
        old = self.process
        self._generation += 1
        staging = self.root / f"s{self._generation}"
        fresh = ServerProcess(staging, domains=[d.domid for d in domains])
        await asyncio.to_thread(fresh.start)
        await lay_out(staging / "socket", domains)
        if before_live is not None:
            await before_live(staging / "socket")
        for d in domains:
            target = self.domain_socket(d.domid)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging / "domain" / str(d.domid) / "socket", target)
        os.rename(staging / "socket", self.privileged_socket)
        self.process = fresh
        self.restarts += 1
        if old is not None:
            await asyncio.to_thread(old.stop)

    async def stop(self) -> None:
        """Stop the daemon."""
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
            self.process = None


async def lay_out(socket_path: Path, domains: Sequence[Domain]) -> None:
    """Write what libxl writes for each domain, through the privileged socket."""
    xs = PyxsClient(socket_path=str(socket_path), settings=FAST_RECONNECT)
    await xs.connect()
    try:
        for d in domains:
            await lay_out_domain(xs, domid=d.domid, name=d.name, uuid=d.uuid,
                                 static_max_kb=d.static_max_kb, target_kb=d.target_kb)
    finally:
        await xs.close()


# --------------------------------------------------------------------- hypervisor


class HypervisorService:
    """A simulated hypervisor answered over a unix socket (``memory`` requests).

    ``hold`` delays every answer while it is cleared: a controller asking
    then is caught in the middle of its observe phase (``asked`` is set).
    """

    def __init__(self, hv: SimulatedHypervisor, path: Path) -> None:
        self.hv = hv
        self.path = path
        self.requests = 0
        self.asked = asyncio.Event()
        self.hold = asyncio.Event()
        self.hold.set()
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> HypervisorService:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                request = decode(line)
                self.requests += 1
                self.asked.set()
                await self.hold.wait()
                if request.get("op") == "memory":
                    reply = memory_message(await self.hv.host_memory(), await self.hv.domains())
                else:
                    reply = {"ok": False, "error": f"unknown op {request.get('op')!r}"}
                writer.write(encode(reply))
                await writer.drain()
        except (OSError, TransientError):
            pass
        finally:
            writer.close()


class RemoteHypervisor(SingleFlightHypervisor):
    """The controller's hypervisor, asked over a :class:`HypervisorService` socket.

    Both figures of one cycle come from one request; a broken link raises
    ``TransientError`` (the cycle is skipped) and is opened again next time.
    """

    def __init__(self, path: str, *, timeout_s: float = 10.0) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        super().__init__()

    async def _fetch(self) -> tuple[HostMemory, dict[int, DomainMemory]]:
        async with self._lock:
            try:
                if self._streams is None:
                    self._streams = await asyncio.open_unix_connection(self._path, limit=1 << 22)
                reader, writer = self._streams
                writer.write(encode({"op": "memory"}))
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), self._timeout_s)
            except (OSError, TimeoutError) as exc:
                self._drop()
                raise TransientError(f"hypervisor not answering: {exc!r}") from None
            if not line:
                self._drop()
                raise TransientError("hypervisor connection closed")
            return parse_memory(decode(line))

    def _drop(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


# ------------------------------------------------------------------------ guests


async def follow_targets(
    socket_path: Path, hv: SimulatedHypervisor, domids: Callable[[], Sequence[int]],
    stop: asyncio.Event, *, period_s: float = 0.05,
) -> None:
    """The balloon drivers: every ``period_s`` read each target, move the allocations."""
    xs = PyxsClient(socket_path=str(socket_path), settings=FAST_RECONNECT)
    await xs.connect()
    try:
        while not stop.is_set():
            ids = list(domids())
            values = await xs.read_many([f"/local/domain/{d}/memory/target" for d in ids])
            for domid, value in zip(ids, values, strict=True):
                if isinstance(value, bytes) and value.isdigit():
                    with contextlib.suppress(KeyError):
                        hv.set_target(domid, int(value))
            hv.advance(period_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)
    finally:
        await xs.close()


@dataclass(slots=True)
class TargetWrite:
    """One ``memory/target`` change seen by the watcher."""

    at: float
    """``time.monotonic()`` when seen."""
    domid: int
    value: int | None


@dataclass(slots=True)
class TargetWatcher:
    """An independent dom0 client recording every ``memory/target`` change.

    The first event of each watch (xenstored fires a new watch once) is not a
    write and is not recorded.
    """

    socket_path: Path
    domids: Sequence[int]
    writes: list[TargetWrite] = field(default_factory=list)
    on_write: Callable[[TargetWrite], None] | None = None
    """Called at once for every write seen (e.g. to kill the writer mid-cycle)."""
    _xs: PyxsClient | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> TargetWatcher:
        self._xs = PyxsClient(socket_path=str(self.socket_path), settings=FAST_RECONNECT)
        await self._xs.connect()
        ready = [asyncio.Event() for _ in self.domids]
        self._tasks = [asyncio.create_task(self._watch(d, r), name=f"target-watch-{d}")
                       for d, r in zip(self.domids, ready, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10.0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._xs is not None:
            await self._xs.close()

    async def _watch(self, domid: int, ready: asyncio.Event) -> None:
        assert self._xs is not None
        path = f"/local/domain/{domid}/memory/target"
        async with self._xs.watch(path) as events:
            first = True
            async for _ in events:
                if first:
                    first = False
                    ready.set()
                    continue
                write = TargetWrite(time.monotonic(), domid, None)
                self.writes.append(write)
                if self.on_write is not None:
                    self.on_write(write)  # before the read: as soon as it is seen
                with contextlib.suppress(XenstoreError, ValueError):
                    write.value = int(await self._xs.read(path))


class DatabaseLock:
    """Another process holding SQLite's write lock (an open write transaction).

    ``python -c`` with the standard ``sqlite3`` module: ``BEGIN IMMEDIATE``,
    one uncommitted write, then it waits until released (or ``hold_s``).
    """

    _SCRIPT = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "c.execute(\"UPDATE hosts SET name = name\")\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline() if float(sys.argv[2]) <= 0 else time.sleep(float(sys.argv[2]))\n"
        "c.execute('ROLLBACK')\n"
    )

    def __init__(self, db: Path, *, hold_s: float = 0.0) -> None:
        self.db = db
        self.hold_s = hold_s
        self.proc: subprocess.Popen[bytes] | None = None

    def acquire(self) -> None:
        """Start the process and wait until it holds the lock."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self._SCRIPT, str(self.db), str(self.hold_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"locked\n":
            err = self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"could not lock {self.db}: {line!r} {err!r}")

    def release(self) -> None:
        """Roll the transaction back and let the process exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"\n")
                self.proc.stdin.flush()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


async def eventually(
    probe: Callable[[], Any], *, timeout_s: float = 10.0, what: str = "condition",
    period_s: float = 0.02,
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(period_s)
