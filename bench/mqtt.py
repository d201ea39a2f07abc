"""What MQTT telemetry costs a large host: publish rate and added cycle time.

Two measurements, each against a baseline in the same run:

1. Publish throughput of one cycle's messages for 1,000 VMs (1,000 retained
   VM states + the host status) through :class:`Telemetry` (bounded queue,
   pipelined publishes), against one acknowledged publish at a time.
2. The real controller cycle (``Controller.run_cycle()``: observe 1,000
   domains over the project's xenstore server and the simulated hypervisor,
   decide, apply, feed the sinks) with telemetry off, against the same cycle
   with the real ``TelemetrySink`` and ``Telemetry`` on, with the broker up
   and with the broker down (queue full, messages dropped). Every guest
   writes a report each interval; a tenth change their working set. Besides
   the time inside the cycle, the CPU spent sending after it is reported.

Usage: .venv/bin/python bench/mqtt.py [--broker mqtt://127.0.0.1:1883] [--vms 1000]
       [--cycles 20]
Needs a broker (the test Mosquitto on 127.0.0.1:1883 will do). Leaves no
retained messages behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents.schema import Report, encode_report
from orchestrator.control import Plan, Policy, Snapshot, VmObservation, decide
from orchestrator.control.state import ControlState
from orchestrator.controller.loop import Controller, CycleResult, CycleSink, StaticPolicy
from orchestrator.controller.telemetry_sink import TelemetrySink
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
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
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.server import XenstoreServer

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


# ---- the real controller cycle -------------------------------------------------


class ManualClock:
    """The controller's clock: each cycle is one control interval later."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class TimedSink:
    """Feeds the telemetry sink and times it, inside the cycle."""

    def __init__(self, sink: CycleSink) -> None:
        self.sink = sink
        self.cpu_s: list[float] = []

    def cycle(self, result: CycleResult) -> None:
        start = time.thread_time()
        self.sink.cycle(result)
        self.cpu_s.append(time.thread_time() - start)


@dataclass
class HostFigures:
    """Per timed cycle (seconds), and what telemetry did."""

    wall_s: list[float] = field(default_factory=list)
    """run_cycle() wall time: observe over xenstore, decide, apply, sinks."""
    cpu_s: list[float] = field(default_factory=list)
    """Process CPU inside run_cycle() (the xenstore server runs in this process too)."""
    sink_cpu_s: list[float] = field(default_factory=list)
    """CPU of the telemetry sink inside the cycle."""
    sending_cpu_s: list[float] = field(default_factory=list)
    """Process CPU after the cycle until the queue is sent (broker up) or 20 ms."""
    sent: int = 0
    dropped: int = 0


async def _simulated_host(directory: Path, vms: int) -> tuple[
    XenstoreServer, PyxsClient, SimulatedHypervisor
]:
    server = XenstoreServer(directory)
    await server.__aenter__()
    xs = PyxsClient(socket_path=server.privileged_socket)
    await xs.connect()
    hv = SimulatedHypervisor(total_kb=vms * 5 * GIB_KB, dom0_kb=4 * GIB_KB)
    for start in range(0, vms, 100):
        batch = range(start + 1, min(start + 100, vms) + 1)
        for domid in batch:
            await server.introduce(domid)
        await asyncio.gather(*(
            lay_out_domain(xs, domid=domid, name=f"vm-{domid:04d}", uuid=_uuid(domid),
                           static_max_kb=4 * GIB_KB, target_kb=2 * GIB_KB)
            for domid in batch
        ))
        for domid in batch:
            hv.add_domain(domid=domid, name=f"vm-{domid:04d}", uuid=_uuid(domid),
                          actual_kb=2 * GIB_KB, max_kb=4 * GIB_KB)
    return server, xs, hv


def _uuid(domid: int) -> str:
    return f"00000000-0000-4000-8000-{domid:012d}"


