"""The peek: a guest whose ``~/data`` changed starts a cycle at once only when the
law wants more memory for it; anything else waits for the interval.

The peek asks the law about the changed VM alone. That is sound only if a VM's
``want_kb`` (its target before the host is shared) does not depend on the
other VMs: the first test holds the law to that, on random fleets.
"""

from __future__ import annotations

import asyncio
import gc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.control import (
    HostPolicy,
    Policy,
    Snapshot,
    VmObservation,
    VmPolicy,
    decide,
)
from orchestrator.controller.loop import Controller, LoopSettings, StaticPolicy
from tests.controller.conftest import GIB_KB, MIB_KB, SimHost, make_report

GUEST_KB = st.integers(min_value=256 * MIB_KB, max_value=16 * GIB_KB)


@st.composite
def observations(draw: st.DrawFn, domid: int) -> VmObservation:
    static_max = draw(GUEST_KB)
    total = draw(st.integers(min_value=128 * MIB_KB, max_value=static_max))
    target = draw(st.one_of(st.none(), st.integers(min_value=64 * MIB_KB, max_value=static_max)))
    with_report = draw(st.booleans())
    report = None
    if with_report:
        report = make_report(
            seq=draw(st.integers(min_value=1, max_value=1000)), total_kb=total,
            committed_kb=draw(st.integers(min_value=0, max_value=2 * static_max)),
            psi=draw(st.sampled_from([0.0, 0.0, 5.0, 40.0])),
        )
    return VmObservation(
        domid=domid, uuid=f"00000000-0000-4000-8000-{domid:012d}", name=f"vm{domid}",
        static_max_kb=static_max, actual_kb=draw(st.integers(min_value=0, max_value=static_max)),
        target_kb=target, report=report,
        report_age_s=draw(st.sampled_from([0.5, 20.0, 400.0])) if report is not None else None,
        paused=draw(st.booleans()) and draw(st.booleans()),
    )


@st.composite
def fleets(draw: st.DrawFn) -> tuple[Snapshot, Policy]:
    count = draw(st.integers(min_value=2, max_value=6))
    vms = tuple(draw(observations(domid)) for domid in range(1, count + 1))
    total = sum(vm.static_max_kb for vm in vms) + 2 * GIB_KB
    # From a host with room for everyone to one too small for the minimums.
    free = draw(st.integers(min_value=0, max_value=total))
    weights = {vm.uuid: VmPolicy(weight=draw(st.integers(min_value=1, max_value=1000)))
               for vm in vms if draw(st.booleans())}  # fmt: skip
    policy = Policy(host=HostPolicy(), vms=weights)
    return Snapshot(now_s=1000.0, host_total_kb=total, host_free_kb=free, vms=vms), policy


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), later_s=st.sampled_from([0.05, 1.0, 6.0]))
def test_a_vms_want_does_not_depend_on_the_rest_of_the_fleet(
    fleet: tuple[Snapshot, Policy], later_s: float
) -> None:
    snapshot, policy = fleet
    first = decide(snapshot, policy)  # some carried state, as in a running controller
    now = Snapshot(now_s=snapshot.now_s + later_s, host_total_kb=snapshot.host_total_kb,
                   host_free_kb=snapshot.host_free_kb, vms=snapshot.vms)  # fmt: skip
    whole = decide(now, policy, first.state)
    for vm in snapshot.vms:
        alone = Snapshot(now_s=now.now_s, host_total_kb=now.host_total_kb,
                         host_free_kb=now.host_free_kb, vms=(vm,))  # fmt: skip
        single = decide(alone, policy, first.state)
        assert single.vm(vm.domid).want_kb == whole.vm(vm.domid).want_kb


async def _quiet(ctl: Controller, seconds: float = 0.3) -> int:
    """Wait until no cycle ran for ``seconds``; the number of cycles so far."""
    while True:
        before = ctl.cycles
        await asyncio.sleep(seconds)
        if ctl.cycles == before:
            return before


async def test_only_a_report_asking_for_more_starts_a_cycle_before_the_interval(
    sim_host: SimHost,
) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    await sim_host.add_vm(2, "db", static_max_kb=4 * GIB_KB, actual_kb=GIB_KB)
    await sim_host.report(1, make_report(seq=1, total_kb=4 * GIB_KB, committed_kb=GIB_KB))
    await sim_host.report(2, make_report(seq=1, total_kb=GIB_KB, committed_kb=512 * MIB_KB))
    # The default policy: a 5-s interval, far longer than this test waits.
    ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy())
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop))
    try:
        while ctl.cycles < 1:
            await asyncio.sleep(0.02)
        cycles = await _quiet(ctl)
        peeks = ctl.peeks
        target_2 = await sim_host.target(2)
        # web reports again, and again needs less than it has: nothing urgent.
        for seq in range(2, 5):
            await sim_host.report(1, make_report(seq=seq, total_kb=4 * GIB_KB,
                                                 committed_kb=GIB_KB))  # fmt: skip
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert ctl.cycles == cycles
        assert ctl.peeks > peeks
        web = ctl.views[1].report
        assert web is not None and web.seq == 4  # read by the peek, for the next cycle
        # db needs three times what it has: a cycle at once, and a higher target.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sim_host.report(2, make_report(seq=2, total_kb=GIB_KB, committed_kb=3 * GIB_KB,
                                             psi=40.0))  # fmt: skip
        while await sim_host.target(2) <= target_2:
            assert loop.time() - started < 2.0, "no early cycle for a guest needing memory"
            await asyncio.sleep(0.01)
        assert ctl.cycles == cycles + 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_run_freezes_the_start_up_state_out_of_the_garbage_collectors_way(
    sim_host: SimHost,
) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    try:
        for freeze in (False, True):
            gc.unfreeze()
            ctl = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy(),
                             settings=LoopSettings(freeze_gc=freeze))  # fmt: skip
            stop = asyncio.Event()
            task = asyncio.create_task(ctl.run(stop))
            while ctl.cycles < 1:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 10)
            assert (gc.get_freeze_count() > 0) is freeze
    finally:
        gc.unfreeze()
