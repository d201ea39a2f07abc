"""Events worth a line in history and on MQTT, derived from two successive plans.

Pure: comparing the previous plan with the new one says which VMs went stale
or fresh, became uncooperative or recovered, appeared or went away, and
whether the host went short of memory or control was paused. (Invalid reports
are noticed while observing, by the loop.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.control import Plan, VmPlan, VmState

_STALE_STATES = frozenset({VmState.STALE, VmState.DEAD})


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerEvent:
    """One event; ``kind`` uses the history store's event names."""

    kind: str
    uuid: str | None = None
    name: str | None = None
    domid: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def _vm_event(kind: str, vm: VmPlan, **details: Any) -> ControllerEvent:
    return ControllerEvent(kind=kind, uuid=vm.uuid, name=vm.name, domid=vm.domid, details=details)


def events_between(
    previous: Plan | None, plan: Plan, *, started: Mapping[str, Any] | None = None
) -> tuple[ControllerEvent, ...]:
    """What changed between ``previous`` and ``plan`` that an operator should see.

    ``started``: details added to ``controller_started`` (how the previous run ended).
    """
    events: list[ControllerEvent] = []
    before = previous.by_uuid() if previous is not None else {}
    now = plan.by_uuid()
    host = plan.host
    if previous is None:
        events.append(ControllerEvent(
            kind="controller_started", details={**(started or {}), "vms": len(plan.vms)}
        ))
    else:
        if host.paused != previous.host.paused:
            events.append(ControllerEvent(kind="paused" if host.paused else "resumed"))
        if host.short and not previous.host.short:
            events.append(
                ControllerEvent(
                    kind="host_short",
                    details={
                        "budget_kb": host.budget_kb,
                        "wanted_kb": host.sum_wanted_kb,
                        "overcommitted": host.overcommitted,
                    },
                )
            )
    for uuid, vm in now.items():
        old = before.get(uuid)
        if old is None:
            if previous is not None:
                events.append(_vm_event("domain_appeared", vm, target_kb=vm.target_kb))
            continue
        if vm.state in _STALE_STATES and old.state not in _STALE_STATES:
            events.append(_vm_event("stale", vm, state=vm.state.value))
        elif old.state in _STALE_STATES and vm.state not in _STALE_STATES:
            events.append(_vm_event("fresh", vm))
        if vm.uncooperative and not old.uncooperative:
            events.append(_vm_event("uncooperative", vm, target_kb=vm.target_kb,
                                    actual_kb=vm.actual_kb))
        elif old.uncooperative and not vm.uncooperative:
            events.append(_vm_event("cooperative", vm))
    for uuid, old in before.items():
        if uuid not in now:
            events.append(_vm_event("domain_gone", old))
    return tuple(events)
