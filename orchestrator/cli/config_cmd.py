"""``ballast config``: show the effective controller configuration."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from orchestrator import config as cfg

app = typer.Typer(help="Inspect the controller configuration (ballast.toml).", no_args_is_help=True)


@app.command("show")
def show(
    config_path: Path | None = typer.Option(
        None, "--config", "-c", help="Configuration file (default /etc/ballast/ballast.toml)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of TOML."),
) -> None:
    """Print the effective configuration: file values over defaults, secrets masked.

    Example: ballast config show --config /etc/ballast/ballast.toml
    """
    config = cfg.load(config_path, required=config_path is not None)
    if as_json:
        typer.echo(json.dumps(cfg.as_dict(config), indent=2))
    else:
        typer.echo(cfg.render_toml(config), nl=False)
