"""``mom``: oVirt's Memory Overcommitment Manager, default balloon policy.

Ported from oVirt MOM's doc/balloon.rules with its constants: the host is
under pressure when its free memory is below 20 % (``pressure_threshold``);
then every guest shrinks by at most 5 % per step
(``max_balloon_change_percent``) but not below its used memory plus a free
share that scales with host pressure (20 % at the threshold,
``min_guest_free_percent``; negative below 5 %, ``pressure_critical``,
forcing guests to swap). Without pressure every guest grows by 5 % per step,
at least to used + 20 % free, up to its maximum. Changes under 0.25 % of
the current size are skipped (``min_balloon_change_percent``). Guest and
host figures are averages of the last 10 samples (mom-balloon.conf
``sample-history-length``, samples every 5 s); the policy runs every 10 s
(``policy-engine-interval``). MOM sees a guest's unused memory as MemFree
(the virtio balloon's ``stat-free-memory``), so page cache counts as used.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from orchestrator.sim.controllers import Decision, FleetView, RunContext

PRESSURE_THRESHOLD: Final = 0.20
PRESSURE_CRITICAL: Final = 0.05
MIN_GUEST_FREE_PERCENT: Final = 0.20
MAX_BALLOON_CHANGE_PERCENT: Final = 0.05
MIN_BALLOON_CHANGE_PERCENT: Final = 0.0025
POLICY_INTERVAL_S: Final = 10.0
SAMPLE_INTERVAL_S: Final = 5.0
SAMPLE_HISTORY: Final = 10


class Mom:
    """MOM's balloon.rules over the fleet."""

    def __init__(self, context: RunContext) -> None:
        del context
        self._host_free: deque[int] = deque(maxlen=SAMPLE_HISTORY)
        self._cur: dict[str, deque[int]] = {}
        self._unused: dict[str, deque[int]] = {}
        self._next_sample_s = 0.0
        self._next_policy_s = 0.0

    @property
    def interval_s(self) -> float:
        """MOM's collectors sample every 5 s; the policy runs every other sample."""
        return SAMPLE_INTERVAL_S

    def decide(self, view: FleetView) -> Decision:
        """Sample; every policy interval, grow or shrink every guest."""
        self._host_free.append(view.free_kb)
        for vm in view.vms:
            self._cur.setdefault(vm.name, deque(maxlen=SAMPLE_HISTORY)).append(vm.allocation_kb)
            self._unused.setdefault(vm.name, deque(maxlen=SAMPLE_HISTORY)).append(
                vm.report.mem_free_kb
            )
        if view.t_s + 1e-9 < self._next_policy_s:
            return Decision(targets_kb={})
        self._next_policy_s = view.t_s + POLICY_INTERVAL_S
        host_free_pct = _avg(self._host_free) / view.host_memory_kb
        pressure = host_free_pct < PRESSURE_THRESHOLD
        if host_free_pct <= PRESSURE_CRITICAL:
            guest_free_pct = -0.05 + host_free_pct
        else:
            guest_free_pct = MIN_GUEST_FREE_PERCENT * host_free_pct / PRESSURE_THRESHOLD
        targets: dict[str, int] = {}
        for vm in view.vms:
            cur = vm.allocation_kb
            used = _avg(self._cur[vm.name]) - _avg(self._unused[vm.name])
            if pressure:
                floor = used + guest_free_pct * cur
                size = max(cur * (1 - MAX_BALLOON_CHANGE_PERCENT), floor)
                if size <= cur and _big_enough(size, cur):
                    targets[vm.name] = int(size)
            elif cur < vm.max_kb:
                floor = used + MIN_GUEST_FREE_PERCENT * cur
                size = min(cur * (1 + MAX_BALLOON_CHANGE_PERCENT), vm.max_kb)
                size = max(size, floor)
                if _big_enough(size, cur):
                    targets[vm.name] = int(size)
        return Decision(targets_kb=targets)


def _avg(values: deque[int]) -> float:
    return sum(values) / len(values)


def _big_enough(size: float, cur: int) -> bool:
    return abs(size - cur) > MIN_BALLOON_CHANGE_PERCENT * cur
