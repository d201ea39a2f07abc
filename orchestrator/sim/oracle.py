"""The clairvoyant oracle: the least memory any controller could have given.

Knowing the whole future of a guest's need N(t) and the balloon's rates, the
smallest allocation that never falls short is

    A*(t) = max( max over τ ≥ 0 of [N(t+τ) − r_up·τ],  A*(t−Δ) − r_dn·Δ )

— enough now for every future need it could not otherwise grow into in
time, and no faster shrinking than the balloon allows. On a grid of step Δ
it is two linear passes: backwards for the first term, forwards for the
second. Its footprint is the lower bound that efficiency η is measured
against; no controller without deficit can be below it.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.sim.controllers import Decision, FleetView, RunContext


def clairvoyant_kb(
    need_kb: Sequence[int],
    *,
    dt_s: float,
    up_kb_s: float,
    down_kb_s: float,
    start_kb: int,
) -> list[int]:
    """A*(k·dt) for k = 0..len(need_kb)-1, starting from ``start_kb`` at k = 0.

    ``need_kb[k]`` is the need at time k·dt. The result starts at
    ``start_kb`` (where the guest is), never moves faster than the rates,
    and is at or above the need wherever the start allows it.
    """
    if not need_kb:
        return []
    up = up_kb_s * dt_s
    down = down_kb_s * dt_s
    # Backwards: what must be held at k to reach every later need in time.
    ahead = [0.0] * len(need_kb)
    later = float("-inf")
    for k in range(len(need_kb) - 1, -1, -1):
        later = max(float(need_kb[k]), later - up)
        ahead[k] = later
    # Forwards: never shrink faster than the balloon can (nor grow faster,
    # which only matters when the start is below what is needed).
    result = [start_kb]
    held = float(start_kb)
    for k in range(1, len(need_kb)):
        held = min(max(ahead[k], held - down), held + up)
        result.append(int(-(-held // 1)))  # ceil: never below the need
    return result


class Oracle:
    """Sets every guest to A*(t) one step ahead, from the scenario's future."""

    def __init__(self, context: RunContext) -> None:
        self._dt_s = context.dt_s
        scenario = context.scenario
        steps = int(scenario.duration_s / context.dt_s + 0.5) + 2
        rate = context.params.balloon_rate_kb_s
        self._plans: dict[str, list[int]] = {}
        for vm, start in zip(scenario.vms, context.start_kb, strict=True):
            config = vm.guest_config(context.params)
            need = [
                max(vm.min_kb, config.need_kb(vm.trace.demand_at(k * context.dt_s)))
                for k in range(steps)
            ]
            self._plans[vm.name] = clairvoyant_kb(
                need, dt_s=context.dt_s, up_kb_s=rate, down_kb_s=rate, start_kb=start
            )

    @property
    def interval_s(self) -> float:
        """The oracle acts every step."""
        return self._dt_s

    def decide(self, view: FleetView) -> Decision:
        """The allocation A* wants at the end of the coming step."""
        k = int(view.t_s / self._dt_s + 0.5) + 1
        targets = {}
        for vm in view.vms:
            plan = self._plans[vm.name]
            targets[vm.name] = plan[min(k, len(plan) - 1)]
        return Decision(targets_kb=targets)
