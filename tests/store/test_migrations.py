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


def test_time_clustering_migration_keeps_data(db_url: URL) -> None:
    """0002 -> 0003 moves samples and rollups to time-first keys, and back."""
    migrate.upgrade(db_url, "0002")
    engine = make_oneshot_engine(db_url)
    t_ms = 1_772_409_600_000  # 2026-03-02 00:00 UTC
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO hosts (id, name, created_ms) VALUES (1, 'h', 0)"))
        for domain_id in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO domains (id, uuid, name, domid, host_id, first_seen_ms, "
                    "last_seen_ms) VALUES (:i, :u, :n, :i, 1, 0, 0)"
                ),
                {
                    "i": domain_id,
                    "u": f"00000000-0000-0000-0000-00000000000{domain_id}",
                    "n": f"vm{domain_id}",
                },
            )
            for k in range(3):
                conn.execute(
                    text(
                        "INSERT INTO samples (domain_id, t_ms, target_kb, actual_kb, state) "
                        "VALUES (:d, :t, :v, :v, 'ok')"
                    ),
                    {"d": domain_id, "t": t_ms + 15_000 * k, "v": 100 * domain_id + k},
                )
            conn.execute(
                text(
                    "INSERT INTO rollups (res_s, domain_id, t_ms, n, target_kb_max) "
                    "VALUES (60, :d, :t, 3, :v)"
                ),
                {"d": domain_id, "t": t_ms, "v": 100 * domain_id + 2},
            )
    try:
        migrate.upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT slot, domain_id, t_ms, target_kb FROM samples ORDER BY 2, 3")
            ).all()
            assert [tuple(r) for r in rows] == [
                ((t_ms + 15_000 * k) // 10_000, d, t_ms + 15_000 * k, 100 * d + k)
                for d in (1, 2)
                for k in range(3)
            ]
            latest = conn.execute(text("SELECT id, last_sample_ms FROM domains ORDER BY id")).all()
            assert [tuple(r) for r in latest] == [(1, t_ms + 30_000), (2, t_ms + 30_000)]
            kept = conn.execute(text("SELECT domain_id, target_kb_max FROM rollups ORDER BY 1"))
            assert [tuple(r) for r in kept] == [(1, 102), (2, 202)]
        migrate.downgrade(db_url, "0002")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM samples")).scalar() == 6
            assert conn.execute(text("SELECT count(*) FROM rollups")).scalar() == 2
    finally:
        engine.dispose()
