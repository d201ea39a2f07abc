"""decide(): estimators, pacing, host arbitration, write order, reservations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.control import (
    DEFAULT_ESTIMATOR,
    ControlState,
    Estimator,
    HostPolicy,
    Mode,
    Policy,
    Reason,
    Reservation,
    SnapshotError,
    VmDefaults,
    VmPolicy,
    VmState,
    decide,
    host_budget_kb,
)
from orchestrator.control import estimators as est
from orchestrator.control.policy import kernel_reserve_kb
from tests.control.helpers import GiB, MiB, kernel_exact, report, snapshot, vm

UUID = vm().uuid


def policy_with(**defaults: object) -> Policy:
    return Policy(host=HostPolicy(defaults=VmDefaults(**defaults)))  # type: ignore[arg-type]


def test_the_provisional_default_estimator_is_one_constant() -> None:
    assert VmDefaults().estimator is DEFAULT_ESTIMATOR


def test_snapshot_rejects_duplicate_vms() -> None:
    with pytest.raises(SnapshotError, match="domid 1 appears twice"):
        snapshot(vm(1), vm(1, uuid="other"))
    with pytest.raises(SnapshotError, match="uuid"):
        snapshot(vm(1), vm(2, uuid=vm(1).uuid))


# ---------------------------------------------------------------------------
# Estimators


def pressure_run(reports: list[dict[str, object]], *, policy: Policy | None = None,
                 start_kb: int = 4 * GiB) -> list[int]:
    """Cycles 5 s apart; the guest's MemTotal follows the target exactly."""
    policy = policy or policy_with(estimator=Estimator.PRESSURE, deadband_kb=0)
    state = ControlState()
    target = start_kb
    out = []
    for tick, fields in enumerate(reports):
        values: dict[str, object] = {
            "seq": tick, "uptime_s": 100.0 + 5 * tick, "mem_total_kb": target,
            "balloon_current_kb": target, "mem_available_kb": target - 300 * MiB,
        }
        values.update(fields)
        observed = vm(static_max_kb=4 * GiB, actual_kb=target, target_kb=target,
                      report=report(**values), report_age_s=0.0)
        plan = decide(snapshot(observed, now_s=5.0 * tick), policy, state)
        state = plan.state
        target = plan.vms[0].target_kb
        out.append(target)
    return out


def quiet(tick: int) -> dict[str, object]:
    return {"psi_some_avg10": 0.0, "psi_some_total_us": 1000, "refault_file": 50,
            "refault_anon": 0, "pswpin": 10}


def test_pressure_shrinks_one_percent_per_interval_while_quiet() -> None:
    targets = pressure_run([quiet(t) for t in range(10)])
    for before, after in zip([4 * GiB, *targets], targets, strict=False):
        cur = before // 4
        assert after == (cur - int(cur * est.SENPAI_MAX_PROBE)) * 4


def test_pressure_grows_at_once_when_psi_appears() -> None:
    calm = [quiet(t) for t in range(6)]
    stall: dict[str, object] = {"psi_some_avg10": 5.0,
             "psi_some_total_us": 1000 + 5 * 1_000_000 // 20,
             "refault_file": 50, "refault_anon": 0, "pswpin": 10}
    targets = pressure_run([*calm, stall])
    grown, before = targets[-1], targets[-2]
    assert grown >= before * 1.05  # at least 5 % at once
    # Senpai backoff for 5 % stall against a 0.1 % target: (50/20)**2 -> capped at 100 %.
    assert grown == min(2 * before, 4 * GiB)


def test_pressure_holds_without_evidence() -> None:
    targets = pressure_run([{} for _ in range(5)])  # no PSI, no refault counters
    assert targets == [4 * GiB] * 5


def test_pressure_never_goes_below_the_working_set_plus_reserve() -> None:
    reports = [dict(quiet(t), mem_available_kb=100 * MiB) for t in range(200)]
    policy = policy_with(estimator=Estimator.PRESSURE, deadband_kb=0, reserve_kb=256 * MiB)
    targets = pressure_run(reports, policy=policy, start_kb=2 * GiB)
    # used = MemTotal - MemAvailable grows as MemTotal falls; with 100 MiB
    # available the floor is MemTotal - 100 MiB + 256 MiB > MemTotal: hold.
    assert all(t >= 2 * GiB for t in targets)


