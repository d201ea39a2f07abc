"""Prometheus metrics of one host: ``ballast run --metrics-port N`` serves ``/metrics``.

The only Ballast module that imports prometheus-client. :class:`MetricsExporter`
is a cycle sink that keeps a reference to the last cycle's result (and
counts what must be counted across cycles); the figures are rendered when
Prometheus scrapes, in the HTTP server's thread, so the control loop pays
next to nothing. Per-VM series come from the last plan only: a VM that went
away disappears from the next scrape, and a VM's domid (which changes on
every reboot or migration) sits in an info series, not on every series.

Units follow Prometheus conventions: bytes (Ballast's KiB times 1024),
seconds, ratios (PSI percentages divided by 100). docs/metrics.md lists
every series.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.controller.loop import CycleResult
from orchestrator.errors import UsageError
from orchestrator.store.writer import WriterStats
from orchestrator.telemetry import TelemetryStats

KIB: Final = 1024
# Cycle durations run from about a millisecond (a few VMs) to seconds
# (thousands of VMs on a slow xenstored); the control interval is 5 s by default.
CYCLE_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_VM_LABELS: Final = ("vm", "uuid")


class ControllerCounters(Protocol):
    """What the exporter reads from the controller at scrape time."""

    @property
    def failed_cycles(self) -> int: ...


class WriterStatsSource(Protocol):
    """The history writer's counters (``StoreWriter.stats``)."""

    def stats(self) -> WriterStats: ...


class TelemetryStatsSource(Protocol):
    """The MQTT publisher's counters (``Telemetry.stats``)."""

    @property
    def stats(self) -> TelemetryStats: ...


@dataclass(frozen=True, slots=True)
class _Totals:
    cycles: int = 0
    write_errors: int = 0


