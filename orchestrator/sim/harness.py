"""Runs one controller against one scenario in virtual time.

No sockets, no clock: the harness steps every guest's model by ``dt_s``,
calls the controller whenever its interval has passed, and scores the run.
The host is physical: a guest grows only into memory the host has free
(shrinking guests give theirs back first in each step, as Xen would), so a
controller that asks for more than the host has is charged a host violation
and its guests simply do not get the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from orchestrator.sim.controllers import ControllerFactory, FleetView, RunContext, VmView
from orchestrator.sim.metrics import Accumulator, RunMetrics
from orchestrator.sim.model import (
    KB_PER_MB,
    GuestConfig,
    GuestState,
    ModelParams,
    apply_directive,
    boot,
    report,
    step,
)
from orchestrator.sim.scenario import Scenario, ScenarioError

DEFAULT_DT_S = 1.0
# Points kept per run for plots.
_SERIES_POINTS = 720


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """Totals over time, for plots. MiB."""

    t_s: tuple[float, ...]
    alloc_mb: tuple[float, ...]
    need_mb: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class VmOutcome:
    """How one guest fared in a run (for finding where a controller loses)."""

    name: str
    ooms: int
    swapins: int
    """Pages swapped in on faults."""
    refaults: int
    """Hot cache pages refaulted."""
    deficit_mb_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One controller's run of one scenario."""

    controller: str
    metrics: RunMetrics
    series: Series
    vms: tuple[VmOutcome, ...] = ()


def initial_allocations(scenario: Scenario, configs: Sequence[GuestConfig]) -> tuple[int, ...]:
    """Where the guests start: at their maximum if the host holds them all,
    otherwise all at the same fraction between minimum and maximum that
    fills the budget (what a toolstack starting them would do)."""
    highs = [vm.max_kb for vm in scenario.vms]
    if sum(highs) <= scenario.budget_kb:
        return tuple(highs)
    floors = [
        max(vm.min_kb, cfg.floor_kb(vm.trace.demand_at(0.0).unreclaimable_kb))
        for vm, cfg in zip(scenario.vms, configs, strict=True)
    ]
    spare = scenario.budget_kb - sum(floors)
    span = sum(h - f for h, f in zip(highs, floors, strict=True))
    if spare < 0 or span <= 0:
        raise ScenarioError(
            f"{scenario.source}: the host cannot hold the guests even at their minimum at t=0"
        )
    fraction = min(1.0, spare / span)
    return tuple(f + int((h - f) * fraction) for h, f in zip(highs, floors, strict=True))


def run(
    scenario: Scenario,
    controller_name: str,
    factory: ControllerFactory,
    *,
    params: ModelParams | None = None,
    dt_s: float = DEFAULT_DT_S,
) -> RunResult:
    """Run one controller over the whole scenario and score it."""
    params = params or ModelParams()
    configs = [vm.guest_config(params) for vm in scenario.vms]
    start = initial_allocations(scenario, configs)
    states: list[GuestState] = [boot(c, a) for c, a in zip(configs, start, strict=True)]
    context = RunContext(scenario=scenario, params=params, dt_s=dt_s, start_kb=start)
    controller = factory(context)
    interval = max(controller.interval_s, dt_s)
    names = [vm.name for vm in scenario.vms]
    index = {name: i for i, name in enumerate(names)}
    targets = list(start)
    swap_sent: list[int | None] = [None] * len(names)
    seqs = [0] * len(names)
    acc = Accumulator(scenario, configs)
    budget = scenario.budget_kb
    steps = max(1, int(scenario.duration_s / dt_s + 0.5))
    every = max(1, steps // _SERIES_POINTS)
    series_t: list[float] = []
    series_alloc: list[float] = []
    series_need: list[float] = []
    next_decision = 0.0
    max_move = int(params.balloon_rate_kb_s * dt_s)
    for k in range(steps):
        t = k * dt_s
        if t + 1e-9 >= next_decision:
            next_decision += interval
            view = _view(scenario, states, targets, t)
            decision = controller.decide(view)
            for name, target in decision.targets_kb.items():
                i = index[name]
                targets[i] = max(0, min(int(target), configs[i].static_max_kb))
            for name, swap_target in decision.swap_targets_kb.items():
                i = index[name]
                if swap_target != swap_sent[i]:
                    seqs[i] += 1
                    swap_sent[i] = swap_target
                    states[i] = apply_directive(states[i], seq=seqs[i], swap_target_kb=swap_target)
        prev = [s.alloc_kb for s in states]
        # Shrinking guests first: what they give back is free for the growers.
        free = budget
        growers: list[int] = []
        for i, state in enumerate(states):
            if targets[i] <= state.alloc_kb:
                states[i] = state = step(state, targets[i], dt_s)
            else:
                growers.append(i)
            free -= state.alloc_kb
        if growers:
            wants = [min(targets[i] - prev[i], max_move) for i in growers]
            total = sum(wants)
            share = 1.0 if total <= free else max(0, free) / total
            for i, want in zip(growers, wants, strict=True):
                states[i] = step(states[i], prev[i] + int(want * share), dt_s)
        allocs = [s.alloc_kb for s in states]
        needs = [s.need_kb for s in states]
        acc.add(
            t_s=t + dt_s,
            dt_s=dt_s,
            allocs_kb=allocs,
            prev_allocs_kb=prev,
            needs_kb=needs,
            psi_some_avg10=[s.pressure.some_avg10 for s in states],
            targets_kb=targets,
        )
        if k % every == 0 or k == steps - 1:
            series_t.append(t + dt_s)
            series_alloc.append(sum(allocs) / KB_PER_MB)
            series_need.append(sum(needs) / KB_PER_MB)
    metrics = acc.finish(
        swapins=sum(s.counters.swapin_faults for s in states),
        ooms=sum(s.counters.ooms for s in states),
    )
    deficits = acc.deficit_by_vm_mb_s()
    return RunResult(
        controller=controller_name,
        metrics=metrics,
        vms=tuple(
            VmOutcome(
                name=spec.name,
                ooms=state.counters.ooms,
                swapins=state.counters.swapin_faults,
                refaults=state.counters.refault_file,
                deficit_mb_s=deficits[i],
            )
            for i, (spec, state) in enumerate(zip(scenario.vms, states, strict=True))
        ),
        series=Series(
            t_s=tuple(series_t), alloc_mb=tuple(series_alloc), need_mb=tuple(series_need)
        ),
    )


def _view(
    scenario: Scenario, states: Sequence[GuestState], targets: Sequence[int], t_s: float
) -> FleetView:
    vms = tuple(
        VmView(
            name=spec.name,
            render=partial(report, state),
            target_kb=targets[i],
            allocation_kb=state.alloc_kb,
            static_max_kb=spec.static_max_kb,
            min_kb=spec.min_kb,
            max_kb=spec.max_kb,
            min_given=spec.min_given,
            weight=spec.weight,
        )
        for i, (spec, state) in enumerate(zip(scenario.vms, states, strict=True))
    )
    return FleetView(
        t_s=t_s,
        host_memory_kb=scenario.memory_kb,
        budget_kb=scenario.budget_kb,
        free_kb=scenario.budget_kb - sum(s.alloc_kb for s in states),
        vms=vms,
    )
