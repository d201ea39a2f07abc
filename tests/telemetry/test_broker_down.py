"""The broker goes away and comes back: control goes on, state is republished.

Runs its own Mosquitto on a free port (no persistence: whatever the restarted
broker holds was republished by Ballast).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.telemetry import (
    BrokerSettings,
    EventMsg,
    HostStatusMsg,
    Telemetry,
    TelemetrySettings,
    VmStateMsg,
)
from orchestrator.telemetry.commands import PolicySet
from orchestrator.telemetry.fleet import fetch_fleet, send_policy_command
from tests.telemetry.conftest import PrivateBroker, eventually
from tests.telemetry.test_telemetry_broker import PolicyHost

pytestmark = pytest.mark.mqtt

VMS = 20
QUEUE = 50


def _status(cycle: int) -> HostStatusMsg:
    return HostStatusMsg(
        version="0.1.0", vms_managed=VMS, host_total_kb=64 << 20, host_free_kb=cycle,
        budget_kb=56 << 20, budget_used_kb=VMS << 20, paused=False, interval_s=5.0,
        updated=time.time(),
    )


def _state(target_kb: int) -> VmStateMsg:
    return VmStateMsg(
        target_kb=target_kb, actual_kb=target_kb, demand_kb=target_kb, state="ok", reason="",
        updated=time.time(),
    )


class FakeController:
    """The controller's side of the contract: every cycle, status + every VM + an event."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.cycles = 0
        self.worst_cycle_s = 0.0
        self.vms = {f"vm-{i}": 1 << 20 for i in range(VMS)}

    def cycle(self) -> None:
        start = time.perf_counter()
        self.cycles += 1
        self.telemetry.publish_status(_status(self.cycles))
        for name, target in self.vms.items():
            self.telemetry.publish_vm_state(name, _state(target))
        self.telemetry.publish_event(EventMsg(kind="tick", at=time.time()))
        self.worst_cycle_s = max(self.worst_cycle_s, time.perf_counter() - start)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.cycle()
            await asyncio.sleep(0.05)


async def test_broker_down_and_back(private_broker: PrivateBroker, prefix: str) -> None:
    broker = BrokerSettings(port=private_broker.port, keepalive_s=5)
    settings = TelemetrySettings(
        host_name="h-down", topic_prefix=prefix, broker=broker, queue_size=QUEUE,
        reconnect_min_s=0.05, reconnect_max_s=0.2,
    )
    model = PolicyHost(static_max_kb={"vm-0": 4 << 20})
    async with Telemetry(settings, apply=model.apply) as telemetry:
        controller = FakeController(telemetry)
        controller.cycle()
        await eventually(lambda: telemetry.stats.published >= VMS + 2, what="first cycle out")
        assert telemetry.stats.dropped == 0

        private_broker.stop()
        await eventually(lambda: not telemetry.stats.connected, what="disconnect noticed")

        # Broker down: the controller keeps its pace, publishing never waits,
        # the queue fills and the rest is counted as dropped.
        stop = asyncio.Event()
        loop_task = asyncio.create_task(controller.run(stop), name="fake-controller")
        await asyncio.sleep(0.5)
        dropped_before = telemetry.stats.dropped
        start = time.perf_counter()
        for i in range(1000):
            telemetry.publish_vm_state("vm-0", _state(i))
        burst_s = time.perf_counter() - start
        assert burst_s < 0.5, f"1000 publishes took {burst_s:.3f} s with the broker down"
        assert telemetry.stats.dropped == dropped_before + 1000
        assert telemetry.stats.queued == QUEUE
        stop.set()
        await loop_task
        assert controller.cycles >= 5
        assert controller.worst_cycle_s < 0.05

        # The state changes while the broker is away: new targets, a VM leaves.
        controller.vms = {name: 2 << 20 for name in controller.vms}
        del controller.vms["vm-7"]
        controller.cycle()
        telemetry.clear_vm("vm-7")

        private_broker.start()
        await eventually(lambda: telemetry.stats.connected, timeout_s=10, what="reconnect")
        await eventually(lambda: telemetry.stats.queued == 0, what="queue drained")
        stats = telemetry.stats
        assert stats.connects == 2 and stats.republished >= VMS

        # Subscribed again: a command to the restarted broker is answered.
        reply = await send_policy_command(
            broker, prefix, "h-down", PolicySet("vm-0", (("weight", 5),)), client_name="ops",
            timeout_s=5,
        )
        assert reply.ok and model.policy.vm("uuid-vm-0").weight == 5

        collector = await fetch_fleet(broker, prefix, timeout_s=5)
        (host,) = collector.view(now=time.time()).hosts
        assert host.condition == "online"
        assert {vm.name: vm.state.target_kb for vm in host.vms if vm.state} == {
            name: 2 << 20 for name in controller.vms
        }
