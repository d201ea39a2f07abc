"""``squeezed``: the XenServer (xapi-project) host memory ballooning daemon.

Ported from squeezed's documented policy (xapi-project squeezed design:
"squeezed proportionally at the same distance between the dynamic minimum
and dynamic maximum for all VMs on the host"): every guest gets the same
fraction of its dynamic range, chosen so that the guests fill the host but
for a small free pool. squeezed never looks inside the guests. It balances
every 10 s (``balance_check_interval``) and keeps 9 MiB free
(``target_host_free_mem_kib`` = 1 MiB low-memory emergency pool + 8 MiB
``extra_mem_to_keep``). Where the scenario gives no minimum, the dynamic
minimum is a quarter of static-max, the lowest XenServer supports
("Dynamic Minimum ≥ ¼ Static Maximum", XenServer DMC documentation).
"""

from __future__ import annotations

from typing import Final

from orchestrator.sim.controllers import Decision, FleetView, RunContext

MIB_KB: Final = 1024
BALANCE_CHECK_INTERVAL_S: Final = 10.0
TARGET_HOST_FREE_KB: Final = 9 * MIB_KB


def same_fraction_kb(lows_kb: list[int], highs_kb: list[int], available_kb: int) -> list[int]:
    """Targets at one common fraction of every range that add up to at most
    ``available_kb`` (all at their low end if even that does not fit)."""
    span = sum(h - lo for lo, h in zip(lows_kb, highs_kb, strict=True))
    spare = available_kb - sum(lows_kb)
    fraction = 1.0 if span <= 0 else max(0.0, min(1.0, spare / span))
    return [lo + int((h - lo) * fraction) for lo, h in zip(lows_kb, highs_kb, strict=True)]


class Squeezed:
    """Every guest at the same fraction between its dynamic minimum and maximum."""

    def __init__(self, context: RunContext) -> None:
        del context

    @property
    def interval_s(self) -> float:
        """squeezed's balance check interval."""
        return BALANCE_CHECK_INTERVAL_S

    def decide(self, view: FleetView) -> Decision:
        """Fill the host, everyone at the same fraction of their range."""
        lows = [vm.min_kb if vm.min_given else vm.static_max_kb // 4 for vm in view.vms]
        highs = [vm.max_kb for vm in view.vms]
        lows = [min(lo, h) for lo, h in zip(lows, highs, strict=True)]
        targets = same_fraction_kb(lows, highs, view.budget_kb - TARGET_HOST_FREE_KB)
        return Decision(targets_kb={vm.name: t for vm, t in zip(view.vms, targets, strict=True)})
