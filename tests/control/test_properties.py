"""Properties of decide() over random fleets and random, including hostile, reports.

Invariants (issue: "Proof"): every target within the VM's bounds; the sum of
targets within the host budget; no step larger than allowed; nothing written
inside the dead-band; the same snapshot always gives the same plan (and the
order of VMs in it does not matter); an uncooperative VM is never granted
more; one VM's report never moves another VM below its minimum, nor takes
more from the others than an honest maximal demand would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.schema import Report
from orchestrator.control import (
    ControlState,
    Estimator,
    HostPolicy,
    Mode,
    Plan,
    Policy,
    PolicyError,
    Reason,
    Reservation,
    Snapshot,
    VmDefaults,
    VmObservation,
    VmPolicy,
    decide,
    resolve,
    validate,
)
from tests.control.helpers import GiB, MiB

FLEET_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

huge = st.integers(min_value=-(1 << 70), max_value=1 << 70)
weird = st.one_of(
    huge,
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=3),
    st.booleans(),
)


# Mostly fresh reports; sometimes stale, dead or of unknown age.
ages = st.sampled_from([0.0, 0.5, 3.0, 10.0]) | st.floats(0, 1000) | st.none()
rarely = st.sampled_from([False] * 15 + [True])


@st.composite
def honest_reports(draw: st.DrawFn, static_max_kb: int) -> Report:
    total = draw(st.integers(64 * MiB, static_max_kb))
    available = draw(st.integers(0, total))
    swap_total = draw(st.integers(0, 4 * GiB))
    cached = draw(st.integers(0, total))
    return Report(
        seq=draw(st.integers(0, 1000)),
        uptime_s=draw(st.floats(0, 1e6)),
        mem_total_kb=total,
        mem_free_kb=draw(st.integers(0, available)),
        mem_available_kb=available,
        cached_kb=cached,
        committed_as_kb=draw(st.integers(0, 2 * static_max_kb)),
        totalreserve_kb=draw(st.integers(0, 64 * MiB)),
        anon_kb=draw(st.integers(0, total)),
        swap_total_kb=swap_total,
        swap_free_kb=draw(st.integers(0, swap_total)),
        pswpin=draw(st.integers(0, 1 << 30)),
        pswpout=draw(st.integers(0, 1 << 30)),
        frontswap_kb=draw(st.none() | st.integers(0, 1 * GiB)),
        psi_some_avg10=draw(st.none() | st.floats(0, 100)),
        psi_full_avg10=draw(st.none() | st.floats(0, 100)),
        psi_some_total_us=draw(st.none() | st.integers(0, 1 << 40)),
        refault_anon=draw(st.none() | st.integers(0, 1 << 40)),
        refault_file=draw(st.none() | st.integers(0, 1 << 40)),
        balloon_current_kb=draw(st.none() | st.integers(total, static_max_kb + 64 * MiB)),
        active_file_kb=draw(st.none() | st.integers(0, cached)),
    )


@st.composite
def hostile_reports(draw: st.DrawFn) -> Report:
    """Negative, astronomically large, non-finite, missing and mistyped fields."""
    names = [
        "seq", "uptime_s", "mem_total_kb", "mem_free_kb", "mem_available_kb", "cached_kb",
        "committed_as_kb", "totalreserve_kb", "anon_kb", "swap_total_kb", "swap_free_kb",
        "pswpin", "pswpout", "frontswap_kb", "psi_some_avg10", "psi_full_avg10",
        "psi_some_total_us", "refault_anon", "refault_file", "balloon_current_kb",
        "active_file_kb",
    ]
    values: dict[str, Any] = {name: draw(weird) for name in names}
    return Report(**values)


def near_or_any(high: int, slack: int = 0) -> st.SearchStrategy[int]:
    """Mostly in the upper half of [0, high], sometimes anywhere up to high + slack."""
    return st.sampled_from(["near", "near", "any"]).flatmap(
        lambda how: st.integers(high // 2, high) if how == "near"
        else st.integers(0, high + slack)
    )


def mostly_honest(static_max_kb: int) -> st.SearchStrategy[Report]:
    """A new report: four in five honest, one hostile."""
    return st.sampled_from(["honest"] * 4 + ["hostile"]).flatmap(
        lambda kind: honest_reports(static_max_kb) if kind == "honest" else hostile_reports()
    )


@st.composite
def vm_policies(draw: st.DrawFn, static_max_kb: int) -> VmPolicy:
    lo = draw(st.integers(0, static_max_kb // 4))
    hi = draw(st.integers(max(lo, 1), static_max_kb))
    mode = draw(st.sampled_from([None, None, None, None, Mode.AUTO, Mode.FIXED, Mode.OFF]))
    return VmPolicy(
        min_kb=draw(st.none() | st.just(lo)),
        max_kb=draw(st.none() | st.just(hi)),
        weight=draw(st.none() | st.integers(1, 1000)),
        mode=mode,
        estimator=draw(st.none() | st.sampled_from(Estimator)),
        reserve_kb=draw(st.none() | st.integers(0, 512 * MiB)),
        down_hysteresis=draw(st.none() | st.integers(1, 16)),
        up_hysteresis=draw(st.none() | st.integers(1, 4)),
        max_grow_kb=draw(st.none() | st.integers(0, 2 * GiB)),
        max_shrink_kb=draw(st.none() | st.integers(0, 2 * GiB)),
        deadband_kb=draw(st.none() | st.integers(0, 64 * MiB)),
        target_kb=draw(st.integers(lo, hi)) if mode is Mode.FIXED else None,
        swap_shrink=draw(st.none() | st.booleans()),
    )


@dataclass(frozen=True)
class Fleet:
    snapshot: Snapshot
    policy: Policy


@st.composite
def fleets(draw: st.DrawFn, *, max_vms: int = 12, hostile: bool = True) -> Fleet:
    count = draw(st.integers(1, max_vms))
    vms = []
    overrides = {}
    for index in range(count):
        static_max = draw(st.integers(128 * MiB, 32 * GiB))
        offset = draw(st.integers(0, 16 * MiB))
        kind = draw(st.sampled_from(["honest", "honest", "hostile", "none", "meminfo"]
                                    if hostile else ["honest", "honest", "none", "meminfo"]))
        rep = None
        if kind == "honest":
            rep = draw(honest_reports(static_max))
        elif kind == "hostile":
            rep = draw(hostile_reports())
        uuid = f"vm-{index}"
        vms.append(VmObservation(
            domid=index + 1,
            uuid=uuid,
            name=uuid,
            static_max_kb=static_max,
            actual_kb=draw(near_or_any(static_max + offset)),
            target_kb=draw(st.none() | near_or_any(static_max, slack=256 * MiB)),
            memory_offset_kb=offset,
            report=rep,
            report_age_s=draw(ages) if rep is not None else None,
            meminfo_total_kb=draw(st.integers(0, static_max)) if kind == "meminfo" else None,
            meminfo_free_kb=draw(st.integers(0, static_max)) if kind == "meminfo" else None,
            paused=draw(rarely),
            directive_seq=draw(st.none() | st.integers(0, 100)),
        ))
        candidate = draw(vm_policies(static_max))
        try:
            validate(Policy(vms={uuid: candidate}))
            overrides[uuid] = candidate
        except PolicyError:
            pass
    host = HostPolicy(
        dom0_reserve_kb=draw(st.sampled_from([0, 0, 256 * MiB, 2 * GiB])),
        free_margin_kb=draw(st.integers(0, 256 * MiB)),
        paused=draw(rarely),
        defaults=VmDefaults(
            estimator=draw(st.sampled_from(Estimator)),
            deadband_kb=draw(st.integers(0, 16 * MiB)),
            max_shrink_kb=draw(st.integers(0, 2 * GiB)),
            max_grow_kb=draw(st.integers(0, 2 * GiB)),
        ),
    )
    reservations = tuple(
        Reservation(key=f"new-{i}", size_kb=draw(st.integers(0, 8 * GiB)))
        for i in range(draw(st.integers(0, 2)))
    )
    snap = Snapshot(
        now_s=draw(st.floats(0, 1e6)),
        host_total_kb=256 * GiB,
        host_free_kb=draw(st.sampled_from([8, 16, 1, 2, 4, 64, 0]).flatmap(
            lambda gib: st.integers(gib * GiB // 2, gib * GiB))),
        vms=tuple(vms),
        reservations=reservations,
    )
    return Fleet(snapshot=snap, policy=Policy(host=host, vms=overrides))


def independent_budget(fleet: Fleet) -> int:
    host = fleet.policy.host
    held = sum(max(vm.actual_kb - vm.memory_offset_kb, 0) for vm in fleet.snapshot.vms)
    return fleet.snapshot.host_free_kb + held - host.dom0_reserve_kb - host.free_margin_kb


def not_managed(fleet: Fleet, obs: VmObservation) -> bool:
    eff = resolve(fleet.policy.vm(obs.uuid), fleet.policy.host.defaults, obs.static_max_kb)
    return fleet.policy.host.paused or obs.paused or eff.mode is Mode.OFF


def current_of(obs: VmObservation) -> int:
    actual = max(obs.actual_kb - obs.memory_offset_kb, 0)
    return obs.target_kb if obs.target_kb is not None else actual


def check_invariants(fleet: Fleet, plan: Plan, *, first_cycle: bool) -> None:
    obs_by_domid = {vm.domid: vm for vm in fleet.snapshot.vms}
    budget = independent_budget(fleet)
    assert plan.host.budget_kb == budget
    must = 0
    charged = 0
    for decision in plan.vms:
        obs = obs_by_domid[decision.domid]
        eff = resolve(fleet.policy.vm(obs.uuid), fleet.policy.host.defaults, obs.static_max_kb)
        current = current_of(obs)
        actual = max(obs.actual_kb - obs.memory_offset_kb, 0)
        assert isinstance(decision.target_kb, int)
        if not_managed(fleet, obs):
            assert not decision.write and decision.directive is None
            assert decision.target_kb == current
            must += max(actual, current)
            charged += max(actual, current)
            continue
        # Bounds, always (the policy min and max never give way).
        assert eff.min_kb <= decision.target_kb <= eff.max_kb <= obs.static_max_kb
        if eff.mode is Mode.FIXED:
            assert decision.target_kb == eff.target_kb
            must += decision.target_kb
        else:
            must += eff.min_kb
        charged += decision.target_kb
        in_bounds = eff.min_kb <= current <= eff.max_kb
        if eff.mode is Mode.AUTO and not plan.host.short and in_bounds:
            delta = decision.target_kb - current
            # No step larger than allowed.
            if eff.max_grow_kb > 0:
                assert delta <= eff.max_grow_kb
            if eff.max_shrink_kb > 0:
                assert -delta <= eff.max_shrink_kb
            # Nothing written inside the dead-band.
            if decision.write and obs.target_kb is not None:
                assert abs(delta) >= eff.deadband_kb or delta == 0
        if decision.write:
            assert decision.target_kb != obs.target_kb
        if decision.uncooperative:
            assert decision.target_kb <= max(current, actual, eff.min_kb)
        assert (decision.reason is Reason.DEADBAND) <= (not decision.write)
    reserved = sum(r.granted_kb for r in plan.host.reservations)
    if first_cycle:
        # Nobody can be held on a first cycle: the feasibility test is exact.
        assert plan.host.overcommitted == (must > budget)
    if not plan.host.overcommitted:
        assert charged + reserved <= budget
        assert plan.host.sum_targets_kb + reserved <= budget
    # Shrinks strictly before grows (a zero change is written only to create a
    # missing memory/target key, and goes with the grows).
    deltas = [plan.vm(d).target_kb - current_of(obs_by_domid[d]) for d in plan.write_order]
    first_grow = next((i for i, d in enumerate(deltas) if d >= 0), len(deltas))
    assert all(d < 0 for d in deltas[:first_grow]) and all(d >= 0 for d in deltas[first_grow:])


@pytest.mark.slow
@FLEET_SETTINGS
@given(fleets())
def test_invariants_hold_on_any_fleet(fleet: Fleet) -> None:
    plan = decide(fleet.snapshot, fleet.policy)
    check_invariants(fleet, plan, first_cycle=True)


@pytest.mark.slow
@FLEET_SETTINGS
@given(fleets(), st.randoms(use_true_random=False))
def test_the_same_snapshot_gives_the_same_plan_in_any_vm_order(fleet: Fleet, rnd: Any) -> None:
    plan = decide(fleet.snapshot, fleet.policy)
    assert decide(fleet.snapshot, fleet.policy) == plan
    shuffled = list(fleet.snapshot.vms)
    rnd.shuffle(shuffled)
    again = decide(replace(fleet.snapshot, vms=tuple(shuffled)), fleet.policy)
    assert again == plan


@pytest.mark.slow
@FLEET_SETTINGS
@given(fleets(max_vms=8), st.data())
def test_invariants_hold_over_many_cycles_with_moving_guests(
    fleet: Fleet, data: st.DataObject
) -> None:
    state = ControlState()
    snap = fleet.snapshot
    for _ in range(data.draw(st.integers(2, 8))):
        plan = decide(snap, fleet.policy, state)
        check_invariants(replace(fleet, snapshot=snap), plan, first_cycle=state == ControlState())
        state = plan.state
        moved = []
        for obs in snap.vms:
            decision = plan.vm(obs.domid)
            # Each guest does anything from nothing to reaching its target.
            frac = data.draw(st.sampled_from([0.0, 0.0, 0.5, 1.0]))
            actual = obs.actual_kb
            goal = decision.target_kb + obs.memory_offset_kb
            actual = max(int(actual + (goal - actual) * frac), 0)
            rep = obs.report
            if rep is not None and data.draw(st.booleans()):
                # A new report from the same boot: counters move on.
                rep = data.draw(mostly_honest(obs.static_max_kb))
            moved.append(replace(obs, actual_kb=actual, target_kb=decision.target_kb,
                                 report=rep))
        snap = replace(snap, vms=tuple(moved),
                       now_s=snap.now_s + data.draw(st.sampled_from([1.0, 5.0, 5.0, 30.0])))


def maximal_demand(static_max_kb: int) -> Report:
    """An honest report that asks for everything: every estimator wants its max."""
    return Report(
        seq=1, uptime_s=100.0, mem_total_kb=64 * MiB, mem_free_kb=0, mem_available_kb=0,
        cached_kb=0, committed_as_kb=1 << 34, totalreserve_kb=0, anon_kb=64 * MiB,
        swap_total_kb=0, swap_free_kb=0, pswpin=0, pswpout=0, psi_some_avg10=100.0,
        balloon_current_kb=static_max_kb,
    )


@pytest.mark.slow
@FLEET_SETTINGS
@given(fleets(hostile=False), st.data())
def test_one_vms_report_never_hurts_the_others_more_than_a_maximal_demand(
    fleet: Fleet, data: st.DataObject
) -> None:
    vms = list(fleet.snapshot.vms)
    k = data.draw(st.integers(0, len(vms) - 1))
    hostile = data.draw(hostile_reports() | honest_reports(vms[k].static_max_kb))
    with_hostile = list(vms)
    with_hostile[k] = replace(vms[k], report=hostile, report_age_s=0.0)
    with_max = list(vms)
    with_max[k] = replace(vms[k], report=maximal_demand(vms[k].static_max_kb), report_age_s=0.0)
    plan_h = decide(replace(fleet.snapshot, vms=tuple(with_hostile)), fleet.policy)
    plan_m = decide(replace(fleet.snapshot, vms=tuple(with_max)), fleet.policy)
    check_invariants(replace(fleet, snapshot=replace(fleet.snapshot, vms=tuple(with_hostile))),
                     plan_h, first_cycle=True)
    victim = vms[k].domid
    for decision_h, decision_m in zip(plan_h.vms, plan_m.vms, strict=True):
        if decision_h.reason in (Reason.OFF, Reason.PAUSED, Reason.DOMAIN_PAUSED):
            continue  # not managed: its target is whatever it was
        if decision_h.domid == victim:
            assert decision_h.target_kb <= decision_h.max_kb
            continue
        assert decision_h.target_kb >= decision_h.min_kb
        assert decision_h.target_kb >= decision_m.target_kb


@settings(max_examples=200, deadline=None)
@given(hostile_reports())
def test_a_hostile_report_never_crashes_and_stays_in_bounds(hostile: Report) -> None:
    obs = VmObservation(domid=3, uuid="h", name="h", static_max_kb=2 * GiB, actual_kb=1 * GiB,
                        target_kb=1 * GiB, report=hostile, report_age_s=0.0)
    for estimator in Estimator:
        policy = Policy(host=HostPolicy(defaults=VmDefaults(estimator=estimator)))
        state = ControlState()
        for tick in range(3):
            plan = decide(Snapshot(now_s=5.0 * tick, host_total_kb=64 * GiB, host_free_kb=8 * GiB,
                                   vms=(obs,)), policy, state)
            state = plan.state
            decision = plan.vms[0]
            assert decision.min_kb <= decision.target_kb <= 2 * GiB
            assert decision.demand_kb is None or decision.demand_kb >= 0
            if decision.directive is not None:
                target = decision.directive.swap_target_kb
                assert target is None or 0 <= target <= (1 << 34)
            assert not math.isnan(decision.stuck_score_s)
