"""Report-on-change and heartbeat: properties of the pure decision."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.change import ReportPolicy, report_reason
from agents.schema import Report
from orchestrator.errors import UsageError

GIB_KB = 1024 * 1024
BASE = Report(
    seq=1, uptime_s=1000.0, mem_total_kb=4 * GIB_KB, mem_free_kb=GIB_KB,
    mem_available_kb=2 * GIB_KB, cached_kb=GIB_KB, committed_as_kb=3 * GIB_KB,
    totalreserve_kb=100_000, anon_kb=GIB_KB, swap_total_kb=GIB_KB, swap_free_kb=GIB_KB,
    pswpin=1000, pswpout=2000, frontswap_kb=0, psi_some_avg10=0.0, psi_full_avg10=0.0,
    psi_some_total_us=5_000_000, refault_anon=10, refault_file=100, balloon_current_kb=4 * GIB_KB,
)
POLICY = ReportPolicy()
# 2 % of 4 GiB is above the 16 MiB floor: this guest's threshold.
THRESHOLD_KB = math.ceil(0.02 * 4 * GIB_KB)


def reason(candidate: Report, *, at_s: float, new_ack: bool = False,
           policy: ReportPolicy = POLICY) -> str | None:
    return report_reason(last=BASE, last_sent_s=100.0, candidate=candidate, now_s=100.0 + at_s,
                         policy=policy, new_ack=new_ack)


def test_first_report_goes_out() -> None:
    assert report_reason(last=None, last_sent_s=None, candidate=BASE, now_s=0.0,
                         policy=POLICY) == "first report"


def test_idle_guest_reports_only_on_heartbeat() -> None:
    idle = replace(BASE, seq=2, uptime_s=1020.0, mem_free_kb=BASE.mem_free_kb - 4096,
                   pswpin=BASE.pswpin + 3, psi_some_total_us=BASE.psi_some_total_us + 500)
    assert reason(idle, at_s=29.9) is None
    assert reason(idle, at_s=30.0) == "heartbeat"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(mem_available_kb=2 * GIB_KB - THRESHOLD_KB), f"mem_available_kb moved by "
                                                           f"{-THRESHOLD_KB:+d} KiB"),
        (dict(committed_as_kb=3 * GIB_KB + THRESHOLD_KB), f"committed_as_kb moved by "
                                                          f"+{THRESHOLD_KB} KiB"),
        (dict(swap_free_kb=GIB_KB - THRESHOLD_KB), f"swap_used_kb moved by +{THRESHOLD_KB} KiB"),
        (dict(balloon_current_kb=None), "balloon_current_kb appeared or vanished"),
        (dict(psi_some_avg10=2.0), "psi_some_avg10 moved from 0.00 to 2.00"),
        (dict(psi_full_avg10=2.5), "psi_full_avg10 moved from 0.00 to 2.50"),
        (dict(psi_some_total_us=5_100_000), "memory stalls of 100000 us"),
        (dict(pswpin=1000 + 200, pswpout=2000 + 56), "256 pages swapped"),
        (dict(refault_file=100 + 2560), "2560 refaults"),
        (dict(uptime_s=5.0), "guest rebooted"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else next(iter(v)),
)
def test_changes_that_matter_go_out_at_once(change: dict[str, object], expected: str) -> None:
    candidate = replace(BASE, seq=2, **change)  # type: ignore[arg-type]
    assert reason(candidate, at_s=1.0) == expected


def test_changes_just_under_the_thresholds_stay_quiet() -> None:
    candidate = replace(
        BASE, seq=2, mem_available_kb=2 * GIB_KB - THRESHOLD_KB + 1, psi_some_avg10=1.99,
        psi_some_total_us=5_099_999, pswpin=1000 + 255, refault_file=100 + 2559,
    )
    assert reason(candidate, at_s=1.0) is None


def test_rate_limit_and_its_exceptions() -> None:
    moved = replace(BASE, seq=2, mem_available_kb=GIB_KB)
    assert reason(moved, at_s=0.5) is None
    assert reason(moved, at_s=1.0) is not None
    assert reason(BASE, at_s=0.1, new_ack=True) == "directive outcome"
    assert reason(replace(BASE, uptime_s=1.0), at_s=0.1) == "guest rebooted"


def test_counter_going_backwards_is_not_activity() -> None:
    candidate = replace(BASE, seq=2, pswpin=0, pswpout=0, refault_file=0, psi_some_total_us=0)
    assert reason(candidate, at_s=5.0) is None


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(UsageError):
        ReportPolicy(heartbeat_s=0)
    with pytest.raises(UsageError):
        ReportPolicy(heartbeat_s=10, min_interval_s=20)
    with pytest.raises(UsageError):
        ReportPolicy(change_fraction=1.5)
    with pytest.raises(UsageError):
        ReportPolicy(swap_pages=-1)


reports = st.builds(
    lambda avail, committed, psi, stall, swapped, uptime: replace(
        BASE, seq=2, mem_available_kb=avail, committed_as_kb=committed, psi_some_avg10=psi,
        psi_some_total_us=BASE.psi_some_total_us + stall, pswpin=BASE.pswpin + swapped,
        uptime_s=uptime,
    ),
    st.integers(0, 4 * GIB_KB), st.integers(0, 8 * GIB_KB),
    st.floats(0, 100, allow_nan=False), st.integers(0, 10**7), st.integers(0, 10**6),
    st.floats(0, 10**6, allow_nan=False),
)


@given(candidate=reports, elapsed_s=st.floats(0, 10**5, allow_nan=False))
def test_never_silent_past_the_heartbeat(candidate: Report, elapsed_s: float) -> None:
    why = reason(candidate, at_s=elapsed_s)
    if elapsed_s >= POLICY.heartbeat_s:
        assert why is not None
    # (1e-6 s: the allowance for rounding in tick times)
    if elapsed_s < POLICY.min_interval_s - 1e-6 and candidate.uptime_s >= BASE.uptime_s:
        assert why is None


@given(elapsed_s=st.floats(0, 29.99, allow_nan=False), uptime_s=st.floats(1000, 10**6))
def test_an_unchanged_guest_is_quiet_between_heartbeats(elapsed_s: float, uptime_s: float) -> None:
    assert reason(replace(BASE, seq=5, uptime_s=uptime_s), at_s=elapsed_s) is None


@given(delta_kb=st.integers(-4 * GIB_KB, 4 * GIB_KB), elapsed_s=st.floats(1, 29.9))
def test_size_threshold_is_exact(delta_kb: int, elapsed_s: float) -> None:
    candidate = replace(BASE, seq=2, committed_as_kb=BASE.committed_as_kb + delta_kb)
    assert (reason(candidate, at_s=elapsed_s) is not None) == (abs(delta_kb) >= THRESHOLD_KB)
