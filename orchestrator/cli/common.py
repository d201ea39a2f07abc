"""Options and helpers shared by the ``ballast`` commands."""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from orchestrator import config as cfg
from orchestrator.store.store import Store, StoreConfig, open_store

CONFIG_OPTION = typer.Option(
    None, "--config", "-c",
    help="Configuration file (default /etc/ballast/ballast.toml, or $BALLAST_CONFIG).",
    show_default=False,
)
DB_OPTION = typer.Option(
    None, "--db",
    help="History database: a SQLite path or postgresql+psycopg:// URL "
    "(default: $BALLAST_DB, else the configuration's [store] url).",
    show_default=False,
)
HOST_OPTION = typer.Option(
    None, "--host-name",
    help="Host whose history to use (default: the configuration's host_name).",
    show_default=False,
)
JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")


def load_config(path: Path | None) -> cfg.Config:
    """The configuration named by ``--config`` (required to exist) or the default."""
    return cfg.load(path, required=path is not None)


def db_url(flag: str | None, config: cfg.Config) -> str:
    """``--db``, else ``$BALLAST_DB``, else the configuration's store URL."""
    return flag or os.environ.get("BALLAST_DB") or config.store.url


def open_history(
    config_path: Path | None, db: str | None, host_name: str | None = None
) -> tuple[cfg.Config, Store]:
    """Open the history store the way the controller on this host does."""
    config = load_config(config_path)
    if host_name:
        config = replace(config, controller=replace(config.controller, host_name=host_name))
    store = open_store(db_url(db, config), config=StoreConfig(host=config.controller.host_name))
    return config, store


def who() -> str:
    """The operator identity recorded in the audit log: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def echo_json(value: Any) -> None:
    """Print one JSON document."""
    typer.echo(json.dumps(value, indent=2, default=str))
