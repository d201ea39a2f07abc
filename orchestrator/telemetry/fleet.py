"""The fleet as the broker's retained messages describe it, and commands to hosts.

:class:`FleetCollector` is pure: feed it ``(topic, payload)`` pairs, ask it
for a :class:`FleetView` at a given wall-clock time. A host is ``online``
while its status is fresh, ``stale`` when the status is older than
``stale_intervals`` times the interval the host itself announced (its
controller stalled, or its clock is off), ``offline`` after its goodbye or
last will, and ``unknown`` when VM states exist without any status.

:func:`fetch_fleet`, :func:`watch_fleet` and :func:`send_policy_command` are
the I/O around it, used by ``ballast fleet``.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiomqtt

from orchestrator.errors import TransientError
from orchestrator.telemetry import _mqtt
from orchestrator.telemetry._json import InvalidPayload
from orchestrator.telemetry.commands import (
    CommandReply,
    PolicyCommand,
    PolicyUnset,
    decode_reply,
    encode_command,
)
from orchestrator.telemetry.messages import (
    HostMsg,
    HostOfflineMsg,
    HostStatusMsg,
    VmStateMsg,
    decode_status,
    decode_vm_state,
)
from orchestrator.telemetry.settings import BrokerSettings
from orchestrator.telemetry.topics import (
    HostTopics,
    InvalidTopic,
    TopicKind,
    encode_segment,
    fleet_wildcards,
    parse_topic,
    validate_prefix,
)

# A status older than this many of the host's own intervals marks it stale.
DEFAULT_STALE_INTERVALS: Final = 3
# When the sync marker cannot come back (the ACL forbids it), stop waiting for
# retained messages after this long without any.
QUIET_S: Final = 1.0

HostCondition = Literal["online", "stale", "offline", "unknown", "invalid"]


@dataclass(frozen=True, slots=True)
class VmRow:
    """One VM of one host."""

    name: str
    state: VmStateMsg | None
    error: str | None = None
    """Why the retained state could not be read, if it could not."""


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host and its VMs, sorted by name."""

    name: str
    condition: HostCondition
    status: HostMsg | None
    age_s: float | None
    """Seconds since the status was taken (viewer's clock), if known."""
    vms: tuple[VmRow, ...]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FleetView:
    """Every host under a prefix, sorted by name."""

    hosts: tuple[HostRow, ...]
    taken_at: float
    """The viewer's wall-clock time the conditions were judged at, Unix seconds."""
    ignored: int
    """Messages that were not Ballast status or VM state topics."""


class FleetCollector:
    """Accumulates retained host statuses and VM states (pure; no I/O)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._status: dict[str, HostMsg | str] = {}
        self._vms: dict[str, dict[str, VmStateMsg | str]] = {}
        self._ignored = 0

    def feed(self, topic: str, payload: bytes) -> None:
        """Take one message; an empty payload removes what the topic held."""
        try:
            ref = parse_topic(self.prefix, topic)
        except InvalidTopic:
            self._ignored += 1
            return
        if ref.kind is TopicKind.STATUS:
            if not payload:
                self._status.pop(ref.host, None)
                return
            try:
                self._status[ref.host] = decode_status(payload)
            except InvalidPayload as exc:
                self._status[ref.host] = str(exc)
        elif ref.kind is TopicKind.VM_STATE and ref.vm is not None:
            vms = self._vms.setdefault(ref.host, {})
            if not payload:
                vms.pop(ref.vm, None)
                if not vms:
                    del self._vms[ref.host]
                return
            try:
                vms[ref.vm] = decode_vm_state(payload)
            except InvalidPayload as exc:
                vms[ref.vm] = str(exc)
        else:
            self._ignored += 1

    def view(self, *, now: float, stale_intervals: float = DEFAULT_STALE_INTERVALS) -> FleetView:
        """The fleet as of wall-clock ``now`` (Unix seconds)."""
        rows = []
        for host in sorted(set(self._status) | set(self._vms)):
            vms = tuple(
                VmRow(name, None, value) if isinstance(value, str) else VmRow(name, value)
                for name, value in sorted(self._vms.get(host, {}).items())
            )
            rows.append(self._host_row(host, vms, now, stale_intervals))
        return FleetView(tuple(rows), now, self._ignored)

    def _host_row(
        self, host: str, vms: tuple[VmRow, ...], now: float, stale_intervals: float
    ) -> HostRow:
        status = self._status.get(host)
        if status is None:
            return HostRow(host, "unknown", None, None, vms)
        if isinstance(status, str):
            return HostRow(host, "invalid", None, None, vms, error=status)
        if isinstance(status, HostOfflineMsg):
            age = None if status.updated is None else max(0.0, now - status.updated)
            return HostRow(host, "offline", status, age, vms)
        age = now - status.updated
        stale = age > stale_intervals * status.interval_s
        return HostRow(host, "stale" if stale else "online", status, max(0.0, age), vms)


def view_as_json(view: FleetView) -> dict[str, Any]:
    """The fleet view as plain data (``ballast fleet status --json``)."""
    hosts = []
    for row in view.hosts:
        status: dict[str, Any] | None = None
        if isinstance(row.status, HostStatusMsg):
            status = {
                "version": row.status.version,
                "vms_managed": row.status.vms_managed,
                "host_total_kb": row.status.host_total_kb,
                "host_free_kb": row.status.host_free_kb,
                "budget_kb": row.status.budget_kb,
                "budget_used_kb": row.status.budget_used_kb,
                "paused": row.status.paused,
                "interval_s": row.status.interval_s,
                "updated": row.status.updated,
            }
        elif isinstance(row.status, HostOfflineMsg):
            status = {"version": row.status.version, "updated": row.status.updated}
        vms = []
        for vm in row.vms:
            entry: dict[str, Any] = {"name": vm.name}
            if vm.state is not None:
                entry.update(
                    target_kb=vm.state.target_kb,
                    actual_kb=vm.state.actual_kb,
                    demand_kb=vm.state.demand_kb,
                    state=vm.state.state,
                    reason=vm.state.reason,
                    updated=vm.state.updated,
                )
            if vm.error is not None:
                entry["error"] = vm.error
            vms.append(entry)
        hosts.append(
            {
                "host": row.name,
                "condition": row.condition,
                "age_s": row.age_s,
                "status": status,
                "error": row.error,
                "vms": vms,
            }
        )
    return {"taken_at": view.taken_at, "hosts": hosts}


# ---- I/O ---------------------------------------------------------------------


def _fleet_client_id() -> str:
    return f"ballast-fleet-{secrets.token_hex(6)}"


def _unreachable(broker: BrokerSettings, exc: BaseException) -> TransientError:
    return TransientError(f"cannot reach the MQTT broker {broker.url}: {exc}")


async def fetch_fleet(
    broker: BrokerSettings, prefix: str, *, timeout_s: float = 10.0
) -> FleetCollector:
    """Connect, read every retained status and VM state under ``prefix``, disconnect."""
    collector = FleetCollector(prefix)
    try:
        await _follow(broker, collector, timeout_s=timeout_s, until_synced=True)
    except aiomqtt.MqttError as exc:
        raise _unreachable(broker, exc) from None
    return collector


async def watch_fleet(
    broker: BrokerSettings,
    collector: FleetCollector,
    *,
    on_synced: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Keep ``collector`` up to date until cancelled (``ballast fleet status --watch``)."""
    try:
        await _follow(broker, collector, timeout_s=None, until_synced=False, on_synced=on_synced)
    except aiomqtt.MqttError as exc:
        raise _unreachable(broker, exc) from None


