"""``ballast fleet``: every host on one MQTT broker, and policy commands to them.

Thin shells over :mod:`orchestrator.telemetry.fleet`. ``status`` reads the
retained host statuses and VM states (``--watch`` keeps following them);
``policy set`` / ``policy unset`` send a command to one host and print its
reply. The broker comes from ``--broker mqtt[s]://[user[:password]@]host[:port]``
or ``$BALLAST_MQTT_BROKER``; a password can also come from
``$BALLAST_MQTT_PASSWORD`` so it stays out of the process list.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import socket
import time
from enum import StrEnum
from typing import Any, Literal

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.control.policy import VM_FIELDS, coerce_value, field_label, policy_fields
from orchestrator.errors import TransientError, UsageError
from orchestrator.telemetry.commands import CommandReply, ErrorKind, PolicySet, PolicyUnset
from orchestrator.telemetry.fleet import (
    DEFAULT_STALE_INTERVALS,
    FleetCollector,
    FleetView,
    HostRow,
    fetch_fleet,
    send_policy_command,
    view_as_json,
    watch_fleet,
)
from orchestrator.telemetry.messages import HostOfflineMsg, HostStatusMsg
from orchestrator.telemetry.settings import BrokerSettings, TlsSettings, broker_from_url
from orchestrator.telemetry.topics import DEFAULT_PREFIX
from orchestrator.units import format_size_kb

app = typer.Typer(
    help="See every Ballast host on an MQTT broker and send them policy commands.",
    no_args_is_help=True,
)
policy_app = typer.Typer(
    help="Change a VM's policy on a remote host over MQTT.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")

PASSWORD_ENV = "BALLAST_MQTT_PASSWORD"

_BROKER = typer.Option(
    ...,
    "--broker",
    "-b",
    envvar="BALLAST_MQTT_BROKER",
    help="Broker URL: mqtt://[user[:password]@]host[:port] or mqtts://... "
    f"(password also from ${PASSWORD_ENV}).",
    show_default=False,
)
_PREFIX = typer.Option(DEFAULT_PREFIX, "--prefix", help="Topic prefix the hosts publish under.")
_TLS_CA = typer.Option(None, "--tls-ca", help="CA bundle (PEM) to verify an mqtts:// broker.")
_TLS_CERT = typer.Option(None, "--tls-cert", help="Client certificate (PEM) for mutual TLS.")
_TLS_KEY = typer.Option(None, "--tls-key", help="Key (PEM) of --tls-cert.")
_TLS_INSECURE = typer.Option(
    False, "--tls-insecure", help="Do not verify the broker's certificate (testing only)."
)
_MQTT_VERSION = typer.Option(
    "5", "--mqtt-version", help="MQTT protocol version: 5 or 3.1.1."
)
_TIMEOUT = typer.Option(10.0, "--timeout", help="Seconds to wait for the broker or the host.")
_JSON = typer.Option(False, "--json", help="Print JSON.")


def _broker(
    url: str,
    *,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_insecure: bool,
    mqtt_version: str,
    timeout_s: float,
) -> BrokerSettings:
    if mqtt_version not in ("5", "3.1.1"):
        raise UsageError(f"--mqtt-version must be 5 or 3.1.1, not {mqtt_version!r}")
    version: Literal["5", "3.1.1"] = "5" if mqtt_version == "5" else "3.1.1"
    if timeout_s <= 0:
        raise UsageError("--timeout must be positive")
    tls = None
    if tls_ca or tls_cert or tls_key or tls_insecure:
        tls = TlsSettings(
            ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, insecure=tls_insecure
        )
    broker = broker_from_url(url, tls=tls, protocol=version, timeout_s=timeout_s)
    env_password = os.environ.get(PASSWORD_ENV)
    if broker.password is None and env_password and broker.username:
        broker = broker_from_url(
            url, tls=tls, protocol=version, timeout_s=timeout_s, password=env_password
        )
    return broker


# ---- status ------------------------------------------------------------------

_CONDITION_STYLE = {
    "online": "green",
    "stale": "yellow",
    "offline": "red",
    "unknown": "magenta",
    "invalid": "red",
}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _host_detail(row: HostRow) -> str:
    status = row.status
    if isinstance(status, HostStatusMsg):
        parts = [
            f"{status.vms_managed} VMs",
            f"budget {format_size_kb(status.budget_used_kb)}/{format_size_kb(status.budget_kb)}",
            f"free {format_size_kb(status.host_free_kb)} of {format_size_kb(status.host_total_kb)}",
            f"v{status.version}",
            _age(row.age_s),
        ]
        if status.paused:
            parts.insert(0, "PAUSED")
        return ", ".join(parts)
    if isinstance(status, HostOfflineMsg):
        when = "connection lost (last will)" if status.updated is None else _age(row.age_s)
        return f"offline: {when}, v{status.version}"
    if row.condition == "invalid":
        return f"unreadable status: {row.error}"
    return "no status published"


def render_table(view: FleetView, *, title: str) -> Table:
    """One table: a line per host, its VMs below it."""
    table = Table(title=title, title_justify="left", expand=False)
    for name, justify in [
        ("HOST / VM", "left"),
        ("STATE", "left"),
        ("TARGET", "right"),
        ("ACTUAL", "right"),
        ("DEMAND", "right"),
        ("DETAIL", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if not view.hosts:
        table.add_row("(no hosts)", "", "", "", "", "")
    for row in view.hosts:
        style = _CONDITION_STYLE.get(row.condition, "")
        used = (
            format_size_kb(row.status.budget_used_kb)
            if isinstance(row.status, HostStatusMsg)
            else ""
        )
        table.add_row(
            Text(row.name, style="bold"),
            Text(row.condition, style=style),
            used,
            "",
            "",
            _host_detail(row),
        )
        for vm in row.vms:
            if vm.state is None:
                table.add_row(f"  {vm.name}", Text("invalid", style="red"), "", "", "", vm.error)
                continue
            table.add_row(
                f"  {vm.name}",
                vm.state.state,
                format_size_kb(vm.state.target_kb),
                format_size_kb(vm.state.actual_kb),
                format_size_kb(vm.state.demand_kb),
                vm.state.reason,
            )
    return table


@app.command("status")
def status(
    broker_url: str = _BROKER,
    prefix: str = _PREFIX,
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep the table up to date."),
    as_json: bool = _JSON,
    stale_intervals: float = typer.Option(
        DEFAULT_STALE_INTERVALS,
        "--stale-intervals",
        help="Mark a host stale when its status is older than this many of its intervals.",
    ),
    refresh_s: float = typer.Option(1.0, "--refresh", help="Seconds between --watch redraws."),
    tls_ca: str | None = _TLS_CA,
    tls_cert: str | None = _TLS_CERT,
    tls_key: str | None = _TLS_KEY,
    tls_insecure: bool = _TLS_INSECURE,
    mqtt_version: str = _MQTT_VERSION,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Show every host and its VMs from the broker's retained states.

    Hosts are online, stale (status older than --stale-intervals of the host's
    own interval), offline (clean shutdown or last will), or unknown (VM
    states but no status).

    Example: ballast fleet status --broker mqtt://broker.lan --watch
    """
    broker = _broker(
        broker_url, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        tls_insecure=tls_insecure, mqtt_version=mqtt_version, timeout_s=timeout_s,
    )
    if stale_intervals <= 0 or refresh_s <= 0:
        raise UsageError("--stale-intervals and --refresh must be positive")
    if watch and as_json:
        raise UsageError("--watch draws a table; use --json without --watch")
    if watch:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_watch(broker, prefix, stale_intervals, refresh_s))
        return
    collector = asyncio.run(fetch_fleet(broker, prefix, timeout_s=timeout_s))
    view = collector.view(now=time.time(), stale_intervals=stale_intervals)
    if as_json:
        typer.echo(json.dumps(view_as_json(view), indent=2))
        return
    Console().print(render_table(view, title=f"{broker.url} {prefix}"))


