"""What MQTT telemetry costs a large host: publish rate and added cycle time.

Two measurements, each against a baseline in the same run:

1. Publish throughput of one cycle's messages for 1,000 VMs (1,000 retained
   VM states + the host status) through :class:`Telemetry` (bounded queue,
   pipelined publishes), against one acknowledged publish at a time.
2. The controller cycle with telemetry off (the real ``decide()`` on a
   1,000-VM snapshot) against telemetry on: the same cycle plus building and
   enqueuing every VM state and the status, with the broker up and with the
   broker down (queue full, messages dropped). Besides the time inside the
   cycle, the CPU the event loop spends sending between cycles is reported.

Usage: .venv/bin/python bench/mqtt.py [--broker mqtt://127.0.0.1:1883] [--vms 1000]
       [--cycles 20]
Needs a broker (the test Mosquitto on 127.0.0.1:1883 will do). Leaves no
retained messages behind.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agents.schema import Report
from orchestrator.control import Plan, Policy, Snapshot, VmObservation, decide
from orchestrator.control.state import ControlState
from orchestrator.telemetry import (
    BrokerSettings,
    HostStatusMsg,
    Telemetry,
    TelemetrySettings,
    VmStateMsg,
    _mqtt,
    broker_from_url,
)
from orchestrator.telemetry.messages import encode_vm_state
from orchestrator.telemetry.topics import HostTopics

GIB_KB = 1 << 20


# ---- a 1,000-VM host ---------------------------------------------------------


def _report(i: int, cycle: int, total_kb: int) -> Report:
    # A tenth of the VMs change their working set each cycle, the rest hold.
    phase = cycle if i % 10 == cycle % 10 else 0
    committed = total_kb // 2 + (i * 7919 + phase * 104_729) % (total_kb // 4)
    return Report(
        seq=cycle,
        uptime_s=1000.0 + 5 * cycle,
        mem_total_kb=total_kb,
        mem_free_kb=total_kb // 5,
        mem_available_kb=total_kb - committed,
        cached_kb=total_kb // 6,
        committed_as_kb=committed,
        totalreserve_kb=20_000,
        anon_kb=committed // 2,
        swap_total_kb=GIB_KB,
        swap_free_kb=GIB_KB - (i % 5) * 1000,
        pswpin=cycle * (i % 3),
        pswpout=cycle * (i % 4),
        psi_some_avg10=2.0 if phase else 0.0,
        psi_full_avg10=0.0,
    )


def snapshots(vms: int, cycles: int) -> list[Snapshot]:
    """One snapshot per cycle, 5 s apart, every VM with a fresh report.

    Balloons are perfect: each snapshot's allocation is the previous plan's
    target, so the law sees its own decisions take effect.
    """
    targets = {i: 2 * GIB_KB for i in range(vms)}
    state = ControlState()
    out = []
    for cycle in range(cycles):
        observations = tuple(
            VmObservation(
                domid=i + 1,
                uuid=f"00000000-0000-0000-0000-{i:012d}",
                name=f"vm-{i:04d}",
                static_max_kb=4 * GIB_KB,
                actual_kb=targets[i],
                target_kb=targets[i],
                report=_report(i, cycle, targets[i]),
                report_age_s=1.0,
            )
            for i in range(vms)
        )
        snap = Snapshot(
            now_s=1000.0 + 5 * cycle,
            host_total_kb=vms * 3 * GIB_KB,
            host_free_kb=vms * GIB_KB // 2,
            vms=observations,
        )
        out.append(snap)
        plan = decide(snap, Policy(), state)
        state = plan.state
        targets = {vm.domid - 1: vm.target_kb for vm in plan.vms}
    return out


def status_of(plan: Plan, *, now: float) -> HostStatusMsg:
    return HostStatusMsg(
        version="bench",
        vms_managed=len(plan.vms),
        host_total_kb=plan.host.total_kb,
        host_free_kb=plan.host.free_kb,
        budget_kb=max(plan.host.budget_kb, 0),
        budget_used_kb=plan.host.sum_targets_kb,
        paused=plan.host.paused,
        interval_s=5.0,
        updated=now,
    )


class Publisher:
    """What the controller does with telemetry on, after deciding.

    Every VM's state is handed over every cycle (level-triggered); its
    ``updated`` moves only when the state changed, so Telemetry sends changes
    only. ``every_vm_changes`` forces the worst case: every state new.
    """

    def __init__(self, telemetry: Telemetry, *, every_vm_changes: bool) -> None:
        self.telemetry = telemetry
        self.every_vm_changes = every_vm_changes
        self.last: dict[str, tuple[tuple[object, ...], float]] = {}

    def publish(self, plan: Plan) -> None:
        now = time.time()
        self.telemetry.publish_status(status_of(plan, now=now))
        for vm in plan.vms:
            fields = (vm.target_kb, vm.actual_kb, vm.demand_kb, vm.state, vm.reason)
            known = self.last.get(vm.name)
            if known is None or known[0] != fields or self.every_vm_changes:
                known = (fields, now)
                self.last[vm.name] = known
            self.telemetry.publish_vm_state(
                vm.name,
                VmStateMsg(
                    target_kb=vm.target_kb,
                    actual_kb=vm.actual_kb,
                    demand_kb=vm.demand_kb,
                    state=vm.state.value,
                    reason=vm.reason.value,
                    updated=known[1],
                ),
            )


# ---- measurements --------------------------------------------------------------


async def _wait(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the broker")
        await asyncio.sleep(0.0005)


async def _wait_connected(telemetry: Telemetry) -> None:
    await _wait(lambda: telemetry.stats.connected)


async def _wait_published(telemetry: Telemetry, count: int) -> None:
    await _wait(lambda: telemetry.stats.published >= count)


def _settings(broker: BrokerSettings, prefix: str, qos: int) -> TelemetrySettings:
    return TelemetrySettings(
        host_name="bench-host", topic_prefix=prefix, broker=broker, qos=qos  # type: ignore[arg-type]
    )


async def throughput_telemetry(
    broker: BrokerSettings, prefix: str, plan: Plan, qos: int, rounds: int
) -> list[float]:
    """Seconds from the first enqueue until the broker took the whole cycle."""
    times = []
    async with Telemetry(_settings(broker, prefix, qos)) as telemetry:
        await _wait_connected(telemetry)
        for _ in range(rounds):
            target = telemetry.stats.published + len(plan.vms) + 1
            start = time.perf_counter()
            Publisher(telemetry, every_vm_changes=True).publish(plan)
            await _wait_published(telemetry, target)
            times.append(time.perf_counter() - start)
        assert telemetry.stats.dropped == 0
    return times


async def throughput_one_at_a_time(
    broker: BrokerSettings, prefix: str, plan: Plan, rounds: int
) -> list[float]:
    """Baseline: the same messages, each publish awaited before the next (QoS 1)."""
    topics = HostTopics(prefix, "bench-baseline")
    now = time.time()
    messages = [(topics.status, b'{"v":1}')] + [
        (
            topics.vm_state(vm.name),
            encode_vm_state(
                VmStateMsg(
                    target_kb=vm.target_kb, actual_kb=vm.actual_kb, demand_kb=vm.demand_kb,
                    state=vm.state.value, reason=vm.reason.value, updated=now,
                )
            ),
        )
        for vm in plan.vms
    ]
    times = []
    async with _mqtt.make_client(broker, client_id=f"bench-{secrets.token_hex(4)}",
                                 context=None) as client:
        for _ in range(rounds):
            start = time.perf_counter()
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1, retain=True)
            times.append(time.perf_counter() - start)
    return times


@dataclass
class CycleFigures:
    """Medians are taken over these per-cycle lists (seconds)."""

    decide_cpu: list[float] = field(default_factory=list)
    """This thread's CPU in decide()."""
    telemetry_cpu: list[float] = field(default_factory=list)
    """This thread's CPU in the telemetry calls: building messages, enqueuing."""
    total_cpu: list[float] = field(default_factory=list)
    """Process CPU from one cycle's start to the next, the event loop's sending included."""
    sent: int = 0


