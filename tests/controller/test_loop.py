"""The reconcile loop against the real xenstore server and real pyxs clients."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from orchestrator.control import HostPolicy, Policy, VmState
from orchestrator.controller.loop import Controller, LoopSettings, StaticPolicy
from tests.controller.conftest import GIB_KB, MIB_KB, SimHost, make_report


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _count_target_writes(host: SimHost, domid: int, seconds: float) -> int:
    """Watch events on memory/target (the first one, at registration, not counted)."""
    count = -1
    async with host.xs.watch(f"/local/domain/{domid}/memory/target") as events:
        try:
            async with asyncio.timeout(seconds):
                async for _ in events:
                    count += 1
        except TimeoutError:
            pass
    return count


async def _cycle(ctl: Controller, host: SimHost, clock: Clock, dt_s: float = 5.0):  # type: ignore[no-untyped-def]
    result = await ctl.run_cycle()
    await host.follow_targets(dt_s)
    clock.t += dt_s
    return result


async def test_targets_follow_the_law_and_unchanged_targets_are_not_written(
    sim_host: SimHost,
) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    await sim_host.add_vm(2, "db", static_max_kb=4 * GIB_KB, actual_kb=2 * GIB_KB)
    clock = Clock()
    ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(), clock=clock)
    for seq in range(6):
        await sim_host.report(1, make_report(seq=seq, total_kb=4 * GIB_KB, committed_kb=GIB_KB))
        await sim_host.report(2, make_report(seq=seq, total_kb=2 * GIB_KB,
                                             committed_kb=3 * GIB_KB, psi=20.0))
        result = await _cycle(ctl, sim_host, clock)
        assert result is not None
        for vm in result.plan.vms:
            assert await sim_host.target(vm.domid) == vm.target_kb
    plan = ctl.last_plan
    assert plan is not None
    web, db = plan.vm(1), plan.vm(2)
    assert web.target_kb < 4 * GIB_KB  # no pressure, 1 GiB committed: shrinking
    assert db.target_kb > 2 * GIB_KB  # pressure: grown
    assert db.target_kb <= 4 * GIB_KB  # never above static-max
    # Nothing new to say: no further writes, even over several cycles.
    settled = await _settle(ctl, sim_host, clock)
    writes = asyncio.create_task(_count_target_writes(sim_host, settled, 1.0))
    await asyncio.sleep(0.2)
    for _ in range(3):
        result = await _cycle(ctl, sim_host, clock, dt_s=0.5)
        assert result is not None and not result.plan.vm(settled).write
    assert await writes == 0


async def _settle(ctl: Controller, host: SimHost, clock: Clock) -> int:
    """Run cycles until one VM's target stops changing; return its domid."""
    for _ in range(60):
        result = await _cycle(ctl, host, clock)
        assert result is not None
        still = [vm.domid for vm in result.plan.vms if not vm.write]
        if still:
            return still[0]
    raise AssertionError("no VM settled")


async def test_restarted_controller_holds_targets_until_a_fresh_report(sim_host: SimHost) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    clock = Clock()
    first = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(), clock=clock)
    for seq in range(4):
        await sim_host.report(1, make_report(seq=seq, total_kb=4 * GIB_KB, committed_kb=GIB_KB))
        await _cycle(first, sim_host, clock)
    target_before = await sim_host.target(1)
    assert target_before < 4 * GIB_KB
    # A new controller (the old one was killed): same xenstore, no memory of the past.
    second = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(),
                        clock=clock)
    for _ in range(3):
        result = await _cycle(second, sim_host, clock)
        assert result is not None
        vm = result.plan.vm(1)
        assert vm.state is VmState.STALE and not vm.write
        assert await sim_host.target(1) == target_before
    await sim_host.report(1, make_report(seq=10, total_kb=4 * GIB_KB, committed_kb=GIB_KB))
    await asyncio.sleep(0.1)  # the watch marks the domain dirty (and would wake run())
    result = await _cycle(second, sim_host, clock)
    assert result is not None and result.plan.vm(1).state is VmState.OK


