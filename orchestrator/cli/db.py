"""``ballast db``: create, inspect and migrate the history database.

Thin shells over `orchestrator.store.migrate`. The database is a SQLite file
path or a `postgresql+psycopg://` URL, from `--db`, else `$BALLAST_DB`, else
the configuration's `[store] url` (as `ballast run` finds it), whose default
is /var/lib/ballast/ballast.db.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from sqlalchemy.engine import URL

from orchestrator.cli.common import CONFIG_OPTION, db_url, load_config
from orchestrator.store import migrate
from orchestrator.store.engine import DB_ENV, display_url, resolve_db_url

app = typer.Typer(
    help="Create, inspect and migrate the history database (SQLite or PostgreSQL).",
    no_args_is_help=True,
)

_DB_OPTION = typer.Option(
    None,
    "--db",
    help=(
        "History database: a SQLite file path or a postgresql+psycopg:// URL "
        f"(default: ${DB_ENV}, else the configuration's [store] url)."
    ),
    show_default=False,
)


def _url(db: str | None, config: Path | None) -> URL:
    """The database `ballast run` would use with the same --db and --config."""
    return resolve_db_url(db_url(db, load_config(config)))


@app.command("upgrade")
def upgrade(
    db: str | None = _DB_OPTION,
    revision: str = typer.Option("head", "--to", help="Revision to migrate to."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Create the history database, or migrate it to the newest schema.

    Run it after installing or upgrading Ballast: the controller refuses to
    start on a database that is not at the newest schema.

    Example: ballast db upgrade --db /var/lib/ballast/ballast.db
    """
    done = migrate.upgrade(_url(db, config), revision)
    if done.before.current == done.after.current:
        typer.echo(f"{done.after.database}: already at schema {done.after.current}")
    else:
        was = done.before.current or "empty"
        typer.echo(f"{done.after.database}: schema {was} -> {done.after.current}")


@app.command("current")
def current(
    db: str | None = _DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Show the database's schema revision and whether it is up to date.

    Exits 1 when the database needs `ballast db upgrade` (or a newer Ballast).

    Example: ballast db current --db postgresql+psycopg://ballast@db/ballast
    """
    status = migrate.status(_url(db, config))
    if status.current is None:
        verdict = "not initialised: run `ballast db upgrade`"
    elif not status.known:
        verdict = "newer than this Ballast: upgrade Ballast"
    elif not status.up_to_date:
        verdict = "out of date: run `ballast db upgrade`"
    else:
        verdict = "up to date"
    if as_json:
        payload = {
            "database": status.database,
            "current": status.current,
            "head": status.head,
            "up_to_date": status.up_to_date,
        }
        typer.echo(json.dumps(payload))
    else:
        typer.echo(f"{status.database}: schema {status.current or '-'} ({verdict})")
    if not status.up_to_date:
        raise typer.Exit(1)


@app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(
        ..., help="Revision to go back to; 'base' removes every table (all history)."
    ),
    db: str | None = _DB_OPTION,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Migrate the history database back to an older schema.

    Downgrading can delete history (to 'base': all of it); it asks first
    unless --yes is given.

    Example: ballast db downgrade base --db ./demo/ballast.db --yes
    """
    url = _url(db, config)
    if not yes:
        typer.confirm(
            f"Downgrade {display_url(url)} to {revision}? History may be lost", abort=True
        )
    done = migrate.downgrade(url, revision)
    typer.echo(f"{done.after.database}: schema now {done.after.current or 'empty (base)'}")
