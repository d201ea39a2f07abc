"""The controller is SIGKILLed mid-cycle and restarted.

The controller runs as its own process (the real daemon, ``open_daemon``,
with its SQLite history) on a simulated host: xenstored and the guests in
this process, the hypervisor answered over a socket so its allocations
survive the controller. It is killed twice: while a cycle waits for the
hypervisor (observe), and the moment its first target write of a cycle is
seen (apply). After each restart nothing is written until a guest reports
afresh; a guest whose agent died meanwhile drifts to its fallback once its
report has been there, unchanged, for the dead limit; every value in
xenstore is whole; the database is intact; and the history tells of the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator import steering
from orchestrator.control import HostPolicy
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.store.records import AuditSource, EventKind
from orchestrator.store.store import StoreConfig, open_store
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.server import XenstoreServer
from tests.controller.conftest import GIB_KB, MIB_KB
from tests.reliability.conftest import ReportingGuest, upgrade_db
from tests.reliability.harness import (
    ROOT,
    Domain,
    HypervisorService,
    TargetWatcher,
    TargetWrite,
    eventually,
    follow_targets,
)

pytestmark = pytest.mark.slow

HOST = "killed"
INTERVAL_S, STALE_S, DEAD_S = 0.5, 1.0, 3.0


class ControllerProc:
    def __init__(self, config: Path, hv_socket: Path, log: Path) -> None:
        self.config, self.hv_socket, self.log = config, hv_socket, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.reliability.controller_proc",
                "--config", str(self.config), "--hypervisor", str(self.hv_socket),
                "--min-gap", "0.01", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line == b"ready\n", self.log.read_text()[-3000:]
        return time.monotonic()

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), 20)


def _status(db: Path) -> dict[str, Any]:
    with open_store(str(db), config=StoreConfig(host=HOST)) as store:
        status = store.status()
        return {} if status is None else status.document


def _states(db: Path) -> dict[int, str]:
    return {vm["domid"]: vm["state"] for vm in _status(db).get("vms", [])}


@contextlib.asynccontextmanager
async def simulated_host(workdir: Path, domains: list[Domain]) -> AsyncIterator[
        tuple[XenstoreServer, SimulatedHypervisor, HypervisorService, dict[int, ReportingGuest]]]:
    hv = SimulatedHypervisor(total_kb=32 * GIB_KB, dom0_kb=2 * GIB_KB)
    (workdir / "xs").mkdir()
    async with XenstoreServer(workdir / "xs") as server:
        async with PyxsClient(socket_path=server.privileged_socket) as xs:
            for d in domains:
                await server.introduce(d.domid)
                await lay_out_domain(xs, domid=d.domid, name=d.name, uuid=d.uuid,
                                     static_max_kb=d.static_max_kb, target_kb=d.target_kb)
                hv.add_domain(domid=d.domid, name=d.name, uuid=d.uuid, actual_kb=d.target_kb,
                              max_kb=d.static_max_kb, rate_kb_s=8 * GIB_KB)
        stop = asyncio.Event()
        guests = {d.domid: ReportingGuest(d.domid, server.domain_socket(d.domid),
                                          total_kb=d.target_kb) for d in domains}
        async with HypervisorService(hv, workdir / "hv.sock") as service:
            balloons = asyncio.create_task(follow_targets(
                server.privileged_socket, hv, lambda: [d.domid for d in domains], stop))
            for guest in guests.values():
                await guest.start()
            try:
                yield server, hv, service, guests
            finally:
                stop.set()
                for guest in guests.values():
                    await guest.stop()
                await asyncio.gather(balloons, return_exceptions=True)


async def test_sigkilled_controller_restarts_without_acting_on_what_it_did_not_see(
    workdir: Path,
) -> None:
    domains = [Domain(d, f"vm{d}", 4 * GIB_KB, 3 * GIB_KB) for d in (1, 2, 3)]
    db = workdir / "ballast.db"
    upgrade_db(db)
    base = HostPolicy(interval_s=INTERVAL_S, free_margin_kb=256 * MIB_KB)
    with open_store(str(db), config=StoreConfig(host=HOST)) as store:
        steering.change_host_policy(store, {"stale_s": STALE_S, "dead_s": DEAD_S}, who="test",
                                    source=AuditSource.API, base=base)
    config = workdir / "ballast.toml"
    config.write_text(f'[controller]\nhost_name = "{HOST}"\nxenstore = "{workdir / "xs"}"\n'
                      f'interval_s = {INTERVAL_S}\n\n[store]\nurl = "{db}"\n')
    config.chmod(0o600)

    async with simulated_host(workdir, domains) as (server, _hv, service, guests):
        ctl = ControllerProc(config, workdir / "hv.sock", workdir / "controller.log")
        await ctl.start()
        await eventually(lambda: asyncio.to_thread(
            lambda: set(_states(db).values()) == {"ok"} and len(_states(db)) == 3),
            timeout_s=15, what="every VM controlled")

        # Kill 1, in the middle of a cycle: it waits for the hypervisor's answer.
        # The guests fall silent; vm3's agent will not come back.
        for guest in guests.values():
            guest.silent = True
        service.asked.clear()
        service.hold.clear()
        await asyncio.wait_for(service.asked.wait(), 5)
        ctl.kill()
        assert await ctl.wait() == -signal.SIGKILL
        service.hold.set()
        killed_at = time.monotonic()
        before = {d: int(await _read(server, f"/local/domain/{d}/memory/target")) for d in guests}
        await asyncio.sleep(1.0)

        async with TargetWatcher(server.privileged_socket, list(guests)) as watcher:
            ready_at = await ctl.start()
            # Nothing fresh: nothing written, every VM held as stale.
            await asyncio.sleep(3 * INTERVAL_S)
            assert watcher.writes == [], watcher.writes
            states = await asyncio.to_thread(_states, db)
            assert set(states.values()) == {"stale"}, states
            # vm1 reports and needs more: only vm1 moves; then vm2 comes back quietly.
            guests[1].committed_kb, guests[1].psi = 3584 * MIB_KB, 30.0
            guests[1].silent = False
            await eventually(lambda: any(w.domid == 1 for w in watcher.writes), timeout_s=5,
                             what="vm1 grown on fresh data")
            guests[2].silent = False
            # vm3's report never changes: held until it has been there for dead_s,
            # then drifted to its fallback (its max), not held for ever.
            vm3 = await eventually(
                lambda: next((w for w in watcher.writes if w.domid == 3), None),
                timeout_s=DEAD_S + 5, what="vm3 drifting to its fallback")
            assert vm3.at - ready_at >= DEAD_S - 2 * INTERVAL_S
            assert await _read(server, "/local/domain/3/memory/target") == b"%d" % (4 * GIB_KB)
            early = [w for w in watcher.writes if w.at < vm3.at and w.domid != 1]
            assert all(w.domid == 2 for w in early), early  # only fresh VMs moved
            assert before[3] != 4 * GIB_KB

        # Kill 2, in the middle of applying a plan: as soon as its first target
        # write of a cycle is seen.
        guests[1].committed_kb, guests[1].psi = GIB_KB // 2, 0.0
        guests[2].committed_kb, guests[2].psi = 3584 * MIB_KB, 30.0
        killed: list[TargetWrite] = []

        def kill_on_first(write: TargetWrite) -> None:
            if not killed:
                killed.append(write)
                ctl.kill()

        async with TargetWatcher(server.privileged_socket, list(guests),
                                 on_write=kill_on_first) as watcher:
            assert await ctl.wait() == -signal.SIGKILL
            second_kill = time.monotonic()
        for d in guests:  # every value whole and within bounds: nothing half-written
            value = int(await _read(server, f"/local/domain/{d}/memory/target"))
            assert 0 < value <= 4 * GIB_KB
        for guest in guests.values():
            guest.silent = True
        async with TargetWatcher(server.privileged_socket, [1, 2]) as watcher:
            await ctl.start()
            await asyncio.sleep(3 * INTERVAL_S)
            assert watcher.writes == [], watcher.writes
        ctl.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert await ctl.wait() == 0

    # The database is whole, and the history tells of both gaps.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with open_store(str(db), config=StoreConfig(host=HOST)) as store:
        events = store.events(kinds=[EventKind.CONTROLLER_STARTED, EventKind.CONTROLLER_STOPPED])
        assert [e.kind for e in events] == ["controller_started"] * 3 + ["controller_stopped"]
        assert "previous_stop" not in events[0].details
        for restart in events[1:3]:
            assert restart.details["previous_stop"] == "unclean"
            heartbeat = datetime.fromisoformat(restart.details["last_heartbeat"])
            assert heartbeat < restart.time
            assert restart.details["down_s"] >= 0.5
        samples = store.history("vm1", since="10m", resolution="raw", figures="target").times
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(samples)]
        assert max(gaps) >= 1.0  # no samples while no controller ran
    assert second_kill > killed_at


async def _read(server: XenstoreServer, path: str) -> bytes:
    async with PyxsClient(socket_path=server.privileged_socket) as xs:
        return await xs.read(path)
