"""``ballast run``: the dom0 controller daemon."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from orchestrator import config as cfg
from orchestrator.cli.common import CONFIG_OPTION
from orchestrator.controller import daemon


def run(
    config_path: Path | None = CONFIG_OPTION,
    xenstore: str | None = typer.Option(
        None, "--xenstore",
        help="xenstored socket, or the directory of Ballast's own server "
        "(default /run/xenstored/socket).",
        show_default=False,
    ),
    db: str | None = typer.Option(
        None, "--db", help="History database path or URL (overrides \\[store] url).",
        show_default=False,
    ),
    interval: float | None = typer.Option(
        None, "--interval", help="Control interval in seconds (kernel default 5).",
        show_default=False,
    ),
    host_name: str | None = typer.Option(
        None, "--host-name", help="Name of this host in history and telemetry.",
        show_default=False,
    ),
    log_level: str | None = typer.Option(
        None, "--log-level", help="debug, info, warning or error.", show_default=False
    ),
    broker: str | None = typer.Option(
        None, "--broker",
        help="Publish telemetry to this MQTT broker and take policy commands from it: "
        "mqtt://host[:port] or mqtts://host[:port] (overrides \\[mqtt] broker; "
        "user, password and TLS files come from ballast.toml).",
        show_default=False,
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=0, max=65535,
        help="Serve Prometheus metrics on this TCP port at /metrics "
        "(overrides \\[metrics] port; 0 turns it off; address from \\[metrics] bind).",
        show_default=False,
    ),
) -> None:
    """Run the controller: balloon every guest on this host until SIGTERM.

    Reads guest reports from xenstore, decides every VM's memory/target and
    swap directive each interval (or at once when a guest needs memory),
    writes them, and records the history. Refuses to start on a history
    database that `ballast db upgrade` has not prepared.

    Examples:

      ballast run

      ballast run --xenstore ./demo/xenstore --db ./demo/ballast.db --interval 2

      ballast run --broker mqtt://broker.lan --metrics-port 9464
    """
    config = cfg.with_overrides(
        cfg.load(config_path, required=config_path is not None),
        controller__xenstore=xenstore,
        controller__interval_s=interval,
        controller__host_name=host_name,
        controller__log_level=log_level,
        store__url=db,
        mqtt__broker=broker,
        metrics__port=metrics_port,
    )
    logging.basicConfig(
        level=getattr(logging, config.controller.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(daemon.run(config))
