"""Prometheus metrics: scraped over HTTP from the real daemon on a simulated host."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.controller.actuate import ApplyResult
from orchestrator.controller.loop import Controller, CycleResult, StaticPolicy
from orchestrator.controller.metrics import MetricsExporter, serve_metrics
from orchestrator.controller.record import sample_of
from orchestrator.store.store import open_store
from orchestrator.store.writer import StoreWriter, WriterConfig
from orchestrator.xenstore.errors import XenstoreError
from orchestrator.xenstore.server import XenstoreServer
from tests.controller.conftest import GIB_KB, SimHost
from tests.telemetry.conftest import PrivateBroker, eventually, free_port
from tests.telemetry.sim_controller import sim_controller, upgrade_db

KIB = 1024
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ctl-metrics-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_broker(mqtt_broker: tuple[str, int]) -> Iterator[PrivateBroker]:
    """A Mosquitto of this test's own, to stop mid-test."""
    broker = PrivateBroker()
    broker.start()
    try:
        yield broker
    finally:
        if broker.proc is not None:
            broker.stop()


async def scrape(port: int) -> Samples:
    """GET /metrics and parse it with prometheus-client's own parser."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def vm_series(samples: Samples, name: str) -> dict[str, float]:
    """One per-VM series, by VM name."""
    return {dict(labels)["vm"]: value for (n, labels), value in samples.items() if n == name}


def value(samples: Samples, name: str) -> float:
    return samples[(name, frozenset())]


async def test_scraped_figures_are_the_last_cycle_and_gone_vms_vanish(
    workdir: Path, private_broker: PrivateBroker
) -> None:
    port = free_port()
    async with sim_controller(
        workdir, host_name="metrics-a", mqtt=("127.0.0.1", private_broker.port, "m"),
        metrics_port=port, run=False,
    ) as host:
        daemon = host.daemon
        assert daemon.metrics is not None and daemon.metrics.port == port
        assert daemon.telemetry is not None
        controller = daemon.controller
        results: list[CycleResult] = []
        for _ in range(3):
            result = await controller.run_cycle()
            assert result is not None
            results.append(result)
            await asyncio.sleep(0.15)  # guests report, balloons move
        last = results[-1]
        samples = await scrape(port)

        observed = {obs.name: obs for obs in last.snapshot.vms}
        for vm in last.plan.vms:
            labels = frozenset({("vm", vm.name), ("uuid", vm.uuid)})
            assert samples[("ballast_vm_target_bytes", labels)] == vm.target_kb * KIB
            assert samples[("ballast_vm_actual_bytes", labels)] == observed[vm.name].actual_kb * KIB
            assert vm.demand_kb is not None
            assert samples[("ballast_vm_demand_bytes", labels)] == vm.demand_kb * KIB
            report = observed[vm.name].report
            assert report is not None
            assert samples[("ballast_vm_swap_used_bytes", labels)] == report.swap_used_kb * KIB
            assert samples[("ballast_vm_memory_pressure_some_ratio", labels)] == pytest.approx(
                (report.psi_some_avg10 or 0) / 100
            )
            info = frozenset({*labels, ("domid", str(vm.domid))})
            assert samples[("ballast_vm_info", info)] == 1
        assert value(samples, "ballast_host_budget_bytes") == last.plan.host.budget_kb * KIB
        assert value(samples, "ballast_host_free_bytes") == last.plan.host.free_kb * KIB
        assert value(samples, "ballast_vms_managed") == 2
        # The histogram counts every successful cycle and sums their durations.
        assert value(samples, "ballast_cycle_duration_seconds_count") == 3
        assert value(samples, "ballast_cycle_duration_seconds_sum") == pytest.approx(
            sum(r.duration_s for r in results)
        )
        assert value(samples, "ballast_cycles_total") == 3
        assert value(samples, "ballast_cycles_failed_total") == 0
        assert value(samples, "ballast_store_samples_dropped_total") == 0
        # Cycles that cannot observe the fleet are counted, not timed.
        host.hv.fail_next(1000)  # the toolstack stops answering
        assert await controller.run_cycle() is None
        assert await controller.run_cycle() is None
        host.hv.fail_next(0)
        samples = await scrape(port)
        assert value(samples, "ballast_cycles_failed_total") == 2
        assert value(samples, "ballast_cycle_duration_seconds_count") == 3

        # A VM that went away has no series left.
        await host.remove(6)
        assert await controller.run_cycle() is not None
        samples = await scrape(port)
        for name in ("ballast_vm_target_bytes", "ballast_vm_actual_bytes", "ballast_vm_info",
                     "ballast_vm_state", "ballast_vm_swap_used_bytes"):
            assert set(vm_series(samples, name)) == {"web"}, name
        assert value(samples, "ballast_vms_managed") == 1

        # MQTT connection state follows the broker.
        telemetry = daemon.telemetry
        await eventually(lambda: telemetry.stats.connected, what="connected")
        samples = await scrape(port)
        assert value(samples, "ballast_mqtt_connected") == 1
        assert value(samples, "ballast_mqtt_published_total") >= 1
        private_broker.stop()

        async def disconnected() -> bool:
            return value(await scrape(port), "ballast_mqtt_connected") == 0

        await eventually(disconnected, what="ballast_mqtt_connected 0")


async def test_write_errors_and_dropped_samples_are_counted(
    sim_host: SimHost, workdir: Path
) -> None:
    await sim_host.add_vm(1, "web", static_max_kb=4 * GIB_KB)
    await sim_host.add_vm(2, "db", static_max_kb=2 * GIB_KB)
    controller = Controller(xs=sim_host.xs, hypervisor=sim_host.hv, policy=StaticPolicy())
    result = await controller.run_cycle()
    assert result is not None
    # Writes that xenstored refused: the seam is the cycle's ApplyResult.
    errors = {vm.domid: XenstoreError("EACCES", op="write", path="memory/target")
              for vm in result.plan.vms}
    failing = replace(result, applied=ApplyResult(errors=errors))
    # A writer whose database never keeps up: its bounded queue drops the oldest.
    db = workdir / "ballast.db"
    upgrade_db(db)
    store = open_store(str(db))
    writer = StoreWriter(store, WriterConfig(max_queued_samples=2, batch_max_samples=1))
    now = datetime.now(UTC)
    for _ in range(3):
        writer.record_samples([sample_of(result, vm, now) for vm in result.plan.vms])
    exporter = MetricsExporter(controller=controller, writer=writer)
    exporter.cycle(failing)
    exporter.cycle(result)
    exporter.cycle(failing)
    with serve_metrics(exporter, bind="127.0.0.1", port=0) as server:
        samples = await scrape(server.port)
    store.close()
    assert value(samples, "ballast_xenstore_write_errors_total") == 2 * len(errors)
    assert value(samples, "ballast_store_samples_dropped_total") == (
        writer.stats().samples_dropped
    ) == 3 * len(result.plan.vms) - 2
    assert value(samples, "ballast_cycles_total") == 3
    # Without a telemetry there are no MQTT series at all.
    assert not any(name.startswith("ballast_mqtt_") for name, _ in samples)


def test_bad_metrics_and_broker_flags_are_one_line_errors() -> None:
    result = CliRunner().invoke(app, ["run", "--metrics-port", "70000"])
    assert result.exit_code == 2 and "--metrics-port" in result.output
    result = CliRunner().invoke(app, ["run", "--broker", "http://broker.lan"])
    assert result.exit_code == 1
    assert "mqtt://" in result.output and "Traceback" not in result.output


async def test_a_busy_metrics_port_stops_the_start_with_one_line(workdir: Path) -> None:
    db = workdir / "ballast.db"
    upgrade_db(db)
    (workdir / "xs").mkdir()
    with socket_bound() as busy:
        async with XenstoreServer(workdir / "xs"):
            result = await asyncio.to_thread(
                CliRunner().invoke, app,
                ["run", "--db", str(db), "--xenstore", str(workdir / "xs"), "--metrics-port",
                 str(busy), "--host-name", "busy"],
            )
    assert result.exit_code == 1, result.output
    assert f"cannot serve metrics on 127.0.0.1:{busy}" in result.output
    assert "Traceback" not in result.output


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that something already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])
