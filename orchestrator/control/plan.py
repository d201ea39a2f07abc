"""What the control law decided: per-VM targets, directives, states and reasons.

A :class:`Plan` is everything the controller applies (write the targets in
``write_order``, shrinks before grows; write the directives; set or clear
``memory/uncooperative``), everything the store records (old and new target,
reason code, state) and everything ``ballast status`` and MQTT show. It also
carries the next :class:`~orchestrator.control.state.ControlState` to pass
back into the next cycle.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, NamedTuple

from agents.schema import Directive
from orchestrator.control.policy import Estimator
from orchestrator.control.state import ControlState


class VmState(StrEnum):
    """How a VM stands with the controller, shown in ``ballast status``."""

    OK = "ok"
    """Fresh data; controlled normally."""
    STALE = "stale"
    """Its report is older than stale_s: target held."""
    DEAD = "dead"
    """No usable data for longer than dead_s: drifting to its fallback."""
    INACTIVE = "inactive"
    """Not moving towards its target for 5 s (squeezed)."""
    UNCOOPERATIVE = "uncooperative"
    """Not moving towards its target for 20 s (squeezed): gets no more memory."""
    PAUSED = "paused"
    """Control is paused globally, or the domain itself is paused."""
    FIXED = "fixed"
    """Pinned to a fixed target by policy."""
    OFF = "off"
    """Not managed by policy."""


class Reason(StrEnum):
    """Why a VM's target is what it is: a short code with a human sentence."""

    GROW = "grow"
    SHRINK = "shrink"
    STEADY = "steady"
    PRESSURE = "pressure"
    PROBE = "probe"
    FLOOR = "floor"
    NOT_DUE = "not-due"
    STEP_LIMIT = "step-limit"
    AT_MIN = "at-min"
    AT_MAX = "at-max"
    DEADBAND = "deadband"
    HOST_SHORT = "host-short"
    OVERCOMMITTED = "overcommitted"
    STALE = "stale"
    INVALID_REPORT = "invalid-report"
    DEAD = "dead"
    NO_DATA = "no-data"
    UNCOOPERATIVE = "uncooperative"
    FIXED = "fixed"
    OFF = "off"
    PAUSED = "paused"
    DOMAIN_PAUSED = "domain-paused"

    @property
    def text(self) -> str:
        """One sentence for ``ballast status`` and history."""
        return REASON_TEXT[self]


REASON_TEXT: Final[Mapping[Reason, str]] = MappingProxyType(
    {
        Reason.GROW: "needs more memory: growing to its goal",
        Reason.SHRINK: "needs less memory: shrinking 1/hysteresis of the gap per interval",
        Reason.STEADY: "at its goal",
        Reason.PRESSURE: "memory pressure: growing at once",
        Reason.PROBE: "no memory pressure: shrinking slowly",
        Reason.FLOOR: "held at the kernel's minimum usable floor",
        Reason.NOT_DUE: "shrinks wait for the next interval",
        Reason.STEP_LIMIT: "change limited to the maximum step per cycle",
        Reason.AT_MIN: "raised to its policy minimum",
        Reason.AT_MAX: "limited to its policy maximum",
        Reason.DEADBAND: "change smaller than the dead-band: not written",
        Reason.HOST_SHORT: "host is short of memory: cut to its weighted share",
        Reason.OVERCOMMITTED: "host cannot honour every minimum: held at its minimum",
        Reason.STALE: "report is stale: holding the last good target",
        Reason.INVALID_REPORT: "report is unusable: holding the last good target",
        Reason.DEAD: "no fresh report for too long: drifting to its fallback",
        Reason.NO_DATA: "no report and no meminfo: drifting to its fallback",
        Reason.UNCOOPERATIVE: "not following its target: keeps its memory, gets no more",
        Reason.FIXED: "fixed target set by policy",
        Reason.OFF: "not managed (mode off)",
        Reason.PAUSED: "control is paused",
        Reason.DOMAIN_PAUSED: "the domain is paused: target held",
    }
)
assert set(REASON_TEXT) == set(Reason)


