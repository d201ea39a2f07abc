"""What a cycle re-reads: a time-paced rolling resync, and everything after a reconnect.

Watches cover only ``~/data``; dom0-owned keys (``memory/static-max``,
``memory/target``...) can change behind the controller's back. The rolling
resync re-reads every domain within ``resync_s`` of the controller's clock,
however often cycles run, so a cycle woken early costs no more than its dirty
domains. After a new connection to xenstored, every key is read again before
anything is decided or written.
"""

from __future__ import annotations

import asyncio
import uuid as uuid_mod
from pathlib import Path

from agents.schema import encode_report
from orchestrator.controller.loop import Controller, LoopSettings, StaticPolicy
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.server import XenstoreServer
from tests.controller.conftest import GIB_KB, SimHost, make_report


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_the_rolling_resync_is_paced_by_time_not_by_cycles(sim_host: SimHost) -> None:
    domids = range(1, 7)
    for domid in domids:
        await sim_host.add_vm(domid, f"vm{domid}", static_max_kb=4 * GIB_KB, actual_kb=2 * GIB_KB)
    clock = Clock()
    ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(),
                     settings=LoopSettings(resync_s=30.0), clock=clock)  # fmt: skip
    first = await ctl.run_cycle()
    assert first is not None and first.timings.domains_read == 6  # all read at start
    assert all(ctl.views[d].static_max_kb == 4 * GIB_KB for d in domids)
    # The toolstack lowers every static-max; nobody watches memory/.
    for domid in domids:
        await sim_host.xs.write(f"/local/domain/{domid}/memory/static-max", str(2 * GIB_KB))
    resynced: list[int] = []
    seen_at: dict[int, float] = {}
    for _ in range(40):  # cycles every 1 s of controller time, as if woken by reports
        clock.t += 1.0
        result = await ctl.run_cycle()
        assert result is not None
        resynced.append(result.timings.domains_resynced)
        for domid in domids:
            if ctl.views[domid].static_max_kb == 2 * GIB_KB:
                seen_at.setdefault(domid, clock.t - 1000.0)
    assert max(resynced) <= 1  # 6 domains over 30 s: at most one a second
    assert sum(resynced[:30]) == 6  # each once in the first 30 s
    assert sorted(seen_at) == list(domids)
    assert max(seen_at.values()) <= 30.0
    assert min(seen_at.values()) >= 4.0  # not all at once, and not at the first cycle


async def _lay_out(server: XenstoreServer, xs: PyxsClient, hv: SimulatedHypervisor | None,
                   static_max_kb: int) -> None:  # fmt: skip
    for domid in (1, 2):
        name = f"vm{domid}"
        uuid = str(uuid_mod.uuid5(uuid_mod.NAMESPACE_DNS, f"{name}.ballast.test"))
        await server.introduce(domid)
        await lay_out_domain(xs, domid=domid, name=name, uuid=uuid,
                             static_max_kb=static_max_kb, target_kb=static_max_kb)  # fmt: skip
        if hv is not None:
            hv.add_domain(domid=domid, name=name, uuid=uuid, actual_kb=static_max_kb,
                          max_kb=8 * GIB_KB)  # fmt: skip


async def test_after_a_reconnect_everything_is_read_again_before_any_write(
    sock_dir: Path,
) -> None:
    hv = SimulatedHypervisor(total_kb=32 * GIB_KB, dom0_kb=2 * GIB_KB)
    first = XenstoreServer(sock_dir)
    await first.start()
    xs = PyxsClient(socket_path=first.privileged_socket,
                    settings=ClientSettings(timeout_s=5.0, reconnect_min_s=0.02,
                                            reconnect_max_s=0.1))  # fmt: skip
    await xs.connect()
    try:
        await _lay_out(first, xs, hv, 4 * GIB_KB)
        clock = Clock()
        ctl = Controller(xs=xs, hypervisor=hv, policy=StaticPolicy(),
                         settings=LoopSettings(resync_s=3600.0), clock=clock)  # fmt: skip
        assert await ctl.run_cycle() is not None
        assert ctl.views[1].static_max_kb == 4 * GIB_KB
        # xenstored restarts with a different picture: the domains now have 1 GiB.
        await first.stop()
        async with XenstoreServer(sock_dir) as second:
            await _lay_out(second, xs, None, GIB_KB)
            for domid in (1, 2):
                guest = PyxsClient(socket_path=second.domain_socket(domid))
                async with guest:  # the guest needs more than the old picture gave it
                    await guest.write("data/ballast/report", encode_report(make_report(
                        seq=2, total_kb=GIB_KB, committed_kb=3 * GIB_KB, psi=40.0)))
            while xs.connects < 2:  # the client reconnected on its own (it has watches)
                await asyncio.sleep(0.02)
            clock.t += 1.0
            result = await ctl.run_cycle()
            assert result is not None
            assert result.timings.domains_resynced == 2
            for domid in (1, 2):
                assert ctl.views[domid].static_max_kb == GIB_KB
                assert ctl.views[domid].target_kb is not None
                assert result.plan.vm(domid).target_kb <= GIB_KB
                written = int(await xs.read(f"/local/domain/{domid}/memory/target"))
                assert written <= GIB_KB
    finally:
        await xs.close()

