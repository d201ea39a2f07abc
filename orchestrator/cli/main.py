"""Entry point of the ``ballast`` command.

Each command group lives in its own module and is registered here. Errors
from the libraries reach the user as one clear line and a non-zero exit
code, never as a traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from orchestrator import __version__
from orchestrator.errors import BallastError


class _BallastGroup(TyperGroup):
    """Root group that turns Ballast's own errors into one clear line."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BallastError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc


app = typer.Typer(
    name="ballast",
    cls=_BallastGroup,
    pretty_exceptions_show_locals=False,
    help="Ballast: memory orchestrator for Xen hosts (dom0 controller, guest agent, tools).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ballast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """Ballast: memory orchestrator for Xen hosts."""


from orchestrator.cli import agent as agent_cmd  # noqa: E402
from orchestrator.cli import bench as bench_cmd  # noqa: E402
from orchestrator.cli import config_cmd  # noqa: E402
from orchestrator.cli import db as db_cmd  # noqa: E402
from orchestrator.cli import fleet as fleet_cmd  # noqa: E402
from orchestrator.cli import history as history_cmd  # noqa: E402
from orchestrator.cli import policy as policy_cmd  # noqa: E402
from orchestrator.cli import run as run_cmd  # noqa: E402
from orchestrator.cli import sim as sim_cmd  # noqa: E402
from orchestrator.cli import status as status_cmd  # noqa: E402
from orchestrator.cli import xenstored as xenstored_cmd  # noqa: E402

app.command("run")(run_cmd.run)
app.command("status")(status_cmd.status)
app.add_typer(policy_cmd.app, name="policy")
app.command("pause")(policy_cmd.pause)
app.command("resume")(policy_cmd.resume)
app.command("history")(history_cmd.history)
app.command("decisions")(history_cmd.decisions)
app.command("events")(history_cmd.events)
app.add_typer(config_cmd.app, name="config")
app.add_typer(fleet_cmd.app, name="fleet")
app.add_typer(db_cmd.app, name="db")
app.command("xenstored")(xenstored_cmd.xenstored)
app.command("agent")(agent_cmd.agent)
app.add_typer(bench_cmd.app, name="bench")
app.command("sim")(sim_cmd.sim)


def main() -> None:
    """Run the ``ballast`` command."""
    app()