async def test_garbage_report_holds_the_target_and_is_logged_once(
    sim_host: SimHost, caplog: pytest.LogCaptureFixture
) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    await sim_host.add_vm(2, "db", static_max_kb=2 * GIB_KB)
    clock = Clock()
    ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(), clock=clock)
    await _cycle(ctl, sim_host, clock)
    guest = await sim_host.guest(1)
    caplog.set_level(logging.WARNING, logger="ballast.controller")
    seq = 0
    for junk in (b'{"v":1,"seq":1,"mem_total_kb":1e999}', b"not json", b"[" * 2000):
        await guest.write("data/ballast/report", junk)
        for _ in range(2):
            seq += 1
            await sim_host.report(2, make_report(seq=seq, total_kb=2 * GIB_KB,
                                                 committed_kb=GIB_KB))
            result = await _cycle(ctl, sim_host, clock)
            assert result is not None
            assert result.plan.vm(1).target_kb <= 4 * GIB_KB
            assert await sim_host.target(1) == 4 * GIB_KB
        assert [e.kind for e in result.events].count("invalid_report") == 0  # already said
    lines = [r for r in caplog.records if "invalid report" in r.getMessage()]
    assert len(lines) == 3, [r.getMessage() for r in lines]  # once per distinct value
    # The other guest is not affected by its neighbour's garbage.
    assert ctl.last_plan is not None and ctl.last_plan.vm(2).state is VmState.OK


async def test_pause_writes_nothing(sim_host: SimHost) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    clock = Clock()
    paused = StaticPolicy(Policy(host=HostPolicy(paused=True)))
    ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=paused, clock=clock)
    for seq in range(4):
        await sim_host.report(1, make_report(seq=seq, total_kb=4 * GIB_KB, committed_kb=GIB_KB))
        result = await _cycle(ctl, sim_host, clock)
        assert result is not None and result.plan.host.paused
        assert not result.applied.targets_written
    assert await sim_host.target(1) == 4 * GIB_KB
    paused.policy = Policy(host=replace(HostPolicy(), paused=False))
    ctl.policy_changed()
    await sim_host.report(1, make_report(seq=9, total_kb=4 * GIB_KB, committed_kb=GIB_KB))
    result = await _cycle(ctl, sim_host, clock)
    assert result is not None
    assert any(e.kind == "resumed" for e in result.events)


async def test_domain_going_away_and_hypervisor_failures(sim_host: SimHost) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    await sim_host.add_vm(2, "db", static_max_kb=2 * GIB_KB)
    clock = Clock()
    ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(), clock=clock)
    await _cycle(ctl, sim_host, clock)
    # The hypervisor no longer knows domain 2 but xenstore still has it: skipped.
    sim_host.hv.remove_domain(2)
    result = await _cycle(ctl, sim_host, clock)
    assert result is not None and [vm.domid for vm in result.plan.vms] == [1]
    assert any(e.kind == "domain_gone" and e.domid == 2 for e in result.events)
    await sim_host.server.release(2)
    clock.t += 60
    result = await ctl.run_cycle()
    assert result is not None and 2 not in ctl.views
    # A wedged toolstack: the cycle is skipped and nothing is written.
    sim_host.hv.fail_next(2)
    assert await ctl.run_cycle() is None
    assert ctl.failed_cycles == 1


async def test_a_report_needing_memory_is_answered_at_once(sim_host: SimHost) -> None:
    await sim_host.add_vm(1, "db", static_max_kb=4 * GIB_KB, actual_kb=GIB_KB)
    await sim_host.report(1, make_report(seq=1, total_kb=GIB_KB, committed_kb=512 * MIB_KB))
    ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(),
                     settings=LoopSettings(min_gap_s=0.01))
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop))
    try:
        for _ in range(100):
            if ctl.cycles >= 1:
                break
            await asyncio.sleep(0.02)
        before = await sim_host.target(1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sim_host.report(1, make_report(seq=2, total_kb=GIB_KB, committed_kb=3 * GIB_KB,
                                             psi=40.0))
        while await sim_host.target(1) <= before:
            assert loop.time() - started < 2.0, "target did not rise within 2 s"
            await asyncio.sleep(0.005)
        # The interval is 5 s: only the watch can have woken the loop this fast.
        assert loop.time() - started < 1.0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_every_control_state_can_be_stored() -> None:
    from orchestrator.store.records import VmState as StoredState

    assert {s.value for s in VmState} <= {s.value for s in StoredState}