class MetricsExporter:
    """A cycle sink and a Prometheus collector for one controller."""

    def __init__(
        self,
        *,
        controller: ControllerCounters | None = None,
        writer: WriterStatsSource | None = None,
        telemetry: TelemetryStatsSource | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._controller = controller
        self._writer = writer
        self._telemetry = telemetry
        self._last: CycleResult | None = None
        self._totals = _Totals()
        self._cycle_s = Histogram(
            "ballast_cycle_duration_seconds",
            "Wall time of one successful controller cycle (observe, decide, apply).",
            buckets=CYCLE_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def attach(
        self,
        *,
        controller: ControllerCounters | None = None,
        telemetry: TelemetryStatsSource | None = None,
    ) -> None:
        """Read these counters too from the next scrape on."""
        if controller is not None:
            self._controller = controller
        if telemetry is not None:
            self._telemetry = telemetry

    def cycle(self, result: CycleResult) -> None:
        # One reference and two additions: everything else happens at scrape time.
        self._cycle_s.observe(result.duration_s)
        totals = self._totals
        self._totals = _Totals(
            cycles=totals.cycles + 1,
            write_errors=totals.write_errors + len(result.applied.errors),
        )
        self._last = result

    def render(self) -> bytes:
        """The text exposition format, as ``/metrics`` serves it."""
        return generate_latest(self.registry)

    # -------------------------------------------------------------- collect

    def collect(self) -> Iterator[Metric]:
        """Every series but the histogram, from the last cycle and the counters."""
        totals = self._totals
        cycles = CounterMetricFamily(
            "ballast_cycles", "Controller cycles that observed the fleet and ran the law."
        )
        cycles.add_metric([], totals.cycles)
        yield cycles
        errors = CounterMetricFamily(
            "ballast_xenstore_write_errors",
            "xenstore writes (targets, directives, flags) that failed; retried next cycle.",
        )
        errors.add_metric([], totals.write_errors)
        yield errors
        if self._controller is not None:
            failed = CounterMetricFamily(
                "ballast_cycles_failed",
                "Cycles skipped because xenstore or the hypervisor could not be read.",
            )
            failed.add_metric([], self._controller.failed_cycles)
            yield failed
        result = self._last
        if result is not None:
            yield from _host_metrics(result)
            yield from _vm_metrics(result)
        if self._writer is not None:
            yield from _writer_metrics(self._writer.stats())
        if self._telemetry is not None:
            yield from _mqtt_metrics(self._telemetry.stats)


class _Collector(Collector):
    def __init__(self, exporter: MetricsExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterable[Metric]:
        return self._exporter.collect()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _host_metrics(result: CycleResult) -> Iterator[Metric]:
    host = result.plan.host
    yield _gauge("ballast_host_memory_bytes", "Host memory.", host.total_kb * KIB)
    yield _gauge("ballast_host_free_bytes", "Host memory not given to any domain.",
                 host.free_kb * KIB)
    yield _gauge("ballast_host_budget_bytes",
                 "What the guests may hold: free + their allocations - dom0 reserve - margin.",
                 max(host.budget_kb, 0) * KIB)
    yield _gauge("ballast_host_budget_used_bytes", "Sum of every VM's target.",
                 host.sum_targets_kb * KIB)
    yield _gauge("ballast_host_wanted_bytes", "Sum of what the VMs wanted before arbitration.",
                 host.sum_wanted_kb * KIB)
    yield _gauge("ballast_host_short", "1 when the VMs want more than the budget.",
                 int(host.short))
    yield _gauge("ballast_host_overcommitted", "1 when even the minimums do not fit.",
                 int(host.overcommitted))
    yield _gauge("ballast_paused", "1 while control is paused (no target is written).",
                 int(host.paused))
    yield _gauge("ballast_vms_managed", "VMs in the last plan.", len(result.plan.vms))
    yield _gauge("ballast_last_cycle_timestamp_seconds",
                 "When the last successful cycle observed the fleet (Unix time).",
                 result.wall_time.timestamp())


def _vm_metrics(result: CycleResult) -> Iterator[Metric]:
    info = GaugeMetricFamily("ballast_vm_info", "A managed VM; domid changes on reboot.",
                             labels=[*_VM_LABELS, "domid"])
    state = GaugeMetricFamily("ballast_vm_state", "1 for the VM's current state.",
                              labels=[*_VM_LABELS, "state"])
    target = GaugeMetricFamily("ballast_vm_target_bytes", "Balloon target (memory/target).",
                               labels=_VM_LABELS)
    actual = GaugeMetricFamily("ballast_vm_actual_bytes", "Memory the domain holds.",
                               labels=_VM_LABELS)
    demand = GaugeMetricFamily("ballast_vm_demand_bytes",
                               "Estimated demand before pacing (absent without a report).",
                               labels=_VM_LABELS)
    available = GaugeMetricFamily("ballast_vm_available_bytes",
                                  "MemAvailable the guest reported.", labels=_VM_LABELS)
    swap = GaugeMetricFamily("ballast_vm_swap_used_bytes", "Swap in use the guest reported.",
                             labels=_VM_LABELS)
    psi_some = GaugeMetricFamily("ballast_vm_memory_pressure_some_ratio",
                                 "PSI memory some avg10 the guest reported, 0-1.",
                                 labels=_VM_LABELS)
    psi_full = GaugeMetricFamily("ballast_vm_memory_pressure_full_ratio",
                                 "PSI memory full avg10 the guest reported, 0-1.",
                                 labels=_VM_LABELS)
    stalled = CounterMetricFamily("ballast_vm_memory_pressure_some_seconds",
                                  "PSI memory some total the guest reported (resets on reboot).",
                                  labels=_VM_LABELS)
    age = GaugeMetricFamily("ballast_vm_report_age_seconds", "Age of the last valid report.",
                            labels=_VM_LABELS)
    observations = {obs.domid: obs for obs in result.snapshot.vms}
    for vm in result.plan.vms:
        labels = [vm.name, vm.uuid]
        info.add_metric([*labels, str(vm.domid)], 1)
        state.add_metric([*labels, vm.state.value], 1)
        target.add_metric(labels, vm.target_kb * KIB)
        obs = observations.get(vm.domid)
        actual.add_metric(labels, (obs.actual_kb if obs is not None else vm.actual_kb) * KIB)
        if vm.demand_kb is not None:
            demand.add_metric(labels, vm.demand_kb * KIB)
        report = obs.report if obs is not None else None
        if obs is not None and obs.report_age_s is not None:
            age.add_metric(labels, obs.report_age_s)
        if report is None:
            continue
        available.add_metric(labels, report.mem_available_kb * KIB)
        swap.add_metric(labels, report.swap_used_kb * KIB)
        if report.psi_some_avg10 is not None:
            psi_some.add_metric(labels, report.psi_some_avg10 / 100)
        if report.psi_full_avg10 is not None:
            psi_full.add_metric(labels, report.psi_full_avg10 / 100)
        if report.psi_some_total_us is not None:
            stalled.add_metric(labels, report.psi_some_total_us / 1e6)
    yield from (info, state, target, actual, demand, available, swap, psi_some, psi_full,
                stalled, age)


def _writer_metrics(stats: WriterStats) -> Iterator[Metric]:
    dropped = CounterMetricFamily(
        "ballast_store_samples_dropped",
        "Samples dropped because the history database lagged or was unavailable.",
    )
    dropped.add_metric([], stats.samples_dropped)
    yield dropped
    failures = CounterMetricFamily("ballast_store_batch_failures",
                                   "History batches that failed and were retried.")
    failures.add_metric([], stats.failures)
    yield failures
    yield _gauge("ballast_store_samples_queued", "Samples waiting for the history database.",
                 stats.queued_samples)
    yield _gauge("ballast_store_records_queued",
                 "Decisions and events waiting for the history database.", stats.queued_durable)


def _mqtt_metrics(stats: TelemetryStats) -> Iterator[Metric]:
    yield _gauge("ballast_mqtt_connected", "1 while connected to the broker.",
                 int(stats.connected))
    yield _gauge("ballast_mqtt_queued", "Messages waiting to be sent.", stats.queued)
    for name, doc, value in (
        ("ballast_mqtt_published", "Messages the broker accepted.", stats.published),
        ("ballast_mqtt_dropped", "Messages given up: queue full or connection lost.",
         stats.dropped),
        ("ballast_mqtt_republished", "Retained values sent again after a reconnect or drop.",
         stats.republished),
        ("ballast_mqtt_connects", "Successful broker connections.", stats.connects),
        ("ballast_mqtt_commands", "Policy commands received.", stats.commands),
        ("ballast_mqtt_commands_rejected", "Policy commands answered with an error.",
         stats.commands_rejected),
    ):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], value)
        yield counter


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running ``/metrics`` endpoint."""

    bind: str
    port: int
    """The port it listens on (the one asked for, or the one picked for port 0)."""

    @property
    def url(self) -> str:
        """Where to scrape it."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"


@contextmanager
def serve_metrics(exporter: MetricsExporter, *, bind: str, port: int) -> Iterator[MetricsServer]:
    """Serve ``exporter`` over HTTP from a daemon thread until the block ends."""
    try:
        httpd, thread = start_http_server(port, addr=bind, registry=exporter.registry)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") from None
    try:
        yield MetricsServer(bind=bind, port=int(httpd.server_port))
    finally:
        # shutdown() waits for serve_forever to return; do not block the event
        # loop's thread for long if a scrape is in flight.
        stopper = threading.Thread(target=httpd.shutdown, name="ballast-metrics-stop")
        stopper.start()
        stopper.join(timeout=2.0)
        httpd.server_close()
        thread.join(timeout=2.0)
