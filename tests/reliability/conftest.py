"""Fixtures of the reliability tests: a short working directory (unix socket
paths are limited to 107 bytes), reporting guests, the real agent as a
process, and a simulated host running the real daemon (``open_daemon``)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.schema import encode_report
from orchestrator import config as cfg
from orchestrator.cli.main import app
from orchestrator.control import HostPolicy, VmPlan, VmState
from orchestrator.controller.daemon import Daemon, base_host_policy, open_daemon
from orchestrator.controller.loop import Controller, LoopSettings
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.errors import XenstoreError
from orchestrator.xenstore.server import XenstoreServer
from tests.controller.conftest import GIB_KB, make_report
from tests.reliability.harness import FAST_RECONNECT, Domain, follow_targets

FIXTURES = Path(__file__).parents[1] / "fixtures" / "proc"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rel-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class ReportingGuest:
    """A guest writing reports through its own domain socket every ``period_s``.

    Stands in for the agent where a test needs to say exactly what the guest
    reports; tests of the agent itself run the real ``ballast-agent``.
    """

    domid: int
    socket: Path
    total_kb: int
    committed_kb: int = GIB_KB
    psi: float = 0.0
    period_s: float = 0.2
    silent: bool = False
    allocation: Callable[[], int] | None = None
    """Where MemTotal comes from, if it follows the balloon (else ``total_kb``)."""
    seq: int = 0
    written: int = 0
    failures: int = 0
    _client: PyxsClient | None = None
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._client = PyxsClient(socket_path=str(self.socket), settings=FAST_RECONNECT)
        await self._client.connect()
        self._task = asyncio.create_task(self._run(), name=f"guest-{self.domid}")

    async def report_now(self) -> None:
        """Write one report now (fails if xenstore is down)."""
        assert self._client is not None
        self.seq += 1
        if self.allocation is not None:
            self.total_kb = self.allocation()
        report = make_report(seq=self.seq, total_kb=self.total_kb,
                             committed_kb=self.committed_kb, psi=self.psi)
        await self._client.write("data/ballast/report", encode_report(report))
        self.written += 1

    async def _run(self) -> None:
        while not self._stop.is_set():
            if not self.silent:
                try:
                    await self.report_now()
                except XenstoreError:
                    self.failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.period_s)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()


@dataclass
class DaemonHost:
    """A simulated host running the real daemon in this process (``open_daemon``)."""

    workdir: Path
    db: Path
    server: XenstoreServer
    xs: PyxsClient
    hv: SimulatedHypervisor
    daemon: Daemon
    domains: list[Domain]
    config: cfg.Config

    @property
    def base(self) -> HostPolicy:
        """The host policy ``ballast.toml`` gives (what steering validates against)."""
        return base_host_policy(self.config)

    @property
    def controller(self) -> Controller:
        return self.daemon.controller

    def vm(self, domid: int) -> VmPlan | None:
        plan = self.controller.last_plan
        if plan is None:
            return None
        return next((vm for vm in plan.vms if vm.domid == domid), None)

    def state(self, domid: int) -> VmState | None:
        vm = self.vm(domid)
        return None if vm is None else vm.state

    async def target(self, domid: int) -> int:
        return int(await self.xs.read(f"/local/domain/{domid}/memory/target"))


def upgrade_db(db: Path) -> None:
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", str(db)])
    assert result.exit_code == 0, result.output


@contextlib.asynccontextmanager
async def daemon_host(
    workdir: Path, domains: Sequence[Domain], *, interval_s: float = 0.5,
    store: cfg.StoreConfig | None = None, host_name: str = "rel-host", db: Path | None = None,
) -> AsyncIterator[DaemonHost]:
    """Start xenstored (in this process), the domains, the daemon and its loop."""
    db = db or workdir / "ballast.db"
    upgrade_db(db)
    config = cfg.Config(
        controller=cfg.ControllerConfig(host_name=host_name, xenstore=str(workdir / "xs"),
                                        interval_s=interval_s),
        store=replace(store or cfg.StoreConfig(), url=str(db)),
    )
    hv = SimulatedHypervisor(total_kb=32 * GIB_KB, dom0_kb=2 * GIB_KB)
    (workdir / "xs").mkdir(exist_ok=True)
    async with XenstoreServer(workdir / "xs") as server:
        xs = PyxsClient(socket_path=server.privileged_socket)
        await xs.connect()
        for d in domains:
            await server.introduce(d.domid)
            await lay_out_domain(xs, domid=d.domid, name=d.name, uuid=d.uuid,
                                 static_max_kb=d.static_max_kb, target_kb=d.target_kb)
            hv.add_domain(domid=d.domid, name=d.name, uuid=d.uuid, actual_kb=d.target_kb,
                          max_kb=d.static_max_kb, rate_kb_s=8 * GIB_KB)
        stop = asyncio.Event()
        try:
            async with open_daemon(config, hypervisor=hv,
                                   loop_settings=LoopSettings(min_gap_s=0.01)) as daemon:
                tasks = [
                    asyncio.create_task(daemon.controller.run(stop), name="controller"),
                    asyncio.create_task(follow_targets(
                        server.privileged_socket, hv, lambda: [d.domid for d in domains], stop),
                        name="balloons"),
                ]
                try:
                    yield DaemonHost(workdir, db, server, xs, hv, daemon, list(domains), config)
                finally:
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await xs.close()


def start_agent(socket: Path, root: Path, *, heartbeat: str = "0.5s") -> subprocess.Popen[bytes]:
    """The real agent as its own process, reading a captured /proc tree."""
    exe = Path(sys.executable).with_name("ballast-agent")
    return subprocess.Popen(
        [str(exe), "--xenstore", f"unix:{socket}", "--root", str(root), "--heartbeat", heartbeat,
         "--interval", "0.2s", "--min-interval", "0.2s", "--shrink", "none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
