"""The link between ``ballast sim`` and its simulated host process.

A wire-level run puts the guests (their memory models, balloon drivers and
agents) and the hypervisor they share in one child process, the *host
process* (:mod:`orchestrator.sim.wire.hostproc`), and the controller in the
``ballast sim`` process, as guests and dom0 are apart on a real host. The
controller asks the host process for allocations the way the real one runs
``xl``: through a :class:`~orchestrator.hypervisor.Hypervisor`, here
:class:`RemoteHypervisor`. Two processes also use two cores.

The protocol is one JSON object per line over a unix socket; every request
gets one reply, ``{"ok": true, ...}`` or ``{"ok": false, "error": TEXT}``:

* ``{"op": "start", "origin_s": S}``: virtual time 0 is at monotonic time S
  (the controller's clock shares it); the guests start.
* ``{"op": "memory"}``: host totals and every domain's allocation now.
* ``{"op": "stop"}``: stop the guests; the reply carries what they did
  (``t_s``, ``reports``, ``metrics``), then the process exits.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

from orchestrator.errors import FatalError, TransientError
from orchestrator.hypervisor import DomainMemory, HostMemory
from orchestrator.sim.metrics import RunMetrics

# Wall seconds. A reply the host process does not give within this is a
# failure of the process, never of the simulation; the start includes
# loading the scenario and connecting every guest to xenstored.
REQUEST_TIMEOUT_S: Final = 10.0
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
# A request or reply is a few KiB at most (one entry per domain).
_MAX_LINE: Final = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """What the host process needs to build the guests."""

    scenario: str
    """Scenario TOML path."""
    speed: float
    """Virtual seconds per wall second."""
    xenstore_dir: str
    """Directory of the xenstore server's sockets (``domain/<domid>/socket``)."""
    control: str
    """Unix socket the host process listens on for this protocol."""
    host_name: str
    """Name of the simulated host (the domains' uuids derive from it)."""
    agent_interval_s: float
    """How often each agent samples its guest, virtual seconds."""

    def to_json(self) -> str:
        """The configuration as one JSON argument."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostConfig:
        """Parse what :meth:`to_json` wrote; ``FatalError`` if it is not that."""
        try:
            doc = json.loads(text)
            return cls(
                scenario=str(doc["scenario"]),
                speed=float(doc["speed"]),
                xenstore_dir=str(doc["xenstore_dir"]),
                control=str(doc["control"]),
                host_name=str(doc["host_name"]),
                agent_interval_s=float(doc["agent_interval_s"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise FatalError(f"invalid host process configuration: {exc}") from None


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One protocol line as an object; ``TransientError`` if it is not one."""
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise TransientError(f"simulated host: unreadable message: {exc}") from None
    if not isinstance(doc, dict):
        raise TransientError("simulated host: a message must be a JSON object")
    return doc


def memory_message(host: HostMemory, domains: Mapping[int, DomainMemory]) -> dict[str, Any]:
    """The reply to ``memory``."""
    return {
        "ok": True,
        "total_kb": host.total_kb,
        "free_kb": host.free_kb,
        "domains": [asdict(d) for d in domains.values()],
    }


def parse_memory(reply: Mapping[str, Any]) -> tuple[HostMemory, dict[int, DomainMemory]]:
    """What a ``memory`` reply says; ``TransientError`` if it is malformed."""
    try:
        host = HostMemory(total_kb=int(reply["total_kb"]), free_kb=int(reply["free_kb"]))
        domains = {}
        for item in reply["domains"]:
            dom = DomainMemory(**item)
            domains[dom.domid] = dom
    except (KeyError, TypeError, ValueError) as exc:
        raise TransientError(f"simulated host: malformed memory reply: {exc}") from None
    return host, domains


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestsOutcome:
    """What the guests did, as the host process reports when it stops."""

    t_s: float
    """Virtual time the host reached."""
    reports: int
    """Reports the agents wrote."""
    metrics: RunMetrics | None
    """The run scored as the fast benchmark scores one (None if it never started)."""


def outcome_message(t_s: float, reports: int, metrics: RunMetrics | None) -> dict[str, Any]:
    """The reply to ``stop``."""
    return {"ok": True, "t_s": t_s, "reports": reports,
            "metrics": asdict(metrics) if metrics is not None else None}


