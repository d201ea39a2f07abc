"""The live host status: one document per host, newest wins, on both engines."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.store.errors import RecordError
from orchestrator.store.store import Store
from orchestrator.store.writer import StoreWriter, WriterConfig


def test_status_round_trip_and_overwrite(store: Store) -> None:
    assert store.status() is None
    t0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    store.put_status({"host": {"total_kb": 1}, "vms": [{"name": "a"}]}, t0)
    store.put_status({"host": {"total_kb": 2}, "vms": []}, t0 + timedelta(seconds=5))
    status = store.status()
    assert status is not None
    assert status.document == {"host": {"total_kb": 2}, "vms": []}
    assert status.time == t0 + timedelta(seconds=5)
    assert store.status("another-host") is None


def test_status_refuses_non_json(store: Store) -> None:
    with pytest.raises(RecordError):
        store.put_status({"x": float("nan")}, datetime.now(UTC))


def test_writer_writes_only_the_newest_status(store: Store) -> None:
    writer = StoreWriter(store, WriterConfig(linger_s=0.05))
    now = datetime.now(UTC)
    for i in range(50):
        writer.record_status({"cycle": i}, now + timedelta(milliseconds=i))
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while store.status() is None:
            assert time.monotonic() < deadline, "status never written"
            time.sleep(0.02)
        status = store.status()
        assert status is not None and status.document == {"cycle": 49}
    finally:
        writer.stop()
