"""The migrations and the models agree, migrate both ways on both engines, and
`open_store` refuses any database whose schema is not exactly this code's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL

from orchestrator.store import SchemaMismatch, migrate, open_store
from orchestrator.store.engine import make_oneshot_engine, resolve_db_url
from orchestrator.store.schema import metadata

TABLES = {t.name for t in metadata.sorted_tables}


def _tables(url: URL) -> set[str]:
    engine = make_oneshot_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_models_and_migrations_agree(db_url: URL) -> None:
    migrate.upgrade(db_url)
    engine = make_oneshot_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_upgrade_downgrade_upgrade(db_url: URL) -> None:
    first = migrate.upgrade(db_url)
    assert first.before.current is None
    assert first.after.current == migrate.head_revision()
    assert _tables(db_url) == TABLES
    down = migrate.downgrade(db_url, "base")
    assert down.after.current is None
    assert _tables(db_url) == set()
    again = migrate.upgrade(db_url)
    assert again.after.up_to_date
    assert _tables(db_url) == TABLES
    # Upgrading an up-to-date database changes nothing.
    assert migrate.upgrade(db_url).before == again.after


def test_open_store_refuses_unmigrated_database(db_url: URL) -> None:
    if db_url.get_backend_name() == "sqlite":
        assert db_url.database is not None
        Path(db_url.database).touch()
    with pytest.raises(SchemaMismatch, match=r"not initialised; run `ballast db upgrade"):
        open_store(db_url)


def test_open_store_refuses_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "ballast.db"
    with pytest.raises(SchemaMismatch, match=r"ballast db upgrade --db"):
        open_store(str(path))
    assert not path.parent.exists(), "opening must not create the database"


def _stamp(url: URL, revision: str) -> None:
    engine = make_oneshot_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def test_open_store_refuses_newer_database(migrated_url: URL) -> None:
    _stamp(migrated_url, "9999_from_the_future")
    with pytest.raises(SchemaMismatch, match=r"newer than this Ballast knows.*upgrade Ballast"):
        open_store(migrated_url)
    status = migrate.status(migrated_url)
    assert not status.known and not status.up_to_date


def test_upgrade_refuses_newer_database(migrated_url: URL) -> None:
    _stamp(migrated_url, "9999_from_the_future")
    with pytest.raises(SchemaMismatch, match="newer"):
        migrate.upgrade(migrated_url)


def test_open_store_accepts_migrated_database(migrated_url: URL) -> None:
    with open_store(migrated_url) as store:
        assert store.row_counts()["samples"] == 0


def test_sqlite_file_and_directory_modes(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "var" / "lib" / "ballast" / "ballast.db"
        migrate.upgrade(resolve_db_url(str(path)))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # SQLite gives the WAL file the database's mode.
    with open_store(str(path)) as store:
        store.domains()
        wal = Path(f"{path}-wal")
        if wal.exists():
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_existing_directory_mode_is_kept(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    migrate.upgrade(resolve_db_url(str(tmp_path / "ballast.db")))
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_sqlite_pragmas(tmp_path: Path) -> None:
    url = resolve_db_url(str(tmp_path / "ballast.db"))
    migrate.upgrade(url)
    with open_store(url) as store, store.engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    # synchronous 1 = NORMAL.
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }


def test_migrations_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status = migrate.upgrade(resolve_db_url("relative.db")).after
    assert status.up_to_date
    assert (tmp_path / "relative.db").exists()
