"""``ballast status``: the fleet on this host, one row per VM.

Reads the controller's live status from the history store, so it works while
the controller runs and after it stopped (then it says how old the picture
is). ``--watch`` refreshes in place.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.cli.common import (
    CONFIG_OPTION,
    DB_OPTION,
    HOST_OPTION,
    JSON_OPTION,
    echo_json,
    open_history,
)
from orchestrator.store.records import HostStatus
from orchestrator.store.store import Store
from orchestrator.units import format_size_kb

# A status older than this many control intervals means the controller is not running.
STALE_INTERVALS = 3

_STATE_STYLE = {
    "ok": "green", "stale": "yellow", "dead": "red", "inactive": "yellow",
    "uncooperative": "red", "paused": "cyan", "fixed": "blue", "off": "dim",
}


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def status_age_s(status: HostStatus, now: datetime | None = None) -> float:
    """Seconds since the controller wrote ``status``."""
    return ((now or datetime.now(UTC)) - status.time).total_seconds()


def controller_running(status: HostStatus, now: datetime | None = None) -> bool:
    """Whether the status is recent enough to come from a running controller."""
    interval = float(status.document.get("host", {}).get("interval_s", 5.0))
    return status_age_s(status, now) <= max(STALE_INTERVALS * interval, 15.0)


def render(status: HostStatus | None, host_name: str) -> Group | Text:
    """The status table and host line, for the terminal."""
    if status is None:
        return Text(f"{host_name}: no controller has run against this database yet "
                    "(start one with `ballast run`)")
    doc = status.document
    host: dict[str, Any] = doc.get("host", {})
    age = status_age_s(status)
    table = Table(title=f"Ballast on {host.get('name', host_name)}", expand=False,
                  pad_edge=False)
    names = [str(v.get("name")) for v in doc.get("vms", [])]
    table.add_column("VM", no_wrap=True, min_width=min(max(map(len, names), default=2), 24))
    for column in ("id", "target", "actual", "demand", "avail", "swap", "PSI"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("reason", overflow="ellipsis", no_wrap=True, max_width=28)
    table.add_column("age", justify="right", no_wrap=True)
    for vm in sorted(doc.get("vms", []), key=lambda v: str(v.get("name"))):
        state = str(vm.get("state"))
        psi = vm.get("psi_some")
        table.add_row(
            str(vm.get("name")), str(vm.get("domid")), format_size_kb(vm.get("target_kb")),
            format_size_kb(vm.get("actual_kb")), format_size_kb(vm.get("demand_kb")),
            format_size_kb(vm.get("available_kb")), format_size_kb(vm.get("swap_used_kb")),
            "-" if psi is None else f"{psi:.1f}%",
            Text(state, style=_STATE_STYLE.get(state, "")), str(vm.get("reason")),
            _age_text(vm.get("report_age_s")),
        )
    used = host.get("sum_targets_kb", 0)
    budget = host.get("budget_kb", 0) or 1
    line = (
        f"host: total {format_size_kb(host.get('total_kb'))}, "
        f"free {format_size_kb(host.get('free_kb'))}, "
        f"reserved {format_size_kb((host.get('dom0_reserve_kb') or 0) + (host.get('free_margin_kb') or 0))}, "  # noqa: E501
        f"budget used {format_size_kb(used)} of {format_size_kb(budget)} "
        f"({100 * used / budget:.0f}%)"
    )
    flags = []
    if host.get("paused"):
        flags.append("PAUSED")
    if host.get("overcommitted"):
        flags.append("OVERCOMMITTED: every VM at its minimum")
    elif host.get("short"):
        flags.append("short of memory: shared by weight")
    if flags:
        line += "  [" + "; ".join(flags) + "]"
    when = (f"updated {_age_text(age)} ago" if controller_running(status)
            else f"controller not running: last status {_age_text(age)} ago "
                 f"({status.time:%Y-%m-%d %H:%M:%S} UTC)")
    return Group(table, Text(line), Text(when, style="dim"))


def _read(store: Store) -> HostStatus | None:
    return store.status()


def status(
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh in place until Ctrl-C."),
    every: float = typer.Option(2.0, "--every", help="Seconds between refreshes with --watch."),
    as_json: bool = JSON_OPTION,
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
) -> None:
    """Show every VM: target, actual, demand, available, swap, PSI, state and reason.

    Works while the controller runs and after it stopped (from the history).

    Examples:

      ballast status

      ballast status --watch

      ballast status --json | jq '.vms[] | select(.state != "ok")'
    """
    config, store = open_history(config_path, db, host_name)
    name = config.controller.host_name
    try:
        if as_json:
            current = _read(store)
            if current is None:
                echo_json({"host": {"name": name}, "vms": [], "running": False})
                return
            doc = dict(current.document)
            doc["updated"] = current.time.isoformat()
            doc["running"] = controller_running(current)
            echo_json(doc)
            return
        console = Console()
        if not watch:
            console.print(render(_read(store), name))
            return
        with Live(render(_read(store), name), console=console, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(max(every, 0.2))
                    live.update(render(_read(store), name), refresh=True)
            except KeyboardInterrupt:
                pass
    finally:
        store.close()
