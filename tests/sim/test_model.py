"""The guest memory model: conservation, rates, eviction order, faults, PSI, OOM."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.schema import decode_report, encode_report
from orchestrator.sim.model import (
    KB_PER_MB,
    Demand,
    GuestConfig,
    GuestState,
    ModelParams,
    apply_directive,
    boot,
    report,
    step,
)
from orchestrator.sim.scenario import Trace

MB = KB_PER_MB


def demand(u_mb: float, hot_mb: float = 0, cold_mb: float = 0, committed_mb: float = 0) -> Demand:
    return Demand(
        unreclaimable_kb=int(u_mb * MB),
        hot_cache_kb=int(hot_mb * MB),
        cold_cache_kb=int(cold_mb * MB),
        committed_kb=int(committed_mb * MB),
    )


def guest(
    rows: Sequence[tuple[float, Demand]],
    *,
    static_max_mb: int = 4096,
    swap_mb: int = 1024,
    params: ModelParams | None = None,
) -> GuestConfig:
    trace = Trace(path="test", times_s=tuple(t for t, _ in rows), demands=tuple(d for _, d in rows))
    return GuestConfig(
        name="g",
        static_max_kb=static_max_mb * MB,
        swap_kb=swap_mb * MB,
        workload=trace,
        params=params or ModelParams(),
    )


def run(state: GuestState, target_kb: int, seconds: int) -> GuestState:
    for _ in range(seconds):
        state = step(state, target_kb, 1.0)
    return state


def check_invariants(state: GuestState, *, with_report: bool = True) -> None:
    cfg = state.config
    p = state.pages
    resident_anon = p.unreclaimable_kb - p.swapped_kb
    # Conservation: every KiB of the allocation is somewhere.
    assert state.alloc_kb == (
        cfg.kernel_reserved_kb + resident_anon + p.hot_kb + p.cold_kb + state.free_kb
    )
    assert state.free_kb >= cfg.min_free_kb
    assert 0 <= p.swapped_kb <= min(cfg.swap_kb, p.unreclaimable_kb)
    assert 0 <= p.hot_kb <= p.demand.hot_cache_kb
    assert 0 <= p.cold_kb <= p.demand.cold_cache_kb
    assert state.alloc_kb <= cfg.static_max_kb
    if with_report:
        # The report is valid schema v1 (the strict decoder accepts it).
        r = report(state)
        assert decode_report(encode_report(r)) == r
        # Active(file) errs high but is page cache: hot <= Active(file) <= cache.
        assert r.active_file_kb is not None
        assert p.hot_kb <= r.active_file_kb <= p.hot_kb + p.cold_kb


sizes_mb = st.integers(min_value=0, max_value=3000)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(sizes_mb, sizes_mb, sizes_mb), min_size=1, max_size=6),
    targets_mb=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=12),
    dt_s=st.sampled_from([0.5, 1.0, 5.0]),
)
def test_conservation_bounds_and_balloon_rate(
    rows: list[tuple[int, int, int]], targets_mb: list[int], dt_s: float
) -> None:
    cfg = guest(
        [(60.0 * i, demand(u / 2, h / 2, c)) for i, (u, h, c) in enumerate(rows)],
        static_max_mb=4096,
        swap_mb=512,
    )
    state = boot(cfg, cfg.static_max_kb)
    check_invariants(state)
    rate = cfg.params.balloon_rate_kb_s
    for target_mb in targets_mb:
        for _ in range(int(20 / dt_s)):
            before = state.alloc_kb
            state = step(state, target_mb * MB, dt_s)
            check_invariants(state, with_report=False)
            assert abs(state.alloc_kb - before) <= rate * dt_s
            # The balloon never overshoots its target.
            if target_mb * MB >= before:
                assert state.alloc_kb <= max(before, target_mb * MB)
            else:
                assert state.alloc_kb >= min(before, target_mb * MB)
        check_invariants(state)


def test_allocation_follows_target_at_the_balloon_rate() -> None:
    cfg = guest([(0, demand(500))])
    state = boot(cfg, 4000 * MB)
    state = run(state, 1000 * MB, 10)
    assert state.alloc_kb == 3000 * MB  # 10 s at 100 MiB/s
    state = run(state, 1000 * MB, 30)
    assert state.alloc_kb == 1000 * MB
    state = run(state, 3000 * MB, 5)
    assert state.alloc_kb == 1500 * MB


def test_cold_cache_goes_first_then_hot_then_anon_is_swapped() -> None:
    cfg = guest([(0, demand(1000, hot_mb=800, cold_mb=1500))])
    state = boot(cfg, 4096 * MB)
    assert state.pages.cold_kb == 1500 * MB and state.pages.hot_kb == 800 * MB
    overhead = cfg.kernel_reserved_kb + cfg.totalreserve_kb
    # Room for anon and hot, half the cold cache: only cold cache is dropped.
    state = run(state, overhead + (1000 + 800 + 750) * MB, 60)
    assert state.pages.cold_kb == 750 * MB
    assert state.pages.hot_kb == 800 * MB
    assert state.pages.swapped_kb == 0
    # Room for anon and half the hot set: cold gone, hot partly evicted, no swap.
    state = run(state, overhead + (1000 + 400) * MB, 30)
    assert state.pages.cold_kb == 0
    assert state.pages.hot_kb == 400 * MB
    assert state.pages.swapped_kb == 0
    assert state.counters.refault_file > 0
    # Less than the anon: all cache gone, the rest of anon swapped out.
    state = run(state, overhead + 700 * MB, 30)
    assert state.pages.hot_kb == 0 and state.pages.cold_kb == 0
    assert state.pages.swapped_kb >= 300 * MB
    assert state.counters.pswpout >= 300 * MB // 4
    assert state.counters.ooms == 0


def test_missing_pages_refault_and_raise_psi_then_it_decays() -> None:
    cfg = guest([(0, demand(1000, hot_mb=1000))])
    overhead = cfg.kernel_reserved_kb + cfg.totalreserve_kb
    state = boot(cfg, overhead + 1500 * MB)  # 500 MB of the hot set missing
    state = run(state, overhead + 1500 * MB, 60)
    short = state
    assert short.counters.refault_file > 0
    assert short.pressure.some_avg10 > 0.1
    assert short.pressure.full_avg10 <= short.pressure.some_avg10
    assert short.counters.psi_some_total_us > 0
    # With room, each missing page stays once touched: the hot set refills
    # at the refault rate, then the pressure decays to nothing.
    state = run(short, overhead + 2100 * MB, 60)
    assert short.pages.hot_kb < state.pages.hot_kb < 1000 * MB
    state = run(state, overhead + 2100 * MB, 1200)
    assert state.pages.hot_kb == 1000 * MB
    assert state.pressure.some_avg10 == 0.0
    assert report(state).psi_some_avg10 == 0.0


def test_refault_rate_follows_the_touch_time_of_missing_pages() -> None:
    params = ModelParams(hot_touch_s=60.0)
    cfg = guest([(0, demand(500, hot_mb=1000))], params=params)
    overhead = cfg.kernel_reserved_kb + cfg.totalreserve_kb
    state = boot(cfg, overhead + 1100 * MB)  # 400 MB missing, no room to keep more
    before = state.counters.refault_file
    state = run(state, overhead + 1100 * MB, 10)
    pages_per_s = (state.counters.refault_file - before) / 10
    # 400 MiB missing, touched once a minute: about 400 MiB / 60 s.
    assert pages_per_s == pytest.approx(400 * MB / 4 / 60, rel=0.05)


def test_swapped_anon_comes_back_when_there_is_room() -> None:
    cfg = guest([(0, demand(2000))], swap_mb=1024)
    overhead = cfg.kernel_reserved_kb + cfg.totalreserve_kb
    state = boot(cfg, 4096 * MB)
    state = run(state, overhead + 1500 * MB, 60)
    assert state.pages.swapped_kb == 500 * MB
    assert state.counters.swapin_faults > 0  # thrashing: pages touched and pushed out again
    state = run(state, 4096 * MB, 3600)
    assert state.pages.swapped_kb < 5 * MB


def test_oom_when_unreclaimable_exceeds_allocation_plus_free_swap() -> None:
    cfg = guest([(0, demand(1000)), (100, demand(2600))], swap_mb=512)
    overhead = cfg.kernel_reserved_kb + cfg.min_free_kb
    # Holds 2000 MB of anon: with 512 MB of swap, 2512 MB fit, 2600 do not.
    state = boot(cfg, overhead + 2000 * MB)
    state = run(state, overhead + 2000 * MB, 99)
    assert state.counters.ooms == 0
    state = run(state, overhead + 2000 * MB, 2)
    assert state.counters.ooms == 1
    assert state.pages.unreclaimable_kb < 2600 * MB
    check_invariants(state)


def test_no_oom_when_allocation_plus_swap_holds_the_unreclaimable() -> None:
    cfg = guest([(0, demand(1000)), (100, demand(2500))], swap_mb=512)
    overhead = cfg.kernel_reserved_kb + cfg.min_free_kb
    state = boot(cfg, overhead + 2000 * MB)
    state = run(state, overhead + 2000 * MB, 300)
    assert state.counters.ooms == 0
    assert state.pages.swapped_kb > 400 * MB


def test_the_balloon_cannot_push_a_guest_into_oom() -> None:
    cfg = guest([(0, demand(1500, hot_mb=300))], swap_mb=256)
    state = boot(cfg, 4096 * MB)
    state = run(state, 0, 120)
    assert state.counters.ooms == 0
    assert state.alloc_kb == cfg.floor_kb(1500 * MB)
    assert state.pages.swapped_kb == 256 * MB


def test_swap_shrink_directive_pulls_pages_in_only_into_free_room() -> None:
    cfg = guest([(0, demand(2000))], swap_mb=1024, params=ModelParams(anon_touch_s=1e9))
    overhead = cfg.kernel_reserved_kb + cfg.totalreserve_kb
    state = boot(cfg, 4096 * MB)
    state = run(state, overhead + 1500 * MB, 30)
    assert state.pages.swapped_kb == 500 * MB
    state = apply_directive(state, seq=1, swap_target_kb=100 * MB)
    assert report(state).directive_ack is not None
    # No room: the directive cannot make progress and says so.
    state = run(state, overhead + 1500 * MB, 10)
    assert state.pages.swapped_kb == 500 * MB
    assert state.shrink is not None and state.shrink.outcome == "partial"
    # Room: pages come back at the swapoff rate, down to the target.
    pswpin = state.counters.pswpin
    faults = state.counters.swapin_faults
    state = run(state, 4096 * MB, 30)
    assert 99 * MB <= state.pages.swapped_kb <= 100 * MB
    # Pulled in by the directive, not faulted (faults round up to a page a second).
    faulted = state.counters.swapin_faults - faults
    assert faulted <= 30
    assert state.counters.pswpin - pswpin - faulted >= 399 * MB // 4
    ack = report(state).directive_ack
    assert ack is not None and ack.seq == 1 and ack.outcome == "done"
    # A directive is acted on once per sequence number.
    assert apply_directive(state, seq=1, swap_target_kb=0) is state


def test_report_figures_match_the_state() -> None:
    cfg = guest([(0, demand(1200, hot_mb=600, cold_mb=900, committed_mb=2500))])
    state = run(boot(cfg, 4096 * MB), 4096 * MB, 5)
    r = report(state)
    assert r.balloon_current_kb == 4096 * MB
    assert r.mem_total_kb == 4096 * MB - cfg.kernel_reserved_kb
    assert r.cached_kb == 1500 * MB
    assert r.anon_kb == 1200 * MB
    assert r.committed_as_kb == 2500 * MB
    assert r.mem_free_kb == r.mem_total_kb - 2700 * MB
    assert r.totalreserve_kb == cfg.totalreserve_kb
    # MemAvailable: free above the reserve plus the cache that can go.
    assert r.mem_free_kb - r.totalreserve_kb < r.mem_available_kb < r.mem_free_kb + r.cached_kb
    assert r.swap_total_kb == r.swap_free_kb == 1024 * MB
    assert r.seq == 5 and r.uptime_s == 5.0


def test_watermarks_follow_the_kernel_formulas() -> None:
    cfg = guest([(0, demand(0))], static_max_mb=4096)
    mem_kb = 4096 * MB - cfg.kernel_reserved_kb
    assert cfg.min_free_kb == int((mem_kb * 16) ** 0.5)
    gap = max(cfg.min_free_kb // 4, mem_kb // 1000)
    assert cfg.totalreserve_kb == cfg.min_free_kb + 2 * gap
    assert cfg.kernel_reserved_kb == 4096 * MB // 64 + 16 * MB


def test_boot_rejects_an_allocation_it_could_not_hold() -> None:
    cfg = guest([(0, demand(3000))], swap_mb=0)
    with pytest.raises(ValueError, match="initial allocation"):
        boot(cfg, 1000 * MB)


def test_active_file_is_the_hot_cache_when_nothing_changed() -> None:
    cfg = guest([(0, demand(1200, hot_mb=600, cold_mb=900))])
    state = run(boot(cfg, 4096 * MB), 4096 * MB, 30)
    assert report(state).active_file_kb == 600 * MB


def test_active_file_keeps_pages_that_left_the_hot_set_then_ages_them() -> None:
    age_s = ModelParams().active_age_s
    # The cold cache is all there (nothing is read): only the hot set shrinks.
    cfg = guest([(0, demand(1000, hot_mb=1500, cold_mb=1000)),
                 (10, demand(1000, hot_mb=500, cold_mb=1000))])
    state = run(boot(cfg, 4096 * MB), 4096 * MB, 9)
    assert report(state).active_file_kb == 1500 * MB
    state = run(state, 4096 * MB, 1)  # the row of t=10 is in force
    assert state.pages.hot_kb == 500 * MB
    # The 1000 MB that stopped being hot are still on the active list...
    assert report(state).active_file_kb == 1500 * MB
    # ...and leave it with the aging time constant (a settled guest included).
    state = run(state, 4096 * MB, int(age_s))
    stale = report(state).active_file_kb - 500 * MB
    assert stale == pytest.approx(1000 * MB * math.exp(-1.0), rel=0.01)
    state = run(state, 4096 * MB, int(6 * age_s))
    assert report(state).active_file_kb - 500 * MB < 5 * MB


def test_active_file_counts_a_share_of_freshly_read_cache() -> None:
    cfg = guest([(0, demand(1000, hot_mb=200, cold_mb=0)), (5, demand(1000, hot_mb=200,
                                                                      cold_mb=1000))])
    state = run(boot(cfg, 4096 * MB), 4096 * MB, 25)  # 1000 MB read at 50 MB/s
    assert state.pages.cold_kb == 1000 * MB
    share = ModelParams().active_read_share
    assert report(state).active_file_kb - 200 * MB == pytest.approx(
        share * 1000 * MB, rel=0.05
    )


def test_stale_active_cache_goes_with_the_cold_cache() -> None:
    cfg = guest([(0, demand(1000, hot_mb=1500, cold_mb=1000)),
                 (10, demand(1000, hot_mb=500, cold_mb=1000))])
    state = run(boot(cfg, 4096 * MB), 4096 * MB, 10)
    assert report(state).active_file_kb == 1500 * MB
    # The balloon takes nearly all the cold cache: Active(file) shrinks with it.
    state = run(state, cfg.need_kb(state.pages.demand) + 100 * MB, 60)
    r = report(state)
    assert r.active_file_kb is not None
    assert r.active_file_kb <= r.cached_kb
    assert r.active_file_kb - 500 * MB <= state.pages.cold_kb <= 101 * MB


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(st.tuples(sizes_mb, sizes_mb, sizes_mb), min_size=1, max_size=6),
    targets_mb=st.lists(st.integers(min_value=300, max_value=5000), min_size=1, max_size=8),
)
def test_active_file_changes_nothing_but_the_report(
    rows: list[tuple[int, int, int]], targets_mb: list[int]
) -> None:
    # The figure is reporting only: however it is calibrated, every other part
    # of the guest evolves identically (the other controllers' results stay put).
    trace = [(60.0 * i, demand(u / 2, h / 2, c)) for i, (u, h, c) in enumerate(rows)]
    a = boot(guest(trace), 4096 * MB)
    b = boot(guest(trace, params=ModelParams(active_age_s=1.0, active_read_share=0.0)), 4096 * MB)
    for target_mb in targets_mb:
        for _ in range(30):
            a = step(a, target_mb * MB, 1.0)
            b = step(b, target_mb * MB, 1.0)
            ignore = {"stale_kb": 0, "stale_at_s": 0.0}
            assert a.pages._replace(**ignore) == b.pages._replace(**ignore)
            assert (a.alloc_kb, a.counters, a.pressure) == (b.alloc_kb, b.counters, b.pressure)
            ra, rb = report(a), report(b)
            assert replace(ra, active_file_kb=None) == replace(rb, active_file_kb=None)