def parse_outcome(reply: Mapping[str, Any]) -> GuestsOutcome:
    """What a ``stop`` reply says."""
    try:
        raw = reply["metrics"]
        return GuestsOutcome(t_s=float(reply["t_s"]), reports=int(reply["reports"]),
                             metrics=RunMetrics(**raw) if raw is not None else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise TransientError(f"simulated host: malformed stop reply: {exc}") from None


class HostProcess:
    """The host process, started and spoken to by ``ballast sim``."""

    def __init__(self, config: HostConfig, *, log_path: Path) -> None:
        """``log_path``: the process's stdout and stderr go there."""
        self.config = config
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the process and connect once it listens."""
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.sim.wire.hostproc", self.config.to_json(),
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches ballast sim only; it stops the host
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            if self.process.returncode is not None:
                raise FatalError(f"the simulated host did not start: {self.log_tail()}")
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.config.control, limit=_MAX_LINE)
                return
            except OSError:
                if loop.time() > deadline:
                    raise FatalError(
                        f"the simulated host did not start within {START_TIMEOUT_S:g} s"
                    ) from None
                await asyncio.sleep(0.05)

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the host process's output, for error messages."""
        try:
            data = self.log_path.read_bytes()[-limit:]
        except OSError:
            return "(no output)"
        text = data.decode(errors="replace").strip()
        return text.splitlines()[-1] if text else "(no output)"

    async def request(self, message: Mapping[str, Any], *,
                      timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Send one request and return its reply; ``TransientError`` on failure."""
        if self._reader is None or self._writer is None:
            raise TransientError("simulated host: not connected")
        async with self._lock:
            try:
                self._writer.write(encode(message))
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), timeout_s)
            except (OSError, TimeoutError) as exc:
                raise TransientError(f"simulated host not answering: {exc!r}") from None
        if not line:
            raise TransientError(f"simulated host gone: {self.log_tail()}")
        reply = decode(line)
        if reply.get("ok") is not True:
            raise TransientError(f"simulated host: {reply.get('error', 'refused')}")
        return reply

    async def start_clock(self, origin_s: float) -> None:
        """Virtual time 0 is at monotonic ``origin_s``; the guests start."""
        await self.request({"op": "start", "origin_s": origin_s})

    async def stop(self) -> GuestsOutcome:
        """Stop the guests, collect what they did, wait for the process to exit."""
        outcome = parse_outcome(await self.request({"op": "stop"}, timeout_s=STOP_TIMEOUT_S))
        await self.close()
        return outcome

    async def close(self) -> None:
        """Disconnect; end the process if it is still running (SIGTERM, then SIGKILL)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
        proc = self.process
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class SingleFlightHypervisor(abc.ABC):
    """A :class:`~orchestrator.hypervisor.Hypervisor` answered by one request.

    The controller asks for host totals and domains at once each cycle; both
    answers come from one :meth:`_fetch` shared by every concurrent caller,
    so they describe one moment. Subclasses say how to fetch.
    """

    def __init__(self) -> None:
        self._pending: asyncio.Future[tuple[HostMemory, dict[int, DomainMemory]]] | None = None

    @abc.abstractmethod
    async def _fetch(self) -> tuple[HostMemory, dict[int, DomainMemory]]:
        """Both figures of one moment, from wherever the subclass asks."""

    async def _memory(self) -> tuple[HostMemory, dict[int, DomainMemory]]:
        pending = self._pending
        if pending is None:
            pending = asyncio.ensure_future(self._fetch())
            self._pending = pending
            pending.add_done_callback(self._clear)
        return await asyncio.shield(pending)

    def _clear(self, future: asyncio.Future[Any]) -> None:
        if self._pending is future:
            self._pending = None
        if not future.cancelled():
            future.exception()  # retrieved: a failure is raised to every waiter

    async def host_memory(self) -> HostMemory:
        return (await self._memory())[0]

    async def domains(self) -> Mapping[int, DomainMemory]:
        return (await self._memory())[1]


class RemoteHypervisor(SingleFlightHypervisor):
    """The controller's hypervisor of the host process, over its control link."""

    def __init__(self, host: HostProcess) -> None:
        super().__init__()
        self._host = host
        self.queries = 0

    async def _fetch(self) -> tuple[HostMemory, dict[int, DomainMemory]]:
        self.queries += 1
        return parse_memory(await self._host.request({"op": "memory"}))
