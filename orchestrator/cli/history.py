"""``ballast history``, ``ballast decisions``, ``ballast events``: look back."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.cli.chart import render_chart
from orchestrator.cli.common import (
    CONFIG_OPTION,
    DB_OPTION,
    HOST_OPTION,
    JSON_OPTION,
    echo_json,
    open_history,
)
from orchestrator.errors import UsageError
from orchestrator.store.records import Figure
from orchestrator.units import format_size_kb

SINCE_OPTION = typer.Option(
    None, "--since", help="Start: ISO time or relative (6h, 7d). Default: 6h (24h for events)."
)
UNTIL_OPTION = typer.Option(None, "--until", help="End: ISO time or relative. Default: now.")
CSV_OPTION = typer.Option(False, "--csv", help="Print CSV for spreadsheets.")
FIGURE_NAMES = ", ".join(fig.value for fig in Figure)


def _fmt(figure: Figure, value: float | None) -> str:
    if value is None:
        return "-"
    if figure.is_kb:
        return format_size_kb(value)
    return f"{value:.2f}"


def _scaled(value: float | None, scale: int) -> float | None:
    return None if value is None else value / scale


def history(
    vm: str = typer.Argument(..., help="VM name, uuid or domid."),
    since: str | None = SINCE_OPTION,
    until: str | None = UNTIL_OPTION,
    figure: str = typer.Option(
        "target,actual,demand", "--figure",
        help=f"Comma-separated figures: {FIGURE_NAMES}.",
    ),
    resolution: str = typer.Option("auto", "--resolution", help="auto, raw, 1m or 1h."),
    as_json: bool = JSON_OPTION,
    as_csv: bool = CSV_OPTION,
    plot: bool = typer.Option(False, "--plot", help="Draw a chart in the terminal."),
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
) -> None:
    """A VM's memory over time: a table, JSON, CSV or a terminal chart.

    Long ranges come from the 1-minute and 1-hour rollups, so a year is as
    quick as an hour.

    Examples:

      ballast history web01 --since 6h

      ballast history web01 --since 30d --figure target,available --plot

      ballast history web01 --since 2026-11-01T00:00 --until 2026-11-02T00:00 --csv
    """
    if sum((as_json, as_csv, plot)) > 1:
        raise UsageError("choose one of --json, --csv and --plot")
    figures = [Figure.parse(name) for name in figure.split(",") if name.strip()]
    if not figures:
        raise UsageError("--figure needs at least one figure")
    _, store = open_history(config_path, db, host_name)
    try:
        series = store.history(vm, since, until, figures, resolution)
    finally:
        store.close()
    points = series.points
    if as_json:
        echo_json({
            "vm": series.domain.name, "uuid": series.domain.uuid,
            "resolution": series.resolution.name.lower(), "step_s": series.step_s,
            "since": series.since.isoformat(), "until": series.until.isoformat(),
            "points": [
                {"time": p.time.isoformat(), "count": p.count,
                 **{f.value: p.values[f].mean for f in figures}}
                for p in points
            ],
        })
        return
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["time", *(f.column for f in figures)])
        for p in points:
            writer.writerow([p.time.isoformat(), *(p.values[f].mean for f in figures)])
        return
    header = (f"{series.domain.name}: {len(points)} points at "
              f"{series.resolution.name.lower()} resolution, "
              f"{series.since:%Y-%m-%d %H:%M} .. {series.until:%Y-%m-%d %H:%M} UTC")
    if plot:
        typer.echo(header)
        kb = all(f.is_kb for f in figures)
        scale = 1024 if kb else 1
        data = {
            f.value: [_scaled(p.values[f].mean, scale) for p in points] for f in figures
        }
        typer.echo(render_chart([p.time for p in points], data, unit=" MiB" if kb else ""))
        return
    table = Table(title=header)
    table.add_column("time (UTC)")
    for f in figures:
        table.add_column(f.value, justify="right")
    for p in points:
        table.add_row(f"{p.time:%Y-%m-%d %H:%M:%S}", *(_fmt(f, p.values[f].mean) for f in figures))
    Console().print(table)


def decisions(
    vm: str | None = typer.Argument(None, help="VM name, uuid or domid (default: all)."),
    since: str | None = SINCE_OPTION,
    until: str | None = UNTIL_OPTION,
    limit: int = typer.Option(200, "--limit", help="Show at most this many (the newest)."),
    as_json: bool = JSON_OPTION,
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
) -> None:
    """Every target the controller wrote, with its reason.

    Examples:

      ballast decisions web01 --since 1h

      ballast decisions --json
    """
    _, store = open_history(config_path, db, host_name)
    try:
        rows = store.decisions(vm, since, until, limit=limit)
    finally:
        store.close()
    if as_json:
        echo_json([
            {"time": d.time.isoformat(), "vm": d.domain.name, "uuid": d.domain.uuid,
             "old_target_kb": d.old_target_kb, "new_target_kb": d.new_target_kb,
             "reason": d.reason, "swap_target_kb": d.swap_target_kb,
             "policy_version": d.policy_version}
            for d in rows
        ])
        return
    table = Table(title=f"{len(rows)} decisions")
    for column in ("time (UTC)", "VM", "old", "new", "reason", "swap target", "policy"):
        table.add_column(column)
    for d in rows:
        table.add_row(
            f"{d.time:%Y-%m-%d %H:%M:%S}", d.domain.name, format_size_kb(d.old_target_kb),
            format_size_kb(d.new_target_kb), d.reason, format_size_kb(d.swap_target_kb),
            str(d.policy_version if d.policy_version is not None else "-"),
        )
    Console().print(table)


def events(
    vm: str | None = typer.Argument(None, help="VM name, uuid or domid (default: the host)."),
    since: str | None = SINCE_OPTION,
    until: str | None = UNTIL_OPTION,
    kind: list[str] = typer.Option([], "--kind", help="Only these kinds (repeatable)."),
    limit: int = typer.Option(200, "--limit", help="Show at most this many (the newest)."),
    as_json: bool = JSON_OPTION,
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
) -> None:
    """What happened: stale reports, uncooperative guests, pauses, a short host...

    Examples:

      ballast events --since 24h

      ballast events web01 --kind uncooperative --json
    """
    _, store = open_history(config_path, db, host_name)
    try:
        rows = store.events(vm, since, until, kinds=kind or None, limit=limit)
    finally:
        store.close()
    if as_json:
        echo_json([
            {"time": e.time.isoformat(), "kind": e.kind.value,
             "vm": e.domain.name if e.domain else None, "details": dict(e.details)}
            for e in rows
        ])
        return
    table = Table(title=f"{len(rows)} events")
    for column in ("time (UTC)", "kind", "VM", "details"):
        table.add_column(column)
    for e in rows:
        details = ", ".join(f"{k}={v}" for k, v in e.details.items())
        table.add_row(f"{e.time:%Y-%m-%d %H:%M:%S}", e.kind.value,
                      e.domain.name if e.domain else "-", details)
    Console().print(table)
