"""Fixtures of the store tests: every store test runs on a real SQLite file and
on the real PostgreSQL server, each PostgreSQL test in a schema of its own."""

from __future__ import annotations

import argparse
import io
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from orchestrator.store import DomainRef, Sample, Store, StoreConfig, migrate, open_store
from orchestrator.store.engine import resolve_db_url

# A fixed, round start time: 2026-03-02 00:00 UTC.
T0 = datetime(2026, 3, 2, tzinfo=UTC)


@dataclass
class FakeClock:
    """The store's injected clock: seconds since the epoch, moved by the test."""

    t: float

    def __call__(self) -> float:
        return self.t

    def set(self, moment: datetime) -> None:
        self.t = moment.timestamp()

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(scope="session")
def pg_admin(postgres_url: str) -> Iterator[Engine]:
    """One pooled engine that creates and drops the per-test schemas."""
    engine = create_engine(postgres_url, pool_size=1)
    yield engine
    engine.dispose()


def _pg_schema_url(admin: Engine) -> Iterator[URL]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield resolve_db_url(str(tmp_path / "ballast.db"))
        return
    yield from _pg_schema_url(request.getfixturevalue("pg_admin"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0.timestamp())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session, copied by `migrated_url`."""
    path = tmp_path_factory.mktemp("template") / "ballast.db"
    migrate.upgrade(resolve_db_url(str(path)))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(scope="session")
def postgres_upgrade_sql(postgres_url: str) -> str:
    """The migrations as the SQL script Alembic renders offline, so a fresh
    schema is migrated in one round trip (the migration tests themselves run
    Alembic online)."""
    cfg = migrate.alembic_config()
    out = io.StringIO()
    cfg.output_buffer = out
    cfg.cmd_opts = argparse.Namespace(x=[f"db={postgres_url}"])
    command.upgrade(cfg, "head", sql=True)
    return "\n".join(
        line for line in out.getvalue().splitlines() if line.strip() not in ("BEGIN;", "COMMIT;")
    )


@pytest.fixture
def migrated_url(request: pytest.FixtureRequest, db_url: URL) -> URL:
    """`db_url`, at the newest schema."""
    if db_url.get_backend_name() == "sqlite":
        assert db_url.database is not None
        shutil.copy(request.getfixturevalue("sqlite_template"), db_url.database)
        return db_url
    schema = db_url.query["options"].removeprefix("-csearch_path=")
    with request.getfixturevalue("pg_admin").begin() as conn:
        conn.exec_driver_sql(f'SET LOCAL search_path = "{schema}"')
        conn.exec_driver_sql(request.getfixturevalue("postgres_upgrade_sql"))
    return db_url


@pytest.fixture
def store(migrated_url: URL, clock: FakeClock) -> Iterator[Store]:
    """A migrated, opened store on host `h1` with the fake clock."""
    with open_store(migrated_url, config=StoreConfig(host="h1"), clock=clock) as opened:
        yield opened


def vm(i: int, *, name: str | None = None, domid: int | None = None) -> DomainRef:
    """The i-th test VM (stable UUID)."""
    return DomainRef(
        uuid=str(uuid.UUID(int=0xBA11A57 << 64 | i)),
        name=name or f"vm{i}",
        domid=i + 1 if domid is None else domid,
    )


def sample(dom: DomainRef, at: datetime, **figures: int | float | None) -> Sample:
    """A sample with plausible defaults for the figures not given."""
    values: dict[str, int | float | None] = {"target_kb": 1 << 20, "actual_kb": 1 << 20}
    values.update(figures)
    return Sample(domain=dom, time=at, **values)  # type: ignore[arg-type]


def every(start: datetime, step_s: float, count: int) -> list[datetime]:
    return [start + timedelta(seconds=step_s * k) for k in range(count)]
