"""Generates the built-in scenario library (TOML files and CSV traces).

Run ``python -m orchestrator.sim.gen_traces`` to rewrite
``orchestrator/sim/scenarios/``; the output is deterministic (seeded), so
the committed files are exactly what this script writes. Each workload is a
small function of time shaped after what real fleets do; docs/simulation.md
describes every scenario. The script checks that each scenario is feasible:
at every moment the guests' needs together fit in the host's budget, so the
oracle never has to break the host and every deficit is a controller's.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.sim.model import KB_PER_MB, ModelParams
from orchestrator.sim.scenario import load_file

Sample = tuple[float, float, float, float]
"""unreclaimable, hot cache, cold cache, committed, MiB."""

DAY_S = 86400
HOUR_S = 3600


@dataclass
class Vm:
    """One guest of a generated scenario."""

    name: str
    static_max_mb: int
    swap_mb: int
    step_s: int
    workload: Callable[[float], Sample]
    min_mb: int | None = None
    weight: float | None = None


@dataclass
class Spec:
    """One generated scenario."""

    name: str
    description: str
    memory_mb: int
    dom0_reserve_mb: int
    duration_s: int
    vms: list[Vm] = field(default_factory=list)


def _rows(vm: Vm, duration_s: int) -> list[tuple[float, ...]]:
    rows: list[tuple[float, ...]] = []
    t = 0
    while t <= duration_s:
        u, hot, cold, committed = vm.workload(float(t))
        row = (float(t), *(round(max(0.0, v), 1) for v in (u, hot, cold, committed)))
        if not rows or rows[-1][1:] != row[1:]:
            rows.append(row)
        t += vm.step_s
    return rows


def _noise(seed: str, sigma: float, period_s: int = 60) -> Callable[[float], float]:
    """Deterministic noise, one value per period: the same t gives the same value."""

    def value(t: float) -> float:
        return random.Random(f"{seed}:{int(t // period_s)}").gauss(0.0, sigma)

    return value


def _events(
    seed: str, duration_s: int, gap_s: tuple[int, int], length_s: tuple[int, int]
) -> list[tuple[float, float]]:
    """Random (start, end) intervals, deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    t = float(rng.randint(*gap_s))
    while t < duration_s:
        length = rng.randint(*length_s)
        out.append((t, t + length))
        t += length + rng.randint(*gap_s)
    return out


def _active(events: list[tuple[float, float]], t: float) -> bool:
    return any(start <= t < end for start, end in events)


def _ramp(t: float, start: float, rise_s: float) -> float:
    """0 before start, rising linearly to 1 over rise_s."""
    if t < start:
        return 0.0
    return min(1.0, (t - start) / rise_s)


# --- workloads -------------------------------------------------------------


def diurnal_web(seed: str, peak_h: float, base: float, swing: float) -> Callable[[float], Sample]:
    """A web server following its users: low at night, peak in the afternoon,
    with short traffic spikes and noise."""
    noise = _noise(seed, base * 0.02)
    spikes = _events(seed + "spikes", DAY_S, (1800, 7200), (120, 600))

    def load(t: float) -> Sample:
        day = 0.5 + 0.5 * math.cos(2 * math.pi * (t - peak_h * HOUR_S) / DAY_S)
        spike = 250.0 if _active(spikes, t) else 0.0
        u = base + swing * day + spike + noise(t)
        hot = 200 + 0.5 * swing * day
        return u, hot, 1200.0, 1.3 * u + 600

    return load


def nightly_batch(start_h: float, run_min: float, peak_mb: float) -> Callable[[float], Sample]:
    """Idle all day; a job at night that allocates fast, reads its input, ends."""

    def load(t: float) -> Sample:
        start = start_h * HOUR_S
        end = start + run_min * 60
        if start <= t < end:
            up = _ramp(t, start, 120)
            u = 600 + (peak_mb - 600) * up
            hot = 200 + 2300 * up
            return u, hot, 2000.0, u + 800
        return 600.0, 200.0, 2000.0, 1400.0

    return load


