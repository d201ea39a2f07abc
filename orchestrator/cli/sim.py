"""``ballast sim``: a simulated Xen host with real agents and the real controller.

A thin shell over :func:`orchestrator.sim.wire.run_sim`: it resolves the
options, shows the live fleet (the ``ballast status`` table, from the
newest cycle) and prints what the run did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from orchestrator import config as cfg
from orchestrator.cli.status import render
from orchestrator.controller.status import status_document
from orchestrator.errors import UsageError
from orchestrator.sim import scenario as scenarios
from orchestrator.sim.model import KB_PER_MB
from orchestrator.sim.wire import SimResult, SimRun, SimSettings, run_sim
from orchestrator.store.engine import DB_ENV
from orchestrator.store.records import HostStatus
from orchestrator.store.timeparse import parse_time
from orchestrator.units import parse_duration_s

# Live refreshes per wall second, and seconds between progress lines when
# there is no terminal to redraw (a container's log).
_REFRESH_PER_S = 4
_LOG_EVERY_S = 10.0


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def progress_line(run: SimRun) -> str:
    """One line on where the run stands."""
    settings, stats = run.settings, run.stats
    now = min(run.clock.now_s(), settings.run_s) if run.started else 0.0
    gaps = stats.timer_gaps_s[-50:]
    pace = f"one per {sum(gaps) / len(gaps):.1f} s" if gaps else "none yet"
    held = ""
    if stats.last is not None:
        held_kb = sum(obs.actual_kb for obs in stats.last.snapshot.vms)
        held = f"; guests hold {held_kb / KB_PER_MB / 1024:.1f} GiB"
    return (
        f"{settings.scenario.name}: {_clock_text(now)} of {_clock_text(settings.run_s)} "
        f"virtual at {settings.speed:g}x; cycles {stats.cycles} ({pace}, interval "
        f"{settings.interval_s:g} s); reports {stats.reports()}{held}"
    )


def _live_view(run: SimRun) -> Group | Text:
    last = run.stats.last
    line = Text(progress_line(run), style="bold")
    if last is None:
        return line
    status = HostStatus(
        host=run.settings.host_name,
        time=datetime.now(UTC),  # the newest cycle, as of this moment
        document=status_document(last, run.settings.host_name),
    )
    return Group(render(status, run.settings.host_name), line)


def summary(result: SimResult, *, db: str) -> str:
    """What the run did, for people."""
    m = result.metrics
    lines = []
    how = "" if result.completed else " (stopped early)"
    lines.append(
        f"{result.scenario}: {_clock_text(result.virtual_s)} of virtual time in "
        f"{result.wall_s:.1f} s{how}; requested speed {result.speed:g}x"
    )
    if result.timer_gap_p50_s is None:
        lines.append("control: too short a run to measure the controller's pace")
    elif result.keeping_up:
        lines.append(
            f"control kept its {result.interval_s:g} s interval: cycles every "
            f"{result.timer_gap_p50_s:.1f} s (p95 {result.timer_gap_p95_s:.1f} s) of virtual time"
        )
    else:
        lines.append(
            f"control did NOT keep up: cycles every {result.timer_gap_p50_s:.1f} s "
            f"(p95 {result.timer_gap_p95_s:.1f} s) instead of {result.interval_s:g} s of "
            f"virtual time; at its own pace this machine runs about "
            f"{result.achieved_speed:.0f}x"
        )
    wall_cycle = "-" if result.cycle_wall_p50_s is None else f"{1000 * result.cycle_wall_p50_s:.1f}"
    lines.append(
        f"controller: {result.cycles} cycles ({result.failed_cycles} skipped), "
        f"{result.peeks} looks at changed reports, {wall_cycle} ms wall per cycle (p50)"
    )
    age = ("-" if result.max_report_age_s == 0 else
           "never all reported" if result.max_report_age_s == float("inf")
           else f"{result.max_report_age_s:.0f} s")
    lines.append(
        f"agents: {result.reports} reports, sampling every {result.agent_interval_s:g} s; "
        f"oldest report a cycle saw: {age} (virtual); "
        f"{result.stale_observations} stale VM-cycles after every VM had reported"
    )
    if m is None:
        lines.append("guests: the run ended before the guests started")
    else:
        saved = 100 * (1 - m.footprint_mb / result.static_mb)
        lines.append(
            f"guests: mean footprint {m.footprint_mb / 1024:.1f} GiB ({saved:.0f}% below "
            f"static); deficit {m.deficit_mb_s:.0f} MB·s; swap-ins {m.swapins}; OOM kills "
            f"{m.ooms}; PSI some > 0.1 % in {100 * m.psi_over_0_1pct_frac:.1f} % of guest-time"
        )
    lag = "-" if result.loop_lag_p95_wall_s is None else f"{1000 * result.loop_lag_p95_wall_s:.0f}"
    wall = max(result.wall_s, 1e-9)

    def cpu(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds:.1f} s ({100 * seconds / wall:.0f}%)"

    lines.append(
        f"CPU (share of one core): controller {cpu(result.cpu_s)}, guests and agents "
        f"{cpu(result.host_cpu_s)}, xenstored {cpu(result.xenstored_cpu_s)}; controller's "
        f"event loop late by {lag} ms (p95)"
    )
    end = result.epoch.timestamp() + result.virtual_s
    lines.append(
        f"history: {db}, {result.epoch:%Y-%m-%d %H:%M:%S} .. "
        f"{datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    return "\n".join(lines)


@contextlib.contextmanager
def _work_dir(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    made = Path(tempfile.mkdtemp(prefix="ballast-sim-"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


async def _run(settings: SimSettings, *, live: bool, console: Console) -> SimResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[SimRun] = []
    sim = asyncio.create_task(run_sim(settings, stop=stop, on_start=started.append))
    try:
        if live:
            with Live(Text("starting the simulated host..."), console=console,
                      auto_refresh=False, transient=False) as view:
                while not sim.done():
                    await asyncio.wait({sim}, timeout=1 / _REFRESH_PER_S)
                    if started:
                        view.update(_live_view(started[0]), refresh=True)
        else:
            last_log = time.monotonic()
            while not sim.done():
                await asyncio.wait({sim}, timeout=1.0)
                if started and time.monotonic() - last_log >= _LOG_EVERY_S:
                    last_log = time.monotonic()
                    typer.echo(progress_line(started[0]))
        return await sim
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def sim(
    scenario: str = typer.Option(
        "mixed-day", "--scenario", "-s",
        help=f"Built-in scenario ({', '.join(scenarios.builtin_names())}) or a scenario TOML.",
    ),
    speed: float = typer.Option(
        60.0, "--speed", help="Virtual seconds per wall second (720: a day in 2 minutes)."
    ),
    duration: str | None = typer.Option(
        None, "--duration",
        help="Virtual time to run, e.g. 6h (default: the scenario's duration).",
        show_default=False,
    ),
    db: str | None = typer.Option(
        None, "--db",
        help="History database: a SQLite path (created and migrated) or a "
        "postgresql+psycopg:// URL (migrated with `ballast db upgrade`). "
        "Default: ballast.db in --dir.",
        show_default=False,
    ),
    broker: str | None = typer.Option(
        None, "--broker",
        help="Publish telemetry to this MQTT broker and take policy commands from it: "
        "mqtt://host[:port] or mqtts://host[:port].",
        show_default=False,
    ),
    directory: Path | None = typer.Option(
        None, "--dir",
        help="Directory for the xenstore server's sockets and the default database "
        "(default: a temporary directory, removed afterwards).",
        show_default=False,
    ),
    start: str = typer.Option(
        "now", "--start",
        help="Wall-clock time recorded for the scenario's start: 'now', an ISO time, or a "
        "time ago such as 24h (then a simulated day lies in the past when it ends).",
    ),
    host_name: str | None = typer.Option(
        None, "--host-name",
        help="Name of the simulated host in history and telemetry (default: this host's).",
        show_default=False,
    ),
    live: bool = typer.Option(
        True, "--live/--no-live",
        help="Redraw the fleet table in place (default on a terminal); --no-live prints "
        "a progress line every 10 s instead.",
    ),
    log_level: str = typer.Option("warning", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Simulate a Xen host: real agents and the real controller on simulated guests.

    Starts Ballast's xenstore server, one domain per VM of the scenario laid
    out as libxl lays it out, one simulated guest per VM whose memory follows
    its workload trace (the real agent reporting over the guest's own socket,
    a balloon driver following memory/target at a finite rate), and the real
    controller recording into a history database. Time runs SPEED times
    faster than the wall clock for all of them. Runs until the scenario ends,
    or Ctrl-C / SIGTERM; then prints what the controller achieved.

    Examples:

      ballast sim --scenario mixed-day --speed 720 --db ./demo/ballast.db --start 24h

      ballast sim --scenario diurnal-web --speed 60 --broker mqtt://127.0.0.1:1883

      ballast sim --scenario my-fleet.toml --duration 2h --no-live
    """
    loaded = scenarios.load(scenario)
    if not speed > 0:
        raise UsageError("--speed must be positive")
    duration_s = parse_duration_s(duration) if duration is not None else None
    epoch = parse_time(start, datetime.now(UTC))
    level = log_level.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise UsageError(f"invalid log level {log_level!r}: use debug, info, warning or error")
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The simulation records into its own database, whatever the shell says.
    os.environ.pop(DB_ENV, None)
    console = Console()
    with _work_dir(directory) as work:
        target = db if db is not None else str(work / "ballast.db")
        settings = SimSettings(
            scenario=loaded, speed=speed, directory=work, db=target, epoch=epoch,
            duration_s=duration_s, broker=broker,
            host_name=host_name or cfg.ControllerConfig().host_name,
        )
        result = asyncio.run(_run(settings, live=live and console.is_terminal, console=console))
        kept = db is not None or directory is not None
        typer.echo(summary(result, db=target if kept else "discarded (give --db or --dir)"))
