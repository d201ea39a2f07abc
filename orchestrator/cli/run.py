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
        None, "--db", help="History database path or URL (overrides [store] url).",
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
) -> None:
    """Run the controller: balloon every guest on this host until SIGTERM.

    Reads guest reports from xenstore, decides every VM's memory/target and
    swap directive each interval (or at once when a guest needs memory),
    writes them, and records the history. Refuses to start on a history
    database that `ballast db upgrade` has not prepared.

    Examples:

      ballast run

      ballast run --xenstore ./demo/xenstore --db ./demo/ballast.db --interval 2
    """
    config = cfg.with_overrides(
        cfg.load(config_path, required=config_path is not None),
        controller__xenstore=xenstore,
        controller__interval_s=interval,
        controller__host_name=host_name,
        controller__log_level=log_level,
        store__url=db,
    )
    logging.basicConfig(
        level=getattr(logging, config.controller.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(daemon.run(config))
