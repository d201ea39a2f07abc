"""A running Ballast controller on a simulated host, for MQTT and metrics tests.

The real daemon (``open_daemon``: store, writer, xenstore client, controller,
telemetry, metrics) on the project's xenstore server and a real SQLite
history; guests write reports through their own domain sockets and their
balloons follow ``memory/target`` in the simulated hypervisor (the one fake
seam: there is no Xen here). Also runnable as a process (``python -m
tests.telemetry.sim_controller``) for the last-will test, which kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner

from agents.schema import encode_report
from orchestrator import config as cfg
from orchestrator.cli.main import app
from orchestrator.controller.daemon import Daemon, open_daemon
from orchestrator.controller.loop import LoopSettings
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.server import XenstoreServer
from tests.controller.conftest import GIB_KB, make_report

# domid: (name, static-max KiB)
DEFAULT_VMS: Mapping[int, tuple[str, int]] = {5: ("web", 4 * GIB_KB), 6: ("db", 2 * GIB_KB)}
COMMITTED_KB = GIB_KB // 2
REPORT_EVERY_S = 0.1


@dataclass
class SimController:
    """The pieces of a running simulated host."""

    db: Path
    server: XenstoreServer
    xs: PyxsClient
    hv: SimulatedHypervisor
    daemon: Daemon
    host_name: str
    vms: dict[int, str]
    guests: dict[int, PyxsClient] = field(default_factory=dict)

    async def target(self, domid: int) -> int:
        return int(await self.xs.read(f"/local/domain/{domid}/memory/target"))

    async def remove(self, domid: int) -> None:
        """The domain is destroyed: gone from the hypervisor and from xenstore."""
        guest = self.guests.pop(domid, None)
        if guest is not None:
            await guest.close()
        del self.vms[domid]
        self.hv.remove_domain(domid)
        await self.server.release(domid)


def upgrade_db(db: Path) -> None:
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", str(db)])
    assert result.exit_code == 0, result.output


async def _guests(host: SimController, stop: asyncio.Event) -> None:
    """Every guest reports; every balloon follows its target."""
    seq = 0
    while not stop.is_set():
        seq += 1
        for domid in list(host.vms):
            if domid not in host.guests:
                client = PyxsClient(socket_path=host.server.domain_socket(domid))
                await client.connect()
                host.guests[domid] = client
            with contextlib.suppress(Exception):  # the domain may be going away
                actual = host.hv.actual_kb(domid)
                report = make_report(seq=seq, total_kb=actual, committed_kb=COMMITTED_KB)
                await host.guests[domid].write("data/ballast/report", encode_report(report))
                host.hv.set_target(domid, await host.target(domid))
        host.hv.advance(REPORT_EVERY_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REPORT_EVERY_S)


@contextlib.asynccontextmanager
async def sim_controller(
    workdir: Path,
    *,
    host_name: str,
    mqtt: tuple[str, int, str] | None = None,
    metrics_port: int = 0,
    vms: Mapping[int, tuple[str, int]] = DEFAULT_VMS,
    interval_s: float = 0.5,
    run: bool = True,
) -> AsyncIterator[SimController]:
    """Start the whole host; ``mqtt`` is (broker host, port, topic prefix)."""
    db = workdir / "ballast.db"
    upgrade_db(db)
    mqtt_config = cfg.MqttConfig()
    if mqtt is not None:
        address, port, prefix = mqtt
        # Built directly (not loaded): the tests' unique prefixes have several levels.
        mqtt_config = cfg.MqttConfig(broker=f"mqtt://{address}:{port}", topic_prefix=prefix,
                                     keepalive_s=5)
    config = cfg.Config(
        controller=cfg.ControllerConfig(host_name=host_name, xenstore=str(workdir / "xs"),
                                        interval_s=interval_s),
        store=cfg.StoreConfig(url=str(db)),
        mqtt=mqtt_config,
        metrics=cfg.MetricsConfig(port=metrics_port),
    )
    hv = SimulatedHypervisor(total_kb=32 * GIB_KB, dom0_kb=2 * GIB_KB)
    (workdir / "xs").mkdir(exist_ok=True)
    async with XenstoreServer(workdir / "xs") as server:
        xs = PyxsClient(socket_path=server.privileged_socket)
        await xs.connect()
        for domid, (name, static_max) in vms.items():
            uuid = f"00000000-0000-4000-8000-{domid:012d}"
            await server.introduce(domid)
            await lay_out_domain(xs, domid=domid, name=name, uuid=uuid,
                                 static_max_kb=static_max, target_kb=static_max)
            hv.add_domain(domid=domid, name=name, uuid=uuid, actual_kb=static_max,
                          max_kb=static_max, rate_kb_s=8 * GIB_KB)
        try:
            async with open_daemon(config, hypervisor=hv,
                                   loop_settings=LoopSettings(min_gap_s=0.01)) as daemon:
                host = SimController(db=db, server=server, xs=xs, hv=hv, daemon=daemon,
                                     host_name=host_name,
                                     vms={d: name for d, (name, _) in vms.items()})
                stop = asyncio.Event()
                tasks = [asyncio.create_task(_guests(host, stop), name="sim-guests")]
                if run:
                    tasks.append(asyncio.create_task(daemon.controller.run(stop),
                                                     name="sim-controller"))
                try:
                    yield host
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
                    for client in host.guests.values():
                        await client.close()
        finally:
            await xs.close()


async def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--host-name", required=True)
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--metrics-port", type=int, default=0)
    args = parser.parse_args(argv)
    async with sim_controller(
        args.workdir, host_name=args.host_name,
        mqtt=("127.0.0.1", args.broker_port, args.prefix), metrics_port=args.metrics_port,
    ) as host:
        telemetry = host.daemon.telemetry
        assert telemetry is not None
        while telemetry.stats.published < 1 + len(host.vms):
            await asyncio.sleep(0.02)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
