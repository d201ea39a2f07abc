"""The history database is locked by another process, or its disk fills.

Control goes on (targets are written as before, no cycle fails); the history
writer keeps decisions and events until they can be written, drops the
oldest samples beyond its queue (counted), and once the database is back
records a ``samples_dropped`` event naming the gap. The lock is a real
``BEGIN IMMEDIATE`` transaction held open by another process; the full disk
is a 64 MiB tmpfs filled to the last byte. The outage lasts
``$BALLAST_TEST_DB_OUTAGE_S`` seconds (3 by default; set 60 for the full
minute), far longer than the writer's lock wait (``[store] busy_timeout_s``,
shortened here to 0.2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator import config as cfg
from orchestrator import steering
from orchestrator.control import VmState
from orchestrator.controller.loop import CycleResult
from orchestrator.errors import TransientError
from orchestrator.store.records import AuditSource, EventKind
from orchestrator.store.timeparse import to_ms
from tests.conftest import _require
from tests.controller.conftest import GIB_KB, MIB_KB
from tests.reliability.conftest import DaemonHost, ReportingGuest, daemon_host
from tests.reliability.harness import DatabaseLock, Domain, eventually

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("BALLAST_TEST_DB_OUTAGE_S", "3"))
QUEUE = 10  # samples held while the database is away


@dataclass
class Written:
    """Every target the controller wrote, by the time of its cycle."""

    at: list[tuple[datetime, int]] = field(default_factory=list)

    def cycle(self, result: CycleResult) -> None:
        if result.applied.targets_written:
            self.at.append((result.wall_time, len(result.applied.targets_written)))

    def between(self, start: datetime, end: datetime) -> int:
        """Targets written by cycles from ``start`` to ``end``, as the store rounds times."""
        return sum(n for t, n in self.at if to_ms(start) <= to_ms(t) < to_ms(end))


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    mount = workdir / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, check=False)
    _require(done.returncode == 0, f"a tmpfs to fill (mount needs root): {done.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    out.write(chunk)
    try:
        with (directory / "probe").open("wb") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("the disk still has room")
    return filler


def _decisions(db: Path, start: datetime, end: datetime | None = None) -> int:
    """Decisions recorded from ``start`` to ``end`` (a reader: never blocked in WAL mode)."""
    stop = end or datetime.now(UTC) + timedelta(days=1)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT count(*) FROM decisions WHERE t_ms >= ? AND t_ms < ?",
                           (to_ms(start), to_ms(stop)))
        return int(row.fetchone()[0])


async def _grow(guests: list[ReportingGuest], host: DaemonHost, stop: asyncio.Event) -> None:
    """Each guest's commitment keeps rising: the law grows it at every report."""
    while not stop.is_set():
        for guest in guests:
            guest.total_kb = host.hv.actual_kb(guest.domid)
            guest.committed_kb += 32 * MIB_KB
            if guest.committed_kb > 12 * GIB_KB:
                guest.committed_kb = GIB_KB
        await asyncio.sleep(0.2)


def _cap(host: DaemonHost) -> steering.ChangeResult:
    return steering.change_vm_policy(host.daemon.store, "vm1", {"max_kb": 15 * GIB_KB},
                                     who="ops", source=AuditSource.CLI, base=host.base)


@pytest.mark.parametrize("fault", ["locked", "disk-full"])
async def test_control_goes_on_and_history_keeps_decisions_and_counts_the_gap(
    workdir: Path, fault: str, request: pytest.FixtureRequest,
) -> None:
    db = (request.getfixturevalue("small_disk") if fault == "disk-full" else workdir) / "h.db"
    domains = [Domain(d, f"vm{d}", 16 * GIB_KB, 2 * GIB_KB) for d in (1, 2, 3)]
    store = cfg.StoreConfig(busy_timeout_s=0.2, max_queued_samples=QUEUE)
    async with daemon_host(workdir, domains, store=store, db=db) as host:
        written = Written()
        host.controller.add_sink(written)
        guests = [ReportingGuest(d.domid, host.server.domain_socket(d.domid),
                                 total_kb=d.target_kb, period_s=0.2) for d in domains]
        for guest in guests:
            await guest.start()
        stop = asyncio.Event()
        ramp = asyncio.create_task(_grow(guests, host, stop))
        try:
            await eventually(lambda: all(host.state(d.domid) is VmState.OK for d in domains),
                             what="every VM controlled")
            assert await host.daemon.writer.aflush(30)
            start = datetime.now(UTC)
            stats0 = host.daemon.writer.stats()
            failed0 = host.controller.failed_cycles
            await asyncio.sleep(0.5)

            # The outage.
            lock = DatabaseLock(db)
            filler: Path | None = None
            if fault == "locked":
                await asyncio.to_thread(lock.acquire)
            else:
                filler = await asyncio.to_thread(_fill, db.parent)
            began = datetime.now(UTC)
            await asyncio.sleep(OUTAGE_S)
            during = host.daemon.writer.stats()
            ended = datetime.now(UTC)
            # Control went on: targets written, no cycle failed; none of those
            # decisions could reach the database yet.
            assert written.between(began, ended) >= 3 * OUTAGE_S
            assert host.controller.failed_cycles == failed0
            assert await asyncio.to_thread(_decisions, db, began) == 0
            # The writer failed, dropped the oldest samples beyond its queue.
            assert during.failures > stats0.failures
            assert during.samples_dropped > stats0.samples_dropped
            expected = "locked" if fault == "locked" else "full"
            assert during.last_error is not None and expected in during.last_error
            # An operator's change cannot be stored now: one clear error, and
            # nothing half-done (no policy version, no audit entry).
            with pytest.raises(TransientError, match=expected):
                await asyncio.to_thread(_cap, host)
            if fault == "locked":
                await asyncio.to_thread(lock.release)
            else:
                assert filler is not None
                filler.unlink()
            assert host.daemon.store.audit_log(since="10m") == []
            assert (await asyncio.to_thread(_cap, host)).version == 1
            assert len(host.daemon.store.audit_log(since="10m")) == 1

            # Back: every decision is written, the gap is an event.
            await asyncio.sleep(1.0)
            end = datetime.now(UTC)
            assert await host.daemon.writer.aflush(30)
            assert host.daemon.writer.stats().queued_durable == 0
            recorded = await asyncio.to_thread(_decisions, db, start, end)
            assert recorded == written.between(start, end) > 0
            dropped = host.daemon.writer.stats().samples_dropped - stats0.samples_dropped
            gaps = host.daemon.store.events(kinds=[EventKind.SAMPLES_DROPPED], since="10m")
            assert gaps and sum(int(e.details["dropped"]) for e in gaps) == dropped
            first = datetime.fromisoformat(gaps[0].details["first_sample_time"])
            last = datetime.fromisoformat(gaps[-1].details["last_sample_time"])
            assert began.timestamp() - 1 <= first.timestamp() <= last.timestamp()
            assert last.timestamp() <= ended.timestamp() + 1
        finally:
            stop.set()
            await asyncio.gather(ramp, return_exceptions=True)
            for guest in guests:
                await guest.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