async def _watch(
    broker: BrokerSettings, prefix: str, stale_intervals: float, refresh_s: float
) -> None:
    collector = FleetCollector(prefix)
    problem: list[str] = []

    def frame() -> Group:
        view = collector.view(now=time.time(), stale_intervals=stale_intervals)
        title = f"{broker.url} {prefix}  {time.strftime('%H:%M:%S')}"
        table = render_table(view, title=title)
        if problem:
            return Group(table, Text(problem[-1], style="red"))
        return Group(table)

    async def follow() -> None:
        while True:
            try:
                await watch_fleet(broker, collector)
            except TransientError as exc:
                problem[:] = [f"{exc}; retrying"]
            await asyncio.sleep(min(5.0, refresh_s * 2))

    with Live(frame(), auto_refresh=False, transient=False) as live:
        task = asyncio.create_task(follow(), name="ballast-fleet-watch")
        try:
            while True:
                await asyncio.sleep(refresh_s)
                if task.done():
                    task.result()
                live.update(frame(), refresh=True)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ---- policy ------------------------------------------------------------------

_SIZE = "Size such as 512M or 4G."


def _client_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _plain(value: object) -> bool | int | float | str:
    if isinstance(value, StrEnum):
        return value.value
    assert isinstance(value, bool | int | float | str)
    return value


