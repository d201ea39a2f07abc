"""Golden tests: the ported kernel laws reproduce KERNEL-LAW.md tick by tick.

Expected values come from ``reference.py``, a line-by-line transcription of
the document's pseudo-code, and from the facts the document states (floors,
jumps, 1/8 closure, half-life). The port is driven both directly and through
``decide`` with a simulated guest whose balloon reaches each target at once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.control import ControlState, decide, kernel
from tests.control import reference as ref
from tests.control.helpers import GiB, MiB, kernel_exact, report, snapshot, vm

PAGE_KB = 4


# ---------------------------------------------------------------------------
# The documented facts about the floor


@pytest.mark.parametrize(
    ("size_mib", "floor_above_reserve_mib"),
    [(128, 51.0), (1024, 127.9), (4096, 223.9), (16384, 607.9)],
    ids=["128M", "1G", "4G", "16G"],
)
@pytest.mark.parametrize("totalreserve", [0, 3000], ids=["no-reserve", "reserve"])
def test_floor_examples_from_the_document(
    size_mib: int, floor_above_reserve_mib: float, totalreserve: int
) -> None:
    max_pfn = ref.MB(size_mib) + totalreserve  # useful = the guest's size
    floor = kernel.selfballoon_floor_pages(max_pfn=max_pfn, totalreserve=totalreserve)
    assert floor == ref.floor_pages(max_pfn=max_pfn, totalreserve=totalreserve)
    assert round((floor - totalreserve) / ref.MB(1), 1) == floor_above_reserve_mib


@pytest.mark.parametrize(("edge_mib", "jump_mib"), [(64, 3.0), (512, 12.9)], ids=["64M", "512M"])
def test_floor_jumps_at_the_breakpoints(edge_mib: int, jump_mib: float) -> None:
    below = kernel.selfballoon_floor_pages(max_pfn=ref.MB(edge_mib) - 1, totalreserve=0)
    at = kernel.selfballoon_floor_pages(max_pfn=ref.MB(edge_mib), totalreserve=0)
    assert round((at - below) / ref.MB(1), 1) == jump_mib


def test_under_16_mib_of_useful_memory_the_floor_is_max_pfn() -> None:
    max_pfn = ref.MB(16) - 1 + 500
    assert kernel.selfballoon_floor_pages(max_pfn=max_pfn, totalreserve=500) == max_pfn


def test_min_usable_replaces_the_curve() -> None:
    assert kernel.selfballoon_floor_pages(
        max_pfn=ref.MB(4096), totalreserve=700, min_usable_mb=64
    ) == 700 + ref.MB(64)


def test_default_reserve_is_ten_percent_in_whole_mib() -> None:
    # 4 GiB: 1048576 pages / 10 = 104857 pages = 409.6 MiB -> 409 MiB.
    assert kernel.default_reserved_mb(ref.MB(4096)) == 409
    assert kernel.default_reserved_mb(ref.MB(1000)) == 100


# ---------------------------------------------------------------------------
# The step


def test_going_down_closes_one_eighth_of_the_gap() -> None:
    goal, cur = 100_000, 180_000
    tgt = kernel.selfballoon_step_pages(cur=cur, goal=goal)
    assert cur - tgt == (cur - goal) // 8 == 10_000


@pytest.mark.parametrize("gap", range(1, 8))
def test_a_gap_under_eight_pages_is_never_closed(gap: int) -> None:
    assert kernel.selfballoon_step_pages(cur=5000 + gap, goal=5000) == 5000 + gap


def test_going_up_requests_the_goal_in_one_step() -> None:
    assert kernel.selfballoon_step_pages(cur=1000, goal=250_000) == 250_000


def test_hysteresis_zero_is_refused_like_the_kernel_sysfs() -> None:
    with pytest.raises(ValueError):
        kernel.selfballoon_step_pages(cur=10, goal=5, downhysteresis=0)


pages = st.integers(min_value=0, max_value=1 << 26)


@given(
    totalram=pages, committed=pages, totalreserve=st.integers(0, 1 << 16),
    reserved_mb=st.integers(0, 4096), max_pfn=pages, extra=st.integers(0, 1 << 16),
    min_usable_mb=st.sampled_from([0, 0, 16, 300]), down=st.integers(1, 64),
    up=st.integers(1, 8), frontswap=st.integers(0, 1 << 20),
)
def test_the_port_equals_the_transcription(
    totalram: int, committed: int, totalreserve: int, reserved_mb: int, max_pfn: int,
    extra: int, min_usable_mb: int, down: int, up: int, frontswap: int,
) -> None:
    args = dict(
        totalram=totalram, committed=committed, totalreserve=totalreserve,
        reserved_mb=reserved_mb, max_pfn=max_pfn, balloon_current=totalram + extra,
        min_usable_mb=min_usable_mb, downhysteresis=down, uphysteresis=up, frontswap=frontswap,
    )
    assert kernel.selfballoon_target_pages(**args) == ref.selfballoon_tick(**args)


# ---------------------------------------------------------------------------
# Tick by tick through decide()


@dataclass
class Guest:
    """A guest for the golden runs: its balloon reaches each target at once.

    ``overhead`` pages are held but not in MemTotal (balloon_current - totalram).
    """

    static_max_pages: int
    totalram: int
    overhead: int
    committed: int
    totalreserve: int

    @property
    def balloon_current(self) -> int:
        return self.totalram + self.overhead

    def follow(self, target_kb: int) -> None:
        self.totalram = target_kb // PAGE_KB - self.overhead


GOLDEN = {
    # name: (static max MiB, start totalram pages, overhead pages, committed schedule, reserve)
    "4G-guest-1G-committed": (4096, ref.MB(4096) - 9475, 9475, [ref.MB(1024)] * 40, 2201),
    "1G-guest-idle-hits-floor": (1024, ref.MB(1024) - 5003, 5003, [ref.MB(10)] * 40, 900),
    "128M-guest-small": (128, ref.MB(128) - 2000, 2000, [ref.MB(8)] * 30, 300),
    "2G-guest-grows-then-falls": (
        2048, ref.MB(600), 6000,
        [ref.MB(300)] * 5 + [ref.MB(1700)] * 5 + [ref.MB(200)] * 30, 1200,
    ),
}


def run_decide(name: str, *, down: int = 8, up: int = 1, min_usable_mb: int = 0) -> list[int]:
    size_mb, totalram, overhead, schedule, totalreserve = GOLDEN[name]
    guest = Guest(ref.MB(size_mb), totalram, overhead, schedule[0], totalreserve)
    policy = kernel_exact(
        down_hysteresis=down, up_hysteresis=up,
        min_usable_kb=min_usable_mb * 1024 if min_usable_mb else None,
    )
    state = ControlState()
    targets = []
    target_kb = guest.balloon_current * PAGE_KB
    for tick, committed in enumerate(schedule):
        guest.committed = committed
        observed = vm(
            static_max_kb=size_mb * MiB, actual_kb=guest.balloon_current * PAGE_KB,
            target_kb=target_kb, report_age_s=0.0,
            report=report(
                seq=tick, uptime_s=100.0 + 5 * tick, mem_total_kb=guest.totalram * PAGE_KB,
                mem_free_kb=0, mem_available_kb=0, cached_kb=0,
                committed_as_kb=committed * PAGE_KB, totalreserve_kb=totalreserve * PAGE_KB,
                balloon_current_kb=guest.balloon_current * PAGE_KB,
            ),
        )
        plan = decide(snapshot(observed, now_s=5.0 * tick), policy, state)
        state = plan.state
        target_kb = plan.vms[0].target_kb
        targets.append(target_kb)
        guest.follow(target_kb)
    return targets


def run_reference(name: str, *, down: int = 8, up: int = 1, min_usable_mb: int = 0) -> list[int]:
    size_mb, totalram, overhead, schedule, totalreserve = GOLDEN[name]
    reserved_mb = (ref.MB(size_mb) // 10) // ref.MB(1)  # 10 % of static-max, whole MiB
    targets = []
    for committed in schedule:
        balloon = ref.selfballoon_tick(
            totalram=totalram, committed=committed, totalreserve=totalreserve,
            reserved_mb=reserved_mb, max_pfn=ref.MB(size_mb),
            balloon_current=totalram + overhead, min_usable_mb=min_usable_mb,
            downhysteresis=down, uphysteresis=up,
        )
        targets.append(balloon * PAGE_KB)
        totalram = balloon - overhead
    return targets


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decide_reproduces_the_kernel_sequence(name: str) -> None:
    assert run_decide(name) == run_reference(name)


@pytest.mark.parametrize(("down", "up"), [(4, 1), (16, 2), (1, 1)])
def test_decide_reproduces_the_kernel_with_other_hysteresis(down: int, up: int) -> None:
    name = "2G-guest-grows-then-falls"
    assert run_decide(name, down=down, up=up) == run_reference(name, down=down, up=up)


def test_decide_reproduces_min_usable() -> None:
    name = "1G-guest-idle-hits-floor"
    assert run_decide(name, min_usable_mb=200) == run_reference(name, min_usable_mb=200)


def test_the_4g_guest_closes_an_eighth_per_tick_with_a_26_s_half_life() -> None:
    name = "4G-guest-1G-committed"
    _size_mb, totalram, overhead, schedule, totalreserve = GOLDEN[name]
    goal = schedule[0] + totalreserve + ref.MB(409)
    usable = [t // PAGE_KB - overhead for t in run_decide(name)]
    gaps = [totalram - goal] + [u - goal for u in usable]
    for before, after in itertools.pairwise(gaps):
        assert after == before - before // 8
    # (7/8)^n: half the gap after 5.19 ticks (26 s), 90 % after 17.24 ticks (86 s).
    half = next(i for i, g in enumerate(gaps) if g <= gaps[0] / 2)
    ninety = next(i for i, g in enumerate(gaps) if g <= gaps[0] / 10)
    assert half == math.ceil(math.log(0.5) / math.log(7 / 8)) == 6
    assert ninety == math.ceil(math.log(0.1) / math.log(7 / 8)) == 18


def test_the_idle_1g_guest_stops_at_the_floor() -> None:
    name = "1G-guest-idle-hits-floor"
    size_mb, _, overhead, _, totalreserve = GOLDEN[name]
    floor = ref.floor_pages(max_pfn=ref.MB(size_mb), totalreserve=totalreserve)
    final = run_decide(name)[-1] // PAGE_KB - overhead
    assert final == floor


def test_the_floor_pulls_a_low_target_up_after_the_step() -> None:
    # Committed 8 MiB in a 128 MiB guest: the first step alone would stay high
    # (an eighth), so run long enough that the floor binds and holds.
    name = "128M-guest-small"
    _, _, overhead, _, totalreserve = GOLDEN[name]
    targets = run_decide(name)
    floor = ref.floor_pages(max_pfn=ref.MB(128), totalreserve=totalreserve)
    assert targets[-1] // PAGE_KB - overhead == floor
    assert all(t // PAGE_KB - overhead >= floor for t in targets)


# ---------------------------------------------------------------------------
# Unit conversion: MemTotal units -> balloon target


def test_written_target_adds_what_memtotal_does_not_show() -> None:
    mem_total = 3 * GiB + 4 * 17  # 17 pages over 3 GiB
    balloon = mem_total + 37 * MiB + 12  # 3 extra pages
    plan = decide(
        snapshot(
            vm(
                static_max_kb=4 * GiB, actual_kb=balloon, target_kb=balloon, report_age_s=1.0,
                report=report(
                    mem_total_kb=mem_total, committed_as_kb=3 * GiB, totalreserve_kb=0,
                    balloon_current_kb=balloon,
                ),
            )
        ),
        kernel_exact(reserve_kb=0),
    )
    # Goal = committed (pages) < cur: one eighth of the gap, then back to KiB.
    cur, goal = mem_total // 4, 3 * GiB // 4
    tgt = cur - (cur - goal) // 8
    assert plan.vms[0].target_kb == (tgt + (balloon // 4 - mem_total // 4)) * 4


def test_without_balloon_current_the_hypervisor_allocation_stands_in() -> None:
    mem_total, hvm_offset = 2 * GiB, 9 * MiB  # e.g. video RAM of an HVM guest
    in_target_units = mem_total + 20 * MiB
    plan = decide(
        snapshot(
            vm(
                static_max_kb=4 * GiB, actual_kb=in_target_units + hvm_offset,
                memory_offset_kb=hvm_offset, target_kb=in_target_units, report_age_s=1.0,
                report=report(mem_total_kb=mem_total, committed_as_kb=3 * GiB, totalreserve_kb=0),
            )
        ),
        kernel_exact(reserve_kb=0),
    )
    goal = 3 * GiB // 4  # above cur: requested in one step
    assert plan.vms[0].target_kb == (goal + 20 * MiB // 4) * 4


@pytest.mark.parametrize("bad_current", [1 * GiB, 5 * GiB], ids=["below-memtotal", "above-max"])
def test_an_implausible_balloon_current_is_not_trusted(bad_current: int) -> None:
    mem_total = 2 * GiB
    plan = decide(
        snapshot(
            vm(
                static_max_kb=4 * GiB, actual_kb=mem_total + 8 * MiB, target_kb=mem_total,
                report_age_s=1.0,
                report=report(
                    mem_total_kb=mem_total, committed_as_kb=3 * GiB, totalreserve_kb=0,
                    balloon_current_kb=bad_current,
                ),
            )
        ),
        kernel_exact(reserve_kb=0),
    )
    assert plan.vms[0].target_kb == 3 * GiB + 8 * MiB


# ---------------------------------------------------------------------------
# Frontswap self-shrinking


def test_frontswap_port_matches_the_transcription_on_a_trace() -> None:
    trace = [0, 5, 50, 50, 50, 50, 49, 49, 49, 49, 300, 300, 300, 300, 300, 300, 300, 0, 0, 21]
    trace += [21, 21, 21, 20, 20, 20, 20, 20, 19]
    reference = ref.FrontswapReference()
    state = kernel.FrontswapState()
    for pages_now in trace:
        state, got = kernel.frontswap_tick(state, pages_now)
        assert got == reference.tick(pages_now)


@given(st.lists(st.integers(0, 5000), max_size=60), st.integers(1, 40), st.integers(0, 6))
def test_frontswap_port_matches_the_transcription_on_any_trace(
    trace: list[int], hysteresis: int, inertia: int
) -> None:
    reference = ref.FrontswapReference(hysteresis=hysteresis, inertia=inertia)
    state = kernel.FrontswapState()
    for pages_now in trace:
        state, got = kernel.frontswap_tick(state, pages_now, hysteresis=hysteresis, inertia=inertia)
        assert got == reference.tick(pages_now)


def run_swap_decide(growth: list[int], ticks: int) -> list[tuple[int, int]]:
    """Frontswap grows along ``growth`` (pages), then the guest obeys directives."""
    policy = kernel_exact(swap_shrink=True)
    state = ControlState()
    swap_pages = 0
    shrinks = []
    for tick in range(ticks):
        if tick < len(growth):
            swap_pages = growth[tick]
        observed = vm(
            report_age_s=0.0,
            report=report(seq=tick, uptime_s=10.0 + 5 * tick, frontswap_kb=swap_pages * 4),
        )
        plan = decide(snapshot(observed, now_s=5.0 * tick), policy, state)
        state = plan.state
        directive = plan.vms[0].directive
        if directive is not None:
            assert directive.swap_target_kb is not None
            shrinks.append((tick, directive.swap_target_kb // 4))
            swap_pages = directive.swap_target_kb // 4
    return shrinks


def run_swap_reference(growth: list[int], ticks: int) -> list[tuple[int, int]]:
    reference = ref.FrontswapReference()
    swap_pages = 0
    shrinks = []
    for tick in range(ticks):
        if tick < len(growth):
            swap_pages = growth[tick]
        got = reference.tick(swap_pages)
        if got is not None:
            shrinks.append((tick, got))
            swap_pages = got
    return shrinks


def test_decide_reproduces_frontswap_self_shrinking() -> None:
    growth = [100, 2000, 9000, 9000]
    assert run_swap_decide(growth, 80) == run_swap_reference(growth, 80)


def test_frontswap_facts_first_shrink_after_15_s_then_every_15_s_by_a_twentieth() -> None:
    growth = [100, 200, 300]  # last growth at tick 2
    shrinks = run_swap_decide(growth, 300)
    ticks = [t for t, _ in shrinks]
    assert ticks[0] == 2 + 3  # inertia 3 intervals = 15 s after growth stopped
    assert all(b - a == 3 for a, b in itertools.pairwise(ticks))
    remaining = 300
    for _, target in shrinks:
        expected = 0 if remaining <= 20 else remaining - remaining // 20
        assert target == expected
        remaining = target
    assert shrinks[-1][1] == 0  # 20 pages or fewer: straight to zero


def test_directive_sequence_continues_from_what_xenstore_holds() -> None:
    policy = kernel_exact(swap_shrink=True)
    state = ControlState()
    seqs = []
    for tick in range(12):
        observed = vm(
            report_age_s=0.0, directive_seq=41,
            report=report(seq=tick, uptime_s=10.0 + 5 * tick, frontswap_kb=4000),
        )
        plan = decide(snapshot(observed, now_s=5.0 * tick), policy, state)
        state = plan.state
        if plan.vms[0].directive is not None:
            seqs.append(plan.vms[0].directive.seq)
    assert seqs and seqs[0] == 42
    assert seqs == list(range(42, 42 + len(seqs)))


def test_the_goal_includes_frontswap_pages_when_self_shrinking() -> None:
    base: dict[str, Any] = dict(
        static_max_kb=8 * GiB, actual_kb=4 * GiB, target_kb=4 * GiB, report_age_s=0.0
    )
    fig: dict[str, Any] = dict(
        mem_total_kb=4 * GiB, committed_as_kb=1 * GiB, totalreserve_kb=0,
        balloon_current_kb=4 * GiB,
    )
    without = decide(snapshot(vm(**base, report=report(**fig))), kernel_exact(swap_shrink=True))
    with_fs = decide(
        snapshot(vm(**base, report=report(**fig, frontswap_kb=512 * MiB))),
        kernel_exact(swap_shrink=True),
    )
    assert with_fs.vms[0].demand_kb == without.vms[0].demand_kb + 512 * MiB  # type: ignore[operator]
