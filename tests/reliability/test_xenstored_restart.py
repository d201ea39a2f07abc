"""xenstored dies and comes back: the controller notices, reconnects, watches
again, reads everything again, and writes no target from what it knew before.

The daemon is a child process, SIGKILLed; the new one comes back holding the
toolstack's keys (laid out before its sockets go live), but with a different
picture for two domains (their static-max was lowered meanwhile), so a target
computed from the old picture would show. An independent dom0 client watches
every ``memory/target`` of the new daemon from its first moment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.control import HostPolicy, Policy, VmState
from orchestrator.controller.loop import Controller, CycleResult, LoopSettings, StaticPolicy
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.xenstore import wire
from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.rawclient import RawClient
from tests.controller.conftest import GIB_KB, MIB_KB
from tests.reliability.conftest import ReportingGuest
from tests.reliability.harness import (
    Domain,
    TargetWatcher,
    Xenstored,
    eventually,
    follow_targets,
)

pytestmark = pytest.mark.slow

INTERVAL_S = 5.0  # the kernel's: anything faster than this was woken by a watch
NEW_MAX_KB = 1536 * MIB_KB


@dataclass
class Cycles:
    """A cycle sink remembering when each successful cycle ended and on which connection."""

    xs: PyxsClient
    seen: list[tuple[float, int, CycleResult]] = field(default_factory=list)

    def cycle(self, result: CycleResult) -> None:
        self.seen.append((time.monotonic(), self.xs.connects, result))


@dataclass
class Host:
    xsd: Xenstored
    hv: SimulatedHypervisor
    xs: PyxsClient
    controller: Controller
    cycles: Cycles
    guests: dict[int, ReportingGuest]
    domains: list[Domain]


@pytest.fixture
async def host(workdir: Path) -> AsyncIterator[Host]:
    domains = [Domain(d, f"vm{d}", 4 * GIB_KB, 2 * GIB_KB) for d in (1, 2, 3)]
    xsd = Xenstored(workdir)
    await xsd.start(domains)
    hv = SimulatedHypervisor(total_kb=32 * GIB_KB, dom0_kb=2 * GIB_KB)
    for d in domains:
        hv.add_domain(domid=d.domid, name=d.name, uuid=d.uuid, actual_kb=d.target_kb,
                      max_kb=d.static_max_kb, rate_kb_s=8 * GIB_KB)
    # The production client settings: backoff from 50 ms doubling to 5 s.
    xs = PyxsClient(socket_path=str(xsd.privileged_socket), settings=ClientSettings())
    await xs.connect()
    cycles = Cycles(xs)
    controller = Controller(
        xs=xs, hypervisor=hv, policy=StaticPolicy(Policy(host=HostPolicy(interval_s=INTERVAL_S))),
        sinks=[cycles], settings=LoopSettings(min_gap_s=0.01),
    )
    guests = {d.domid: ReportingGuest(d.domid, xsd.domain_socket(d.domid), total_kb=d.target_kb)
              for d in domains}
    stop = asyncio.Event()
    for guest in guests.values():
        await guest.start()
    tasks = [
        asyncio.create_task(controller.run(stop), name="controller"),
        asyncio.create_task(follow_targets(xsd.privileged_socket, hv, lambda: list(hv_ids(hv)),
                                           stop), name="balloons"),
    ]
    try:
        yield Host(xsd, hv, xs, controller, cycles, guests, domains)
    finally:
        stop.set()
        for guest in guests.values():
            await guest.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await xs.close()
        await xsd.stop()


def hv_ids(hv: SimulatedHypervisor) -> list[int]:
    return [d for d in range(1, 8) if _has(hv, d)]


def _has(hv: SimulatedHypervisor, domid: int) -> bool:
    try:
        hv.actual_kb(domid)
    except KeyError:
        return False
    return True


async def test_controller_reconnects_rereads_and_writes_nothing_from_the_old_picture(
    host: Host,
) -> None:
    plan_ok = lambda: (host.controller.last_plan is not None  # noqa: E731
                       and len(host.controller.last_plan.vms) == 3
                       and all(vm.state is VmState.OK for vm in host.controller.last_plan.vms))
    await eventually(plan_ok, what="every VM controlled")
    before = {d: host.controller.views[d].target_kb for d in (1, 2, 3)}
    assert all(t is not None for t in before.values())

    # xenstored dies. The guests of 1 and 2 now need far more memory than the
    # old static-max allows... and than the new one does; guest 3 goes quiet.
    host.xsd.kill()
    killed_at = time.monotonic()
    for d in (1, 2):
        host.guests[d].committed_kb = 3584 * MIB_KB
        host.guests[d].psi = 30.0
    host.guests[3].silent = True
    await asyncio.sleep(1.0)  # the daemon stays down for a second

    # It comes back with the toolstack's keys; 1 and 2 were given a lower maximum.
    picture = [Domain(d.domid, d.name, NEW_MAX_KB if d.domid in (1, 2) else d.static_max_kb,
                      before[d.domid] or d.target_kb) for d in host.domains]
    watcher: TargetWatcher | None = None

    async def watch_first(socket: Path) -> None:
        nonlocal watcher
        watcher = TargetWatcher(socket, [1, 2, 3])
        await watcher.__aenter__()

    await host.xsd.restart(picture, before_live=watch_first)
    live_at = time.monotonic()
    assert watcher is not None
    try:
        # Noticed and reconnected within the client's backoff (at most 5 s).
        await eventually(lambda: host.xs.connects >= 2, timeout_s=8.0, what="reconnection")
        reconnected_at = time.monotonic()
        assert reconnected_at - live_at < 6.0
        # Read everything again, then controlled 1 and 2 within their new maximum,
        # long before the 5 s interval: the watches were registered again.
        first = await eventually(
            lambda: next((r for t, c, r in host.cycles.seen if c >= 2), None),
            timeout_s=8.0, what="a cycle on the new connection")
        assert first.timings.domains_resynced == 3
        for d in (1, 2):
            assert host.controller.views[d].static_max_kb == NEW_MAX_KB
        await eventually(lambda: {w.domid for w in watcher.writes} >= {1, 2}, timeout_s=4.0,
                         what="targets of 1 and 2 written on the new daemon")
        await asyncio.sleep(1.0)
        for write in watcher.writes:
            assert write.domid != 3, f"VM 3 had no fresh report, yet got {write}"
            assert write.value is not None and write.value <= NEW_MAX_KB, write
        first_write = min(w.at for w in watcher.writes)
        assert first_write >= reconnected_at - 0.05
        assert host.controller.views[3].static_max_kb == 4 * GIB_KB
        assert host.controller.last_plan is not None
        assert host.controller.last_plan.vm(3).target_kb == before[3]  # held

        # Guest 3 speaks again and needs memory: answered through its new watch.
        host.guests[3].committed_kb = 3584 * MIB_KB
        host.guests[3].psi = 30.0
        asked = time.monotonic()
        await host.guests[3].report_now()
        grown = await eventually(
            lambda: next((w for w in watcher.writes if w.domid == 3 and w.at >= asked), None),
            timeout_s=3.0, what="VM 3 grown")
        assert grown.value is not None and grown.value > (before[3] or 0)
        assert grown.at - asked < 1.5 < INTERVAL_S

        # A domain built on the new daemon (as libxl does: the hypervisor has it,
        # its keys are written, then it is introduced) is found through
        # @introduceDomain, long before the 10 s rescan.
        new = Domain(4, "vm4", 2 * GIB_KB, GIB_KB)
        host.hv.add_domain(domid=4, name=new.name, uuid=new.uuid, actual_kb=new.target_kb,
                           max_kb=new.static_max_kb)
        xs = PyxsClient(socket_path=str(host.xsd.privileged_socket))
        async with xs:
            await lay_out_domain(xs, domid=4, name=new.name, uuid=new.uuid,
                                 static_max_kb=new.static_max_kb, target_kb=new.target_kb)
        async with await RawClient.connect(host.xsd.privileged_socket) as raw:
            await raw.request(wire.Introduce(4, 0, 0))
        introduced = time.monotonic()
        await eventually(lambda: 4 in host.controller.views, timeout_s=3.0, what="VM 4 managed")
        assert time.monotonic() - introduced < 2.0 < INTERVAL_S
        assert killed_at < live_at
    finally:
        await watcher.__aexit__(None, None, None)
