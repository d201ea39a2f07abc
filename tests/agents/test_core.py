"""The agent's pure bookkeeping: what is written when, over virtual time."""

from __future__ import annotations

from dataclasses import replace

from agents.change import ReportPolicy
from agents.core import AgentState, plan_writes
from agents.schema import DirectiveAck, decode_report
from agents.source import MemorySample, ProcMemorySource
from tests.agents.guest import FIXTURES

POLICY = ReportPolicy(heartbeat_s=30.0)
SAMPLE = ProcMemorySource(FIXTURES / "linux-6.1-xen-pvh-zswap").sample()


def run(state: AgentState, sample: MemorySample, now_s: float) -> tuple[AgentState, list[str]]:
    """One tick as the loop does it; returns the new state and what was written."""
    plan = plan_writes(state, sample, now_s=now_s, policy=POLICY)
    written = []
    if plan.meminfo:
        written += [f"meminfo_{k}={v}" for k, v in sorted(plan.meminfo.items())]
    if plan.report is not None:
        written.append(f"report seq={plan.report.seq}")
        assert decode_report(plan.report_bytes) == plan.report
    return state.after_writes(plan, now_s=now_s), written


def test_an_idle_guest_over_two_minutes() -> None:
    state, log = AgentState(), []
    for second in range(121):
        state, written = run(state, SAMPLE, float(second))
        log += [(second, w) for w in written]
    assert log == [
        (0, "meminfo_free=2400000"), (0, "meminfo_total=8203360"), (0, "report seq=1"),
        (30, "report seq=2"), (60, "report seq=3"), (90, "report seq=4"), (120, "report seq=5"),
    ]


def test_change_reports_at_once_with_fresh_meminfo() -> None:
    state, _ = run(AgentState(), SAMPLE, 0.0)
    busier = replace(SAMPLE, mem_free_kb=1_000_000, mem_available_kb=3_000_000)
    state, written = run(state, busier, 2.0)
    assert written == ["meminfo_free=1000000", "report seq=2"]
    state, written = run(state, busier, 3.0)
    assert written == []


def test_directive_outcome_goes_out_at_once_and_stays() -> None:
    state, _ = run(AgentState(), SAMPLE, 0.0)
    ack = DirectiveAck(seq=9, outcome="done", detail="cycled /dev/xvdb")
    state = state.taking_up(9).with_ack(ack)
    plan = plan_writes(state, SAMPLE, now_s=0.2, policy=POLICY)
    assert plan.report is not None and plan.report.directive_ack == ack
    assert plan.reason == "directive outcome"
    state = state.after_writes(plan, now_s=0.2)
    assert plan_writes(state, SAMPLE, now_s=5.0, policy=POLICY).report is None
    heartbeat = plan_writes(state, SAMPLE, now_s=30.2, policy=POLICY).report
    assert heartbeat is not None and heartbeat.directive_ack == ack


def test_unreportable_sample_still_writes_meminfo_on_heartbeat() -> None:
    broken = replace(SAMPLE, totalreserve_kb=None)
    state, log = AgentState(), []
    for second in range(61):
        state, written = run(state, broken, float(second))
        log += [(second, w) for w in written]
    assert log == [(0, "meminfo_free=2400000"), (0, "meminfo_total=8203360")]
    plan = plan_writes(state, replace(broken, mem_free_kb=5), now_s=61.0, policy=POLICY)
    assert plan.meminfo == {"free": 5}
    assert plan.unreportable == "cannot report: missing totalreserve_kb"


def test_a_report_the_controller_would_reject_is_not_sent() -> None:
    # MemFree read after MemTotal shrank (a balloon moved between two reads).
    torn = replace(SAMPLE, mem_free_kb=SAMPLE.mem_total_kb + 1)  # type: ignore[operator]
    plan = plan_writes(AgentState(), torn, now_s=0.0, policy=POLICY)
    assert plan.report is None
    assert plan.unreportable == "mem_free_kb is larger than mem_total_kb"


def test_refused_write_waits_for_the_heartbeat() -> None:
    state = AgentState().refused(now_s=0.0, policy=POLICY)
    assert plan_writes(state, SAMPLE, now_s=29.0, policy=POLICY).report is None
    assert plan_writes(state, SAMPLE, now_s=30.0, policy=POLICY).report is not None


def test_resume_after_a_previous_run() -> None:
    ack = DirectiveAck(seq=4, outcome="partial", detail="x")
    previous = plan_writes(AgentState(next_seq=41, ack=ack), SAMPLE, now_s=0.0,
                           policy=POLICY).report
    assert previous is not None
    same_boot = AgentState().resumed(previous, uptime_s=previous.uptime_s + 60)
    assert (same_boot.next_seq, same_boot.ack, same_boot.acted_seq) == (42, ack, 4)
    assert not same_boot.is_new_directive(4) and same_boot.is_new_directive(5)
    rebooted = AgentState().resumed(previous, uptime_s=12.0)
    assert (rebooted.next_seq, rebooted.ack, rebooted.acted_seq) == (42, None, None)
    assert rebooted.is_new_directive(4)
