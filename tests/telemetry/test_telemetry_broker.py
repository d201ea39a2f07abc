"""Telemetry against the real Mosquitto: retained state, last will, commands.

Independent clients check what went over the wire: Mosquitto's own
``mosquitto_sub`` / ``mosquitto_pub`` / ``mosquitto_rr``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.control.policy import (
    Policy,
    PolicyContext,
    VmFacts,
    apply_change,
    vm_to_dict,
)
from orchestrator.errors import TransientError, UsageError
from orchestrator.telemetry import (
    ApplyResult,
    BrokerSettings,
    ClientIdentity,
    EventMsg,
    HostStatusMsg,
    PolicyCommand,
    PolicySet,
    PolicyUnset,
    Telemetry,
    TelemetrySettings,
    VmStateMsg,
)
from orchestrator.telemetry.commands import CommandReply, as_policy_change
from orchestrator.telemetry.fleet import FleetView, fetch_fleet, send_policy_command
from orchestrator.telemetry.topics import HostTopics
from tests.telemetry.conftest import eventually

pytestmark = pytest.mark.mqtt

HOLDER = Path(__file__).with_name("telemetry_holder.py")


def _status(vms: int = 2, paused: bool = False) -> HostStatusMsg:
    return HostStatusMsg(
        version="0.1.0", vms_managed=vms, host_total_kb=64 << 20, host_free_kb=4 << 20,
        budget_kb=56 << 20, budget_used_kb=12 << 20, paused=paused, interval_s=5.0,
        updated=time.time(),
    )


def _state(target_kb: int, state: str = "ok") -> VmStateMsg:
    return VmStateMsg(
        target_kb=target_kb, actual_kb=target_kb + 100, demand_kb=target_kb - 100, state=state,
        reason="tracking demand", updated=time.time(),
    )


def _settings(broker: tuple[str, int], prefix: str, host: str, **kw: object) -> TelemetrySettings:
    address, port = broker
    protocol = kw.pop("protocol", "5")
    return TelemetrySettings(
        host_name=host,
        topic_prefix=prefix,
        broker=BrokerSettings(host=address, port=port, protocol=protocol),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


async def _fleet(broker: tuple[str, int], prefix: str) -> FleetView:
    address, port = broker
    collector = await fetch_fleet(BrokerSettings(host=address, port=port), prefix, timeout_s=5)
    return collector.view(now=time.time())


def _retained_raw(broker: tuple[str, int], topic_filter: str, count: int) -> list[str]:
    """``topic payload`` lines of retained messages, read by mosquitto_sub."""
    address, port = broker
    out = subprocess.run(
        ["mosquitto_sub", "-h", address, "-p", str(port), "-t", topic_filter, "-v",
         "--retained-only", "-C", str(count), "-W", "3"],
        capture_output=True, text=True, check=False,
    )
    return sorted(out.stdout.splitlines())


async def test_retained_states_appear_and_are_cleared(
    mqtt_broker: tuple[str, int], prefix: str
) -> None:
    odd_vm = "db/primary+#1"
    async with Telemetry(_settings(mqtt_broker, prefix, "dom0 a")) as telemetry:
        telemetry.publish_status(_status())
        telemetry.publish_vm_state("web-1", _state(1 << 20))
        telemetry.publish_vm_state(odd_vm, _state(2 << 20, "stale"))
        telemetry.publish_event(EventMsg(kind="stale", at=time.time(), vm=odd_vm))
        await eventually(lambda: telemetry.stats.published >= 4, what="4 publishes")

        view = await _fleet(mqtt_broker, prefix)
        (host,) = view.hosts
        assert (host.name, host.condition) == ("dom0 a", "online")
        assert [(vm.name, vm.state.target_kb if vm.state else None) for vm in host.vms] == [
            (odd_vm, 2 << 20), ("web-1", 1 << 20)
        ]
        # What an independent client sees: encoded levels, JSON payloads.
        raw = _retained_raw(mqtt_broker, f"{prefix}/+/vm/+/state", 2)
        assert [line.split(" {", 1)[0] for line in raw] == [
            f"{prefix}/dom0 a/vm/db%2Fprimary%2B%231/state",
            f"{prefix}/dom0 a/vm/web-1/state",
        ]
        assert json.loads("{" + raw[1].split(" {", 1)[1])["target_kb"] == 1 << 20

        # A level-triggered controller repeats unchanged states: not sent again.
        web_state = _state(1 << 20)
        telemetry.publish_vm_state("web-1", web_state)
        telemetry.publish_vm_state("web-1", web_state)
        await eventually(lambda: telemetry.stats.published >= 5, what="the changed state")
        assert telemetry.stats.unchanged == 1

        telemetry.clear_vm(odd_vm)
        await eventually(lambda: telemetry.stats.published >= 6, what="the clear")
        (host,) = (await _fleet(mqtt_broker, prefix)).hosts
        assert [vm.name for vm in host.vms] == ["web-1"]
        assert telemetry.stats.dropped == 0

    # A clean exit says goodbye: offline, VM states kept for the record.
    (host,) = (await _fleet(mqtt_broker, prefix)).hosts
    assert host.condition == "offline"
    assert host.status is not None and host.age_s is not None
    assert [vm.name for vm in host.vms] == ["web-1"]


async def test_last_will_fires_when_the_process_is_killed(
    mqtt_broker: tuple[str, int], prefix: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HOLDER), str(mqtt_broker[1]), prefix, "doomed"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
        assert line.strip() == "published"
        (host,) = (await _fleet(mqtt_broker, prefix)).hosts
        assert host.condition == "online"
    finally:
        proc.kill()
        proc.wait()

    async def offline() -> bool:
        (host,) = (await _fleet(mqtt_broker, prefix)).hosts
        return host.condition == "offline" and host.age_s is None  # the will has no time

    await eventually(offline, what="the last will")


# ---- commands ---------------------------------------------------------------

GiB_KB = 1 << 20


@dataclass
class PolicyHost:
    """The apply callback under test: the policy model's own validation, in memory.

    What the controller will wire: resolve the VM name, ``apply_change`` with
    the host's facts, keep the result, audit (source mqtt, who = identity).
    """

    static_max_kb: dict[str, int]
    """VM name -> static-max; the uuid is ``uuid-<name>``."""
    policy: Policy = field(default_factory=Policy)
    calls: list[tuple[PolicyCommand, ClientIdentity]] = field(default_factory=list)
    audit: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    async def apply(self, command: PolicyCommand, who: ClientIdentity) -> ApplyResult:
        self.calls.append((command, who))
        if command.vm == "flaky":
            raise TransientError("the policy store is busy")
        if command.vm not in self.static_max_kb:
            raise UsageError(f"no VM named {command.vm!r} on this host")
        uuid = f"uuid-{command.vm}"
        context = PolicyContext(
            vms={
                f"uuid-{name}": VmFacts(name=name, static_max_kb=kb)
                for name, kb in self.static_max_kb.items()
            }
        )
        change = as_policy_change(command, vm_id=uuid)
        self.policy = apply_change(self.policy, change, context)
        self.audit.append((who.audit_name, "mqtt", change.to_dict()))
        return ApplyResult(policy=vm_to_dict(self.policy.vm(uuid)), version=len(self.audit))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_command_changes_policy_and_gets_reply(
    mqtt_broker: tuple[str, int], prefix: str, protocol: str
) -> None:
    model = PolicyHost(static_max_kb={"web-1": 8 * GiB_KB, "flaky": GiB_KB})
    broker = BrokerSettings(host=mqtt_broker[0], port=mqtt_broker[1], protocol=protocol)  # type: ignore[arg-type]
    settings = _settings(mqtt_broker, prefix, "h1", protocol=protocol)

    async def send(command: PolicyCommand, client: str | None = None) -> CommandReply:
        return await send_policy_command(
            broker, prefix, "h1", command, client_name=client, timeout_s=5
        )

    async with Telemetry(settings, apply=model.apply) as telemetry:
        await eventually(lambda: telemetry.stats.connected, what="connection")
        reply = await send(
            PolicySet("web-1", (("max_kb", 4 * GiB_KB), ("min_kb", "512M"))), "ops@desk"
        )
        assert reply.ok, reply
        assert reply.policy == {"min_kb": 512 * 1024, "max_kb": 4 * GiB_KB}
        assert model.policy.vm("uuid-web-1").min_kb == 512 * 1024
        assert model.audit == [
            ("ops@desk", "mqtt", {"vm": "uuid-web-1", "set": {"max_kb": 4 * GiB_KB,
                                   "min_kb": "512M"}, "unset": []})
        ]
        before = model.policy

        # Refused by the policy model: each reply names the problem, nothing changes.
        refusals: list[tuple[PolicyCommand, str]] = [
            (PolicySet("web-1", (("min_kb", 6 * GiB_KB),)), "is above max"),
            (PolicySet("web-1", (("max_kb", "16G"),)), "above its static-max"),
            (PolicySet("web-1", (("weight", "lots"),)), "weight must be a whole number"),
            (PolicySet("web-1", (("colour", "blue"),)), "unknown VM policy field"),
            (PolicyUnset("nope", ("min_kb",)), "no VM named 'nope'"),
        ]
        for command, needle in refusals:
            reply = await send(command)
            assert (reply.ok, reply.error_kind, reply.vm) == (False, "rejected", command.vm)
            assert needle in (reply.error or ""), reply
        assert model.policy == before and len(model.audit) == 1

        reply = await send(PolicySet("flaky", (("weight", 2),)))
        assert (reply.ok, reply.error_kind) == (False, "unavailable")

        reply = await send(PolicyUnset("web-1", ("min_kb",)))
        assert reply.ok and reply.policy == {"max_kb": 4 * GiB_KB} and reply.version == 2
        assert model.calls[-1][1].audit_name == "unidentified"


def _pub(broker: tuple[str, int], *args: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", broker[0], "-p", str(broker[1]), "-q", "1", *args], check=True
    )


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ("{oops", "not valid JSON"),
        ('{"set": {"min_kb": 1}, "id": "r"}', "'vm' is missing"),
        ('{"vm": "web-1", "set": {"min_kb": [512]}, "id": "r"}', "not an array"),
        ('{"vm": "web-1", "set": {"min_kb": 1}, "pad": "' + "x" * 5000 + '"}', "limit"),
    ],
    ids=["bad-json", "missing-vm", "wrong-type", "oversize"],
)
async def test_bad_commands_get_errors_and_change_nothing(
    mqtt_broker: tuple[str, int], prefix: str, payload: str, needle: str
) -> None:
    model = PolicyHost(static_max_kb={"web-1": 8 * GiB_KB})
    topics = HostTopics(prefix, "h1")
    async with Telemetry(_settings(mqtt_broker, prefix, "h1"), apply=model.apply) as telemetry:
        await eventually(lambda: telemetry.stats.connected, what="connection")
        # mosquitto_rr: an independent MQTT 5 client using a response topic and
        # correlation data; the reply must come back on its topic, with its data.
        rr = await asyncio.create_subprocess_exec(
            "mosquitto_rr", "-h", mqtt_broker[0], "-p", str(mqtt_broker[1]),
            "-t", topics.policy_set, "-e", f"{prefix}/rr/reply", "-m", payload,
            "-D", "publish", "correlation-data", "corr-77", "-F", "%D|%p", "-W", "5",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await rr.communicate()
        correlation, _, body = out.decode().strip().partition("|")
        assert correlation == "corr-77"
        reply = json.loads(body)
        assert reply["ok"] is False and reply["error"]["kind"] == "bad_request"
        assert needle in reply["error"]["message"]
        assert model.calls == [] and model.policy == Policy()
        assert telemetry.stats.commands_rejected == 1


async def test_fallback_reply_topic_without_mqtt5(
    mqtt_broker: tuple[str, int], prefix: str
) -> None:
    model = PolicyHost(static_max_kb={"web-1": 8 * GiB_KB})
    topics = HostTopics(prefix, "h1")
    async with Telemetry(_settings(mqtt_broker, prefix, "h1"), apply=model.apply) as telemetry:
        await eventually(lambda: telemetry.stats.connected, what="connection")
        sub = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", mqtt_broker[0], "-p", str(mqtt_broker[1]), "-V", "mqttv311",
            "-t", topics.reply("req-5"), "-C", "1", "-W", "5",
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.2)
        _pub(mqtt_broker, "-V", "mqttv311", "-t", topics.policy_set,
             "-m", '{"vm": "web-1", "set": {"weight": 3}, "id": "req-5", "client": "legacy"}')
        out, _ = await sub.communicate()
        reply = json.loads(out)
        assert reply == {
            "v": 1, "ok": True, "id": "req-5", "vm": "web-1", "policy": {"weight": 3}, "version": 1
        }
        assert model.policy.vm("uuid-web-1").weight == 3
        assert model.calls[0][1].audit_name == "legacy"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_retained_commands_are_never_applied(
    mqtt_broker: tuple[str, int], prefix: str, protocol: str
) -> None:
    model = PolicyHost(static_max_kb={"web-1": 8 * GiB_KB})
    topics = HostTopics(prefix, "h1")
    _pub(mqtt_broker, "-r", "-t", topics.policy_set, "-m", '{"vm":"web-1","set":{"weight":9}}')
    try:
        settings = _settings(mqtt_broker, prefix, "h1", protocol=protocol)
        async with Telemetry(settings, apply=model.apply) as telemetry:
            await eventually(lambda: telemetry.stats.connected, what="connection")
            # A live command after it is applied: the retained one would have come first.
            _pub(mqtt_broker, "-t", topics.policy_set, "-m", '{"vm":"web-1","set":{"weight":1}}')
            await eventually(lambda: model.calls, what="the live command")
            await asyncio.sleep(0.1)
        assert [c.as_dict() for c, _ in model.calls] == [{"weight": 1}]  # type: ignore[union-attr]
    finally:
        _pub(mqtt_broker, "-r", "-n", "-t", topics.policy_set)


async def test_no_reply_is_a_clear_error(mqtt_broker: tuple[str, int], prefix: str) -> None:
    broker = BrokerSettings(host=mqtt_broker[0], port=mqtt_broker[1])
    with pytest.raises(TransientError, match=r"no reply from host 'ghost' within 0\.3 s"):
        await send_policy_command(
            broker, prefix, "ghost", PolicyUnset("vm", ("weight",)), client_name=None,
            timeout_s=0.3,
        )


async def test_unreachable_broker_is_a_clear_error(prefix: str) -> None:
    from tests.telemetry.conftest import free_port

    broker = BrokerSettings(host="127.0.0.1", port=free_port())
    with pytest.raises(TransientError, match=r"cannot reach the MQTT broker mqtt://127\.0\.0\.1"):
        await fetch_fleet(broker, prefix, timeout_s=1)


async def test_full_queue_converges_on_latest_state(
    mqtt_broker: tuple[str, int], prefix: str
) -> None:
    settings = _settings(mqtt_broker, prefix, "tiny-queue", queue_size=5)
    async with Telemetry(settings) as telemetry:
        await eventually(lambda: telemetry.stats.connected, what="connection")
        # One burst, no await in between: the queue holds 5, the rest is dropped
        # and counted; the dropped latest values go out once the queue drains.
        for i in range(40):
            telemetry.publish_vm_state(f"vm-{i}", _state(1000 + i))
        for i in range(40):
            telemetry.publish_vm_state(f"vm-{i}", _state(5000 + i))
        assert telemetry.stats.dropped == 75
        await eventually(lambda: telemetry.stats.republished >= 35, what="drained drops")
        await eventually(lambda: telemetry.stats.queued == 0, what="empty queue")

        async def converged() -> bool:
            (host,) = (await _fleet(mqtt_broker, prefix)).hosts
            got = {vm.name: vm.state.target_kb for vm in host.vms if vm.state}
            return got == {f"vm-{i}": 5000 + i for i in range(40)}

        await eventually(converged, what="latest states at the broker")
