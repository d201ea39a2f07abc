"""The control benchmark: every controller on every scenario, scored side by side.

``run_bench`` runs the requested controllers (and always the oracle, which
efficiency is measured against) over each scenario in virtual time, in
parallel processes, and returns one :class:`ScenarioResult` per scenario;
``to_json`` renders the documented JSON and ``format_table`` the text table
``ballast bench control`` prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Final

from orchestrator.errors import UsageError
from orchestrator.sim.ballast_adapter import BallastController
from orchestrator.sim.baselines.mom import Mom
from orchestrator.sim.baselines.qmemman import Qmemman
from orchestrator.sim.baselines.selfballoon import Selfballoon
from orchestrator.sim.baselines.senpai import Senpai
from orchestrator.sim.baselines.squeezed import Squeezed
from orchestrator.sim.baselines.static import Static
from orchestrator.sim.controllers import ControllerFactory
from orchestrator.sim.harness import RunResult, run
from orchestrator.sim.metrics import Score, score, static_footprint_mb
from orchestrator.sim.model import KB_PER_MB
from orchestrator.sim.oracle import Oracle
from orchestrator.sim.scenario import Scenario


def controller_factories() -> dict[str, ControllerFactory]:
    """Every controller the benchmark knows, in table order."""
    return {
        "ballast": BallastController,
        "static": Static,
        "selfballoon": Selfballoon,
        "qmemman": Qmemman,
        "squeezed": Squeezed,
        "mom": Mom,
        "senpai": Senpai,
        "oracle": Oracle,
    }


DEFAULT_JOBS: Final = os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    """All controllers' scores on one scenario."""

    scenario: Scenario
    static_mb: float
    oracle_mb: float
    scores: tuple[Score, ...]
    runs: tuple[RunResult, ...]
    """The runs behind the scores (same order), for plots."""


def parse_controllers(text: str | None) -> list[str]:
    """``--controllers`` (comma-separated) as a list of known names."""
    known = controller_factories()
    if text is None:
        return list(known)
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError("--controllers is empty: give names separated by commas")
    for name in names:
        if name not in known:
            raise UsageError(f"unknown controller {name!r}: known are {', '.join(known)}")
    return list(dict.fromkeys(names))


def _run_one(job: tuple[Scenario, str]) -> RunResult:
    scenario, name = job
    return run(scenario, name, controller_factories()[name])


def run_bench(
    scenarios: Sequence[Scenario],
    controllers: Sequence[str],
    *,
    jobs: int = DEFAULT_JOBS,
    progress: Callable[[str], None] | None = None,
) -> list[ScenarioResult]:
    """Run every controller on every scenario and score them."""
    wanted = list(controllers)
    runs_needed = [*wanted, *([] if "oracle" in wanted else ["oracle"])]
    work = [(scenario, name) for scenario in scenarios for name in runs_needed]
    if jobs > 1 and len(work) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
            results = []
            for job, result in zip(work, pool.map(_run_one, work), strict=True):
                if progress is not None:
                    progress(f"{job[0].name}: {job[1]} done")
                results.append(result)
    else:
        results = []
        for job in work:
            results.append(_run_one(job))
            if progress is not None:
                progress(f"{job[0].name}: {job[1]} done")
    out: list[ScenarioResult] = []
    per = len(runs_needed)
    for i, scenario in enumerate(scenarios):
        by_name = {r.controller: r for r in results[i * per : (i + 1) * per]}
        static_mb = static_footprint_mb(scenario)
        oracle_mb = by_name["oracle"].metrics.footprint_mb
        runs = tuple(by_name[name] for name in wanted)
        scores = tuple(
            score(r.controller, r.metrics, static_mb=static_mb, oracle_mb=oracle_mb) for r in runs
        )
        out.append(
            ScenarioResult(
                scenario=scenario,
                static_mb=static_mb,
                oracle_mb=oracle_mb,
                scores=scores,
                runs=runs,
            )
        )
    return out


def to_json(results: Sequence[ScenarioResult]) -> list[dict[str, object]]:
    """The documented JSON structure: one object per scenario."""
    return [
        {"scenario": r.scenario.name, "results": [s.as_json() for s in r.scores]} for r in results
    ]


_COLUMNS: Final = (
    ("controller", "controller", "<"),
    ("footprint_mb", "footprint MB", ">"),
    ("savings_vs_static", "saved", ">"),
    ("efficiency_vs_oracle", "η", ">"),
    ("deficit_mb_s", "deficit MB·s", ">"),
    ("swapins", "swap-ins", ">"),
    ("psi_over_0_1pct_frac", "PSI>0.1%", ">"),
    ("ooms", "OOMs", ">"),
    ("host_violation_mb_s", "host viol MB·s", ">"),
    ("reaction_p50_s", "react p50 s", ">"),
    ("reaction_p95_s", "p95 s", ">"),
    ("churn_mb", "churn MB", ">"),
    ("status", "", "<"),
)


def _cell(key: str, s: Score) -> str:
    if key == "status":
        return "FAILED" if s.failed else "ok"
    value = getattr(s, key)
    if value is None:
        return "-"
    if key in ("savings_vs_static", "efficiency_vs_oracle", "psi_over_0_1pct_frac"):
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(result: ScenarioResult) -> str:
    """One scenario's results as a text table with a heading line."""
    sc = result.scenario
    hours = sc.duration_s / 3600
    lines = [
        f"{sc.name}: {len(sc.vms)} VMs, host {sc.memory_kb // KB_PER_MB} MB "
        f"(guests may hold {sc.budget_kb // KB_PER_MB} MB), {hours:g} h simulated; "
        f"static {result.static_mb:,.0f} MB, oracle {result.oracle_mb:,.0f} MB"
    ]
    rows = [[title for _, title, _ in _COLUMNS]]
    rows.extend([_cell(key, s) for key, _, _ in _COLUMNS] for s in result.scores)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        cells = []
        for (_, _, align), width, cell in zip(_COLUMNS, widths, row, strict=True):
            cells.append(cell.ljust(width) if align == "<" else cell.rjust(width))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