def steady_app(seed: str, u: float, hot: float) -> Callable[[float], Sample]:
    """A service with a flat working set and a little noise."""
    noise = _noise(seed, u * 0.02)

    def load(t: float) -> Sample:
        x = u + noise(t)
        return x, hot, 600.0, 1.4 * x + 400

    return load


def slow_leak(base: float, mb_per_h: float, restart_s: list[float]) -> Callable[[float], Sample]:
    """A service leaking memory steadily until it is restarted."""

    def load(t: float) -> Sample:
        since = t - max([0.0, *[r for r in restart_s if r <= t]])
        u = base + mb_per_h * since / HOUR_S
        return u, 300.0, 800.0, u + 500

    return load


def bursty_api(seed: str, duration_s: int, base: float, burst: float) -> Callable[[float], Sample]:
    """A service that takes short bursts of load: for 20-90 s every few minutes
    it allocates a large buffer, filling it at 200 MB/s, then frees it."""
    bursts = _events(seed, duration_s, (180, 480), (20, 90))
    noise = _noise(seed, 15.0)
    fill_s = burst / 200.0

    def load(t: float) -> Sample:
        level = 0.0
        for start, end in bursts:
            if start <= t < end:
                level = _ramp(t, start, fill_s)
        extra = burst * level
        u = base + extra + noise(t)
        return u, 400 + 0.1 * extra, 800.0, 1.1 * u + 800

    return load


def desktop(seed: str, duration_s: int) -> Callable[[float], Sample]:
    """An idle desktop woken by its user a few times: a browser starts (its
    memory arrives over half a minute), is used, closes; idle again."""
    sessions = _events(seed, duration_s, (1800, 7200), (1200, 5400))
    noise = _noise(seed, 8.0)

    def load(t: float) -> Sample:
        level = 0.0
        for start, end in sessions:
            if start <= t < end:
                level = _ramp(t, start, 30)
        u = 450 + 1200 * level + noise(t)
        hot = 150 + 400 * level
        return u, hot, 900.0, 1800 + 2500 * (level > 0)

    return load


def jvm(seed: str, heap_touched: float) -> Callable[[float], Sample]:
    """A JVM: -Xmx6g committed up front, a much smaller heap actually touched,
    breathing with the periodic collector."""
    noise = _noise(seed, 20.0)

    def load(t: float) -> Sample:
        saw = (t % 900) / 900
        u = heap_touched + 400 * saw + noise(t)
        return u, 300.0, 400.0, 7400.0

    return load


def file_server(seed: str, working_set: float) -> Callable[[float], Sample]:
    """A file server that lives on page cache: tiny anon, a large hot set that
    shifts with office hours, and all the cold cache it can get."""
    noise = _noise(seed, 40.0)

    def load(t: float) -> Sample:
        office = 0.5 - 0.5 * math.cos(2 * math.pi * ((t / HOUR_S) % 24 - 3) / 24)
        hot = working_set * (0.55 + 0.45 * office) + noise(t)
        return 600.0, hot, 4000.0, 900.0

    return load


def booting(seed: str, reboot_s: float) -> Callable[[float], Sample]:
    """A guest rebooted with all the others: it loses its memory, then boots
    (services start, binaries are read) and settles."""
    noise = _noise(seed, 10.0)

    def load(t: float) -> Sample:
        if t < reboot_s:
            return 300 + noise(t), 100.0, 200.0, 800.0
        if t < reboot_s + 20:
            return 150.0, 50.0, 0.0, 300.0
        up = _ramp(t, reboot_s + 20, 60)
        settle = _ramp(t, reboot_s + 300, 300)
        u = 150 + 1050 * up - 300 * settle + noise(t)
        hot = 50 + 450 * up - 150 * settle
        cold = 600 * settle
        return u, hot, cold, 800 + 1600 * up

    return load


