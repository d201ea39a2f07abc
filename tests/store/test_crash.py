"""Crash safety: SIGKILL the writer's process in the middle of ingest; the
database stays intact and holds every batch the writer reported committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator.store import migrate
from orchestrator.store.engine import make_oneshot_engine, resolve_db_url

ROOT = Path(__file__).resolve().parents[2]
BATCHES_BEFORE_KILL = 6


@pytest.mark.slow
def test_sigkill_mid_ingest_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "ballast.db"
    migrated_url = resolve_db_url(str(path))
    migrate.upgrade(migrated_url)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_child", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reported: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            reported.append(line)
            if len(reported) >= BATCHES_BEFORE_KILL:
                os.kill(child.pid, signal.SIGKILL)  # mid-ingest: it never pauses
                break
    finally:
        if child.poll() is None:
            child.kill()
        out, err = child.communicate(timeout=30)
    reported += out.splitlines(keepends=True)
    assert child.returncode == -signal.SIGKILL, err
    assert len(reported) >= BATCHES_BEFORE_KILL, err

    committed_samples: list[tuple[int, int, int]] = []
    committed_decisions: list[int] = []
    for line in reported:
        _batch, count, span, decisions = line.split()
        if int(count):
            first, last = (int(x) for x in span.split(","))
            committed_samples.append((first, last, int(count)))
        if decisions != "-":
            committed_decisions += [int(x) for x in decisions.split(",")]
    assert committed_samples, "no sample batch was reported"

    engine = make_oneshot_engine(migrated_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert migrate.status(migrated_url).up_to_date
            for first, last, count in committed_samples:
                # Batches are FIFO runs of the queue: every sequence number in
                # [first, last] was committed, and is there.
                assert count == last - first + 1
                present = conn.execute(
                    text("SELECT count(*) FROM samples WHERE target_kb BETWEEN :a AND :b"),
                    {"a": first, "b": last},
                ).scalar()
                assert present == count, (first, last)
            found = set(
                conn.execute(
                    text("SELECT new_target_kb FROM decisions WHERE reason = 'crash-test'")
                ).scalars()
            )
            assert set(committed_decisions) <= found
    finally:
        engine.dispose()
