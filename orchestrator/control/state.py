"""What the control law carries from one cycle to the next, immutably.

The kernel laws keep statics between ticks (the frontswap inertia counter and
last page count); Ballast's guards keep a progress score per VM; rates need
the previous report to take counter differences. None of it is hidden: every
cycle takes a :class:`ControlState` and returns the next one inside the plan.
A controller that restarts starts from :class:`ControlState` () and
recomputes everything from what it observes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from agents.schema import Report
from orchestrator.control.estimators import Figures, Signals


class VmMemory(NamedTuple):
    """The carried state of one VM (immutable; a NamedTuple for speed, one per VM per cycle)."""

    domid: int
    """The domain it belongs to; a new domid (reboot, migration) resets the guards."""
    last_seen_s: float
    """When it was last observed, seconds."""
    last_actual_kb: int
    """Its allocation then, in memory/target units, KiB."""
    stuck_score_s: float = 0.0
    """Seconds of missing progress towards its target, paid back by movement."""
    uncooperative: bool = False
    """Latched uncooperative flag (cleared when the score falls back under 5 s)."""
    last_step_s: float | None = None
    """When the law last took an interval step (shrinks happen only then)."""
    last_target_kb: int | None = None
    """The last target Ballast decided: the "last known good" a stale VM holds."""
    report: Report | None = None
    """The last distinct report seen, for counter differences."""
    figures: Figures | None = None
    """That report, sanitised (kept so an unchanged report is not parsed again)."""
    signals: Signals | None = None
    """Signals computed when that report arrived."""
    swap_last_pages: int = 0
    """Frontswap law: pages seen at the previous tick."""
    swap_counter: int = 0
    """Frontswap law: inertia counter."""
    directive_seq: int = 0
    """Sequence number of the last directive Ballast issued."""
    quiet_pages: int = 0
    """``pressure`` estimator: MemTotal (pages) when the guest was last quiet."""
    calm_until_s: float | None = None
    """``pressure`` estimator: no probing before this time (set on pressure)."""


@dataclass(frozen=True, slots=True, init=False)
class ControlState:
    """Carried state of every VM, keyed by uuid."""

    vms: Mapping[str, VmMemory]

    def __init__(self, vms: Mapping[str, VmMemory] | None = None) -> None:
        object.__setattr__(self, "vms", MappingProxyType(dict(vms or {})))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlState):
            return NotImplemented
        return dict(self.vms) == dict(other.vms)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.vms.items())))

    def get(self, uuid: str) -> VmMemory | None:
        """One VM's carried state, if any."""
        return self.vms.get(uuid)


__all__ = ["ControlState", "Figures", "Signals", "VmMemory"]
