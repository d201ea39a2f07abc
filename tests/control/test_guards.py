"""Guards: inactive, uncooperative (with a score that cannot be dodged), stale, dead."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.control import (
    ControlState,
    Mode,
    Plan,
    Policy,
    Reason,
    VmPolicy,
    VmState,
    decide,
)
from orchestrator.control.guards import INACTIVE_AFTER_S, UNCOOPERATIVE_AFTER_S
from tests.control.helpers import GiB, MiB, kernel_exact, report, snapshot, vm

UUID = vm().uuid
FIXED_2G = Policy(vms={UUID: VmPolicy(mode=Mode.FIXED, target_kb=2 * GiB)})


def run(actuals: list[int], policy: Policy = FIXED_2G, step_s: float = 5.0,
        **vm_fields: Any) -> list[Plan]:
    """One cycle per allocation in ``actuals``; the target written is what the VM sees next."""
    state = ControlState()
    target = vm_fields.pop("target_kb", 2 * GiB)
    plans = []
    for tick, actual in enumerate(actuals):
        plan = decide(
            snapshot(vm(actual_kb=actual, target_kb=target, **vm_fields), now_s=tick * step_s),
            policy, state,
        )
        state = plan.state
        target = plan.vms[0].target_kb
        plans.append(plan)
    return plans


def test_squeezed_constants() -> None:
    assert (INACTIVE_AFTER_S, UNCOOPERATIVE_AFTER_S) == (5.0, 20.0)


def test_a_stuck_guest_is_inactive_after_5_s_and_uncooperative_after_20_s() -> None:
    plans = run([4 * GiB] * 7)
    states = [p.vms[0] for p in plans]
    # t=0 first sight (no judgement); t=5: 5 s without progress; t=20: 20 s.
    assert [round(s.stuck_score_s) for s in states] == [0, 5, 10, 15, 20, 25, 25]
    assert [s.uncooperative for s in states] == [False] * 4 + [True] * 3
    # A fixed VM keeps showing "fixed"; the flag is what memory/uncooperative gets.
    assert all(s.state is VmState.FIXED for s in states)


def test_an_auto_vm_shows_inactive_then_uncooperative() -> None:
    # Fresh reports ask for a shrink; the balloon never moves.
    wants_less = report(committed_as_kb=100 * MiB, balloon_current_kb=4 * GiB - 40 * MiB)
    plans = run([4 * GiB] * 8, policy=kernel_exact(), target_kb=4 * GiB,
                report=wants_less, report_age_s=0.0)
    states = [p.vms[0].state for p in plans]
    assert states[0] is VmState.OK
    assert states[1] is VmState.INACTIVE
    assert states[-1] is VmState.UNCOOPERATIVE


def test_moving_a_little_every_19_s_does_not_dodge_detection() -> None:
    # Cycles every 1 s; the guest moves 1 MiB every 19 s, so "time since last
    # progress" never exceeds 19 s and a plain 20 s timer would never fire.
    actuals = []
    actual = 4 * GiB
    for second in range(120):
        if second and second % 19 == 0:
            actual -= 1 * MiB
        actuals.append(actual)
    gaps = [b - a for a, b in zip(
        [0] + [s for s in range(120) if s and s % 19 == 0],
        [s for s in range(120) if s and s % 19 == 0], strict=False)]
    assert max(gaps) < UNCOOPERATIVE_AFTER_S
    plans = run(actuals, step_s=1.0, )
    flagged_at = next(i for i, p in enumerate(plans) if p.vms[0].uncooperative)
    assert flagged_at <= 25
    assert all(p.vms[0].uncooperative for p in plans[flagged_at:])


def test_an_honest_slow_balloon_is_never_flagged() -> None:
    # 10 MiB per 5 s cycle is 2 MiB/s, above the minimum progress rate.
    actuals = [4 * GiB - i * 10 * MiB for i in range(40)]
    assert not any(p.vms[0].uncooperative or p.vms[0].stuck_score_s for p in run(actuals))


def test_a_guest_at_its_target_is_never_flagged() -> None:
    assert not any(p.vms[0].uncooperative for p in run([2 * GiB] * 20))


def test_a_guest_that_cannot_grow_is_not_blamed() -> None:
    plans = run([1 * GiB] * 20)  # target 2 GiB, stuck below it
    assert not any(p.vms[0].uncooperative for p in plans)


def test_it_recovers_when_it_moves_again() -> None:
    actuals = [4 * GiB] * 8 + [3 * GiB, 2 * GiB, 2 * GiB]
    plans = run(actuals)
    assert plans[7].vms[0].uncooperative
    assert not plans[8].vms[0].uncooperative
    assert plans[8].vms[0].stuck_score_s == 0


def test_an_uncooperative_vm_keeps_its_memory_but_gets_no_more() -> None:
    # Committed goal far above what it holds; it is stuck above its old target.
    big = report(committed_as_kb=7 * GiB, mem_total_kb=3 * GiB, balloon_current_kb=3 * GiB)
    policy = kernel_exact()
    state = ControlState()
    for tick in range(6):
        observed = vm(static_max_kb=8 * GiB, actual_kb=3 * GiB, target_kb=2 * GiB)
        plan = decide(snapshot(observed, now_s=5.0 * tick), Policy(vms={
            UUID: VmPolicy(mode=Mode.FIXED, target_kb=2 * GiB)}), state)
        state = plan.state
    assert plan.vms[0].uncooperative
    observed = vm(static_max_kb=8 * GiB, actual_kb=3 * GiB, target_kb=2 * GiB,
                  report=big, report_age_s=0.0)
    plan = decide(snapshot(observed, now_s=30.0), policy, state)
    decision = plan.vms[0]
    assert decision.uncooperative and decision.state is VmState.UNCOOPERATIVE
    assert decision.want_kb <= 3 * GiB  # what it holds, not the 7 GiB it asks for
    assert decision.target_kb == 3 * GiB
    assert decision.reason is Reason.UNCOOPERATIVE


def test_a_stuck_vm_is_charged_what_it_holds() -> None:
    stuck_uuid = vm(1).uuid
    policy = Policy(vms={stuck_uuid: VmPolicy(mode=Mode.FIXED, target_kb=1 * GiB)})
    state = ControlState()
    for tick in range(6):
        stuck = vm(1, actual_kb=4 * GiB, target_kb=1 * GiB)
        other = vm(2, actual_kb=2 * GiB, target_kb=2 * GiB, static_max_kb=8 * GiB)
        # Budget: free 1 GiB + 4 + 2 GiB held - 50 MiB margin.
        plan = decide(snapshot(stuck, other, now_s=5.0 * tick, free_kb=1 * GiB), policy, state)
        state = plan.state
    first, second = plan.vms
    assert first.uncooperative
    assert first.charge_kb == 4 * GiB  # not its 1 GiB target
    # The other VM cannot be promised the 3 GiB the stuck one does not release.
    assert second.target_kb <= plan.host.budget_kb - 4 * GiB
    assert plan.host.sum_charged_kb <= plan.host.budget_kb


def test_a_stale_report_holds_the_last_good_target() -> None:
    policy = kernel_exact()
    fresh = vm(report=report(committed_as_kb=1 * GiB), report_age_s=1.0)
    plan = decide(snapshot(fresh, now_s=0.0), policy)
    decided = plan.vms[0].target_kb
    assert decided < 4 * GiB
    stale = vm(target_kb=decided, report=report(committed_as_kb=100 * MiB), report_age_s=61.0)
    later = decide(snapshot(stale, now_s=5.0), policy, plan.state)
    assert later.vms[0].state is VmState.STALE
    assert later.vms[0].reason is Reason.STALE
    assert later.vms[0].target_kb == decided and not later.vms[0].write


def test_unknown_report_age_counts_as_stale() -> None:
    plan = decide(snapshot(vm(report=report(), report_age_s=None)), kernel_exact())
    assert plan.vms[0].state is VmState.STALE and not plan.vms[0].write


def test_an_unusable_report_holds() -> None:
    plan = decide(snapshot(vm(report=report(mem_total_kb=0), report_age_s=0.0)), kernel_exact())
    assert plan.vms[0].reason is Reason.INVALID_REPORT and not plan.vms[0].write


def test_a_dead_report_drifts_to_the_fallback_with_hysteresis() -> None:
    policy = kernel_exact(fallback_kb=1 * GiB)
    state = ControlState()
    target = 3 * GiB
    targets = []
    for tick in range(60):
        observed = vm(target_kb=target, actual_kb=target, report=report(), report_age_s=301.0)
        plan = decide(snapshot(observed, now_s=5.0 * tick), policy, state)
        state = plan.state
        assert plan.vms[0].state is VmState.DEAD and plan.vms[0].reason is Reason.DEAD
        target = plan.vms[0].target_kb
        targets.append(target)
    # Down by an eighth of the gap per interval, in pages, like the kernel law.
    cur, goal = 3 * GiB // 4, 1 * GiB // 4
    expected = []
    for _ in range(60):
        cur -= (cur - goal) // 8
        expected.append(cur * 4)
    assert targets == expected


def test_no_data_at_all_drifts_up_to_the_maximum_by_default() -> None:
    plan = decide(snapshot(vm(target_kb=1 * GiB, actual_kb=1 * GiB)), Policy())
    decision = plan.vms[0]
    assert decision.reason is Reason.NO_DATA and decision.state is VmState.DEAD
    assert decision.target_kb == 4 * GiB  # default fallback is the max; growth is at once


def test_global_pause_writes_nothing() -> None:
    policy = kernel_exact()
    policy = policy.with_host(replace(policy.host, paused=True))
    plan = decide(snapshot(vm(report=report(committed_as_kb=100 * MiB), report_age_s=0.0)), policy)
    assert plan.host.paused
    assert plan.write_order == ()
    decision = plan.vms[0]
    assert decision.state is VmState.PAUSED and decision.reason is Reason.PAUSED
    assert not decision.write and decision.directive is None


def test_a_paused_domain_is_held_and_not_scored() -> None:
    state = ControlState()
    for tick in range(10):
        plan = decide(
            snapshot(vm(actual_kb=4 * GiB, target_kb=2 * GiB, paused=True), now_s=5.0 * tick),
            FIXED_2G, state,
        )
        state = plan.state
    decision = plan.vms[0]
    assert decision.state is VmState.PAUSED and decision.reason is Reason.DOMAIN_PAUSED
    assert not decision.uncooperative and not decision.write


def test_mode_off_is_never_written_but_counts() -> None:
    policy = Policy(vms={UUID: VmPolicy(mode=Mode.OFF)})
    plan = decide(snapshot(vm(actual_kb=3 * GiB, target_kb=2 * GiB, report=report(),
                              report_age_s=0.0)), policy)
    decision = plan.vms[0]
    assert decision.state is VmState.OFF and not decision.write
    assert decision.target_kb == 2 * GiB and decision.charge_kb == 3 * GiB


def test_a_reboot_resets_the_guards() -> None:
    plans = run([4 * GiB] * 6)
    assert plans[-1].vms[0].uncooperative
    plan = decide(
        snapshot(vm(domid=7, uuid=UUID, actual_kb=4 * GiB, target_kb=2 * GiB), now_s=40.0),
        FIXED_2G, plans[-1].state,
    )
    assert not plan.vms[0].uncooperative and plan.vms[0].stuck_score_s == 0
