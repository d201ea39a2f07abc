"""The immutable view of one host that the control law decides on.

The controller (and the simulator) observe the fleet and build one
:class:`Snapshot` per cycle; :func:`orchestrator.control.decide` turns it into
a plan. Everything here is plain data: sizes in KiB, times in seconds of the
caller's clock (virtual in the simulator). Guest reports are untrusted and
are sanitised by the law itself; hypervisor figures are trusted.

Three unit systems meet here (docs/control.md, "Units"):

* the guest's usable RAM, ``MemTotal`` (the kernel law's ``totalram``);
* ``memory/target`` units, what the balloon driver is told;
* the hypervisor's allocation (``tot_pages``), which exceeds a converged
  target by a constant per domain: squeezed's ``memory-offset`` (video RAM
  and firmware pages for HVM guests, 0 for PV). The snapshot carries both the
  raw allocation and that offset, so the law can compare like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.schema import Report
from orchestrator.errors import FatalError


class SnapshotError(FatalError):
    """A snapshot the caller built wrongly (duplicate VMs, impossible figures)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VmObservation:
    """Everything observed about one VM in one cycle."""

    domid: int
    """Xen domain id (changes across reboots and migrations)."""
    uuid: str
    """VM uuid: its identity for policy and carried state."""
    name: str
    """VM name, for humans."""
    static_max_kb: int
    """memory/static-max, KiB: the hard upper bound of any target."""
    actual_kb: int
    """Current allocation from the hypervisor (tot_pages), KiB."""
    target_kb: int | None = None
    """Current memory/target, KiB; None when the key is missing."""
    memory_offset_kb: int = 0
    """actual - target when the balloon is idle (squeezed's memory-offset), KiB.

    0 for PV guests; video RAM plus firmware pages for HVM guests. The law
    compares ``actual_kb - memory_offset_kb`` with targets.
    """
    report: Report | None = None
    """The latest valid Ballast report, or None when there is none."""
    report_age_s: float | None = None
    """Seconds since that report was received; None: unknown (treated as stale)."""
    meminfo_total_kb: int | None = None
    """~/data/meminfo_total, KiB, for guests without the agent."""
    meminfo_free_kb: int | None = None
    """~/data/meminfo_free, KiB."""
    meminfo_age_s: float | None = None
    """Seconds since the meminfo keys changed; None: unknown (taken as fresh)."""
    paused: bool = False
    """The domain is paused in the hypervisor and cannot balloon."""
    directive_seq: int | None = None
    """Sequence number of the swap directive now in xenstore, if any."""

    @property
    def actual_target_kb(self) -> int:
        """The allocation in memory/target units: ``actual_kb - memory_offset_kb``."""
        return max(self.actual_kb - self.memory_offset_kb, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """A request to make room for a starting VM (squeezed's reservation)."""

    key: str
    """Who asked: the starting VM's uuid or name."""
    size_kb: int
    """Memory to keep free for it, KiB."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One host at one instant: its VMs, its free memory and the time."""

    now_s: float
    """The caller's clock, seconds (monotonic; virtual in the simulator)."""
    host_total_kb: int
    """Host physical memory, KiB (for display and capacity)."""
    host_free_kb: int
    """Memory free in the hypervisor right now (free + scrub pages), KiB."""
    vms: tuple[VmObservation, ...]
    """Every guest domain Ballast knows about (dom0 excluded)."""
    reservations: tuple[Reservation, ...] = ()
    """Room requests for starting VMs, served in this order."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "vms", tuple(self.vms))
        object.__setattr__(self, "reservations", tuple(self.reservations))
        if not math.isfinite(self.now_s):
            raise SnapshotError(f"now_s must be a finite time, not {self.now_s}")
        domids: set[int] = set()
        uuids: set[str] = set()
        for vm in self.vms:
            if vm.domid in domids:
                raise SnapshotError(f"domid {vm.domid} appears twice in the snapshot")
            if vm.uuid in uuids:
                raise SnapshotError(f"VM uuid {vm.uuid} appears twice in the snapshot")
            domids.add(vm.domid)
            uuids.add(vm.uuid)
            if vm.static_max_kb < 0 or vm.actual_kb < 0 or vm.memory_offset_kb < 0:
                raise SnapshotError(f"domain {vm.domid}: negative hypervisor figures")
        keys = [r.key for r in self.reservations]
        if len(set(keys)) != len(keys):
            raise SnapshotError("a reservation key appears twice in the snapshot")
        if any(r.size_kb < 0 for r in self.reservations):
            raise SnapshotError("a reservation cannot be negative")
