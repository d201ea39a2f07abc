"""``selfballoon``: the Linux xen-selfballoon law, run independently in every guest.

Ported from the law as restated in KERNEL-LAW.md (Linux
drivers/xen/xen-selfballoon.c, last present in Linux 5.2): every guest aims
at Committed_AS + totalreserve + a reserve of 10 % of the RAM it booted
with, closes 1/8 of the gap per 5 s tick going down and all of it going up,
and never goes below the piecewise ``min_usable`` floor. Each guest sees only
itself, so nothing stops the fleet from asking for more than the host has.
Our simulated guests have no frontswap, so the frontswap terms are zero.
This port is independent of Ballast's control law: it is the baseline.
"""

from __future__ import annotations

from typing import Final

from orchestrator.sim.controllers import Decision, FleetView, RunContext

PAGE_KB: Final = 4
# xen-selfballoon.c defaults.
INTERVAL_S: Final = 5.0  # selfballoon_interval
DOWN_HYSTERESIS: Final = 8  # selfballoon_downhysteresis
UP_HYSTERESIS: Final = 1  # selfballoon_uphysteresis
RESERVED_FRACTION: Final = 0.10  # selfballoon_reserved_mb = 10 % of boot RAM


def _mb_pages(mb: int) -> int:
    return mb * 1024 // PAGE_KB


def floor_pages(max_pages: int, totalreserve_pages: int) -> int:
    """The kernel's piecewise ``min_usable`` floor (min_usable_mb = 0)."""
    useful = max_pages - totalreserve_pages
    if useful < _mb_pages(16):
        return max_pages
    if useful < _mb_pages(64):
        return totalreserve_pages + _mb_pages(16) + (useful - _mb_pages(16)) // 2
    if useful < _mb_pages(512):
        return totalreserve_pages + _mb_pages(40) + (useful - _mb_pages(40)) // 8
    return totalreserve_pages + _mb_pages(99) + (useful - _mb_pages(99)) // 32


def selfballoon_target_kb(
    *,
    totalram_kb: int,
    committed_as_kb: int,
    totalreserve_kb: int,
    reserved_kb: int,
    max_kb: int,
    balloon_current_kb: int,
) -> int:
    """One tick of the law for one guest: the balloon target it writes, KiB."""
    cur = totalram_kb // PAGE_KB
    goal = (committed_as_kb + totalreserve_kb + reserved_kb) // PAGE_KB
    if cur > goal:
        tgt = cur - (cur - goal) // DOWN_HYSTERESIS
    elif cur < goal:
        tgt = cur + (goal - cur) // UP_HYSTERESIS
    else:
        tgt = cur
    tgt = max(tgt, floor_pages(max_kb // PAGE_KB, totalreserve_kb // PAGE_KB))
    # Convert from totalram units to the reservation the balloon driver counts.
    return tgt * PAGE_KB + (balloon_current_kb - totalram_kb)


class Selfballoon:
    """Every guest runs the kernel law on its own, unaware of the host."""

    def __init__(self, context: RunContext) -> None:
        del context
        self._reserved_kb: dict[str, int] = {}

    @property
    def interval_s(self) -> float:
        """The kernel's selfballoon_interval."""
        return INTERVAL_S

    def decide(self, view: FleetView) -> Decision:
        """Each guest's own target from its own meminfo."""
        targets = {}
        for vm in view.vms:
            report = vm.report
            # Set once, at driver init, from the RAM the guest booted with.
            reserved = self._reserved_kb.setdefault(
                vm.name, int(report.mem_total_kb * RESERVED_FRACTION)
            )
            current = report.balloon_current_kb
            targets[vm.name] = min(
                vm.static_max_kb,
                selfballoon_target_kb(
                    totalram_kb=report.mem_total_kb,
                    committed_as_kb=report.committed_as_kb,
                    totalreserve_kb=report.totalreserve_kb,
                    reserved_kb=reserved,
                    max_kb=vm.static_max_kb,
                    balloon_current_kb=vm.allocation_kb if current is None else current,
                ),
            )
        return Decision(targets_kb=targets)
