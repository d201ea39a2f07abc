"""``python -m orchestrator.sim.wire.hostproc CONFIG``: the guests of a wire-level run.

The child process ``ballast sim`` starts (see :mod:`orchestrator.sim.wire.hostlink`
for why and for the protocol). It builds the :class:`SimHost`, connects one
balloon driver and one real agent per guest to the guest's own domain socket,
and waits for ``start``; from then the guests live in virtual time until
``stop``, SIGTERM, or ``ballast sim`` going away (its connection closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from agents.agent import Agent
from agents.main import connector
from orchestrator.errors import BallastError
from orchestrator.sim.scenario import load_file
from orchestrator.sim.wire.clock import VirtualClock
from orchestrator.sim.wire.guests import (
    XENSTORE_TIMEOUT_S,
    ModelShrinkActuator,
    ModelSource,
    SimHost,
    agent_settings,
    balloon_driver,
)
from orchestrator.sim.wire.hostlink import (
    HostConfig,
    decode,
    encode,
    memory_message,
    outcome_message,
)
from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.errors import XenstoreError

log = logging.getLogger("ballast.sim.host")


class _Guests:
    """The guests of one host and their lifecycle."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        scenario = load_file(Path(config.scenario))
        self.clock = VirtualClock(speed=config.speed, epoch=datetime.now(UTC))
        self.host = SimHost(scenario, clock=self.clock.now_s, host_name=config.host_name)
        self.started = asyncio.Event()
        self.stop = asyncio.Event()
        self.finished = asyncio.Event()
        self.outcome: dict[str, object] = {}
        self.agents: list[Agent] = []
        self.drivers: list[PyxsClient] = []
        self.connections = 0
        self.disconnected = asyncio.Event()

    def socket(self, domid: int) -> Path:
        return Path(self.config.xenstore_dir) / "domain" / str(domid) / "socket"

    async def connect(self) -> None:
        speed = self.config.speed
        for dom in self.host.domains:
            client = PyxsClient(socket_path=str(self.socket(dom.domid)),
                                settings=ClientSettings(timeout_s=XENSTORE_TIMEOUT_S))
            await client.connect()
            self.drivers.append(client)
            settings = agent_settings(self.socket(dom.domid), speed=speed,
                                      interval_s=self.config.agent_interval_s)
            self.agents.append(Agent(
                settings,
                source=ModelSource(self.host, dom.domid),
                actuator=ModelShrinkActuator(self.host, dom.domid, poll_s=1.0 / speed),
                connect=connector(settings.connection, timeout_s=XENSTORE_TIMEOUT_S),
            ))

    async def live(self) -> None:
        """Run the guests from ``start`` until ``stop``."""
        await _first(self.started, self.stop)
        if self.started.is_set() and not self.stop.is_set():
            guests_stop = asyncio.Event()
            tasks = [
                *(asyncio.create_task(balloon_driver(self.host, d.domid, c, guests_stop),
                                      name=f"balloon-driver-{d.domid}")
                  for d, c in zip(self.host.domains, self.drivers, strict=True)),
                *(asyncio.create_task(a.run(guests_stop), name=f"agent-{d.domid}")
                  for d, a in zip(self.host.domains, self.agents, strict=True)),
            ]
            await self.stop.wait()
            guests_stop.set()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.error("a guest failed: %r", result)
            self.host.advance()
        started = self.started.is_set()
        self.outcome = outcome_message(
            self.host.t_s, sum(a.state.next_seq - 1 for a in self.agents),
            self.host.metrics() if started else None,
        )
        for client in self.drivers:
            with contextlib.suppress(XenstoreError, OSError):
                await client.close()
        self.finished.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer ``ballast sim``'s requests; its going away stops the guests."""
        self.connections += 1
        self.disconnected.clear()
        try:
            while line := await reader.readline():
                try:
                    request = decode(line)
                    reply = await self.answer(request)
                except BallastError as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(encode(reply))
                await writer.drain()
                if request.get("op") == "stop":
                    break
        except (OSError, ValueError) as exc:  # ValueError: a line over the limit
            log.warning("control connection failed: %r", exc)
        finally:
            self.stop.set()
            writer.close()
            self.connections -= 1
            if not self.connections:
                self.disconnected.set()

    async def answer(self, request: dict[str, object]) -> dict[str, object]:
        op = request.get("op")
        if op == "memory":
            host = await self.host.hypervisor.host_memory()
            domains = await self.host.hypervisor.domains()
            return memory_message(host, domains)
        if op == "start":
            origin = request.get("origin_s")
            if not isinstance(origin, int | float):
                return {"ok": False, "error": "start needs origin_s"}
            self.clock.start(float(origin))
            self.started.set()
            return {"ok": True}
        if op == "stop":
            self.stop.set()
            await self.finished.wait()
            return self.outcome
        return {"ok": False, "error": f"unknown op {op!r}"}


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def run_host(config: HostConfig) -> None:
    """The whole host process."""
    guests = _Guests(config)
    await guests.connect()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, guests.stop.set)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.control)
    server = await asyncio.start_unix_server(guests.serve, path=config.control, limit=1 << 20)
    async with server:
        await guests.live()
        if guests.connections:  # the stop request gets its reply before the server closes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(guests.disconnected.wait(), 5.0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.control)


def main(argv: list[str] | None = None) -> int:
    """Run the host process; one line on stderr and exit 1 on error."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(args) != 1:
        print("usage: python -m orchestrator.sim.wire.hostproc CONFIG_JSON", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_host(HostConfig.from_json(args[0])))
    except BallastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