def test_refaults_alone_count_as_pressure_without_psi() -> None:
    signals = est.Signals(stall_frac=None, refault_pps=10_000.0, swapin_pps=0.0)
    assert est.under_pressure(signals)
    assert not est.is_quiet(signals)
    calm = est.Signals(stall_frac=None, refault_pps=0.0, swapin_pps=0.0)
    assert est.is_quiet(calm) and not est.under_pressure(calm)


def test_signals_ignore_counters_that_went_backwards() -> None:
    earlier = est.figures_of(report(uptime_s=500.0, pswpin=1000, refault_file=10_000))
    later = est.figures_of(report(uptime_s=20.0, pswpin=3, refault_file=4))  # rebooted
    assert earlier is not None and later is not None
    signals = est.signals_between(earlier, later)
    assert signals.refault_pps is None and signals.swapin_pps is None


def test_working_set_goes_to_used_plus_reserve_with_kernel_hysteresis() -> None:
    policy = policy_with(estimator=Estimator.WORKING_SET, deadband_kb=0, max_shrink_kb=0)
    observed = vm(report=report(mem_total_kb=4 * GiB, mem_available_kb=3 * GiB,
                                balloon_current_kb=4 * GiB), report_age_s=0.0)
    decision = decide(snapshot(observed), policy).vms[0]
    goal = (1 * GiB + kernel_reserve_kb(4 * GiB)) // 4
    cur = 4 * GiB // 4
    assert decision.target_kb == (cur - (cur - goal) // 8) * 4
    assert decision.demand_kb == goal * 4
    assert decision.reason is Reason.SHRINK


def test_working_set_grows_at_once_on_pressure() -> None:
    policy = policy_with(estimator=Estimator.WORKING_SET)
    observed = vm(report=report(mem_total_kb=2 * GiB, mem_available_kb=1800 * MiB,
                                balloon_current_kb=2 * GiB, psi_some_avg10=3.0),
                  target_kb=2 * GiB, actual_kb=2 * GiB, report_age_s=0.0)
    decision = decide(snapshot(observed), policy).vms[0]
    assert decision.pressure and decision.reason is Reason.PRESSURE
    assert decision.target_kb > 2 * GiB


def test_basic_estimator_for_guests_without_the_agent() -> None:
    observed = vm(meminfo_total_kb=4 * GiB - 30 * MiB, meminfo_free_kb=3 * GiB,
                  actual_kb=4 * GiB, target_kb=4 * GiB)
    decision = decide(snapshot(observed), kernel_exact()).vms[0]
    assert decision.estimator is Estimator.BASIC and decision.state is VmState.OK
    used = (4 * GiB - 30 * MiB) - 3 * GiB
    goal = (used + kernel_reserve_kb(4 * GiB)) // 4
    cur = (4 * GiB - 30 * MiB) // 4
    offset = 30 * MiB // 4  # actual - MemTotal stands in for the balloon overhead
    assert decision.target_kb == (cur - (cur - goal) // 8 + offset) * 4


def test_stale_meminfo_from_a_dead_agent_is_not_trusted() -> None:
    observed = vm(meminfo_total_kb=4 * GiB, meminfo_free_kb=3 * GiB,
                  report=report(), report_age_s=1000.0)
    decision = decide(snapshot(observed), kernel_exact()).vms[0]
    assert decision.state is VmState.DEAD


# ---------------------------------------------------------------------------
# Pacing


def test_shrinks_wait_for_the_interval_but_growth_is_at_once() -> None:
    policy = kernel_exact()
    shrinking = vm(report=report(committed_as_kb=100 * MiB), report_age_s=0.0)
    first = decide(snapshot(shrinking, now_s=0.0), policy)
    assert first.vms[0].write and first.vms[0].target_kb < 4 * GiB
    # The guest followed at once; one second later the law would shrink again.
    followed = replace(
        shrinking, target_kb=first.vms[0].target_kb, actual_kb=first.vms[0].target_kb,
        report=report(seq=2, committed_as_kb=100 * MiB,
                      mem_total_kb=first.vms[0].target_kb - 40 * MiB),
    )
    early = decide(snapshot(followed, now_s=1.0), policy, first.state)
    assert early.vms[0].reason is Reason.NOT_DUE and not early.vms[0].write
    growing = replace(followed,
                      report=report(seq=2, committed_as_kb=3900 * MiB, mem_total_kb=3 * GiB,
                                    balloon_current_kb=3 * GiB))
    burst = decide(snapshot(growing, now_s=2.0), policy, early.state)
    assert burst.vms[0].write and burst.vms[0].target_kb > first.vms[0].target_kb


def test_step_limits() -> None:
    policy = kernel_exact(max_shrink_kb=100 * MiB, max_grow_kb=200 * MiB)
    down = decide(snapshot(vm(report=report(committed_as_kb=10 * MiB, mem_total_kb=4 * GiB,
                                            balloon_current_kb=4 * GiB), report_age_s=0.0)),
                  policy).vms[0]
    assert down.target_kb == 4 * GiB - 100 * MiB and down.reason is Reason.STEP_LIMIT
    up = decide(snapshot(vm(static_max_kb=8 * GiB, target_kb=1 * GiB, actual_kb=1 * GiB,
                            report=report(committed_as_kb=6 * GiB, mem_total_kb=1 * GiB,
                                          balloon_current_kb=1 * GiB),
                            report_age_s=0.0)), policy).vms[0]
    assert up.target_kb == 1 * GiB + 200 * MiB and up.reason is Reason.STEP_LIMIT


def test_nothing_is_written_inside_the_dead_band() -> None:
    policy = kernel_exact(deadband_kb=64 * MiB)
    # committed 3.9 GiB: an eighth of a ~100 MiB gap is far under 64 MiB.
    observed = vm(report=report(committed_as_kb=3 * GiB + 800 * MiB, totalreserve_kb=0,
                                mem_total_kb=4 * GiB, balloon_current_kb=4 * GiB),
                  report_age_s=0.0)
    decision = decide(snapshot(observed), kernel_exact(deadband_kb=64 * MiB, reserve_kb=0)).vms[0]
    assert decision.reason is Reason.DEADBAND and not decision.write
    assert decision.target_kb == 4 * GiB
    assert policy.host.defaults.deadband_kb == 64 * MiB


def test_policy_bounds_win() -> None:
    policy = kernel_exact().with_vm(UUID, VmPolicy(min_kb=3 * GiB, max_kb=3500 * MiB))
    low = decide(snapshot(vm(report=report(committed_as_kb=10 * MiB), report_age_s=0.0)),
                 policy).vms[0]
    assert low.target_kb == 3500 * MiB  # the first step lands above max: clamped
    state = ControlState()
    target = 3500 * MiB
    for tick in range(40):
        plan = decide(snapshot(vm(target_kb=target, actual_kb=target, report=report(
            seq=tick, committed_as_kb=10 * MiB, mem_total_kb=target,
            balloon_current_kb=target), report_age_s=0.0), now_s=5.0 * tick), policy, state)
        state, target = plan.state, plan.vms[0].target_kb
    assert target == 3 * GiB and plan.vms[0].reason in (Reason.AT_MIN, Reason.DEADBAND)


def test_fixed_mode_writes_the_fixed_target_at_once() -> None:
    policy = Policy(vms={UUID: VmPolicy(mode=Mode.FIXED, target_kb=1 * GiB)})
    decision = decide(snapshot(vm(report=report(), report_age_s=0.0)), policy).vms[0]
    assert decision.target_kb == 1 * GiB and decision.write
    assert decision.state is VmState.FIXED and decision.reason is Reason.FIXED


# ---------------------------------------------------------------------------
# Host


def growing_vm(domid: int, want_gb: int, *, static_gb: int = 16) -> object:
    return vm(domid, static_max_kb=static_gb * GiB, actual_kb=1 * GiB, target_kb=1 * GiB,
              report=report(committed_as_kb=want_gb * GiB, mem_total_kb=1 * GiB,
                            balloon_current_kb=1 * GiB, totalreserve_kb=0),
              report_age_s=0.0)


def test_weighted_water_filling_when_the_host_is_short() -> None:
    a, b = growing_vm(1, 10), growing_vm(2, 10)
    policy = kernel_exact(reserve_kb=0).with_vm(vm(2).uuid, VmPolicy(weight=3 * 256))
    # Budget: 6 GiB free + 2 GiB held = 8 GiB; minimums 0.
    plan = decide(snapshot(a, b, free_kb=6 * GiB), policy)  # type: ignore[arg-type]
    first, second = plan.vms
    assert plan.host.short and not plan.host.overcommitted
    assert first.reason is Reason.HOST_SHORT and second.reason is Reason.HOST_SHORT
    assert first.target_kb == 2 * GiB and second.target_kb == 6 * GiB
    assert plan.host.sum_targets_kb <= plan.host.budget_kb == 8 * GiB


def test_a_vm_never_gets_more_than_it_wants() -> None:
    policy = kernel_exact(reserve_kb=0)
    plan = decide(snapshot(growing_vm(1, 2), growing_vm(2, 20), free_kb=9 * GiB), policy)  # type: ignore[arg-type]
    assert plan.vms[0].target_kb == 2 * GiB  # wanted 2, budget had room
    assert plan.vms[1].target_kb == 11 * GiB - 2 * GiB


def test_shrinks_are_written_before_grows() -> None:
    shrinker = vm(1, report=report(committed_as_kb=100 * MiB), report_age_s=0.0)
    grower = growing_vm(2, 3)
    small = vm(3, report=report(committed_as_kb=3 * GiB + 500 * MiB, mem_total_kb=3 * GiB,
                                balloon_current_kb=3 * GiB), target_kb=3 * GiB,
               actual_kb=3 * GiB, report_age_s=0.0)
    plan = decide(snapshot(grower, small, shrinker), kernel_exact())  # type: ignore[arg-type]
    deltas = [plan.vm(d).delta_kb for d in plan.write_order]
    assert plan.write_order[0] == 1 and deltas[0] < 0
    assert all(d > 0 for d in deltas[1:])
    assert deltas[1:] == sorted(deltas[1:])  # smaller grows first


def test_a_reservation_makes_room_by_the_same_mechanism() -> None:
    policy = kernel_exact(reserve_kb=0)
    a, b = growing_vm(1, 4), growing_vm(2, 4)
    without = decide(snapshot(a, b, free_kb=6 * GiB), policy)  # type: ignore[arg-type]
    assert not without.host.short
    plan = decide(
        snapshot(a, b, free_kb=6 * GiB,  # type: ignore[arg-type]
                 reservations=(Reservation(key="new-vm", size_kb=2 * GiB),)),
        policy,
    )
    assert plan.host.reservations[0].granted_kb == 2 * GiB
    assert plan.host.reservations[0].satisfied
    assert plan.host.sum_targets_kb + 2 * GiB <= plan.host.budget_kb
    assert all(v.reason is Reason.HOST_SHORT for v in plan.vms)


def test_budget_counts_free_memory_allocations_and_reserves() -> None:
    host = HostPolicy(dom0_reserve_kb=512 * MiB, free_margin_kb=64 * MiB)
    snap = snapshot(vm(1, actual_kb=2 * GiB + 8 * MiB, memory_offset_kb=8 * MiB),
                    vm(2, actual_kb=1 * GiB), free_kb=3 * GiB)
    assert host_budget_kb(snap, host) == 3 * GiB + 3 * GiB - 512 * MiB - 64 * MiB


def test_overcommitted_host_keeps_minimums() -> None:
    policy = kernel_exact().with_vm(vm(1).uuid, VmPolicy(min_kb=3 * GiB))
    policy = policy.with_vm(vm(2).uuid, VmPolicy(min_kb=3 * GiB))
    plan = decide(snapshot(growing_vm(1, 8), growing_vm(2, 8), free_kb=1 * GiB), policy)  # type: ignore[arg-type]
    assert plan.host.overcommitted
    assert [v.target_kb for v in plan.vms] == [3 * GiB, 3 * GiB]


def test_the_same_snapshot_gives_the_same_plan() -> None:
    snap = snapshot(growing_vm(1, 3), growing_vm(2, 9), free_kb=5 * GiB)  # type: ignore[arg-type]
    assert decide(snap, Policy()) == decide(snap, Policy())


def test_rates_need_a_real_time_window_and_tiny_stalls_do_not_overflow() -> None:
    earlier = est.figures_of(report(uptime_s=0.0, refault_file=0))
    later = est.figures_of(report(uptime_s=1.5e-269, refault_file=10**12, pswpin=10**12))
    assert earlier is not None and later is not None
    signals = est.signals_between(earlier, later)
    assert signals.refault_pps is None and signals.swapin_pps is None
    tiny = est.Signals(stall_frac=1.9e-232, refault_pps=0.0, swapin_pps=0.0)
    assert est.probe_shrink_pages(1 << 20, tiny) == int((1 << 20) * est.SENPAI_MAX_PROBE)
    flood = est.Signals(stall_frac=1.0, refault_pps=1e300, swapin_pps=1e300)
    assert est.pressure_grow_pages(1 << 20, flood, 5.0) >= 1 << 20


def test_plan_lookup_by_domid() -> None:
    plan = decide(snapshot(vm(3), vm(11), vm(7)), Policy())
    assert [v.domid for v in plan.vms] == [3, 7, 11]
    assert plan.vm(7).domid == 7 and plan.by_uuid()[vm(11).uuid].domid == 11
    with pytest.raises(KeyError):
        plan.vm(5)
