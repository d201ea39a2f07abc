"""``ballast run``: wire the controller to xenstore, the hypervisor, the store.

Staged start (STYLE 6): open the history store (refusing an unmigrated one),
start its writer, connect to xenstore, start MQTT telemetry and the
Prometheus endpoint when configured, then run the loop; staged stop on
SIGTERM or SIGINT: the cycle in flight finishes, telemetry flushes and says
goodbye, the metrics endpoint closes, a ``controller_stopped`` event is
queued, the writer drains, xenstore is closed. Nothing starts work in a
constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator import config as cfg
from orchestrator.control import HostPolicy
from orchestrator.controller.loop import Controller, CycleSink, LoopSettings
from orchestrator.controller.metrics import MetricsExporter, MetricsServer, serve_metrics
from orchestrator.controller.record import StoreSink
from orchestrator.controller.status import StatusSink
from orchestrator.controller.telemetry_sink import connect_telemetry, telemetry_settings
from orchestrator.errors import TransientError
from orchestrator.hypervisor import Hypervisor
from orchestrator.hypervisor.xl import XlHypervisor
from orchestrator.steering import StorePolicySource
from orchestrator.store.records import Event, EventKind
from orchestrator.store.store import Store, StoreConfig, open_store
from orchestrator.store.writer import StoreWriter, WriterConfig
from orchestrator.telemetry import Telemetry
from orchestrator.xenstore.client import ClientSettings, PyxsClient, open_client

log = logging.getLogger("ballast.controller")

MIB_KB = 1024


def base_host_policy(config: cfg.Config) -> HostPolicy:
    """The host policy ``ballast.toml`` gives, before operator overrides in the store."""
    c = config.controller
    return HostPolicy(
        dom0_reserve_kb=c.dom0_reserve_mb * MIB_KB,
        free_margin_kb=c.free_margin_mb * MIB_KB,
        interval_s=c.interval_s,
    )


def xenstore_path(value: str) -> str:
    """A xenstored socket, or the socket inside a directory of Ballast's server."""
    path = Path(value)
    if path.is_dir():
        return str(path / "socket")
    return value


def store_url(config: cfg.Config) -> str:
    """The history database: ``$BALLAST_DB`` if set, else the configuration's URL."""
    return os.environ.get("BALLAST_DB") or config.store.url


@dataclass(slots=True, kw_only=True)
class Daemon:
    """The running pieces, for callers that embed the controller (``ballast sim``)."""

    controller: Controller
    store: Store
    writer: StoreWriter
    xs: PyxsClient
    sinks: list[CycleSink] = field(default_factory=list)
    telemetry: Telemetry | None = None
    """The MQTT publisher, when ``[mqtt] broker`` is set."""
    metrics: MetricsServer | None = None
    """The Prometheus endpoint, when ``[metrics] port`` is set."""