def overcommitted_app(seed: str, base: float, peak_at_h: float) -> Callable[[float], Sample]:
    """An application server with a large Committed_AS and one busy hour."""
    noise = _noise(seed, base * 0.02)

    def load(t: float) -> Sample:
        busy = math.exp(-(((t / HOUR_S - peak_at_h) / 0.5) ** 2))
        u = base + 2000 * busy + noise(t)
        hot = 700 + 400 * busy
        return u, hot, 1500.0, 1.5 * u + 1500

    return load


# --- the library -------------------------------------------------------------


def library() -> list[Spec]:
    """Every built-in scenario."""
    specs = [
        Spec(
            "diurnal-web",
            "Four web servers following their users through a day: quiet nights, "
            "afternoon peaks, short traffic spikes.",
            32768,
            2048,
            DAY_S,
            [
                Vm(
                    f"web-{i + 1}",
                    6144,
                    1024,
                    60,
                    diurnal_web(f"web-{i}", 13 + i, 500 + 100 * i, 1500),
                )
                for i in range(4)
            ],
        ),
        Spec(
            "nightly-batch",
            "A batch VM idle all day that runs a large job at 02:00, next to two steady "
            "application servers.",
            32768,
            2048,
            DAY_S,
            [
                Vm("batch", 12288, 2048, 30, nightly_batch(2, 100, 7000)),
                Vm("app-1", 4096, 1024, 60, steady_app("app-1", 1200, 400)),
                Vm("app-2", 4096, 1024, 60, steady_app("app-2", 1500, 500)),
            ],
        ),
        Spec(
            "slow-leak",
            "A service leaking 180 MB an hour until it is restarted, next to a steady one.",
            16384,
            1024,
            12 * HOUR_S,
            [
                Vm("leaky", 8192, 2048, 60, slow_leak(1000, 180, [30000])),
                Vm("steady", 4096, 1024, 60, steady_app("steady", 1500, 500)),
            ],
        ),
        Spec(
            "short-bursts",
            "Three API servers that allocate 2 GB (at 200 MB/s) for 20-90 s every few minutes.",
            24576,
            2048,
            2 * HOUR_S,
            [
                Vm(f"api-{i + 1}", 6144, 1024, 5, bursty_api(f"api-{i}", 2 * HOUR_S, 1000, 2000))
                for i in range(3)
            ],
        ),
        Spec(
            "idle-desktops",
            "Six virtual desktops, idle most of the time, woken by their users for a "
            "browser session now and then.",
            32768,
            2048,
            8 * HOUR_S,
            [
                Vm(f"desk-{i + 1}", 4096, 1024, 10, desktop(f"desk-{i}", 8 * HOUR_S))
                for i in range(6)
            ],
        ),
        Spec(
            "jvm",
            "Two JVMs with -Xmx6g: Committed_AS near 7.4 GB, a touched heap around 2 GB.",
            24576,
            2048,
            2 * HOUR_S,
            [
                Vm("jvm-1", 8192, 1024, 10, jvm("jvm-1", 1800)),
                Vm("jvm-2", 8192, 1024, 10, jvm("jvm-2", 2200)),
            ],
        ),
        Spec(
            "file-server",
            "Two file servers living on page cache: little anon memory, a hot set of "
            "3-5 GB that follows office hours, and all the cold cache they can get.",
            32768,
            2048,
            6 * HOUR_S,
            [
                Vm("files-1", 12288, 1024, 60, file_server("files-1", 5000)),
                Vm("files-2", 8192, 1024, 60, file_server("files-2", 3000)),
            ],
        ),
        Spec(
            "boot-storm",
            "Eight guests rebooted together after ten quiet minutes: all of them need "
            "memory at once, on a host that cannot give every one its maximum.",
            16384,
            1024,
            HOUR_S,
            [Vm(f"vm-{i + 1}", 3072, 512, 5, booting(f"vm-{i}", 600)) for i in range(8)],
        ),
        Spec(
            "host-short",
            "Six application servers configured for 8 GB each on a 32 GB host: their "
            "maxima and their Committed_AS add up to far more than the host has.",
            32768,
            2048,
            6 * HOUR_S,
            [
                Vm(
                    f"app-{i + 1}",
                    8192,
                    2048,
                    60,
                    overcommitted_app(f"short-{i}", 2800 + 120 * i, 0.8 + 0.9 * i),
                )
                for i in range(6)
            ],
        ),
        Spec(
            "mixed-day",
            "The demo: eight different guests through a whole day (web, batch, leak, "
            "desktop, JVM, file server, bursts), more configured than the host has.",
            49152,
            2048,
            DAY_S,
            [
                Vm("web-1", 6144, 1024, 60, diurnal_web("mix-web-1", 14, 600, 1500)),
                Vm("web-2", 6144, 1024, 60, diurnal_web("mix-web-2", 16, 500, 1200)),
                Vm("batch", 12288, 2048, 30, nightly_batch(2, 100, 7000)),
                Vm("leaky", 6144, 2048, 60, slow_leak(900, 150, [4 * HOUR_S, 28 * HOUR_S])),
                Vm("desk", 4096, 1024, 10, desktop("mix-desk", DAY_S)),
                Vm("jvm", 8192, 1024, 30, jvm("mix-jvm", 2000)),
                Vm("files", 8192, 1024, 60, file_server("mix-files", 3500)),
                Vm("api", 6144, 1024, 5, bursty_api("mix-api", DAY_S, 1000, 1800)),
            ],
        ),
    ]
    return specs