class VmPlan(NamedTuple):
    """The decision for one VM.

    Immutable. A NamedTuple rather than a frozen dataclass: one is built per
    VM per cycle, and a frozen dataclass's ``__init__`` alone cost about a
    fifth of ``decide`` for 1,000 VMs. Use it by attribute, not by position.
    """

    domid: int
    """Xen domain id."""
    uuid: str
    """VM uuid."""
    name: str
    """VM name."""
    target_kb: int
    """memory/target in effect after this cycle, KiB."""
    previous_target_kb: int | None
    """memory/target in the snapshot (None when the key was missing), KiB."""
    write: bool
    """Write ``target_kb`` to memory/target this cycle."""
    directive: Directive | None
    """A new swap-shrink directive to write, or None."""
    uncooperative: bool
    """Set (True) or clear (False) memory/uncooperative."""
    state: VmState
    """ok, stale, dead, inactive, uncooperative, paused, fixed or off."""
    reason: Reason
    """Why ``target_kb`` is what it is."""
    estimator: Estimator | None
    """The estimator that produced the demand (None when none ran)."""
    demand_kb: int | None
    """The estimator's goal in memory/target units before pacing, KiB."""
    want_kb: int
    """The target after pacing and bounds, before host arbitration, KiB."""
    min_kb: int
    """Effective policy minimum, KiB."""
    max_kb: int
    """Effective policy maximum (at most static-max), KiB."""
    actual_kb: int
    """The allocation in memory/target units (actual - memory-offset), KiB."""
    charge_kb: int
    """What this VM counts against the host budget, KiB."""
    pressure: bool
    """The guest showed memory pressure (PSI, refaults or swap-ins)."""
    stuck_score_s: float
    """Seconds of missing progress towards its target (see guards)."""

    @property
    def delta_kb(self) -> int:
        """Change of the target this cycle, KiB (negative: shrink)."""
        base = self.previous_target_kb if self.previous_target_kb is not None else self.actual_kb
        return self.target_kb - base


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationPlan:
    """How much room a reservation got."""

    key: str
    """Who asked."""
    requested_kb: int
    """Room requested, KiB."""
    granted_kb: int
    """Room kept free this cycle, KiB (less than requested when short)."""

    @property
    def satisfied(self) -> bool:
        """The whole request is kept free."""
        return self.granted_kb >= self.requested_kb


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPlan:
    """Host-wide figures of one decision."""

    total_kb: int
    """Host memory, KiB."""
    free_kb: int
    """Hypervisor free memory in the snapshot, KiB."""
    budget_kb: int
    """What the guests may hold in memory/target units: free + their allocations
    - dom0 reserve - free margin, KiB."""
    sum_targets_kb: int
    """Sum of every VM's target after this cycle, KiB."""
    sum_charged_kb: int
    """Sum of what every VM counts against the budget (>= its target), KiB."""
    sum_wanted_kb: int
    """Sum of what the VMs wanted before arbitration, KiB."""
    sum_min_kb: int
    """Sum of what the VMs must have (minimums, fixed and held memory), KiB."""
    reserved_kb: int
    """Room granted to reservations, KiB."""
    short: bool
    """The VMs (and reservations) want more than the budget: arbitration cut them."""
    overcommitted: bool
    """Even the minimums do not fit the budget: every flexible VM is at its minimum."""
    paused: bool
    """Control is paused: nothing is written."""
    reservations: tuple[ReservationPlan, ...] = ()
    """Per reservation, how much room it got."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The decision for the whole host, and the state to carry to the next cycle."""

    now_s: float
    """Time of the snapshot, seconds."""
    vms: tuple[VmPlan, ...]
    """Per VM, ordered by domid."""
    host: HostPlan
    """Host figures."""
    write_order: tuple[int, ...]
    """Domids whose targets are written, shrinks first (largest first), then grows."""
    state: ControlState
    """Carried state for the next ``decide`` call."""

    def vm(self, domid: int) -> VmPlan:
        """The plan of one domain; KeyError if it was not in the snapshot."""
        index = bisect.bisect_left(self.vms, domid, key=_domid)
        if index < len(self.vms) and self.vms[index].domid == domid:
            return self.vms[index]
        raise KeyError(domid)

    def by_uuid(self) -> dict[str, VmPlan]:
        """Per-VM plans keyed by uuid."""
        return {vm.uuid: vm for vm in self.vms}

    def writes(self) -> tuple[VmPlan, ...]:
        """The VMs whose targets are written, in the safe order (shrinks first)."""
        by_domid = {vm.domid: vm for vm in self.vms}
        return tuple(by_domid[domid] for domid in self.write_order)

    def directives(self) -> tuple[VmPlan, ...]:
        """The VMs that get a new swap-shrink directive."""
        return tuple(vm for vm in self.vms if vm.directive is not None)


def _domid(vm: VmPlan) -> int:
    return vm.domid
