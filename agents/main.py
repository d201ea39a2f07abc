"""``ballast-agent``: the guest agent as a stand-alone command.

Installed in guests on its own (``ballast-agent``, with the systemd unit in
``packaging/systemd/``) and also reachable as ``ballast agent``. It uses
argparse rather than the dom0 CLI's Typer so that a guest process imports as
little as possible: the agent's resident memory is part of what it costs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.actuators import (
    NullActuator,
    SelfballoonActuator,
    ShrinkActuator,
    SubprocessSwapCommands,
    SwapoffActuator,
)
from agents.agent import Agent, Connect
from agents.settings import SHRINK_KINDS, AgentSettings, Connection, make_settings
from agents.source import SELFBALLOON_DIR, MemorySource, ProcMemorySource
from orchestrator.errors import BallastError, UsageError

log = logging.getLogger("ballast.agent")

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_actuator(settings: AgentSettings, source: MemorySource) -> ShrinkActuator:
    """The swap-shrink actuator the settings ask for.

    ``auto`` takes the kernel's self-shrink knobs where they exist, else
    swapoff/swapon, but only when reading the real ``/`` (never act on this
    machine's swap because of a captured or simulated tree), else nothing.
    """
    knobs = settings.root / SELFBALLOON_DIR
    kind = settings.shrink
    if kind == "auto":
        if SelfballoonActuator.present(knobs):
            kind = "selfballoon"
        elif settings.root == Path("/") and shutil.which("swapoff") and shutil.which("swapon"):
            kind = "swapoff"
        else:
            kind = "none"
    if kind == "selfballoon":
        if not SelfballoonActuator.present(knobs):
            raise UsageError(f"no kernel self-shrink knob under {knobs}")
        return SelfballoonActuator(source, knobs, guard=settings.guard)
    if kind == "swapoff":
        return SwapoffActuator(source, settings.root, SubprocessSwapCommands(),
                               guard=settings.guard)
    return NullActuator(source)


def connector(connection: Connection, *, timeout_s: float) -> Connect:
    """Opens the configured xenstore connection; ``timeout_s`` bounds each request."""
    from orchestrator.xenstore.client import ClientSettings, PyxsClient

    settings = ClientSettings(timeout_s=timeout_s)

    def connect() -> PyxsClient:
        if connection.kind == "xenbus":
            return PyxsClient(xenbus_path=connection.path, settings=settings)
        return PyxsClient(socket_path=connection.path, settings=settings)

    return connect


def build_agent(settings: AgentSettings, *, connect: Connect | None = None) -> Agent:
    """An agent reading the real (or rooted) /proc, with its actuator."""
    source = ProcMemorySource(settings.root, page_kb=settings.page_kb)
    return Agent(
        settings,
        source=source,
        actuator=build_actuator(settings, source),
        connect=connect or connector(settings.connection, timeout_s=settings.xenstore_timeout_s),
    )


async def run_until_signalled(agent: Agent) -> None:
    """Run ``agent`` until SIGTERM or SIGINT, then stop it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        log.info("agent started (shrink actuator: %s)", agent.actuator.name)
        await agent.run(stop)
        log.info("agent stopped")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def setup_logging(level: str) -> None:
    """Plain lines on stderr; journald adds the time and the unit."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="ballast-agent: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def parser() -> argparse.ArgumentParser:
    """The command line of ``ballast-agent``."""
    p = argparse.ArgumentParser(
        prog="ballast-agent",
        description="Report this guest's memory state over xenstore and carry out "
        "swap-shrink directives from the Ballast controller.",
    )
    p.add_argument("--xenstore", metavar="CONN", default=None,
                   help="xenbus, xenbus:DEVICE or unix:SOCKET (default: the guest's xenbus "
                        "device, /dev/xen/xenbus)")
    p.add_argument("--xenstore-timeout", default="5s",
                   help="longest wait for one xenstore request (default 5s)")
    p.add_argument("--root", default="/", help="read proc/ and sys/ under this directory")
    p.add_argument("--page-kb", type=int, default=None,
                   help="page size in KiB (default: this system's)")
    p.add_argument("--data-dir", default="data",
                   help="xenstore directory to write under, relative to the domain's home")
    p.add_argument("--interval", default="1s", help="sampling interval (default 1s)")
    p.add_argument("--heartbeat", default="30s",
                   help="report at least this often (default 30s)")
    p.add_argument("--min-interval", default="1s",
                   help="report at most this often on changes (default 1s)")
    p.add_argument("--change", default="16M",
                   help="a memory figure moving this much is reported at once (default 16M)")
    p.add_argument("--change-percent", type=float, default=2.0,
                   help="... or this percentage of MemTotal, if larger (default 2)")
    p.add_argument("--shrink", choices=SHRINK_KINDS, default="auto",
                   help="swap-shrink actuator (default auto)")
    p.add_argument("--shrink-margin", default="64M",
                   help="MemAvailable a swap shrink must leave (default 64M)")
    p.add_argument("--shrink-margin-percent", type=float, default=5.0,
                   help="... or this percentage of MemTotal, if larger (default 5)")
    p.add_argument("--shrink-max-psi", type=float, default=10.0,
                   help="refuse to shrink while memory PSI some avg10 exceeds this (default 10)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default info")
    return p


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """Validate parsed arguments into settings."""
    return make_settings(
        xenstore=args.xenstore, root=args.root, page_kb=args.page_kb, data_dir=args.data_dir,
        interval=args.interval, heartbeat=args.heartbeat, min_interval=args.min_interval,
        change=args.change, change_percent=args.change_percent, shrink=args.shrink,
        shrink_margin=args.shrink_margin, shrink_margin_percent=args.shrink_margin_percent,
        shrink_max_psi=args.shrink_max_psi, xenstore_timeout=args.xenstore_timeout,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``ballast-agent``."""
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        agent = build_agent(settings_from_args(args))
        asyncio.run(run_until_signalled(agent))
    except BallastError as exc:
        print(f"ballast-agent: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