def write(spec: Spec, out: Path) -> Path:
    """Write one scenario's TOML and traces under ``out``; return the TOML path."""
    traces = out / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# {spec.description}",
        "# Generated by `python -m orchestrator.sim.gen_traces`; edit that, not this.",
        "",
        "[host]",
        f"memory_mb = {spec.memory_mb}",
        f"dom0_reserve_mb = {spec.dom0_reserve_mb}",
        f"duration_s = {spec.duration_s}",
    ]
    for vm in spec.vms:
        csv_name = f"{spec.name}.{vm.name}.csv"
        body = ["t_s,unreclaimable_mb,hot_cache_mb,cold_cache_mb,committed_mb"]
        body.extend(
            f"{t:g},{u:g},{h:g},{c:g},{m:g}" for t, u, h, c, m in _rows(vm, spec.duration_s)
        )
        (traces / csv_name).write_text("\n".join(body) + "\n", encoding="utf-8")
        lines += [
            "",
            "[[vm]]",
            f'name = "{vm.name}"',
            f"static_max_mb = {vm.static_max_mb}",
            f"swap_mb = {vm.swap_mb}",
            f'trace = "traces/{csv_name}"',
        ]
        if vm.min_mb is not None:
            lines.append(f"min_mb = {vm.min_mb}")
        if vm.weight is not None:
            lines.append(f"weight = {vm.weight}")
    path = out / f"{spec.name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_feasible(path: Path) -> float:
    """Peak of the guests' summed need as a share of the host's budget."""
    scenario = load_file(path)
    params = ModelParams()
    configs = [vm.guest_config(params) for vm in scenario.vms]
    times = sorted({t for vm in scenario.vms for t in vm.trace.times_s})
    peak = max(
        sum(c.need_kb(vm.trace.demand_at(t)) for c, vm in zip(configs, scenario.vms, strict=True))
        for t in times
    )
    share = peak / scenario.budget_kb
    if share > 0.97:
        raise SystemExit(
            f"{path}: the guests' needs peak at {peak // KB_PER_MB} MB, "
            f"{100 * share:.0f} % of the budget: the scenario would be infeasible"
        )
    return share


def main() -> None:
    """Write the library."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "scenarios",
        help="directory to write (default: the package's scenarios/)",
    )
    args = parser.parse_args()
    for spec in library():
        path = write(spec, args.out)
        share = check_feasible(path)
        print(f"{path}: peak need {100 * share:.0f} % of the host budget")


if __name__ == "__main__":
    main()