@contextlib.asynccontextmanager
async def open_daemon(
    config: cfg.Config,
    *,
    hypervisor: Hypervisor | None = None,
    loop_settings: LoopSettings | None = None,
    sinks: Sequence[CycleSink] = (),
    clock: Callable[[], float] | None = None,
    wall_clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Daemon]:
    """Open store, writer and xenstore; yield the wired controller; close in order.

    ``clock`` and ``wall_clock`` replace the controller's monotonic and
    wall clocks (``ballast sim`` runs it in virtual time)."""
    store = await asyncio.to_thread(
        open_store, store_url(config),
        config=StoreConfig(host=config.controller.host_name,
                           busy_timeout_s=config.store.busy_timeout_s),
    )
    queued = config.store.max_queued_samples
    writer = StoreWriter(store, WriterConfig(max_queued_samples=queued,
                                             batch_max_samples=min(10_000, queued)))
    writer.start()
    xs = open_client(path=xenstore_path(config.controller.xenstore), settings=ClientSettings())
    try:
        await xs.connect()
        hv = hypervisor or XlHypervisor(
            xl_path=config.controller.xl_path, timeout_s=config.controller.xl_timeout_s
        )
        all_sinks: list[CycleSink] = [
            StoreSink(writer), StatusSink(writer, config.controller.host_name), *sinks
        ]
        started_at = wall_clock() if wall_clock is not None else datetime.now(UTC)
        controller = Controller(
            xs=xs,
            hypervisor=hv,
            policy=StorePolicySource(store, base_host_policy(config)),
            sinks=all_sinks,
            settings=loop_settings,
            clock=clock,
            wall_clock=wall_clock,
            start_details=await asyncio.to_thread(previous_run, store, started_at),
        )
        daemon = Daemon(controller=controller, store=store, writer=writer, xs=xs,
                        sinks=all_sinks)
        async with contextlib.AsyncExitStack() as stack:
            exporter = None
            if config.metrics.port:
                exporter = MetricsExporter(controller=controller, writer=writer)
                daemon.metrics = stack.enter_context(
                    serve_metrics(exporter, bind=config.metrics.bind, port=config.metrics.port)
                )
                _add_sink(daemon, exporter)
                log.info("metrics on %s", daemon.metrics.url)
            if config.mqtt.broker:
                telemetry, sink = connect_telemetry(
                    telemetry_settings(config), store=store, controller=controller,
                    base=base_host_policy(config),
                )
                # Exited before the metrics endpoint closes: flush, goodbye, disconnect.
                daemon.telemetry = await stack.enter_async_context(telemetry)
                _add_sink(daemon, sink)
                if exporter is not None:
                    exporter.attach(telemetry=telemetry)
            yield daemon
    finally:
        with contextlib.suppress(Exception):
            writer.record_event(
                Event(kind=EventKind.CONTROLLER_STOPPED,
                      time=wall_clock() if wall_clock is not None else datetime.now(UTC),
                      details={"pid": os.getpid()})
            )
        await xs.close()
        stats = await asyncio.to_thread(writer.stop)
        if stats.queued_durable:
            log.error("%d decisions/events could not be written before exit",
                      stats.queued_durable)
        store.close()


def previous_run(store: Store, now: datetime) -> dict[str, Any]:
    """How the previous controller of this host ended, for ``controller_started``.

    ``{"previous_stop": "clean"}`` after an orderly stop; ``"unclean"`` when it
    was killed or crashed (its start is the newest of the two events), with
    its last heartbeat (the status it wrote after its last cycle) and how long
    control was down: the gap in the history. Empty on a first start.
    """
    try:
        last = store.events(since=datetime.fromtimestamp(0, UTC), until=now, limit=1,
                            kinds=[EventKind.CONTROLLER_STARTED, EventKind.CONTROLLER_STOPPED])
        status = store.status()
    except TransientError as exc:
        log.warning("cannot tell how the previous run ended: %s", exc)
        return {}
    if not last:
        return {}
    if last[-1].kind is EventKind.CONTROLLER_STOPPED:
        return {"previous_stop": "clean"}
    details: dict[str, Any] = {"previous_stop": "unclean"}
    if status is not None:
        details["last_heartbeat"] = status.time.isoformat()
        details["down_s"] = round(max((now - status.time).total_seconds(), 0.0), 3)
    log.warning("the previous controller did not stop cleanly%s",
                f" (last heartbeat {details['last_heartbeat']})" if status is not None else "")
    return details


def _add_sink(daemon: Daemon, sink: CycleSink) -> None:
    daemon.controller.add_sink(sink)
    daemon.sinks.append(sink)


async def run_until_signalled(controller: Controller, stop: asyncio.Event | None = None) -> None:
    """Run the loop until SIGTERM/SIGINT (or ``stop``); the cycle in flight finishes."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await controller.run(stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run(config: cfg.Config) -> None:
    """The whole of ``ballast run``."""
    async with open_daemon(config) as daemon:
        log.info(
            "ballast controller on %s: xenstore %s, history %s",
            config.controller.host_name, config.controller.xenstore, config.store.url,
        )
        await run_until_signalled(daemon.controller)
        log.info("stopping after %d cycles", daemon.controller.cycles)
