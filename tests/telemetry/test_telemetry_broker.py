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
from orchestrator.telemetry.commands import PolicyValue
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

        telemetry.clear_vm(odd_vm)
        await eventually(lambda: telemetry.stats.published >= 5, what="the clear")
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

_FIELDS = {"min_kb", "max_kb", "weight"}


@dataclass
class MiniPolicies:
    """The apply callback under test: checks like the CLI, keeps policies in memory."""

    vms: set[str]
    policies: dict[str, dict[str, PolicyValue]] = field(default_factory=dict)
    calls: list[tuple[PolicyCommand, ClientIdentity]] = field(default_factory=list)

    async def apply(self, command: PolicyCommand, who: ClientIdentity) -> ApplyResult:
        self.calls.append((command, who))
        if command.vm not in self.vms:
            raise UsageError(f"no VM named {command.vm!r} on this host")
        current = dict(self.policies.get(command.vm, {}))
        if isinstance(command, PolicySet):
            unknown = sorted(set(command.as_dict()) - _FIELDS)
            if unknown:
                raise UsageError(f"unknown policy field(s): {', '.join(unknown)}")
            current.update(command.as_dict())
        else:
            for name in command.fields:
                current.pop(name, None)
        low, high = current.get("min_kb", 0), current.get("max_kb", 1 << 34)
        assert isinstance(low, int) and isinstance(high, int)
        if low > high:
            raise UsageError(f"min_kb {low} is above max_kb {high}")
        if command.vm == "flaky":
            raise TransientError("store is busy")
        self.policies[command.vm] = current
        return ApplyResult(policy=current, version=len(self.calls))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_command_changes_policy_and_gets_reply(
    mqtt_broker: tuple[str, int], prefix: str, protocol: str
) -> None:
    model = MiniPolicies(vms={"web-1", "flaky"})
    broker = BrokerSettings(host=mqtt_broker[0], port=mqtt_broker[1], protocol=protocol)  # type: ignore[arg-type]
    settings = _settings(mqtt_broker, prefix, "h1", protocol=protocol)
    async with Telemetry(settings, apply=model.apply) as telemetry:
        await eventually(lambda: telemetry.stats.connected, what="connection")
        reply = await send_policy_command(
            broker, prefix, "h1", PolicySet("web-1", (("max_kb", 4 << 20), ("min_kb", 1 << 19))),
            client_name="ops@desk", timeout_s=5,
        )
        assert reply.ok, reply
        assert reply.policy == {"min_kb": 1 << 19, "max_kb": 4 << 20}
        assert model.policies["web-1"] == {"min_kb": 1 << 19, "max_kb": 4 << 20}
        assert model.calls[-1][1] == ClientIdentity("ops@desk")

        # Impossible value: the callback refuses it, nothing changes.
        reply = await send_policy_command(
            broker, prefix, "h1", PolicySet("web-1", (("min_kb", 8 << 20),)),
            client_name=None, timeout_s=5,
        )
        assert not reply.ok and reply.error_kind == "rejected"
        assert "above max_kb" in (reply.error or "")
        assert model.policies["web-1"]["min_kb"] == 1 << 19

        reply = await send_policy_command(
            broker, prefix, "h1", PolicyUnset("nope", ("min_kb",)), client_name=None, timeout_s=5
        )
        assert (reply.ok, reply.error_kind, reply.vm) == (False, "rejected", "nope")

        reply = await send_policy_command(
            broker, prefix, "h1", PolicySet("flaky", (("weight", 2),)), client_name=None,
            timeout_s=5,
        )
        assert (reply.ok, reply.error_kind) == (False, "unavailable")

        reply = await send_policy_command(
            broker, prefix, "h1", PolicyUnset("web-1", ("min_kb",)), client_name=None, timeout_s=5
        )
        assert reply.ok and model.policies["web-1"] == {"max_kb": 4 << 20}


def _pub(broker: tuple[str, int], *args: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", broker[0], "-p", str(broker[1]), "-q", "1", *args], check=True
    )


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ("{oops", "not valid JSON"),
        ('{"set": {"min_kb": 1}, "id": "r"}', "'vm' is missing"),
        ('{"vm": "web-1", "set": {"min_kb": "512M"}, "id": "r"}', "whole number of KiB"),
        ('{"vm": "web-1", "set": {"min_kb": 1}, "pad": "' + "x" * 5000 + '"}', "limit"),
    ],
    ids=["bad-json", "missing-vm", "wrong-type", "oversize"],
)
async def test_bad_commands_get_errors_and_change_nothing(
    mqtt_broker: tuple[str, int], prefix: str, payload: str, needle: str
) -> None:
    model = MiniPolicies(vms={"web-1"})
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
        assert model.calls == [] and model.policies == {}
        assert telemetry.stats.commands_rejected == 1


async def test_fallback_reply_topic_without_mqtt5(
    mqtt_broker: tuple[str, int], prefix: str
) -> None:
    model = MiniPolicies(vms={"web-1"})
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
        assert model.calls[0][1].audit_name == "legacy"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_retained_commands_are_never_applied(
    mqtt_broker: tuple[str, int], prefix: str, protocol: str
) -> None:
    model = MiniPolicies(vms={"web-1"})
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
