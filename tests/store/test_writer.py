"""The background writer: batches, never blocks its caller, drops the oldest
samples (counted, reported) when the database is locked or full, and never
drops decisions or events. Faults are real: another connection holding the
SQLite write lock, a database that cannot grow, a trigger refusing a row."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL

from orchestrator.store import (
    CommitReport,
    Decision,
    Event,
    EventKind,
    Figure,
    Store,
    StoreConfig,
    StoreWriter,
    WriterConfig,
    migrate,
    open_store,
)
from orchestrator.store.engine import resolve_db_url
from tests.store.conftest import T0, FakeClock, every, sample, vm


def _decision(k: int) -> Decision:
    return Decision(
        domain=vm(k % 3),
        time=T0 + timedelta(seconds=k),
        old_target_kb=k,
        new_target_kb=k + 1,
        reason="grow",
        policy_version=1,
    )


def test_writer_commits_everything_in_batches(store: Store, clock: FakeClock) -> None:
    reports: list[CommitReport] = []
    config = WriterConfig(max_queued_samples=50_000, batch_max_samples=4_000, linger_s=0.05)
    vms = [vm(i) for i in range(50)]
    times = every(T0, 5, 200)
    clock.set(times[-1])
    with StoreWriter(store, config, on_commit=reports.append) as writer:
        for t in times:
            writer.record_samples(sample(d, t, target_kb=i) for i, d in enumerate(vms))
        writer.record_decision(_decision(1))
        writer.record_event(Event(kind=EventKind.HOST_SHORT, time=T0, details={"short_kb": 1}))
        assert writer.flush(timeout_s=30)
        stats = writer.stats()
    assert stats.samples_written == 10_000 and stats.samples_dropped == 0
    assert stats.durable_written == 2 and stats.queued_samples == 0
    assert all(len(r.samples) <= 4_000 for r in reports)
    assert sum(len(r.samples) for r in reports) == 10_000
    assert [r.batch for r in reports] == list(range(1, len(reports) + 1))
    assert store.row_counts()["samples"] == 10_000
    assert store.decisions(since=T0) == [_decision(1)]
    series = store.history("vm7", since=T0, until=times[-1], figures="target", resolution="raw")
    assert len(series.points) == 200 and series.points[0].values[Figure.TARGET].last == 7


def test_stop_writes_what_is_queued(store: Store, clock: FakeClock) -> None:
    clock.set(T0)
    writer = StoreWriter(store, WriterConfig(linger_s=5.0))
    writer.start()
    writer.record_samples(sample(vm(1), t) for t in every(T0, 5, 100))
    writer.record_decision(_decision(2))
    stats = writer.stop()
    assert (stats.samples_written, stats.durable_written) == (100, 1)
    assert store.row_counts()["samples"] == 100


def test_nothing_starts_in_init(store: Store) -> None:
    before = threading.active_count()
    writer = StoreWriter(store)
    writer.record_decision(_decision(3))
    assert threading.active_count() == before
    assert writer.flush(timeout_s=0.1) is False
    assert store.row_counts()["decisions"] == 0
    with writer:
        assert writer.flush(timeout_s=10)
    assert store.row_counts()["decisions"] == 1


async def test_asyncio_usage(store: Store, clock: FakeClock) -> None:
    clock.set(T0)
    async with StoreWriter(store, WriterConfig(linger_s=0.01)) as writer:
        for t in every(T0, 5, 10):
            writer.record_sample(sample(vm(1), t))
            await asyncio.sleep(0)
        assert await writer.aflush(timeout_s=10)
    assert store.row_counts()["samples"] == 10


def _sqlite_store(tmp_path: Path, clock: FakeClock, busy_timeout_s: float) -> Store:
    url = resolve_db_url(str(tmp_path / "ballast.db"))
    migrate.upgrade(url)
    config = StoreConfig(host="h1", busy_timeout_s=busy_timeout_s)
    return open_store(url, config=config, clock=clock)


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    """A SQLite store that gives up on a lock after 50 ms."""
    with _sqlite_store(tmp_path, clock, 0.05) as store:
        yield store


def test_caller_never_waits_for_a_locked_database(tmp_path: Path, clock: FakeClock) -> None:
    # Each write attempt waits 1 s for the lock: a caller that waited for the
    # database would see calls of a second or more.
    store = _sqlite_store(tmp_path, clock, 1.0)
    clock.set(T0 + timedelta(hours=1))
    config = WriterConfig(
        max_queued_samples=1_000, batch_max_samples=500, linger_s=0.01, retry_max_s=0.05
    )
    assert store.url.database is not None
    # Another connection (as another process would) holds the write lock.
    other = sqlite3.connect(store.url.database, isolation_level=None)
    with StoreWriter(store, config) as writer:
        other.execute("BEGIN EXCLUSIVE")
        times = every(T0, 1, 3_000)
        slowest = 0.0
        for k, t in enumerate(times):
            started = time.perf_counter()
            writer.record_sample(sample(vm(1), t, target_kb=k))
            if k % 100 == 0:
                writer.record_decision(_decision(k))
            slowest = max(slowest, time.perf_counter() - started)
        deadline = time.monotonic() + 10
        while writer.stats().failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.stats().failures > 0
        other.execute("ROLLBACK")
        assert writer.flush(timeout_s=20)
        stats = writer.stats()
    other.close()
    store.close()
    assert slowest < 0.5, f"a record call took {slowest * 1000:.1f} ms"
    assert stats.samples_dropped == 2_000 and stats.samples_written == 1_000
    # The newest samples are kept, the oldest dropped.
    kept = store.history(vm(1), since=T0, until=times[-1], figures="target", resolution="raw")
    assert [p.values[Figure.TARGET].last for p in kept.points] == list(range(2_000, 3_000))
    # Every decision survived the lock.
    assert len(store.decisions(since=T0)) == 30
    gaps = store.events(since=T0, kinds=[EventKind.SAMPLES_DROPPED])
    assert len(gaps) == 1
    details = gaps[0].details
    assert details["dropped"] == 2_000
    assert details["first_sample_time"] == times[0].isoformat()
    assert details["last_sample_time"] == times[1_999].isoformat()
    assert "locked" in details["last_error"]


def test_full_database_keeps_decisions_and_reports_the_gap(
    sqlite_store: Store, clock: FakeClock
) -> None:
    store = sqlite_store
    clock.set(T0 + timedelta(hours=1))
    engine = store.engine
    with engine.connect() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)

    def cannot_grow(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    config = WriterConfig(
        max_queued_samples=200, batch_max_samples=100, linger_s=0.01, retry_max_s=0.05
    )
    event.listen(engine, "connect", cannot_grow)
    engine.dispose()  # new connections only, each limited to the current size
    with StoreWriter(store, config) as writer:
        writer.record_samples(sample(vm(i), T0) for i in range(1_000))
        for k in range(20):
            writer.record_decision(_decision(k))
        deadline = time.monotonic() + 10
        while writer.stats().failures < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        during = writer.stats()
        assert during.failures >= 2 and "full" in (during.last_error or "")
        assert during.queued_durable == 20
        event.remove(engine, "connect", cannot_grow)
        engine.dispose()  # the disk has room again
        assert writer.flush(timeout_s=20)
        stats = writer.stats()
    assert stats.samples_dropped == 800 and stats.samples_written == 200
    assert len(store.decisions(since=T0)) == 20
    gap = store.events(since=T0, kinds=["samples_dropped"])
    assert [e.details["dropped"] for e in gap] == [800]
    assert "full" in gap[0].details["last_error"]


def test_record_the_database_refuses_is_isolated(sqlite_store: Store, clock: FakeClock) -> None:
    store = sqlite_store
    clock.set(T0 + timedelta(hours=1))
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER poison BEFORE INSERT ON decisions WHEN NEW.reason = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
            )
        )
    bad = Decision(domain=vm(1), time=T0, old_target_kb=1, new_target_kb=2, reason="poison")
    with StoreWriter(store, WriterConfig(linger_s=0.05)) as writer:
        writer.record_decision(_decision(1))
        writer.record_decision(bad)
        writer.record_decision(_decision(2))
        writer.record_sample(sample(vm(1), T0))
        assert writer.flush(timeout_s=10)
        stats = writer.stats()
    assert store.decisions(since=T0) == [_decision(1), _decision(2)]
    assert store.row_counts()["samples"] == 1
    # The refused decision is counted, the rest of its batch written.
    assert (stats.durable_written, stats.samples_written, stats.samples_rejected) == (2, 1, 1)


def test_writer_runs_maintenance(db_url: URL, clock: FakeClock) -> None:
    migrate.upgrade(db_url)
    clock.set(T0)
    config = WriterConfig(linger_s=0.01, maintenance_interval_s=0.05)
    with (
        open_store(db_url, config=StoreConfig(host="h1"), clock=clock) as store,
        StoreWriter(store, config) as writer,
    ):
        writer.record_samples(sample(vm(1), t) for t in every(T0, 5, 12 * 10))
        assert writer.flush(timeout_s=10)
        clock.set(T0 + timedelta(minutes=20))
        deadline = time.monotonic() + 10
        while store.row_counts()["rollups_60s"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.row_counts()["rollups_60s"] == 10
