"""Entry point of the ``ballast`` command.

Each command (or group) lives in its own module, named in ``COMMANDS`` and
imported only when it runs or its help is shown: ``ballast agent`` in a guest
and ``ballast run`` in dom0 do not pay for SQLAlchemy, Alembic and every
other command's imports. Errors from the libraries reach the user as one
clear line and a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import typer
from typer.core import TyperGroup

from orchestrator import __version__
from orchestrator.errors import BallastError


class _Lazy(NamedTuple):
    module: str
    attr: str
    group: bool
    """True: ``attr`` is a Typer app (a command group); False: a command function."""


# In the order ``ballast --help`` lists them.
COMMANDS: dict[str, _Lazy] = {
    "run": _Lazy("orchestrator.cli.run", "run", False),
    "status": _Lazy("orchestrator.cli.status", "status", False),
    "policy": _Lazy("orchestrator.cli.policy", "app", True),
    "pause": _Lazy("orchestrator.cli.policy", "pause", False),
    "resume": _Lazy("orchestrator.cli.policy", "resume", False),
    "history": _Lazy("orchestrator.cli.history", "history", False),
    "decisions": _Lazy("orchestrator.cli.history", "decisions", False),
    "events": _Lazy("orchestrator.cli.history", "events", False),
    "sim": _Lazy("orchestrator.cli.sim", "sim", False),
    "bench": _Lazy("orchestrator.cli.bench", "app", True),
    "fleet": _Lazy("orchestrator.cli.fleet", "app", True),
    "agent": _Lazy("orchestrator.cli.agent", "agent", False),
    "xenstored": _Lazy("orchestrator.cli.xenstored", "xenstored", False),
    "db": _Lazy("orchestrator.cli.db", "app", True),
    "config": _Lazy("orchestrator.cli.config_cmd", "app", True),
}


def _load(name: str, spec: _Lazy) -> Any:
    target = getattr(importlib.import_module(spec.module), spec.attr)
    command: Any
    if spec.group:
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class _BallastGroup(TyperGroup):
    """Root group: loads commands on first use; Ballast's errors become one line."""

    _loaded: dict[str, Any]

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in COMMANDS if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in COMMANDS:
            return found
        cache = self.__dict__.setdefault("_loaded", {})
        if cmd_name not in cache:
            cache[cmd_name] = _load(cmd_name, COMMANDS[cmd_name])
        return cache[cmd_name]

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


def main() -> None:
    """Run the ``ballast`` command."""
    app()