def _describe(policy: dict[str, Any] | None) -> str:
    if not policy:
        return "all defaults"
    parts = []
    for name, value in sorted(policy.items()):
        shown = format_size_kb(value) if name.endswith("_kb") and isinstance(value, int) else value
        parts.append(f"{field_label(name)} {shown}")
    return ", ".join(parts)


def _report(reply: CommandReply, host: str, vm: str, as_json: bool) -> None:
    if as_json:
        doc = {
            "ok": reply.ok, "host": host, "vm": reply.vm or vm, "version": reply.version,
            "policy": dict(reply.policy or {}) if reply.ok else None,
            "error": None if reply.ok else {"kind": reply.error_kind, "message": reply.error},
        }
        typer.echo(json.dumps(doc, indent=2))
        if not reply.ok:
            raise typer.Exit(1)
        return
    if reply.ok:
        version = f" (version {reply.version})" if reply.version is not None else ""
        typer.echo(f"{host}/{reply.vm or vm}: policy now {_describe(dict(reply.policy or {}))}"
                   f"{version}")
        return
    message = f"host {host!r} refused the change to {vm!r}: {reply.error}"
    if reply.error_kind is ErrorKind.UNAVAILABLE:
        raise TransientError(message)
    raise UsageError(message)


@policy_app.command("set")
def policy_set(
    host: str = typer.Argument(..., help="Host name, as `ballast fleet status` shows it."),
    vm: str = typer.Argument(..., help="VM name on that host."),
    min_: str | None = typer.Option(None, "--min", help=f"Lowest target. {_SIZE}"),
    max_: str | None = typer.Option(None, "--max", help=f"Highest target. {_SIZE}"),
    weight: str | None = typer.Option(
        None, "--weight", help="Share of memory above the minimums when the host is short."
    ),
    mode: str | None = typer.Option(None, "--mode", help="auto, fixed or off."),
    target: str | None = typer.Option(
        None, "--target", help=f"Pinned target in mode fixed. {_SIZE}"
    ),
    estimator: str | None = typer.Option(None, "--estimator", help="Demand estimator."),
    reserve: str | None = typer.Option(None, "--reserve", help=f"Headroom over demand. {_SIZE}"),
    fallback: str | None = typer.Option(
        None, "--fallback", help=f"Target when reports are dead. {_SIZE}"
    ),
    max_grow: str | None = typer.Option(
        None, "--max-grow", help=f"Largest growth per cycle. {_SIZE}"
    ),
    max_shrink: str | None = typer.Option(
        None, "--max-shrink", help=f"Largest shrink per interval. {_SIZE}"
    ),
    deadband: str | None = typer.Option(
        None, "--deadband", help=f"Smallest change written. {_SIZE}"
    ),
    min_usable: str | None = typer.Option(None, "--min-usable", help=f"Kernel min_usable. {_SIZE}"),
    down_hysteresis: str | None = typer.Option(
        None, "--down-hysteresis", help="Shrink divisor per interval (kernel: 8)."
    ),
    up_hysteresis: str | None = typer.Option(
        None, "--up-hysteresis", help="Growth divisor per interval (kernel: 1)."
    ),
    swap_shrink: str | None = typer.Option(
        None, "--swap-shrink", help="Send swap-shrink directives: on or off."
    ),
    broker_url: str = _BROKER,
    prefix: str = _PREFIX,
    client: str | None = typer.Option(
        None, "--client", help="Name recorded in the host's audit log (default: user@machine)."
    ),
    as_json: bool = _JSON,
    tls_ca: str | None = _TLS_CA,
    tls_cert: str | None = _TLS_CERT,
    tls_key: str | None = _TLS_KEY,
    tls_insecure: bool = _TLS_INSECURE,
    mqtt_version: str = _MQTT_VERSION,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Set policy fields of one VM on a remote host and print the host's answer.

    The host validates the change with the same rules as the local CLI and
    audits it with the source mqtt. Fields not given keep their values.

    Example: ballast fleet policy set dom0-a web-1 --min 512M --max 4G -b mqtt://broker
    """
    given = {
        "min_kb": min_, "max_kb": max_, "weight": weight, "mode": mode, "target_kb": target,
        "estimator": estimator, "reserve_kb": reserve, "fallback_kb": fallback,
        "max_grow_kb": max_grow, "max_shrink_kb": max_shrink, "deadband_kb": deadband,
        "min_usable_kb": min_usable, "down_hysteresis": down_hysteresis,
        "up_hysteresis": up_hysteresis, "swap_shrink": swap_shrink,
    }
    assert set(given) == set(VM_FIELDS), "a VM policy field has no flag"
    # Parse here with the policy model's own rules, so a typo fails before
    # anything is sent; the wire then carries KiB, seconds and plain names.
    changes = {
        name: _plain(coerce_value(name, raw)) for name, raw in given.items() if raw is not None
    }
    if not changes:
        raise UsageError("nothing to set: give at least one option such as --min 512M")
    broker = _broker(
        broker_url, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        tls_insecure=tls_insecure, mqtt_version=mqtt_version, timeout_s=timeout_s,
    )
    command = PolicySet(vm, tuple(sorted(changes.items())))
    reply = asyncio.run(
        send_policy_command(
            broker, prefix, host, command, client_name=client or _client_name(),
            timeout_s=timeout_s,
        )
    )
    _report(reply, host, vm, as_json)


@policy_app.command("unset")
def policy_unset(
    host: str = typer.Argument(..., help="Host name, as `ballast fleet status` shows it."),
    vm: str = typer.Argument(..., help="VM name on that host."),
    fields: list[str] = typer.Argument(
        ..., help="Fields to reset to the host default: min, max, weight, mode, target, ..."
    ),
    broker_url: str = _BROKER,
    prefix: str = _PREFIX,
    client: str | None = typer.Option(
        None, "--client", help="Name recorded in the host's audit log (default: user@machine)."
    ),
    as_json: bool = _JSON,
    tls_ca: str | None = _TLS_CA,
    tls_cert: str | None = _TLS_CERT,
    tls_key: str | None = _TLS_KEY,
    tls_insecure: bool = _TLS_INSECURE,
    mqtt_version: str = _MQTT_VERSION,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Reset policy fields of one VM on a remote host to the host's defaults.

    Example: ballast fleet policy unset dom0-a web-1 min max -b mqtt://broker
    """
    names = policy_fields(fields)
    not_vm = [name for name in names if name not in VM_FIELDS]
    if not_vm:
        raise UsageError(f"{', '.join(not_vm)}: not a per-VM policy field")
    broker = _broker(
        broker_url, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        tls_insecure=tls_insecure, mqtt_version=mqtt_version, timeout_s=timeout_s,
    )
    command = PolicyUnset(vm, tuple(sorted(set(names))))
    reply = asyncio.run(
        send_policy_command(
            broker, prefix, host, command, client_name=client or _client_name(),
            timeout_s=timeout_s,
        )
    )
    _report(reply, host, vm, as_json)
