"""Where the history database is and how Ballast connects to it.

An operator names the database by a path (SQLite) or a URL
(`postgresql+psycopg://...`); `--db`, then `$BALLAST_DB`, then the
production default under /var/lib/ballast. SQLite runs in WAL mode with the
pragmas a long-running writer plus short-lived CLI readers need; the file is
created 0600 in a directory created 0700, because the history shows every
guest's memory and the policies steer them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from orchestrator.errors import UsageError
from orchestrator.store.errors import SchemaMismatch

DEFAULT_DB_PATH = Path("/var/lib/ballast/ballast.db")
DB_ENV = "BALLAST_DB"

# SQLite waits this long for a lock held by another process (the CLI writing
# a policy while the controller's writer commits a batch) before failing.
BUSY_TIMEOUT_MS = 5000
# Page cache per connection (negative: KiB): keeps the upper levels of the
# multi-gigabyte sample and rollup b-trees in memory.
CACHE_KIB = 64 * 1024
# Checkpoint the WAL every this many pages (SQLite's default is 1,000): pages
# that several commits rewrite (the newest leaves, the domains table) are
# copied back to the database once per checkpoint, not once per commit.
WAL_AUTOCHECKPOINT_PAGES = 8192
# Truncate the WAL file back to this size after checkpoints, so a burst does not
# leave a large file behind.
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

_WRITE_OPTION = "ballast_write"


def resolve_db_url(value: str | None = None) -> URL:
    """Turn `--db` (a path or URL), else `$BALLAST_DB`, else the default, into a URL."""
    text = value if value else os.environ.get(DB_ENV) or str(DEFAULT_DB_PATH)
    if "://" not in text:
        path = Path(text).expanduser()
        if text.endswith("/") or path.is_dir():
            raise UsageError(f"database path {text!r} is a directory; name a file, e.g. ballast.db")
        return URL.create("sqlite+pysqlite", database=str(path.absolute()))
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise UsageError(f"invalid database URL {text!r}: {exc}") from exc
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise UsageError(
                f"database driver {url.drivername!r} is not supported; use postgresql+psycopg://"
            )
        if importlib.util.find_spec("psycopg") is None:
            raise UsageError("PostgreSQL support needs psycopg: pip install 'ballast[postgres]'")
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise UsageError(f"database driver {url.drivername!r} is not supported; use sqlite://")
        if not url.database or url.database == ":memory:":
            raise UsageError("an in-memory SQLite database cannot be shared; give a file path")
        return url.set(drivername="sqlite+pysqlite")
    raise UsageError(
        f"unsupported database {url.drivername!r}: give a file path (SQLite) or a "
        "postgresql+psycopg:// URL"
    )


def one_line(error: object) -> str:
    """A driver's (often multi-line) error message as one line."""
    return " ".join(str(error).split())


def display_url(url: URL) -> str:
    """The URL as shown to operators (password hidden)."""
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def is_sqlite(url: URL) -> bool:
    """True for SQLite URLs."""
    return url.get_backend_name() == "sqlite"


def prepare_sqlite_file(path: Path) -> None:
    """Create the database's directory (0700) and file (0600) if missing.

    Existing directories and files keep their modes: an operator may have
    chosen them. SQLite gives the -wal and -shm files the database's mode.
    """
    parent = path.parent
    missing: list[Path] = []
    probe = parent
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot create database directory {directory}: {exc}") from exc
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    if not path.exists():
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise UsageError(f"cannot create database file {path}: {exc}") from exc
        os.fchmod(fd, 0o600)
        os.close(fd)


def _sqlite_file(url: URL, *, create: bool) -> None:
    assert url.database is not None
    path = Path(url.database)
    if create:
        prepare_sqlite_file(path)
    elif not path.exists():
        raise SchemaMismatch(
            f"no history database at {path}; create it with `ballast db upgrade --db {path}`"
        )


def _sqlite_on_connect(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: SQLAlchemy's
        # "begin" event below emits BEGIN itself (the documented pysqlite recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cur.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a committed transaction survives a process crash; a power
        # loss may lose the last commits but never corrupts the file.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        cur.execute("PRAGMA temp_store = MEMORY")
        cur.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        cur.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
        cur.close()

    return on_connect


def _postgres_on_connect(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Like SQLite's busy_timeout: give up on a lock after this long instead
        # of waiting forever, so the writer can count, drop and retry.
        dbapi_conn.execute(f"SET lock_timeout = {busy_timeout_ms}")
        dbapi_conn.commit()

    return on_connect


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock at BEGIN, so a read-modify-write (policy
    # change) never fails half-way on a lock upgrade; readers stay deferred.
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def make_engine(
    url: URL,
    *,
    create: bool = False,
    pool_size: int = 4,
    busy_timeout_s: float = BUSY_TIMEOUT_MS / 1000,
) -> Engine:
    """Create an engine for `url` with Ballast's connection settings.

    A missing SQLite file is created only when `create` is true; otherwise it
    is an error naming the command that creates it. `busy_timeout_s` is how
    long a statement waits for a lock held by another connection.
    """
    timeout_ms = max(1, round(busy_timeout_s * 1000))
    if is_sqlite(url):
        _sqlite_file(url, create=create)
        engine = create_engine(
            url,
            connect_args={"timeout": timeout_ms / 1000, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=8,
        )
        event.listen(engine, "connect", _sqlite_on_connect(timeout_ms))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=8,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10},
    )
    event.listen(engine, "connect", _postgres_on_connect(timeout_ms))
    return engine


def make_oneshot_engine(url: URL, *, create: bool = False) -> Engine:
    """An engine without pooling, for migrations and one-off commands."""
    if is_sqlite(url):
        _sqlite_file(url, create=create)
        engine = create_engine(url, poolclass=NullPool)
        event.listen(engine, "connect", _sqlite_on_connect(BUSY_TIMEOUT_MS))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})


@contextmanager
def write_transaction(engine: Engine, *, migrating: bool = False) -> Iterator[Connection]:
    """A transaction that takes the write lock at once (BEGIN IMMEDIATE on SQLite).

    `migrating`: on SQLite, foreign keys are not enforced while the schema is
    rebuilt (a batch migration drops and recreates referenced tables, as
    SQLite's ALTER TABLE procedure prescribes) and checked before commit.
    """
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if migrating and sqlite:
            # Must precede BEGIN: the pragma is a no-op inside a transaction.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn
            if migrating and sqlite:
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                if broken is not None:
                    raise SchemaMismatch(f"migration left a dangling reference: {tuple(broken)}")
