"""Each baseline's defining behaviour, checked against its source's law."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.schema import Report
from orchestrator.sim.baselines import mom, qmemman, selfballoon, senpai, squeezed
from orchestrator.sim.baselines.static import Static
from orchestrator.sim.controllers import FleetView, RunContext, VmView
from orchestrator.sim.model import KB_PER_MB, ModelParams
from orchestrator.sim.scenario import Scenario, load_file

MB = KB_PER_MB


def rep(
    *,
    current_mb: float,
    free_mb: float = 100,
    cached_mb: float = 0,
    committed_mb: float = 0,
    swap_used_mb: float = 0,
    psi_total_us: int = 0,
    reserved_mb: float = 80,
    totalreserve_kb: int = 16000,
) -> Report:
    total = int((current_mb - reserved_mb) * MB)
    return Report(
        seq=1,
        uptime_s=1.0,
        mem_total_kb=total,
        mem_free_kb=int(free_mb * MB),
        mem_available_kb=int(free_mb * MB),
        cached_kb=int(cached_mb * MB),
        committed_as_kb=int(committed_mb * MB),
        totalreserve_kb=totalreserve_kb,
        anon_kb=total - int((free_mb + cached_mb) * MB),
        swap_total_kb=1024 * MB,
        swap_free_kb=int((1024 - swap_used_mb) * MB),
        pswpin=0,
        pswpout=0,
        psi_some_total_us=psi_total_us,
        balloon_current_kb=int(current_mb * MB),
    )


def vm(
    name: str,
    report: Report,
    *,
    max_mb: int = 4096,
    min_mb: int | None = None,
    target_mb: float | None = None,
) -> VmView:
    current = report.balloon_current_kb or 0
    return VmView(
        name=name,
        render=lambda: report,
        target_kb=int(target_mb * MB) if target_mb is not None else current,
        allocation_kb=current,
        static_max_kb=max_mb * MB,
        min_kb=(min_mb or 0) * MB,
        max_kb=max_mb * MB,
        min_given=min_mb is not None,
        weight=1.0,
    )


def fleet(*vms: VmView, budget_mb: int = 16384, t_s: float = 0.0) -> FleetView:
    held = sum(v.allocation_kb for v in vms)
    return FleetView(
        t_s=t_s,
        host_memory_kb=(budget_mb + 1024) * MB,
        budget_kb=budget_mb * MB,
        free_kb=budget_mb * MB - held,
        vms=tuple(vms),
    )


def tiny_scenario(tmp_path: Path) -> Scenario:
    (tmp_path / "a.csv").write_text(
        "t_s,unreclaimable_mb,hot_cache_mb,cold_cache_mb,committed_mb\n0,500,200,300,900\n"
    )
    (tmp_path / "s.toml").write_text(
        "[host]\nmemory_mb = 8192\ndom0_reserve_mb = 1024\nduration_s = 60\n"
        '[[vm]]\nname = "a"\nstatic_max_mb = 2048\nswap_mb = 512\ntrace = "a.csv"\n'
    )
    return load_file(tmp_path / "s.toml")


def context(tmp_path: Path) -> RunContext:
    scenario = tiny_scenario(tmp_path)
    return RunContext(scenario=scenario, params=ModelParams(), dt_s=1.0, start_kb=(2048 * MB,))


def test_static_holds_every_guest_at_its_maximum(tmp_path: Path) -> None:
    decision = Static(context(tmp_path)).decide(
        fleet(vm("a", rep(current_mb=1000), max_mb=3000), vm("b", rep(current_mb=500)))
    )
    assert decision.targets_kb == {"a": 3000 * MB, "b": 4096 * MB}


# --- selfballoon -------------------------------------------------------------


@pytest.mark.parametrize(
    ("guest_mb", "above_reserve_mb"),
    [(128, 51.0), (1024, 127.9), (4096, 223.9), (16384, 607.9)],
)
def test_selfballoon_floor_matches_the_kernel_examples(
    guest_mb: int, above_reserve_mb: float
) -> None:
    floor = selfballoon.floor_pages(guest_mb * 256, 0)
    assert floor / 256 == pytest.approx(above_reserve_mb, abs=0.05)


def test_selfballoon_closes_an_eighth_of_the_gap_down_and_all_of_it_up() -> None:
    common = {"totalreserve_kb": 16 * MB, "reserved_kb": 0, "max_kb": 8192 * MB}
    # Going down from 4000 MiB towards a 2000 MiB goal: one eighth per tick.
    down = selfballoon.selfballoon_target_kb(
        totalram_kb=4000 * MB,
        committed_as_kb=2000 * MB - 16 * MB,
        balloon_current_kb=4100 * MB,
        **common,
    )
    assert down == 4000 * MB - 2000 * MB // 8 + 100 * MB
    # Going up: the whole goal at once.
    up = selfballoon.selfballoon_target_kb(
        totalram_kb=2000 * MB,
        committed_as_kb=3000 * MB - 16 * MB,
        balloon_current_kb=2100 * MB,
        **common,
    )
    assert up == 3000 * MB + 100 * MB
    # A gap under downhysteresis pages is never closed (integer division).
    still = selfballoon.selfballoon_target_kb(
        totalram_kb=2000 * MB + 7 * 4,
        committed_as_kb=2000 * MB - 16 * MB,
        balloon_current_kb=2000 * MB + 7 * 4,
        **common,
    )
    assert still == 2000 * MB + 7 * 4


def test_selfballoon_reserves_a_tenth_of_boot_ram_and_ignores_the_host(tmp_path: Path) -> None:
    law = selfballoon.Selfballoon(context(tmp_path))
    guests = [vm(f"g{i}", rep(current_mb=2000, committed_mb=3000), max_mb=8192) for i in range(4)]
    decision = law.decide(fleet(*guests, budget_mb=8000))
    boot_ram = 2000 * MB - 80 * MB
    want = 3000 * MB + 16000 + boot_ram // 10 + 80 * MB
    for i in range(4):
        assert decision.targets_kb[f"g{i}"] == pytest.approx(want, abs=8)
    # Four guests asking 3.4 GB each of an 8 GB host: selfballoon does not care.
    assert sum(decision.targets_kb.values()) > 8000 * MB


# --- qmemman -----------------------------------------------------------------


def test_qmemman_preferred_size() -> None:
    assert qmemman.pref_kb(1000 * MB, 4096 * MB) == int(1300 * MB)
    assert qmemman.pref_kb(100 * MB, 4096 * MB) == 200 * MB
    assert qmemman.pref_kb(4000 * MB, 4096 * MB) == 4096 * MB


def test_qmemman_shares_the_surplus_in_proportion_to_preference(tmp_path: Path) -> None:
    law = qmemman.Qmemman(context(tmp_path))
    # used = current - cached - free + swap used: 1000 MiB and 100 MiB.
    a = vm("a", rep(current_mb=1500, free_mb=300, cached_mb=200), max_mb=16384)
    b = vm("b", rep(current_mb=400, free_mb=200, cached_mb=100), max_mb=16384)
    view = fleet(a, b, budget_mb=8000)
    targets = law.decide(view).targets_kb
    pref_a, pref_b = 1300 * MB, 200 * MB
    assert targets["a"] / pref_a == pytest.approx(targets["b"] / pref_b, rel=1e-3)
    # Everything but qmemman's 50 MiB of free Xen memory is handed out.
    assert sum(targets.values()) == pytest.approx(8000 * MB - 50 * MB, rel=2e-3)


def test_qmemman_skips_small_rebalances(tmp_path: Path) -> None:
    law = qmemman.Qmemman(context(tmp_path))
    a = vm("a", rep(current_mb=1500, free_mb=300, cached_mb=200), max_mb=16384)
    b = vm("b", rep(current_mb=400, free_mb=200, cached_mb=100), max_mb=16384)
    first = law.decide(fleet(a, b, budget_mb=8000)).targets_kb
    # The guests now hold what qmemman gave them: same used memory, nothing to do.
    a2 = vm(
        "a",
        rep(current_mb=first["a"] / MB, free_mb=300 + (first["a"] / MB - 1500), cached_mb=200),
        max_mb=16384,
    )
    b2 = vm(
        "b",
        rep(current_mb=first["b"] / MB, free_mb=200 + (first["b"] / MB - 400), cached_mb=100),
        max_mb=16384,
    )
    assert law.decide(fleet(a2, b2, budget_mb=8000)).targets_kb == {}
    # used grows by 40 MiB (over meminfo-writer's 30 MB): reported, but a
    # rebalance moving less than 150 MiB in total is not carried out.
    a3 = vm(
        "a",
        rep(current_mb=first["a"] / MB, free_mb=260 + (first["a"] / MB - 1500), cached_mb=200),
        max_mb=16384,
    )
    targets = law.decide(fleet(a3, b2, budget_mb=8000)).targets_kb
    assert targets == {}
    # Another 100 MiB: this rebalance moves more than 150 MiB and happens.
    a4 = vm(
        "a",
        rep(current_mb=first["a"] / MB, free_mb=160 + (first["a"] / MB - 1500), cached_mb=200),
        max_mb=16384,
    )
    assert law.decide(fleet(a4, b2, budget_mb=8000)).targets_kb["a"] > first["a"]


def test_qmemman_balances_a_guest_below_its_preference(tmp_path: Path) -> None:
    law = qmemman.Qmemman(context(tmp_path))
    # Guest a uses 2000 MiB but holds 1500 (pref 2600): it gets more at once.
    a = vm("a", rep(current_mb=1500, free_mb=0, cached_mb=0, swap_used_mb=500), max_mb=8192)
    b = vm("b", rep(current_mb=6000, free_mb=5000, cached_mb=0), max_mb=8192)
    targets = law.decide(fleet(a, b, budget_mb=7600)).targets_kb
    assert targets["a"] > 2600 * MB > 1500 * MB
    assert targets["b"] < 6000 * MB


# --- squeezed ----------------------------------------------------------------


def test_squeezed_puts_every_guest_at_the_same_fraction_of_its_range(tmp_path: Path) -> None:
    law = squeezed.Squeezed(context(tmp_path))
    guests = [
        vm("a", rep(current_mb=1000), max_mb=4096, min_mb=1024),
        vm("b", rep(current_mb=1000), max_mb=8192, min_mb=2048),
        vm("c", rep(current_mb=1000), max_mb=2048),  # no min: a quarter of static-max
    ]
    targets = law.decide(fleet(*guests, budget_mb=9000)).targets_kb
    lows = {"a": 1024, "b": 2048, "c": 512}
    highs = {"a": 4096, "b": 8192, "c": 2048}
    fractions = [(targets[n] / MB - lows[n]) / (highs[n] - lows[n]) for n in lows]
    assert max(fractions) - min(fractions) < 1e-3
    assert 0 < fractions[0] < 1
    assert sum(targets.values()) == pytest.approx(9000 * MB - 9 * MB, abs=4)
    # A host with room: everyone at the maximum, whatever they use.
    roomy = law.decide(fleet(*guests, budget_mb=20000)).targets_kb
    assert roomy == {n: highs[n] * MB for n in highs}


# --- mom ---------------------------------------------------------------------


def test_mom_grows_five_percent_without_host_pressure(tmp_path: Path) -> None:
    law = mom.Mom(context(tmp_path))
    guest = vm("a", rep(current_mb=2000, free_mb=1500), max_mb=4096)
    targets = law.decide(fleet(guest, budget_mb=16000)).targets_kb
    assert targets["a"] == int(2000 * MB * 1.05)


def test_mom_shrinks_under_host_pressure_but_keeps_used_plus_free_share(tmp_path: Path) -> None:
    law = mom.Mom(context(tmp_path))
    # Host 10 % free (under 20 %): the free share is 20 % × 10/20 = 10 %.
    host_mb = 10000
    a = vm("a", rep(current_mb=4500, free_mb=3000), max_mb=8192)  # used 1500: 5 % step
    b = vm("b", rep(current_mb=4500, free_mb=100), max_mb=8192)  # used 4400: floor
    view = FleetView(
        t_s=0.0,
        host_memory_kb=host_mb * MB,
        budget_kb=9000 * MB,
        free_kb=1000 * MB,
        vms=(a, b),
    )
    targets = law.decide(view).targets_kb
    assert targets["a"] == int(4500 * MB * 0.95)
    assert "b" not in targets or targets["b"] >= int(4400 * MB + 0.10 * 4500 * MB) - 1


def test_mom_skips_changes_under_a_quarter_percent(tmp_path: Path) -> None:
    law = mom.Mom(context(tmp_path))
    # At its maximum with no pressure: nothing to grow, nothing written.
    guest = vm("a", rep(current_mb=4096, free_mb=2000), max_mb=4096)
    assert law.decide(fleet(guest, budget_mb=16000)).targets_kb == {}


# --- senpai ------------------------------------------------------------------


def test_senpai_probes_one_percent_per_interval_when_calm(tmp_path: Path) -> None:
    law = senpai.Senpai(context(tmp_path))
    targets: list[dict[str, int]] = []
    for tick in range(1 + senpai.INTERVAL_TICKS + senpai.INTERVAL_TICKS + 1):
        guest = vm("a", rep(current_mb=2000, psi_total_us=0))
        targets.append(dict(law.decide(fleet(guest, t_s=float(tick))).targets_kb))
    written = [t["a"] for t in targets if t]
    # No pressure at all: the probe is at its maximum, 1 % per interval.
    assert written[0] == int(2000 * MB * 0.99)
    assert len(written) == 2  # once per 6-tick interval


def test_senpai_backs_off_when_pressure_exceeds_its_target(tmp_path: Path) -> None:
    law = senpai.Senpai(context(tmp_path))
    law.decide(fleet(vm("a", rep(current_mb=2000, psi_total_us=0))))
    # 400 ms of stall in one second: 40 × the 10 ms target, (40/20)² capped at 1.
    decision = law.decide(fleet(vm("a", rep(current_mb=2000, psi_total_us=400_000)), t_s=1.0))
    assert decision.targets_kb["a"] == 4000 * MB
    # A small excess backs off a little: 12 ms → (1.2/20)² = 0.36 %.
    law2 = senpai.Senpai(context(tmp_path))
    law2.decide(fleet(vm("a", rep(current_mb=2000, psi_total_us=0))))
    small = law2.decide(fleet(vm("a", rep(current_mb=2000, psi_total_us=12_000)), t_s=1.0))
    assert small.targets_kb["a"] == int(2000 * MB * (1 + (1.2 / 20) ** 2))
