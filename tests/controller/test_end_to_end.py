"""End to end on one simulated host: the real agent (as a process, on fixture
/proc trees), the project's xenstore server, the real controller and a real
SQLite history, steered and inspected through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator import config as cfg
from orchestrator.cli.main import app
from orchestrator.controller.daemon import open_daemon
from orchestrator.controller.loop import Controller, LoopSettings
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.server import XenstoreServer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "proc"
GIB_KB = 1024 * 1024
HOST = "e2e-host"
VMS = {  # domid: (name, static-max, fixture tree)
    5: ("web", 8 * GIB_KB, "linux-6.1-xen-pvh-zswap"),
    6: ("db", 4 * GIB_KB, "linux-5.10-xen-hvm"),
}


@dataclass
class Host:
    dir: Path
    db: Path
    server: XenstoreServer
    xs: PyxsClient
    hv: SimulatedHypervisor
    controller: Controller

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(app, [*args, "--db", str(self.db), "--host-name", HOST])
        return result

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    async def target(self, domid: int) -> int:
        return int(await self.xs.read(f"/local/domain/{domid}/memory/target"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="e2e-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _agent(socket: Path, root: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("ballast-agent")
    return subprocess.Popen(
        [str(exe), "--xenstore", f"unix:{socket}", "--root", str(root), "--heartbeat", "1s",
         "--interval", "0.2s", "--shrink", "none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


async def _balloons(host_xs: PyxsClient, hv: SimulatedHypervisor, stop: asyncio.Event) -> None:
    """The guests' balloon drivers: follow memory/target at the simulated rate."""
    while not stop.is_set():
        for domid in VMS:
            raw = await host_xs.read(f"/local/domain/{domid}/memory/target")
            hv.set_target(domid, int(raw))
        hv.advance(0.1)
        await asyncio.sleep(0.1)


@pytest.fixture
async def host(workdir: Path) -> AsyncIterator[Host]:
    db = workdir / "ballast.db"
    assert CliRunner().invoke(app, ["db", "upgrade", "--db", str(db)]).exit_code == 0
    config = cfg.Config(
        controller=cfg.ControllerConfig(host_name=HOST, xenstore=str(workdir / "xs"),
                                        interval_s=0.5),
        store=cfg.StoreConfig(url=str(db)),
    )
    hv = SimulatedHypervisor(total_kb=32 * GIB_KB, dom0_kb=2 * GIB_KB)
    (workdir / "xs").mkdir()
    agents = []
    async with XenstoreServer(workdir / "xs") as server:
        xs = PyxsClient(socket_path=server.privileged_socket)
        await xs.connect()
        for domid, (name, static_max, _tree) in VMS.items():
            uuid = f"00000000-0000-4000-8000-{domid:012d}"
            await server.introduce(domid)
            await lay_out_domain(xs, domid=domid, name=name, uuid=uuid,
                                 static_max_kb=static_max, target_kb=static_max)
            hv.add_domain(domid=domid, name=name, uuid=uuid, actual_kb=static_max,
                          max_kb=static_max, rate_kb_s=4 * GIB_KB)
        stop = asyncio.Event()
        async with open_daemon(config, hypervisor=hv,
                               loop_settings=LoopSettings(min_gap_s=0.01)) as daemon:
            for domid, (_name, _max, tree) in VMS.items():
                agents.append(_agent(server.domain_socket(domid), FIXTURES / tree))
            tasks = [asyncio.create_task(daemon.controller.run(stop)),
                     asyncio.create_task(_balloons(xs, hv, stop))]
            try:
                yield Host(dir=workdir, db=db, server=server, xs=xs, hv=hv,
                           controller=daemon.controller)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
                for proc in agents:
                    proc.send_signal(signal.SIGTERM)
                for proc in agents:
                    assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
                await asyncio.to_thread(daemon.writer.flush, 10)
        await xs.close()


async def _until(predicate: Any, timeout_s: float = 15.0, what: str = "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_controller_agents_store_and_cli_together(host: Host) -> None:
    # The real agents report real figures (from the fixture trees).
    def fresh_status() -> Any:
        doc = host.cli_json("status")
        vms = {vm["name"]: vm for vm in doc["vms"]}
        if len(vms) == 2 and all(vm["state"] == "ok" for vm in vms.values()):
            return vms
        return None

    vms = await _until(fresh_status, what="fresh status")
    assert vms["web"]["available_kb"] == 4917744  # MemAvailable of the 6.1 fixture
    assert vms["db"]["available_kb"] == 2973212  # and of the 5.10 fixture
    assert host.cli_json("status")["running"] is True

    # An operator caps web at 2 GiB through the CLI; the controller obeys.
    result = host.cli("policy", "set", "web", "--max", "2G")
    assert result.exit_code == 0, result.output
    assert "next cycle" in result.output
    await _until(lambda: host.hv.actual_kb(5) <= 2 * GIB_KB, what="web capped at 2 GiB")
    assert await host.target(5) <= 2 * GIB_KB

    # An impossible change is refused with a message that says what to do; nothing changes.
    before = host.cli_json("policy", "show", "web")
    result = host.cli("policy", "set", "web", "--min", "3G")
    assert result.exit_code == 1
    assert "max" in result.output and "Traceback" not in result.output
    assert host.cli_json("policy", "show", "web")["version"] == before["version"]

    # Pause stops writes; status says so.
    assert host.cli("pause").exit_code == 0
    await _until(lambda: host.cli_json("status")["host"]["paused"], what="paused status")
    assert host.cli("resume").exit_code == 0

    # History, decisions and events tell what happened.
    history = host.cli_json("history", "web", "--since", "10m", "--resolution", "raw")
    assert history["points"] and min(p["target"] for p in history["points"]) <= 2 * GIB_KB
    decisions = host.cli_json("decisions", "web")
    assert any(d["new_target_kb"] <= 2 * GIB_KB for d in decisions)
    wanted = {"controller_started", "paused", "resumed"}
    await _until(lambda: wanted <= {e["kind"] for e in host.cli_json("events")},
                 what=f"events {wanted}")
    audit = host.cli_json("policy", "show", "web")["changes"]
    assert audit and audit[-1]["source"] == "cli"
    assert os.environ.get("USER", "") in audit[-1]["who"] or "@" in audit[-1]["who"]