def _guest_report(domid: int, cycle: int, actual_kb: int) -> Report:
    """What a guest with ``actual_kb`` reports: 1-1.5 GiB committed, a tenth moving."""
    phase = cycle if domid % 10 == cycle % 10 else 0
    committed = GIB_KB + (domid * 7919 + phase * 104_729) % (GIB_KB // 2)
    available = max(actual_kb - committed, 0)
    return Report(
        seq=cycle,
        uptime_s=1000.0 + 5 * cycle,
        mem_total_kb=actual_kb,
        mem_free_kb=available // 2,
        mem_available_kb=available,
        cached_kb=available // 2,
        committed_as_kb=committed,
        totalreserve_kb=20_000,
        anon_kb=committed // 2,
        swap_total_kb=GIB_KB,
        swap_free_kb=GIB_KB,
        pswpin=0,
        pswpout=0,
        psi_some_avg10=2.0 if phase else 0.0,
        psi_full_avg10=0.0,
    )


async def _write_reports(xs: PyxsClient, hv: SimulatedHypervisor, vms: int, cycle: int) -> None:
    """Every guest reports (as agents do each interval); a tenth changed working set."""
    async def one(domid: int) -> None:
        report = _guest_report(domid, cycle, hv.actual_kb(domid))
        await xs.write(f"/local/domain/{domid}/data/ballast/report", encode_report(report))

    for start in range(1, vms + 1, 200):
        await asyncio.gather(*(one(d) for d in range(start, min(start + 200, vms + 1))))


async def controller_cycles(
    vms: int,
    cycles: int,
    *,
    warmup: int,
    telemetry_settings: TelemetrySettings | None,
    drain: bool,
) -> HostFigures:
    """The real Controller on the project's xenstore server, one interval per cycle."""
    figures = HostFigures()
    directory = Path(tempfile.mkdtemp(prefix="bench-mqtt-", dir="/tmp"))
    server, xs, hv = await _simulated_host(directory, vms)
    clock = ManualClock()
    stack = contextlib.AsyncExitStack()
    try:
        telemetry = None
        timed = None
        if telemetry_settings is not None:
            telemetry = await stack.enter_async_context(Telemetry(telemetry_settings))
            if drain:
                await _wait_connected(telemetry)
            timed = TimedSink(TelemetrySink(telemetry))
        controller = Controller(xs=xs, hypervisor=hv, policy=StaticPolicy(),
                                sinks=[timed] if timed is not None else [], clock=clock)
        sent_before = 0
        for cycle in range(warmup + cycles):
            await _write_reports(xs, hv, vms, cycle)
            await asyncio.sleep(0.02)  # the controller's watches see the reports
            if cycle == warmup and telemetry is not None:
                sent_before = telemetry.stats.published
            wall, cpu = time.perf_counter(), time.process_time()
            result = await controller.run_cycle()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert result is not None, "a cycle failed"
            sending = time.process_time()
            if telemetry is not None and drain:
                await _wait(lambda t=telemetry: t.stats.queued == 0)  # type: ignore[misc]
                await asyncio.sleep(0.005)  # the last acknowledgements
            else:
                await asyncio.sleep(0.02)
            sending = time.process_time() - sending
            for domid, target_kb in result.applied.targets_written.items():
                hv.set_target(domid, target_kb)
            hv.advance(5.0)
            clock.now_s += 5.0  # one control interval
            if cycle >= warmup:
                figures.wall_s.append(wall)
                figures.cpu_s.append(cpu)
                figures.sending_cpu_s.append(sending)
                figures.sink_cpu_s.append(timed.cpu_s[-1] if timed is not None else 0.0)
        if telemetry is not None:
            figures.sent = telemetry.stats.published - sent_before
            figures.dropped = telemetry.stats.dropped
    finally:
        await stack.aclose()
        await xs.close()
        await server.__aexit__(None, None, None)
        shutil.rmtree(directory, ignore_errors=True)
    return figures



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def clear(broker: BrokerSettings, prefix: str) -> None:
    """Remove every retained message the benchmark left below its own prefix."""
    async with _mqtt.make_client(broker, client_id=f"bench-{secrets.token_hex(4)}",
                                 context=None) as client:
        await client.subscribe(f"{prefix}/#", qos=1)
        topics: set[str] = set()
        # Retained messages arrive right after the SUBACK; a quiet second ends them.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0) as deadline:
                async for message in client.messages:
                    if message.retain and message.payload:
                        topics.add(message.topic.value)
                    deadline.reschedule(asyncio.get_running_loop().time() + 1.0)
        for topic in sorted(topics):
            await client.publish(topic, b"", qos=1, retain=True)


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

        # 2. the real controller cycle
        print()
        print(f"Real controller cycle, {args.vms} VMs on the project's xenstore server and the "
              f"simulated hypervisor: every guest reports each interval, a tenth change;")
        print(f"{args.cycles} cycles after 3 warm-up cycles, a fresh host per variant")
        down = BrokerSettings(host="127.0.0.1", port=_free_port())
        variants: list[tuple[str, TelemetrySettings | None, bool]] = [
            ("telemetry off", None, False),
            ("telemetry on, broker up", _settings(broker, prefix, 1), True),
            ("telemetry on, broker down",
             TelemetrySettings(host_name="bench-host", topic_prefix=prefix, broker=down,
                               queue_size=2000, reconnect_min_s=0.05, reconnect_max_s=0.5,
                               shutdown_timeout_s=0.5), False),
        ]
        rows = []
        for label, settings, drain in variants:
            rows.append((label, await controller_cycles(
                args.vms, args.cycles, warmup=3, telemetry_settings=settings, drain=drain)))
        base_wall = statistics.median(rows[0][1].wall_s)
        base_cpu = statistics.median(rows[0][1].cpu_s)
        print(f"{'variant':28} {'wall ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6} "
              f"{'sink ms':>8} {'sink/cpu':>8} {'sending':>8} {'msgs/cycle':>10} {'dropped':>8}")
        for label, fig in rows:
            wall = statistics.median(fig.wall_s)
            cpu = statistics.median(fig.cpu_s)
            sink = statistics.median(fig.sink_cpu_s)
            share = statistics.median(
                [s / c for s, c in zip(fig.sink_cpu_s, fig.cpu_s, strict=True)]
            )
            print(f"{label:28} {wall * 1e3:>8.1f} {wall / base_wall:>5.2f}x {cpu * 1e3:>7.1f} "
                  f"{cpu / base_cpu:>5.2f}x {sink * 1e3:>8.2f} {share:>7.1%} "
                  f"{statistics.median(fig.sending_cpu_s) * 1e3:>8.2f} "
                  f"{fig.sent / args.cycles:>10.0f} {fig.dropped:>8}")
        print("(medians. wall/cpu: run_cycle() — observe over xenstore, decide, apply, sinks; "
              "ratio: against telemetry off;")
        print(" sink: the telemetry sink's CPU inside the cycle, and its share of the cycle's CPU "
              "in the same cycles;")
        print(" sending: process CPU after the cycle while the queue is sent; msgs/cycle: "
              "publishes the broker acknowledged)")
    finally:
        await clear(broker, prefix)


if __name__ == "__main__":
    asyncio.run(main())
