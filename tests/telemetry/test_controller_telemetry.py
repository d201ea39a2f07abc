"""The real controller on MQTT: retained states, clears, events and policy commands.

A simulated host (the project's xenstore server, guests reporting over their
own sockets, a real SQLite history) runs the real daemon with telemetry on
the real Mosquitto; what goes over the wire is read back by independent
clients (the fleet view's reader, ``mosquitto_rr``) and the store by the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.telemetry import BrokerSettings, ErrorKind, PolicySet, PolicyUnset, _mqtt
from orchestrator.telemetry.fleet import FleetView, fetch_fleet, send_policy_command
from orchestrator.telemetry.messages import EventMsg, decode_event
from orchestrator.telemetry.topics import HostTopics
from tests.controller.conftest import GIB_KB
from tests.telemetry.conftest import PrivateBroker, eventually
from tests.telemetry.sim_controller import SimController, sim_controller

pytestmark = pytest.mark.mqtt

HOST = "ctl-a"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ctl-mqtt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Events:
    """Every event the host publishes, as an independent subscriber sees it."""

    def __init__(self) -> None:
        self.seen: list[EventMsg] = []

    def kinds(self, vm: str | None = None) -> list[str]:
        return [e.kind for e in self.seen if vm is None or e.vm == vm]


@contextlib.asynccontextmanager
async def listen_events(broker: BrokerSettings, topic: str) -> AsyncIterator[Events]:
    events = Events()
    client = _mqtt.make_client(broker, client_id=f"test-{secrets.token_hex(4)}", context=None)
    async with client:
        await client.subscribe(topic, qos=1)  # returns after the SUBACK

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                events.seen.append(decode_event(message.payload))

        task = asyncio.create_task(collect())
        try:
            yield events
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _fleet(broker: BrokerSettings, prefix: str) -> FleetView:
    collector = await fetch_fleet(broker, prefix, timeout_s=5)
    return collector.view(now=time.time())


def _cli_json(host: SimController, *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--db", str(host.db), "--host-name", HOST, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
async def host(
    workdir: Path, mqtt_broker: tuple[str, int], prefix: str
) -> AsyncIterator[SimController]:
    address, port = mqtt_broker
    async with sim_controller(workdir, host_name=HOST, mqtt=(address, port, prefix)) as running:
        telemetry = running.daemon.telemetry
        assert telemetry is not None
        await eventually(lambda: telemetry.stats.connected, what="telemetry connected")
        yield running


def _broker(mqtt_broker: tuple[str, int]) -> BrokerSettings:
    return BrokerSettings(host=mqtt_broker[0], port=mqtt_broker[1])


async def test_states_follow_the_controller_and_a_gone_vm_is_cleared(
    host: SimController, mqtt_broker: tuple[str, int], prefix: str
) -> None:
    broker = _broker(mqtt_broker)
    controller = host.daemon.controller

    async def matches_plan() -> bool:
        # Every VM's retained state is the controller's latest decision.
        plan = controller.last_plan
        view = await _fleet(broker, prefix)
        if plan is None or len(view.hosts) != 1:
            return False
        (row,) = view.hosts
        retained = {vm.name: vm.state for vm in row.vms}
        decided = {vm.name: vm for vm in plan.vms}
        return (
            row.condition == "online"
            and row.status is not None
            and getattr(row.status, "vms_managed", None) == len(decided)
            and set(retained) == set(decided)
            and all(
                state is not None
                and state.target_kb == decided[name].target_kb
                and state.demand_kb == decided[name].demand_kb
                and state.state == decided[name].state.value
                and state.reason == decided[name].reason.text
                for name, state in retained.items()
            )
        )

    await eventually(matches_plan, timeout_s=10, what="retained states equal to the plan")

    topics = HostTopics(prefix, HOST)
    async with listen_events(broker, topics.events) as events:
        await host.remove(6)
        await eventually(lambda: "domain_gone" in events.kinds("db"), what="domain_gone event")

        async def db_cleared() -> bool:
            (row,) = (await _fleet(broker, prefix)).hosts
            return [vm.name for vm in row.vms] == ["web"] and getattr(
                row.status, "vms_managed", None
            ) == 1

        await eventually(db_cleared, what="db's retained state cleared")
    assert controller.last_plan is not None
    assert [vm.name for vm in controller.last_plan.vms] == ["web"]


async def test_policy_commands_change_policy_get_replies_and_bad_ones_change_nothing(
    host: SimController, mqtt_broker: tuple[str, int], prefix: str
) -> None:
    broker = _broker(mqtt_broker)
    telemetry = host.daemon.telemetry
    assert telemetry is not None
    # Commands name VMs the store knows: wait until the first samples are written.
    await eventually(lambda: host.daemon.controller.last_plan is not None, what="a cycle")
    assert await asyncio.to_thread(host.daemon.writer.flush, 10)

    async def command(cmd: PolicySet | PolicyUnset) -> Any:
        return await send_policy_command(broker, prefix, HOST, cmd, client_name="ops@desk",
                                         timeout_s=5)

    topics = HostTopics(prefix, HOST)
    async with listen_events(broker, topics.events) as events:
        reply = await command(PolicySet("web", (("max_kb", GIB_KB),)))
        assert reply.ok, reply.error
        assert reply.policy == {"max_kb": GIB_KB} and reply.version == 1
        # The change is audited as coming over MQTT from the client it named ...
        shown = _cli_json(host, "policy", "show", "web")
        assert shown["version"] == 1
        assert [(c["source"], c["who"]) for c in shown["changes"]] == [("mqtt", "ops@desk")]
        # ... announced once ...
        await eventually(lambda: "policy_changed" in events.kinds("web"),
                         what="policy_changed event")
        # ... and applied by the running controller.
        await eventually(lambda: host.hv.actual_kb(5) <= GIB_KB, timeout_s=10,
                         what="web capped at 1 GiB")
        assert await host.target(5) <= GIB_KB
        assert events.kinds("web").count("policy_changed") == 1

    rejected_before = telemetry.stats.commands_rejected
    bad = [
        (PolicySet("nope", (("weight", 2),)), "not managed"),
        (PolicySet("db", (("min_kb", 8 * GIB_KB),)), "static-max"),  # above its 2 GiB
        (PolicySet("web", (("min_kb", 2 * GIB_KB),)), "max"),  # above its max of 1 GiB
        (PolicySet("web", (("weight", -3),)), "weight"),
        (PolicySet("web", (("colour", "red"),)), "colour"),
        (PolicySet("web", (("max_kb", "lots"),)), "lots"),
        (PolicyUnset("web", ("flavour",)), "flavour"),
    ]
    for cmd, words in bad:
        reply = await command(cmd)
        assert not reply.ok and reply.error_kind is ErrorKind.REJECTED, (cmd, reply)
        assert words in (reply.error or ""), (cmd, reply.error)
    # Malformed JSON, from an independent client: a bad_request reply. (In a
    # thread: the controller answering it runs on this event loop.)
    out = await asyncio.to_thread(
        subprocess.run,
        ["mosquitto_rr", "-h", mqtt_broker[0], "-p", str(mqtt_broker[1]),
         "-t", topics.policy_set, "-e", topics.reply("raw"), "-m", '{"vm": "web", "set": {',
         "-W", "5"],
        capture_output=True, text=True, check=False,
    )
    raw_reply = json.loads(out.stdout)
    assert raw_reply["ok"] is False and raw_reply["error"]["kind"] == "bad_request"
    assert telemetry.stats.commands_rejected == rejected_before + len(bad) + 1
    # Nothing changed: same version, same document, one audit entry.
    shown = _cli_json(host, "policy", "show", "web")
    assert shown["version"] == 1 and len(shown["changes"]) == 1

    reply = await command(PolicyUnset("web", ("max_kb",)))
    assert reply.ok and reply.policy == {} and reply.version == 2
    assert _cli_json(host, "policy", "show", "web")["version"] == 2


async def test_a_policy_change_from_the_cli_is_announced(
    host: SimController, mqtt_broker: tuple[str, int], prefix: str
) -> None:
    broker = _broker(mqtt_broker)
    await eventually(lambda: host.daemon.controller.last_plan is not None, what="a cycle")
    assert await asyncio.to_thread(host.daemon.writer.flush, 10)
    async with listen_events(broker, HostTopics(prefix, HOST).events) as events:
        result = CliRunner().invoke(app, ["policy", "set", "db", "--weight", "3", "--db",
                                          str(host.db), "--host-name", HOST])
        assert result.exit_code == 0, result.output
        # The controller reloads its policy every interval and notices the new version.
        await eventually(lambda: "policy_changed" in events.kinds("db"), timeout_s=5,
                         what="policy_changed for a CLI change")
        (event,) = [e for e in events.seen if e.kind == "policy_changed"]
        assert "version 1" in event.detail


async def test_control_goes_on_while_the_broker_is_away_and_state_is_republished(
    workdir: Path, private_broker: PrivateBroker
) -> None:
    prefix = "down"  # a private broker that keeps nothing: no prefix to share
    broker = BrokerSettings(host="127.0.0.1", port=private_broker.port)
    async with sim_controller(workdir, host_name=HOST,
                              mqtt=("127.0.0.1", private_broker.port, prefix)) as host:
        telemetry = host.daemon.telemetry
        controller = host.daemon.controller
        assert telemetry is not None
        await eventually(lambda: telemetry.stats.connected, what="connected")
        # The VMs are in the history once the first cycle's samples are written.
        await eventually(lambda: controller.last_plan is not None, what="a cycle")
        assert await asyncio.to_thread(host.daemon.writer.flush, 10)
        private_broker.stop()
        await eventually(lambda: not telemetry.stats.connected, what="disconnected")
        cycles = controller.cycles
        # While the broker is away an operator caps db locally; the controller obeys.
        result = await asyncio.to_thread(
            CliRunner().invoke, app,
            ["policy", "set", "db", "--max", "1G", "--db", str(host.db), "--host-name", HOST],
        )
        assert result.exit_code == 0, result.output
        await eventually(lambda: host.hv.actual_kb(6) <= GIB_KB, timeout_s=10,
                         what="db capped with the broker down")
        assert controller.cycles > cycles and not telemetry.stats.connected
        private_broker.start()  # empty: whatever it holds now was republished

        async def republished() -> bool:
            plan = controller.last_plan
            view = await _fleet(broker, prefix)
            if plan is None or len(view.hosts) != 1 or view.hosts[0].condition != "online":
                return False
            retained = {vm.name: vm.state.target_kb if vm.state else None
                        for vm in view.hosts[0].vms}
            return retained == {vm.name: vm.target_kb for vm in plan.vms}

        await eventually(republished, timeout_s=10, what="states republished after restart")
        assert telemetry.stats.connects >= 2
