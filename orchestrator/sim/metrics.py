"""The scores of one controller on one scenario.

Figures (all over the scenario's duration, summed over the guests):

* ``footprint_mb``: mean total allocation.
* ``savings_vs_static``: 1 − footprint / static footprint, where static holds
  every guest at its maximum.
* ``efficiency_vs_oracle``: η = (F_static − F) / (F_static − F_oracle).
* ``deficit_mb_s``: ∫ max(0, need − allocation) dt, need being what the
  demand runs in without faults (see ``GuestConfig.need_kb``).
* ``swapins``: pages swapped in because a task touched them.
* ``psi_over_0_1pct_frac``: share of guest-time with PSI some avg10 > 0.1 %.
* ``ooms``: OOM kills.
* ``host_violation_mb_s``: ∫ max(0, Σ targets − host budget) dt.
* ``reaction_p50_s``, ``reaction_p95_s``: from a demand step (need rising by
  at least 64 MiB from one trace row to the next) to the first moment the
  allocation covers the need again (within 16 MiB); steps still uncovered at
  the end count until the end.
* ``churn_mb``: total memory moved by the balloons, both ways.

OOMs and host violations are gates: a controller with any has failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from orchestrator.sim.model import KB_PER_MB, GuestConfig
from orchestrator.sim.scenario import Scenario

STEP_THRESHOLD_KB: Final = 64 * KB_PER_MB
REACTION_SLACK_KB: Final = 16 * KB_PER_MB
PSI_THRESHOLD_PCT: Final = 0.1

RESULT_KEYS: Final = (
    "controller",
    "footprint_mb",
    "savings_vs_static",
    "efficiency_vs_oracle",
    "deficit_mb_s",
    "swapins",
    "psi_over_0_1pct_frac",
    "ooms",
    "host_violation_mb_s",
    "reaction_p50_s",
    "reaction_p95_s",
    "churn_mb",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunMetrics:
    """Raw figures of one run, before comparison with static and the oracle."""

    footprint_mb: float
    deficit_mb_s: float
    swapins: int
    psi_over_0_1pct_frac: float
    ooms: int
    host_violation_mb_s: float
    reaction_p50_s: float | None
    reaction_p95_s: float | None
    churn_mb: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """One row of the benchmark table (and one object of the JSON output)."""

    controller: str
    footprint_mb: float
    savings_vs_static: float
    efficiency_vs_oracle: float | None
    deficit_mb_s: float
    swapins: int
    psi_over_0_1pct_frac: float
    ooms: int
    host_violation_mb_s: float
    reaction_p50_s: float | None
    reaction_p95_s: float | None
    churn_mb: float

    @property
    def failed(self) -> bool:
        """OOMs and host violations are gates."""
        return self.ooms > 0 or self.host_violation_mb_s > 0

    def as_json(self) -> dict[str, object]:
        """The documented JSON object, keys in the documented order."""
        return {key: getattr(self, key) for key in RESULT_KEYS}


def static_footprint_mb(scenario: Scenario) -> float:
    """Footprint of holding every guest at its maximum."""
    return sum(vm.max_kb for vm in scenario.vms) / KB_PER_MB


def score(controller: str, run: RunMetrics, *, static_mb: float, oracle_mb: float) -> Score:
    """Compare one run against static and the oracle."""
    savings = 1.0 - run.footprint_mb / static_mb if static_mb > 0 else 0.0
    gap = static_mb - oracle_mb
    efficiency = (static_mb - run.footprint_mb) / gap if gap > 1e-9 else None
    return Score(
        controller=controller,
        footprint_mb=round(run.footprint_mb, 1),
        savings_vs_static=round(savings, 4),
        efficiency_vs_oracle=None if efficiency is None else round(efficiency, 4),
        deficit_mb_s=round(run.deficit_mb_s, 1),
        swapins=run.swapins,
        psi_over_0_1pct_frac=round(run.psi_over_0_1pct_frac, 4),
        ooms=run.ooms,
        host_violation_mb_s=round(run.host_violation_mb_s, 1),
        reaction_p50_s=None if run.reaction_p50_s is None else round(run.reaction_p50_s, 1),
        reaction_p95_s=None if run.reaction_p95_s is None else round(run.reaction_p95_s, 1),
        churn_mb=round(run.churn_mb, 1),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def demand_steps(times_s: Sequence[float], needs_kb: Sequence[int]) -> list[float]:
    """Times at which the need rises by at least the step threshold."""
    return [
        times_s[i]
        for i in range(1, len(times_s))
        if needs_kb[i] - needs_kb[i - 1] >= STEP_THRESHOLD_KB
    ]


class Accumulator:
    """Integrates the figures of one run, one harness step at a time."""

    def __init__(self, scenario: Scenario, configs: Sequence[GuestConfig]) -> None:
        self._budget_kb = scenario.budget_kb
        self._duration_s = scenario.duration_s
        self._alloc_kb_s = 0.0
        self._deficit_kb_s = 0.0
        self._deficit_by_vm_kb_s = [0.0] * len(configs)
        self._violation_kb_s = 0.0
        self._churn_kb = 0
        self._psi_ticks = 0
        self._ticks = 0
        self._time_s = 0.0
        self._steps: list[list[float]] = []
        for vm, config in zip(scenario.vms, configs, strict=True):
            needs = [config.need_kb(d) for d in vm.trace.demands]
            self._steps.append(demand_steps(vm.trace.times_s, needs))
        self._next_step = [0] * len(configs)
        self._pending: list[list[float]] = [[] for _ in configs]
        self._reactions: list[float] = []

    def add(
        self,
        *,
        t_s: float,
        dt_s: float,
        allocs_kb: Sequence[int],
        prev_allocs_kb: Sequence[int],
        needs_kb: Sequence[int],
        psi_some_avg10: Sequence[float],
        targets_kb: Sequence[int],
    ) -> None:
        """Account for one step ending at ``t_s``."""
        self._time_s += dt_s
        self._alloc_kb_s += sum(allocs_kb) * dt_s
        over = sum(targets_kb) - self._budget_kb
        if over > 0:
            self._violation_kb_s += over * dt_s
        for i, alloc in enumerate(allocs_kb):
            need = needs_kb[i]
            if need > alloc:
                self._deficit_kb_s += (need - alloc) * dt_s
                self._deficit_by_vm_kb_s[i] += (need - alloc) * dt_s
            self._churn_kb += abs(alloc - prev_allocs_kb[i])
            self._ticks += 1
            if psi_some_avg10[i] > PSI_THRESHOLD_PCT:
                self._psi_ticks += 1
            steps = self._steps[i]
            j = self._next_step[i]
            while j < len(steps) and steps[j] <= t_s + 1e-9:
                self._pending[i].append(steps[j])
                j += 1
            self._next_step[i] = j
            if self._pending[i] and alloc + REACTION_SLACK_KB >= need:
                self._reactions.extend(t_s - s for s in self._pending[i])
                self._pending[i].clear()

    def deficit_by_vm_mb_s(self) -> list[float]:
        """Each guest's share of the deficit, MB·s."""
        return [d / KB_PER_MB for d in self._deficit_by_vm_kb_s]

    def finish(self, *, swapins: int, ooms: int) -> RunMetrics:
        """The run's figures."""
        reactions = list(self._reactions)
        for pending in self._pending:
            reactions.extend(self._duration_s - s for s in pending)
        time_s = self._time_s or 1.0
        return RunMetrics(
            footprint_mb=self._alloc_kb_s / time_s / KB_PER_MB,
            deficit_mb_s=self._deficit_kb_s / KB_PER_MB,
            swapins=swapins,
            psi_over_0_1pct_frac=self._psi_ticks / self._ticks if self._ticks else 0.0,
            ooms=ooms,
            host_violation_mb_s=self._violation_kb_s / KB_PER_MB,
            reaction_p50_s=percentile(reactions, 0.5) if reactions else None,
            reaction_p95_s=percentile(reactions, 0.95) if reactions else None,
            churn_mb=self._churn_kb / KB_PER_MB,
        )
