"""The controller on MQTT: publish every cycle, carry out policy commands.

:class:`TelemetrySink` is a cycle sink: after each cycle it hands the host
status, every VM's state, clears for VMs that went away and the cycle's
events to a :class:`~orchestrator.telemetry.Telemetry`, whose ``publish_*``
calls only enqueue, so the control loop never waits for the broker. A VM
whose figures did not change is not handed over again (its ``updated`` is
when it last changed), so a quiet host of 1,000 VMs costs one status message
per interval.

:class:`PolicyCommands` is the Telemetry's ``apply`` callback: it resolves the
VM among those this controller manages, changes its policy through
:mod:`orchestrator.steering` (the code ``ballast policy`` runs, audited with
source ``mqtt`` and the sender's identity) in a worker thread, wakes the
controller so the change applies at the next cycle, and announces it as a
``policy_changed`` event. Changes made with the local CLI are announced too:
the sink sees the VM's policy version move.

docs/mqtt.md is the wire contract.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol, cast

from orchestrator import __version__
from orchestrator import config as cfg
from orchestrator.control import HostPolicy, Plan, VmObservation, VmPlan
from orchestrator.controller.events import ControllerEvent
from orchestrator.controller.loop import Controller, CycleResult
from orchestrator.errors import UsageError
from orchestrator.steering import ChangeResult, change_vm_policy, stored_context
from orchestrator.store.records import AuditSource
from orchestrator.store.store import Store
from orchestrator.telemetry import (
    ApplyResult,
    ClientIdentity,
    EventMsg,
    HostStatusMsg,
    PolicyCommand,
    PolicySet,
    Telemetry,
    TelemetrySettings,
    VmStateMsg,
    settings_from_config,
)
from orchestrator.telemetry.messages import (
    EVENT_POLICY_CHANGED,
    EVENT_SHORT_OF_MEMORY,
    MAX_REASON_CHARS,
    InvalidPayload,
)

log = logging.getLogger("ballast.controller")

# Event names of the history store that MQTT spells differently (docs/mqtt.md).
_EVENT_KINDS: Final[Mapping[str, str]] = {"host_short": EVENT_SHORT_OF_MEMORY}
# Names for which "could not publish" was logged; bounded like Telemetry's own.
_MAX_LOGGED_NAMES: Final = 1000


def telemetry_settings(config: cfg.Config) -> TelemetrySettings:
    """The Telemetry settings of ``ballast.toml``, with the ``[mqtt]`` tuning knobs.

    Raises UsageError when ``[mqtt] broker`` is empty or a setting is invalid.
    """
    base = settings_from_config(config)
    m = config.mqtt
    broker = base.broker
    tls = broker.tls
    if tls is not None and m.tls_insecure:
        tls = replace(tls, insecure=True)
    broker = replace(
        broker,
        tls=tls,
        keepalive_s=m.keepalive_s,
        protocol=cast(Literal["5", "3.1.1"], m.protocol),
    )
    return replace(
        base, broker=broker, qos=cast(Literal[0, 1], m.qos), queue_size=m.queue_size
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def event_detail(event: ControllerEvent) -> str:
    """One line for humans about a controller event (at most 200 characters)."""
    d = event.details
    kind = event.kind
    if kind == "host_short":
        text = f"VMs want {d.get('wanted_kb')} KiB, the budget is {d.get('budget_kb')} KiB"
        if d.get("overcommitted"):
            text += "; even the minimums do not fit"
    elif kind == "uncooperative":
        text = (f"not following its target of {d.get('target_kb')} KiB "
                f"(holds {d.get('actual_kb')} KiB)")
    elif kind == "stale":
        text = f"no fresh report: {d.get('state', 'stale')}"
    elif kind == "invalid_report":
        text = f"invalid report: {d.get('error', '')}"
    elif kind == "domain_appeared":
        text = f"now managed, target {d.get('target_kb')} KiB"
    elif kind == "controller_started":
        text = f"controller started with {d.get('vms', 0)} VMs"
    else:
        text = ", ".join(f"{key}={value}" for key, value in sorted(d.items()))
    return _clip(text)


@dataclass(frozen=True, slots=True)
class _VmFields:
    target_kb: int
    actual_kb: int | None
    demand_kb: int | None
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class _HostFields:
    vms_managed: int
    host_total_kb: int
    host_free_kb: int
    budget_kb: int
    budget_used_kb: int
    paused: bool
    interval_s: float


class TelemetrySink:
    """A :class:`~orchestrator.controller.loop.CycleSink` publishing over MQTT."""

    def __init__(self, telemetry: Telemetry, *, version: str = __version__) -> None:
        self._telemetry = telemetry
        self._version = version
        # Per VM name: the figures last handed over and when they last changed.
        self._vms: dict[str, tuple[_VmFields, float]] = {}
        self._host: _HostFields | None = None
        self._host_sent_s = float("-inf")
        # Policy version per VM uuid as last seen, and the newest one announced.
        self._versions: dict[str, int] | None = None
        self._announced: dict[str, int] = {}
        self._bad_names: set[str] = set()
        self.cleared = 0
        """VM states cleared because the VM went away."""
        self.unencodable = 0
        """VM states or events not published because a figure is out of range."""

    # ------------------------------------------------------------ per cycle

    def cycle(self, result: CycleResult) -> None:
        plan = result.plan
        wall_s = result.wall_time.timestamp()
        self._publish_status(result, wall_s)
        observations = {obs.domid: obs for obs in result.snapshot.vms}
        live: set[str] = set()
        for vm in plan.vms:
            live.add(vm.name)
            self._publish_vm(vm, observations.get(vm.domid), wall_s)
        # Level-triggered: whatever was published and is not in this plan went
        # away (domain_gone, or renamed), so its retained state is cleared.
        for name in [name for name in self._vms if name not in live]:
            del self._vms[name]
            self._telemetry.clear_vm(name)
            self.cleared += 1
        for event in result.events:
            self._publish_event(
                _EVENT_KINDS.get(event.kind, event.kind), event.name, event_detail(event), wall_s
            )
        self._policy_versions(plan, result.policy.versions, wall_s)

    def _publish_status(self, result: CycleResult, wall_s: float) -> None:
        host = result.plan.host
        fields = _HostFields(
            vms_managed=len(result.plan.vms),
            host_total_kb=host.total_kb,
            host_free_kb=max(host.free_kb, 0),
            budget_kb=max(host.budget_kb, 0),
            budget_used_kb=host.sum_targets_kb,
            paused=host.paused,
            interval_s=result.policy.policy.host.interval_s,
        )
        now_s = result.snapshot.now_s
        # The status is the heartbeat the fleet view judges staleness by: sent
        # when a figure changed, else at most twice per control interval
        # (cycles woken early by guest reports would otherwise flood the
        # broker; half an interval leaves room for a cycle that starts early).
        if fields == self._host and now_s - self._host_sent_s < fields.interval_s / 2:
            return
        try:
            status = HostStatusMsg(version=self._version, updated=wall_s, **_asdict(fields))
        except InvalidPayload as exc:
            self._refused("host status", exc)
            return
        self._host = fields
        self._host_sent_s = now_s
        self._telemetry.publish_status(status)

    def _publish_vm(self, vm: VmPlan, obs: VmObservation | None, wall_s: float) -> None:
        fields = _VmFields(
            target_kb=vm.target_kb,
            actual_kb=obs.actual_kb if obs is not None else vm.actual_kb,
            demand_kb=vm.demand_kb,
            state=vm.state.value,
            reason=vm.reason.text,
        )
        known = self._vms.get(vm.name)
        if known is not None and known[0] == fields:
            return  # Telemetry already holds it (and resends it after a reconnect)
        try:
            msg = VmStateMsg(updated=wall_s, **_asdict(fields))
        except InvalidPayload as exc:
            self._refused(vm.name, exc)
            return
        self._vms[vm.name] = (fields, wall_s)
        self._telemetry.publish_vm_state(vm.name, msg)

    def _publish_event(self, kind: str, vm: str | None, detail: str, at_s: float) -> None:
        try:
            msg = EventMsg(kind=kind, at=at_s, vm=vm or None, detail=detail)
        except InvalidPayload as exc:
            self._refused(f"event {kind}", exc)
            return
        self._telemetry.publish_event(msg)

    def _policy_versions(self, plan: Plan, versions: Mapping[str, int], wall_s: float) -> None:
        previous, self._versions = self._versions, dict(versions)
        if previous is None:
            return  # versions found at start are not news
        names = {vm.uuid: vm.name for vm in plan.vms}
        for uuid, version in versions.items():
            if version <= previous.get(uuid, 0) or version <= self._announced.get(uuid, 0):
                continue
            self._announced[uuid] = version
            if uuid in names:
                self._publish_event(
                    EVENT_POLICY_CHANGED, names[uuid], f"policy version {version}", wall_s
                )

    def _refused(self, what: str, exc: InvalidPayload) -> None:
        self.unencodable += 1
        if what not in self._bad_names and len(self._bad_names) < _MAX_LOGGED_NAMES:
            self._bad_names.add(what)
            log.warning("not published over MQTT: %s: %s", what, exc)

    # ------------------------------------------------------------ commands

    def policy_applied(
        self, *, uuid: str, vm: str, version: int, fields: Sequence[str], who: str
    ) -> None:
        """Announce a policy change made over MQTT (it is not announced again)."""
        self._announced[uuid] = max(version, self._announced.get(uuid, 0))
        detail = _clip(f"{', '.join(fields)} changed by {who} over MQTT (version {version})")
        self._publish_event(EVENT_POLICY_CHANGED, vm, detail, time.time())


def _asdict(fields: _VmFields | _HostFields) -> dict[str, Any]:
    return {name: getattr(fields, name) for name in fields.__slots__}


class PolicyAnnouncer(Protocol):
    """Told about every policy change a command made (the sink's ``policy_applied``)."""

    def __call__(
        self, *, uuid: str, vm: str, version: int, fields: Sequence[str], who: str
    ) -> None: ...


class UnknownVm(UsageError):
    """A command names a VM this controller does not manage."""


class PolicyCommands:
    """The Telemetry's ``apply`` callback: MQTT policy commands, validated like the CLI's."""

    def __init__(
        self,
        *,
        store: Store,
        controller: Controller,
        base: HostPolicy,
        host_name: str,
        on_applied: PolicyAnnouncer | None = None,
    ) -> None:
        self._store = store
        self._controller = controller
        self._base = base
        self._host_name = host_name
        self.on_applied = on_applied
        """Called as ``on_applied(uuid=, vm=, version=, fields=, who=)`` after a change."""

    def resolve(self, vm: str) -> tuple[str, str]:
        """The (uuid, name) of a VM this controller manages, by name or uuid."""
        wanted = vm.strip()
        matches = {
            (view.uuid, view.name)
            for view in self._controller.views.values()
            if view.name == wanted or view.uuid == wanted.lower()
        }
        if not matches:
            raise UnknownVm(f"VM {vm!r} is not managed on host {self._host_name}")
        if len(matches) > 1:
            raise UnknownVm(f"the name {vm!r} means several VMs on {self._host_name}; give a uuid")
        return matches.pop()

    async def __call__(self, command: PolicyCommand, who: ClientIdentity) -> ApplyResult:
        uuid, name = self.resolve(command.vm)
        if isinstance(command, PolicySet):
            set_fields: dict[str, object] = dict(command.as_dict())
            unset: tuple[str, ...] = ()
            fields = tuple(set_fields)
        else:
            set_fields, unset, fields = {}, command.fields, command.fields
        # The store is synchronous (SQLAlchemy); keep the event loop free.
        result = await asyncio.to_thread(self._change, uuid, set_fields, unset, who.audit_name)
        if result.changed:
            self._controller.policy_changed()
            if self.on_applied is not None:
                self.on_applied(
                    uuid=uuid, vm=name, version=result.version, fields=fields, who=who.audit_name
                )
        log.info(
            "policy of %s %s over MQTT by %s (version %d)",
            name, "changed" if result.changed else "unchanged", who.audit_name, result.version,
        )
        return ApplyResult(policy=dict(result.document), version=result.version)

    def _change(
        self, uuid: str, set_fields: Mapping[str, object], unset: Sequence[str], who: str
    ) -> ChangeResult:
        return change_vm_policy(
            self._store, uuid, set_fields, unset, who=who, source=AuditSource.MQTT,
            base=self._base, context=stored_context(self._store),
        )


def connect_telemetry(
    settings: TelemetrySettings,
    *,
    store: Store,
    controller: Controller,
    base: HostPolicy,
) -> tuple[Telemetry, TelemetrySink]:
    """A Telemetry taking policy commands for ``controller`` and its sink (not entered)."""
    commands = PolicyCommands(
        store=store, controller=controller, base=base, host_name=settings.host_name
    )
    telemetry = Telemetry(settings, apply=commands)
    sink = TelemetrySink(telemetry)
    commands.on_applied = sink.policy_applied
    return telemetry, sink
