"""``ballast policy``, ``ballast pause``, ``ballast resume``: steer the controller.

Every change goes through :mod:`orchestrator.steering` (the same validation
MQTT commands get), is audited, and is picked up by the running controller
at its next cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import steering
from orchestrator.cli.common import (
    CONFIG_OPTION,
    DB_OPTION,
    HOST_OPTION,
    JSON_OPTION,
    echo_json,
    open_history,
    who,
)
from orchestrator.control.policy import HOST_FIELDS, field_label
from orchestrator.controller.daemon import base_host_policy
from orchestrator.errors import UsageError
from orchestrator.store.records import AuditSource
from orchestrator.units import format_size_kb

app = typer.Typer(
    help="Show and change per-VM memory policy (min, max, weight, mode, estimator...).",
    no_args_is_help=True,
)

APPLIED_NOTE = "The running controller applies it at its next cycle."


def _show_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_kb") and isinstance(value, int):
        return format_size_kb(value)
    if name.endswith("_s") and isinstance(value, int | float):
        return f"{value:g}s"
    return str(value)


def _document_text(document: Any) -> str:
    if not document:
        return "(defaults)"
    return ", ".join(f"{field_label(k)}={_show_value(k, v)}" for k, v in sorted(document.items()))


@app.command("list")
def list_policies(
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List every known VM and the policy fields it overrides.

    Example: ballast policy list --json
    """
    config, store = open_history(config_path, db, host_name)
    try:
        domains = store.domains()
        records = store.policies()
        settings = store.settings()
    finally:
        store.close()
    rows = []
    for ref in sorted(domains, key=lambda d: d.name):
        record = records.get(ref.uuid)
        rows.append({
            "vm": ref.name, "uuid": ref.uuid, "domid": ref.domid,
            "version": record.version if record else 0,
            "policy": dict(record.document) if record else {},
        })
    host = steering.host_overrides(settings)
    if as_json:
        echo_json({"host": {"paused": settings.paused, "policy": host}, "vms": rows})
        return
    table = Table(title=f"Policies on {config.controller.host_name}")
    for column in ("VM", "domid", "version", "overrides"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["vm"]), str(row["domid"]), str(row["version"]),
                      _document_text(row["policy"]))
    console = Console()
    console.print(table)
    console.print(
        f"host: {'PAUSED' if settings.paused else 'running'}; overrides: {_document_text(host)}"
    )