async def _follow(
    broker: BrokerSettings,
    collector: FleetCollector,
    *,
    timeout_s: float | None,
    until_synced: bool,
    on_synced: Callable[[], Awaitable[None]] | None = None,
) -> None:
    client_id = broker.client_id or _fleet_client_id()
    # Retained messages come right after the SUBACK, before anything published
    # later by the same client: a marker on our own topic ends the snapshot.
    marker = f"{collector.prefix}/_fleet/{encode_segment(client_id)}/sync"
    loop = asyncio.get_running_loop()
    async with _mqtt.make_client(broker, client_id=client_id, context=_context(broker)) as client:
        wildcards = fleet_wildcards(collector.prefix)
        await client.subscribe(
            [_mqtt.subscription(t, broker, retained=True) for t in wildcards]  # type: ignore[arg-type]
        )
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"", qos=1)
        synced = False
        deadline = None if timeout_s is None else loop.time() + timeout_s
        messages = aiter(client.messages)
        while True:
            wait_s = None
            if not synced:
                wait_s = QUIET_S
                if deadline is not None:
                    wait_s = min(wait_s, max(0.0, deadline - loop.time()))
            try:
                message = await asyncio.wait_for(anext(messages), wait_s)
            except TimeoutError:
                message = None
            if message is not None and message.topic.value != marker:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                collector.feed(message.topic.value, payload)
                continue
            if not synced:
                synced = True
                if on_synced is not None:
                    await on_synced()
            if until_synced:
                return


def _context(broker: BrokerSettings) -> ssl.SSLContext | None:
    return _mqtt.tls_context(broker.tls) if broker.tls is not None else None


async def send_policy_command(
    broker: BrokerSettings,
    prefix: str,
    host: str,
    command: PolicyCommand,
    *,
    client_name: str | None,
    timeout_s: float = 10.0,
) -> CommandReply:
    """Send one policy command to ``host`` and wait for its reply.

    The response topic is the host's fallback reply topic with a fresh request
    id, so the same subscription works with MQTT 5 and 3.1.1 hosts and the
    example ACL (a host writes only below its own topics).
    """
    topics = HostTopics(prefix, host)
    request_id = secrets.token_hex(8)
    reply_to = topics.reply(request_id)
    target = topics.policy_unset if isinstance(command, PolicyUnset) else topics.policy_set
    payload = encode_command(command, request_id=request_id, client=client_name)
    props = _mqtt.publish_properties(
        broker, response_topic=reply_to, correlation=request_id.encode()
    )
    try:
        async with _mqtt.make_client(
            broker, client_id=broker.client_id or _fleet_client_id(), context=_context(broker)
        ) as client:
            await client.subscribe(reply_to, qos=1)
            await client.publish(target, payload, qos=1, properties=props)
            try:
                async with asyncio.timeout(timeout_s):
                    async for message in client.messages:
                        if message.topic.value != reply_to:
                            continue
                        _, correlation = _mqtt.response_info(message)
                        if correlation is not None and correlation != request_id.encode():
                            continue
                        raw = message.payload if isinstance(message.payload, bytes) else b""
                        try:
                            reply = decode_reply(raw)
                        except InvalidPayload as exc:
                            raise TransientError(
                                f"host {host!r} sent an unreadable reply: {exc}"
                            ) from None
                        if reply.request_id in (None, request_id):
                            return reply
            except TimeoutError:
                raise TransientError(
                    f"no reply from host {host!r} within {timeout_s:g} s "
                    "(is it online? see: ballast fleet status)"
                ) from None
    except aiomqtt.MqttError as exc:
        raise _unreachable(broker, exc) from None
    raise TransientError(f"the connection to {broker.url} closed before host {host!r} replied")
