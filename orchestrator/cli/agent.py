"""``ballast agent``: run the guest agent (the same code as ``ballast-agent``).

A thin shell: it turns options into ``AgentSettings`` with the same validation
as the stand-alone command and runs the agent until SIGTERM.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

import typer

from agents.main import build_agent, run_until_signalled, setup_logging
from agents.settings import make_settings


class Shrink(StrEnum):
    """Swap-shrink actuators."""

    auto = "auto"
    selfballoon = "selfballoon"
    swapoff = "swapoff"
    none = "none"


class LogLevel(StrEnum):
    """Log levels."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def agent(
    xenstore: str | None = typer.Option(
        None, "--xenstore", metavar="CONN",
        help="xenbus, xenbus:DEVICE or unix:SOCKET (default: the guest's /dev/xen/xenbus).",
    ),
    xenstore_timeout: str = typer.Option("5s", help="Longest wait for one xenstore request."),
    root: str = typer.Option("/", help="Read proc/ and sys/ under this directory."),
    page_kb: int | None = typer.Option(
        None, "--page-kb", help="Page size in KiB (default: this system's)."
    ),
    data_dir: str = typer.Option("data", help="xenstore directory to write under, relative "
                                 "to the domain's home."),
    interval: str = typer.Option("1s", help="Sampling interval."),
    heartbeat: str = typer.Option("30s", help="Report at least this often."),
    min_interval: str = typer.Option("1s", help="Report at most this often on changes."),
    change: str = typer.Option("16M", help="A memory figure moving this much is reported "
                               "at once."),
    change_percent: float = typer.Option(2.0, help="... or this percentage of MemTotal, "
                                         "if larger."),
    shrink: Shrink = typer.Option(Shrink.auto, help="Swap-shrink actuator."),
    shrink_margin: str = typer.Option("64M", help="MemAvailable a swap shrink must leave."),
    shrink_margin_percent: float = typer.Option(5.0, help="... or this percentage of "
                                                "MemTotal, if larger."),
    shrink_max_psi: float = typer.Option(10.0, help="Refuse to shrink while memory PSI some "
                                         "avg10 exceeds this (percent)."),
    log_level: LogLevel = typer.Option(LogLevel.info, help="Log level."),
) -> None:
    """Run the guest agent: report memory over xenstore, carry out swap-shrink directives."""
    settings = make_settings(
        xenstore=xenstore, root=root, page_kb=page_kb, data_dir=data_dir, interval=interval,
        heartbeat=heartbeat, min_interval=min_interval, change=change,
        change_percent=change_percent, shrink=shrink.value, shrink_margin=shrink_margin,
        shrink_margin_percent=shrink_margin_percent, shrink_max_psi=shrink_max_psi,
        xenstore_timeout=xenstore_timeout,
    )
    setup_logging(log_level.value)
    asyncio.run(run_until_signalled(build_agent(settings)))