@app.command("show")
def show(
    vm: str = typer.Argument(..., help="VM name, uuid or domid."),
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one VM's stored policy and its recent changes.

    Example: ballast policy show web01
    """
    _, store = open_history(config_path, db, host_name)
    try:
        record = store.policy(vm)
        changes = store.audit_log(record.domain, since="3650d", limit=20)
    finally:
        store.close()
    if as_json:
        echo_json({
            "vm": record.domain.name, "uuid": record.domain.uuid, "version": record.version,
            "policy": dict(record.document),
            "changes": [
                {"time": c.time.isoformat(), "who": c.who, "source": c.source.value,
                 "old": c.old, "new": c.new, "version": c.version}
                for c in changes
            ],
        })
        return
    typer.echo(f"{record.domain.name} ({record.domain.uuid}), policy version {record.version}")
    typer.echo(f"  overrides: {_document_text(record.document)}")
    for c in changes:
        typer.echo(f"  {c.time:%Y-%m-%d %H:%M:%S} v{c.version} by {c.who} via {c.source.value}: "
                   f"{_document_text(c.new)}")


def _collect(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


@app.command("set")
def set_policy(
    vm: str | None = typer.Argument(
        None, help="VM name, uuid or domid; leave out with --host to change host settings."
    ),
    min_size: str | None = typer.Option(None, "--min", help="Lowest target, e.g. 512M."),
    max_size: str | None = typer.Option(None, "--max", help="Highest target, e.g. 4G."),
    weight: int | None = typer.Option(None, "--weight", help="Share when short (1-65535)."),
    mode: str | None = typer.Option(None, "--mode", help="auto, fixed or off."),
    estimator: str | None = typer.Option(
        None, "--estimator", help="committed, working-set, pressure or basic."
    ),
    target: str | None = typer.Option(None, "--target", help="Fixed target (mode fixed)."),
    reserve: str | None = typer.Option(None, "--reserve", help="Headroom over demand."),
    field: list[str] = typer.Option(
        [], "--field", "-f",
        help="Any other field as NAME=VALUE, e.g. -f max-shrink=256M -f swap-shrink=off.",
    ),
    host: bool = typer.Option(
        False, "--host", help="Change host settings and per-VM defaults instead of one VM."
    ),
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Set policy fields of one VM (or, with --host, of the host).

    Sizes take K/M/G suffixes. Impossible values are refused with a message
    saying what to change; nothing is stored then. Every change is audited.

    Examples:

      ballast policy set web01 --min 512M --max 4G --weight 512

      ballast policy set db01 --mode fixed --target 8G

      ballast policy set --host -f free-margin=256M -f weight=100
    """
    values = _collect(min=min_size, max=max_size, weight=weight, mode=mode,
                      estimator=estimator, target=target, reserve=reserve)
    for item in field:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--field expects NAME=VALUE, got {item!r}")
        values[name.strip()] = value.strip()
    _change(vm, values, [], host, config_path, db, host_name, as_json)


@app.command("unset")
def unset_policy(
    vm: str | None = typer.Argument(None, help="VM name, uuid or domid (or --host)."),
    fields: list[str] = typer.Argument(
        None, help="Fields to reset to their defaults (all of the VM's when none given).",
        show_default=False,
    ),
    host: bool = typer.Option(False, "--host", help="Reset host settings instead."),
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Reset policy fields to their defaults.

    Examples:

      ballast policy unset web01 max weight

      ballast policy unset web01          # every override of web01

      ballast policy unset --host free-margin
    """
    names = list(fields or [])
    if not host and vm is not None and not names:
        _, store = open_history(config_path, db, host_name)
        try:
            names = list(store.policy(vm).document)
        finally:
            store.close()
        if not names:
            typer.echo(f"{vm} has no overrides; nothing to unset")
            return
    _change(vm, {}, names, host, config_path, db, host_name, as_json)


def _change(
    vm: str | None, values: dict[str, Any], unset: list[str], host: bool,
    config_path: Path | None, db: str | None, host_name: str | None, as_json: bool,
) -> None:
    if host and vm is not None:
        raise UsageError("give either a VM or --host, not both")
    if not host and vm is None:
        raise UsageError("name a VM (see `ballast policy list`), or use --host")
    config, store = open_history(config_path, db, host_name)
    try:
        if host:
            result = steering.change_host_policy(
                store, values, unset, who=who(), source=AuditSource.CLI,
                base=base_host_policy(config),
            )
        else:
            assert vm is not None
            result = steering.change_vm_policy(
                store, vm, values, unset, who=who(), source=AuditSource.CLI,
                base=base_host_policy(config), context=steering.stored_context(store),
            )
    finally:
        store.close()
    what = result.vm or "host"
    if as_json:
        echo_json({"vm": result.vm, "version": result.version, "changed": result.changed,
                   "policy": dict(result.document)})
        return
    if not result.changed:
        typer.echo(f"{what}: nothing changed (policy version {result.version})")
        return
    typer.echo(f"{what}: policy version {result.version}: {_document_text(result.document)}")
    typer.echo(APPLIED_NOTE)


def pause(
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
) -> None:
    """Pause control on this host: no memory/target or directive is written.

    Example: ballast pause
    """
    _pause(True, config_path, db, host_name)


def resume(
    config_path: Path | None = CONFIG_OPTION,
    db: str | None = DB_OPTION,
    host_name: str | None = HOST_OPTION,
) -> None:
    """Resume control after `ballast pause`.

    Example: ballast resume
    """
    _pause(False, config_path, db, host_name)


def _pause(paused: bool, config_path: Path | None, db: str | None, host_name: str | None) -> None:
    config, store = open_history(config_path, db, host_name)
    try:
        settings = steering.set_paused(store, paused, who=who(), source=AuditSource.CLI)
    finally:
        store.close()
    state = "paused" if settings.paused else "running"
    typer.echo(f"{config.controller.host_name}: control {state} (settings version "
               f"{settings.version}). {APPLIED_NOTE}")


assert "paused" in HOST_FIELDS