async def cycle_times(
    snaps: Sequence[Snapshot],
    publisher: Publisher | None,
    *,
    drain: bool,
    steady: Plan | None = None,
) -> CycleFigures:
    """Run one controller cycle per snapshot and time its parts.

    CPU times (``thread_time``) are immune to other load on the machine.
    With ``steady``, that plan is published every cycle instead of the new
    one: the VMs' states repeat unchanged, only the status is new.
    """
    policy = Policy()
    state = ControlState()
    out = CycleFigures()
    telemetry = publisher.telemetry if publisher is not None else None
    sent_before = telemetry.stats.published if telemetry is not None else 0
    for snap in snaps:
        cpu_start = time.process_time()
        start = time.thread_time()
        plan = decide(snap, policy, state)
        state = plan.state
        decided = time.thread_time()
        if publisher is not None:
            publisher.publish(steady or plan)
        out.decide_cpu.append(decided - start)
        out.telemetry_cpu.append(time.thread_time() - decided)
        if telemetry is not None and drain:
            await _wait(lambda: telemetry.stats.queued == 0)
        await asyncio.sleep(0.005)  # let the last acknowledgements arrive
        out.total_cpu.append(time.process_time() - cpu_start)
    if telemetry is not None:
        out.sent = telemetry.stats.published - sent_before
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def clear(broker: BrokerSettings, prefix: str, plan: Plan) -> None:
    """Remove every retained message the benchmark left."""
    async with _mqtt.make_client(broker, client_id=f"bench-{secrets.token_hex(4)}",
                                 context=None) as client:
        for host in ("bench-host", "bench-baseline"):
            topics = HostTopics(prefix, host)
            await client.publish(topics.status, b"", qos=1, retain=True)
            for vm in plan.vms:
                await client.publish(topics.vm_state(vm.name), b"", qos=1, retain=True)


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args(argv)
    broker = broker_from_url(args.broker)
    prefix = f"ballast-bench-{secrets.token_hex(4)}"
    snaps = snapshots(args.vms, args.cycles + 3)
    first = decide(snaps[0], Policy(), ControlState())
    messages = args.vms + 1

    try:
        # 1. throughput
        base = await throughput_one_at_a_time(broker, prefix, first, max(3, args.cycles // 4))
        q1 = await throughput_telemetry(broker, prefix, first, 1, args.cycles)
        q0 = await throughput_telemetry(broker, prefix, first, 0, args.cycles)
        print(f"Publish throughput: one cycle = {messages} messages "
              f"({args.vms} VM states + status), broker {broker.url}, median of runs")
        print(f"{'method':44} {'qos':>3} {'msgs/s':>10} {'cycle ms':>9} {'vs baseline':>12}")
        base_s = statistics.median(base)
        for label, qos, runs in [
            ("one acknowledged publish at a time", 1, base),
            ("Telemetry: queued, pipelined", 1, q1),
            ("Telemetry: queued, pipelined", 0, q0),
        ]:
            median_s = statistics.median(runs)
            print(f"{label:44} {qos:>3} {messages / median_s:>10,.0f} {median_s * 1e3:>9.1f} "
                  f"{base_s / median_s:>11.2f}x")

        # 2. cycle time
        print()
        print(f"Controller cycle, {args.vms} VMs: decide() plus telemetry calls, "
              f"{args.cycles} cycles after 3 warm-up cycles")
        warm, timed = snaps[:3], snaps[3:]
        await cycle_times(warm, None, drain=False)
        rows: list[tuple[str, CycleFigures, int]] = [
            ("telemetry off", await cycle_times(timed, None, drain=False), 0)
        ]
        for label, steady in [
            ("on, broker up, every VM changed", None),
            ("on, broker up, steady (status only)", first),
        ]:
            async with Telemetry(_settings(broker, prefix, 1)) as telemetry:
                await _wait_connected(telemetry)
                publisher = Publisher(telemetry, every_vm_changes=False)
                await cycle_times(warm, publisher, drain=True, steady=steady)
                figures = await cycle_times(timed, publisher, drain=True, steady=steady)
                rows.append((label, figures, telemetry.stats.dropped))
        down_broker = BrokerSettings(host="127.0.0.1", port=_free_port())
        down_settings = TelemetrySettings(
            host_name="bench-host", topic_prefix=prefix, broker=down_broker, queue_size=2000,
            reconnect_min_s=0.05, reconnect_max_s=0.5, shutdown_timeout_s=0.5,
        )
        async with Telemetry(down_settings) as telemetry:
            publisher = Publisher(telemetry, every_vm_changes=False)
            await cycle_times(warm, publisher, drain=False)
            figures = await cycle_times(timed, publisher, drain=False)
            rows.append(("on, broker down, every VM changed", figures, telemetry.stats.dropped))

        print(f"{'variant':36} {'decide':>7} {'telemetry':>9} {'cycle':>7} {'ratio':>6} "
              f"{'sending':>8} {'sent/cycle':>10} {'dropped':>8}")
        for label, fig, dropped in rows:
            decide_ms = statistics.median(fig.decide_cpu) * 1e3
            tele_ms = statistics.median(fig.telemetry_cpu) * 1e3
            in_cycle = [d + t for d, t in zip(fig.decide_cpu, fig.telemetry_cpu, strict=True)]
            sending = [
                max(total - inside, 0.0)
                for total, inside in zip(fig.total_cpu, in_cycle, strict=True)
            ]
            cycle_ms = statistics.median(in_cycle) * 1e3
            # Within the row: other load on the machine moves decide() between
            # rows more than telemetry costs, so compare with this row's decide.
            ratio = statistics.median(
                [(d + t) / d for d, t in zip(fig.decide_cpu, fig.telemetry_cpu, strict=True)]
            )
            print(f"{label:36} {decide_ms:>7.2f} {tele_ms:>9.2f} {cycle_ms:>7.2f} "
                  f"{ratio:>5.2f}x {statistics.median(sending) * 1e3:>8.2f} "
                  f"{fig.sent / len(timed):>10.0f} {dropped:>8}")
        print("(CPU ms per cycle, medians. decide: the control law; telemetry: building and "
              "enqueuing the status and every VM state, inside the cycle;")
        print(" cycle: both; ratio: cycle / decide in the same cycles; sending: the event loop's "
              "CPU between cycles publishing what was enqueued)")
    finally:
        await clear(broker, prefix, first)


if __name__ == "__main__":
    asyncio.run(main())
