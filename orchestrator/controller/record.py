"""Record each cycle in the history store: samples, decisions, events.

The sink only queues records on the store's background writer, which never
blocks; the control loop never waits for the database. A VM gets a raw
sample at most once per ``sample_interval_s`` (report floods must not flood
the history), and every written target or directive becomes a decision.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from orchestrator.control import VmPlan
from orchestrator.controller.events import ControllerEvent
from orchestrator.controller.loop import CycleResult
from orchestrator.errors import BallastError
from orchestrator.store.records import Decision, DomainRef, Event, EventKind, Sample, VmState
from orchestrator.store.writer import StoreWriter

log = logging.getLogger("ballast.controller")

# Raw samples per VM at most this often: the kernel law's 5 s interval.
DEFAULT_SAMPLE_INTERVAL_S = 5.0


def domain_ref(vm: VmPlan) -> DomainRef:
    """The store's identity of a VM in a plan."""
    return DomainRef(uuid=vm.uuid, name=vm.name or f"domain-{vm.domid}", domid=vm.domid)


def _rate(value: float | None) -> float | None:
    return None if value is None else max(value, 0.0)


def sample_of(result: CycleResult, vm: VmPlan, time: datetime) -> Sample:
    """One raw sample of a VM from a cycle."""
    obs = next((o for o in result.snapshot.vms if o.domid == vm.domid), None)
    report = obs.report if obs is not None else None
    memory = result.plan.state.get(vm.uuid)
    signals = memory.signals if memory is not None else None
    return Sample(
        domain=domain_ref(vm),
        time=time,
        target_kb=vm.target_kb,
        actual_kb=obs.actual_kb if obs is not None else vm.actual_kb,
        demand_kb=vm.demand_kb,
        available_kb=report.mem_available_kb if report is not None else None,
        committed_kb=report.committed_as_kb if report is not None else None,
        swap_used_kb=report.swap_used_kb if report is not None else None,
        psi_some_pct=report.psi_some_avg10 if report is not None else None,
        psi_full_pct=report.psi_full_avg10 if report is not None else None,
        refault_per_s=_rate(signals.refault_pps) if signals is not None else None,
        swapin_per_s=_rate(signals.swapin_pps) if signals is not None else None,
        state=VmState(vm.state.value),
    )


def decision_of(
    vm: VmPlan, time: datetime, versions: Mapping[str, int], wrote_target: bool
) -> Decision:
    """The decision record of a VM whose target or directive was written."""
    old = vm.previous_target_kb if vm.previous_target_kb is not None else vm.actual_kb
    return Decision(
        domain=domain_ref(vm),
        time=time,
        old_target_kb=old,
        new_target_kb=vm.target_kb if wrote_target else old,
        reason=vm.reason.value,
        swap_target_kb=vm.directive.swap_target_kb if vm.directive is not None else None,
        policy_version=versions.get(vm.uuid, 0),
    )


def event_of(event: ControllerEvent, time: datetime) -> Event:
    """The store's record of a controller event."""
    domain = None
    if event.uuid is not None and event.domid is not None:
        domain = DomainRef(uuid=event.uuid, name=event.name or f"domain-{event.domid}",
                           domid=event.domid)
    return Event(kind=EventKind(event.kind), time=time, domain=domain,
                 details=dict(event.details))


class StoreSink:
    """A :class:`~orchestrator.controller.loop.CycleSink` writing history."""

    def __init__(
        self, writer: StoreWriter, *, sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    ) -> None:
        self._writer = writer
        self._interval_s = sample_interval_s
        self._last_sample: dict[str, float] = {}
        self.refused = 0

    def cycle(self, result: CycleResult) -> None:
        now_s = result.snapshot.now_s
        time = result.wall_time
        samples = []
        live = set()
        for vm in result.plan.vms:
            live.add(vm.uuid)
            wrote = vm.domid in result.applied.targets_written
            directive = vm.domid in result.applied.directives_written
            try:
                last = self._last_sample.get(vm.uuid)
                if wrote or last is None or now_s - last >= self._interval_s:
                    samples.append(sample_of(result, vm, time))
                    self._last_sample[vm.uuid] = now_s
                if wrote or directive:
                    self._writer.record_decision(
                        decision_of(vm, time, result.policy.versions, wrote)
                    )
            except BallastError as exc:  # a record the store refuses (odd name, uuid)
                self.refused += 1
                log.warning("not recorded for domain %d: %s", vm.domid, exc)
        for uuid in list(self._last_sample):
            if uuid not in live:
                del self._last_sample[uuid]
        if samples:
            self._writer.record_samples(samples)
        for event in result.events:
            try:
                self._writer.record_event(event_of(event, time))
            except (BallastError, ValueError) as exc:
                self.refused += 1
                log.warning("event %s not recorded: %s", event.kind, exc)
