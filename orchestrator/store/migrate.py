"""Schema migrations: run Alembic in-process and check a database's revision.

`ballast db upgrade|current|downgrade` are thin shells over `upgrade`,
`status` and `downgrade`; `check_schema` is what `open_store` calls so the
controller refuses a database that is unmigrated, older or newer than this
code, with a message naming the command that fixes it. The migration scripts
live in the top-level `migrations/` directory, installed next to the
`orchestrator` package, so this works from a checkout, an installed wheel
and any working directory.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

import orchestrator
from orchestrator.errors import UsageError
from orchestrator.store.engine import display_url, make_oneshot_engine, one_line, write_transaction
from orchestrator.store.errors import SchemaMismatch, StoreUnavailable


def migrations_dir() -> Path:
    """The directory holding `env.py` and `versions/`."""
    here = Path(orchestrator.__file__).resolve().parent.parent / "migrations"
    if not (here / "env.py").is_file():
        raise SchemaMismatch(f"Ballast's migration scripts are missing (looked in {here})")
    return here


def alembic_config() -> Config:
    """An Alembic configuration pointing at Ballast's migrations."""
    directory = migrations_dir()
    ini = directory / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(directory))
    return cfg


@functools.cache
def _scripts() -> ScriptDirectory:
    # The migration scripts do not change while the process runs.
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    heads = _scripts().get_heads()
    if len(heads) != 1:
        raise SchemaMismatch(f"migration scripts have {len(heads)} heads, expected one")
    return heads[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaStatus:
    """Where a database's schema stands relative to this code."""

    database: str
    """The database as shown to operators."""
    current: str | None
    """Revision stamped in the database (None: unmigrated)."""
    head: str
    """Newest revision this code knows."""
    known: bool
    """True when `current` is a revision this code has a script for."""

    @property
    def up_to_date(self) -> bool:
        """True when the database is exactly at this code's head."""
        return self.current == self.head


def _status_of(conn: Connection, database: str) -> SchemaStatus:
    script = _scripts()
    heads = script.get_heads()
    if len(heads) != 1:
        raise SchemaMismatch(f"migration scripts have {len(heads)} heads, expected one")
    current_heads = MigrationContext.configure(conn).get_current_heads()
    current = current_heads[0] if current_heads else None
    known = True
    if current is not None:
        try:
            known = script.get_revision(current) is not None
        except (CommandError, RevisionError):
            known = False
    return SchemaStatus(database=database, current=current, head=heads[0], known=known)


def check_schema(conn: Connection, url: URL) -> SchemaStatus:
    """Raise `SchemaMismatch` unless the database is at this code's head."""
    status = _status_of(conn, display_url(url))
    where = status.database
    if status.current is None:
        raise SchemaMismatch(
            f"history database {where} is not initialised; run `ballast db upgrade --db {where}`"
        )
    if not status.known:
        raise SchemaMismatch(
            f"history database {where} is at schema revision {status.current}, newer than "
            f"this Ballast knows (newest {status.head}); upgrade Ballast, or run "
            f"`ballast db downgrade {status.head}` with the newer Ballast"
        )
    if not status.up_to_date:
        raise SchemaMismatch(
            f"history database {where} is at schema revision {status.current}, this Ballast "
            f"needs {status.head}; run `ballast db upgrade --db {where}`"
        )
    return status


@contextmanager
def _migration_connection(url: URL, *, create: bool) -> Iterator[Connection]:
    engine = make_oneshot_engine(url, create=create)
    try:
        with write_transaction(engine, migrating=True) as conn:
            yield conn
    except OperationalError as exc:
        raise StoreUnavailable(f"database {display_url(url)}: {one_line(exc.orig)}") from exc
    finally:
        engine.dispose()


def status(url: URL) -> SchemaStatus:
    """Where the database's schema stands (read-only)."""
    engine = make_oneshot_engine(url)
    try:
        with engine.connect() as conn:
            return _status_of(conn, display_url(url))
    except OperationalError as exc:
        raise StoreUnavailable(f"database {display_url(url)}: {one_line(exc.orig)}") from exc
    finally:
        engine.dispose()


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """The schema before and after an upgrade or downgrade."""

    before: SchemaStatus
    after: SchemaStatus


def upgrade(url: URL, revision: str = "head") -> Migration:
    """Migrate the database up to `revision`, creating it if missing."""
    with _migration_connection(url, create=True) as conn:
        before = _status_of(conn, display_url(url))
        if not before.known:
            raise SchemaMismatch(
                f"history database {before.database} is at revision {before.current}, newer "
                "than this Ballast knows; upgrade Ballast instead"
            )
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, revision)
        except CommandError as exc:
            raise UsageError(f"cannot upgrade to {revision!r}: {exc}") from exc
        return Migration(before=before, after=_status_of(conn, display_url(url)))


def downgrade(url: URL, revision: str) -> Migration:
    """Migrate the database down to `revision` (`base` removes every table)."""
    with _migration_connection(url, create=False) as conn:
        before = _status_of(conn, display_url(url))
        if before.current is None:
            raise UsageError(f"history database {before.database} is not initialised")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        try:
            command.downgrade(cfg, revision)
        except CommandError as exc:
            raise UsageError(f"cannot downgrade to {revision!r}: {exc}") from exc
        return Migration(before=before, after=_status_of(conn, display_url(url)))
