"""``senpai``: Facebook's PSI-driven memory sizing (senpai.py, 2019 defaults).

Ported from facebookincubator/senpai: once a second it adds the memory
``some`` stall time to an integral; when the integral exceeds the target
pressure (10 ms per 6 s interval, ``--pressure 10000``) it backs off,
growing the limit by min(1, (integral / target / 20)²) of itself
(``--coeff-backoff 20``, ``--max-backoff 1.0``); otherwise, once per
interval (``--interval 6``), it probes, shrinking the limit by
min(1, (target / integral / 10)²) × 0.01 of itself (``--coeff-probe 10``,
``--max-probe 0.01``). Limits stay within [100 MiB, the guest's maximum]
(``--min-size``). Senpai sized a cgroup's memory.high; here the limit is the
guest's balloon target, so it runs one loop per guest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from orchestrator.sim.controllers import Decision, FleetView, RunContext

TICK_S: Final = 1.0
INTERVAL_TICKS: Final = 6
PRESSURE_US: Final = 10_000
MAX_PROBE: Final = 0.01
MAX_BACKOFF: Final = 1.0
COEFF_PROBE: Final = 10
COEFF_BACKOFF: Final = 20
MIN_SIZE_KB: Final = 100 * 1024


@dataclass(slots=True)
class _Loop:
    limit_kb: int
    last_total_us: int
    integral_us: int = 0
    grace_ticks: int = INTERVAL_TICKS


class Senpai:
    """One senpai loop per guest, on PSI some totals from its reports."""

    def __init__(self, context: RunContext) -> None:
        del context
        self._loops: dict[str, _Loop] = {}

    @property
    def interval_s(self) -> float:
        """senpai ticks once a second."""
        return TICK_S

    def decide(self, view: FleetView) -> Decision:
        """One senpai tick for every guest."""
        targets: dict[str, int] = {}
        for vm in view.vms:
            total = vm.report.psi_some_total_us or 0
            loop = self._loops.get(vm.name)
            if loop is None:
                self._loops[vm.name] = _Loop(limit_kb=vm.allocation_kb, last_total_us=total)
                continue
            delta = total - loop.last_total_us
            loop.last_total_us = total
            loop.integral_us += delta
            if loop.integral_us > PRESSURE_US:
                err = loop.integral_us / PRESSURE_US
                adj = min((err / COEFF_BACKOFF) ** 2 * MAX_BACKOFF, MAX_BACKOFF)
                self._adjust(loop, adj, vm.max_kb)
                targets[vm.name] = loop.limit_kb
                continue
            if loop.grace_ticks:
                loop.grace_ticks -= 1
                continue
            err = PRESSURE_US / max(loop.integral_us, 1)
            adj = min((err / COEFF_PROBE) ** 2 * MAX_PROBE, MAX_PROBE)
            self._adjust(loop, -adj, vm.max_kb)
            targets[vm.name] = loop.limit_kb
        return Decision(targets_kb=targets)

    @staticmethod
    def _adjust(loop: _Loop, factor: float, max_kb: int) -> None:
        limit = int(loop.limit_kb + loop.limit_kb * factor)
        loop.limit_kb = max(MIN_SIZE_KB, min(max_kb, limit))
        loop.integral_us = 0
        loop.grace_ticks = INTERVAL_TICKS - 1
