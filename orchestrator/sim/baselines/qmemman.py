"""``qmemman``: the Qubes OS memory balancer.

Ported from Qubes' qubes-core-admin (qubes/qmemman/algo.py and
systemstate.py) and the guest's meminfo-writer. Each guest reports
``used = current − Buffers − Cached − MemFree + SwapTotal − SwapFree`` when
it has moved by more than 30 MiB (half that when used memory is above
10/13 of its total); qmemman then gives every guest its preferred size
``max(1.3 × used, 200 MiB)`` (capped at its maximum) and shares what is
left of the host in proportion to the preferred sizes. A rebalance is only
carried out if it moves more than 150 MiB in total, or gives a guest that
is below its preferred size more than 15 MiB. 50 MiB of Xen memory is kept
free. qmemman never looks at pressure: only at ``used``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from orchestrator.sim.controllers import Decision, FleetView, RunContext

MIB_KB: Final = 1024
# qubes/qmemman/algo.py
CACHE_FACTOR: Final = 1.3
MIN_PREFMEM_KB: Final = 200 * MIB_KB
# qubes/qmemman/systemstate.py
XEN_FREE_MEM_LEFT_KB: Final = 50 * MIB_KB
MIN_TOTAL_MEMORY_TRANSFER_KB: Final = 150 * MIB_KB
MIN_MEM_CHANGE_WHEN_UNDER_PREF_KB: Final = 15 * MIB_KB
# qubes meminfo-writer service: report when used moves by 30000 KiB; it polls
# every 100 ms, which the harness rounds to one check per second.
MEMINFO_THRESHOLD_KB: Final = 30000
INTERVAL_S: Final = 1.0


@dataclass(slots=True)
class _Dom:
    name: str
    mem_used_kb: int | None
    last_target_kb: int
    current_kb: int
    max_kb: int

    @property
    def actual_kb(self) -> int:
        """What the domain is using or may use (max of current and target)."""
        return max(self.current_kb, self.last_target_kb)


def pref_kb(used_kb: int, max_kb: int) -> int:
    """qmemman's preferred size of a guest."""
    return int(max(min(used_kb * CACHE_FACTOR, max_kb), MIN_PREFMEM_KB))


def balance(xen_free_kb: int, doms: list[_Dom]) -> dict[str, int]:
    """qmemman's ``balance``: new targets for the guests that report."""
    live = [d for d in doms if d.mem_used_kb is not None]
    prefs = {d.name: pref_kb(d.mem_used_kb or 0, d.max_kb) for d in live}
    need = {d.name: prefs[d.name] - d.actual_kb for d in live}
    total_needed = sum(need.values())
    total_pref = sum(prefs.values())
    available = xen_free_kb - total_needed
    targets: dict[str, int] = {}
    if available > 0:
        # Enough memory: everyone at pref, the rest in proportion to pref.
        left = 0
        acceptors = 0
        for d in live:
            target = int(0.999 * (prefs[d.name] + prefs[d.name] / total_pref * available))
            if target > d.max_kb:
                left += target - d.max_kb
                target = d.max_kb
            else:
                acceptors += 1
            targets[d.name] = target
        while left > 0 and acceptors > 0:
            bonus = int(0.999 * left / acceptors)
            new_left, new_acceptors = 0, acceptors
            for d in live:
                target = targets[d.name]
                if target < d.max_kb:
                    if target + bonus >= d.max_kb:
                        new_left += target + bonus - d.max_kb
                        target = d.max_kb
                        new_acceptors -= 1
                    else:
                        target += bonus
                targets[d.name] = target
            if new_left == left and new_acceptors == acceptors:
                break
            left, acceptors = new_left, new_acceptors
        return targets
    # Short of memory: donors go to pref, what they free goes to acceptors.
    donors = [d for d in live if need[d.name] < 0 or d.actual_kb >= d.max_kb]
    acceptors_list = [d for d in live if d not in donors]
    pref_acceptors = sum(prefs[d.name] for d in acceptors_list)
    squeezed = xen_free_kb
    for d in donors:
        avail = -need[d.name]
        if avail < 10 * MIB_KB:
            continue
        squeezed -= avail
        targets[d.name] = prefs[d.name]
    if squeezed < 0 or pref_acceptors <= 0:
        return targets
    for d in acceptors_list:
        share = prefs[d.name] / pref_acceptors * squeezed
        targets[d.name] = min(int(0.999 * (d.actual_kb + share)), d.max_kb)
    return targets


class Qmemman:
    """Balances on every significant meminfo change, like qmemman's daemon."""

    def __init__(self, context: RunContext) -> None:
        del context
        self._reported: dict[str, int] = {}
        self._last_target: dict[str, int] = {}

    @property
    def interval_s(self) -> float:
        """meminfo-writer's polling, rounded to the harness's second."""
        return INTERVAL_S

    def decide(self, view: FleetView) -> Decision:
        """Rebalance if a guest's used memory moved enough to be reported."""
        changed = False
        for vm in view.vms:
            r = vm.report
            current = vm.allocation_kb if r.balloon_current_kb is None else r.balloon_current_kb
            used = current - r.cached_kb - r.mem_free_kb + r.swap_total_kb - r.swap_free_kb
            prev = self._reported.get(vm.name, 0)
            diff = abs(used - prev)
            if (
                diff > MEMINFO_THRESHOLD_KB
                or prev == 0
                or (
                    used > prev
                    and used / 10 > (current + 12) / 13
                    and diff > MEMINFO_THRESHOLD_KB / 2
                )
            ):
                self._reported[vm.name] = used
                changed = True
        if not changed:
            return Decision(targets_kb={})
        doms = [
            _Dom(
                name=vm.name,
                mem_used_kb=self._reported.get(vm.name),
                last_target_kb=self._last_target.setdefault(vm.name, vm.target_kb),
                current_kb=vm.allocation_kb,
                max_kb=vm.static_max_kb,
            )
            for vm in view.vms
        ]
        # Xen free memory, less what is promised to guests still growing.
        xen_free = view.free_kb - sum(max(0, d.last_target_kb - d.current_kb) for d in doms)
        requests = balance(xen_free - XEN_FREE_MEM_LEFT_KB, doms)
        if not _significant(requests, doms, xen_free):
            return Decision(targets_kb={})
        self._last_target.update(requests)
        return Decision(targets_kb=requests)


def _significant(requests: dict[str, int], doms: list[_Dom], xen_free_kb: int) -> bool:
    """qmemman's ``is_balance_req_significant``: avoid small adjustments."""
    if XEN_FREE_MEM_LEFT_KB - xen_free_kb > MIN_MEM_CHANGE_WHEN_UNDER_PREF_KB:
        return True
    by_name = {d.name: d for d in doms}
    transfer = 0
    for name, target in requests.items():
        d = by_name[name]
        change = target - d.last_target_kb
        transfer += abs(change)
        pref = pref_kb(d.mem_used_kb or 0, d.max_kb)
        if 0 < d.last_target_kb < pref and change > MIN_MEM_CHANGE_WHEN_UNDER_PREF_KB:
            return True
    return transfer + abs(xen_free_kb - XEN_FREE_MEM_LEFT_KB) > MIN_TOTAL_MEMORY_TRANSFER_KB
