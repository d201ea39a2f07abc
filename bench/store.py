"""What the history store costs: ingest rate, query latency, bytes on disk.

Three measurements, printed as tables:

1. Ingest, SQLite and PostgreSQL side by side: samples per second through
   Ballast's `StoreWriter` (queue -> batched Core insert), against two
   baselines on the same engine in the same run: SQLAlchemy Core
   `conn.execute(insert(samples), [dict, ...])` (per-row parameter
   processing) and the ORM's `Session.add_all`. Target: >= 50,000 samples/s
   into SQLite.

2. A synthetic history of N VMs x D days at one sample every 5 s, built with
   the store's own writer, rollups and retention. Raw samples are kept 48 h,
   so a real 30-day database holds raw rows only for the last 48 h and, for
   older days, only rollups (1-minute for 30 days, 1-hour for a year). The
   bench generates exactly that: the last 48 h at 5 s (34.6 M samples for
   1,000 VMs), and the older days at one sample per minute, which the
   store's own maintenance rolls up and prunes as virtual time passes; the
   rollup rows have the same count and width as a real run's (only `n`, the
   number of samples behind each minute, is 1 instead of 12). Then the
   latency of `history` for one VM over 1 h, 24 h and 30 days and of
   `fleet_latest` (target < 50 ms each on SQLite).

3. Size: bytes per raw sample and per rollup row (SQLite's dbstat; on
   PostgreSQL, the relation size after the ingest test), the database per VM
   after D days, and the steady-state footprint of one VM kept for a year
   (48 h raw + 30 days of minutes + 1 year of hours).

Usage: .venv/bin/python bench/store.py [--vms 1000] [--days 30] [--quick]
       [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test] [--no-pg]
       [--dir bench/out/store] [--keep]
`--quick` is 100 VMs x 3 days and a smaller ingest test (about a minute).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, registry
from sqlalchemy.pool import NullPool

from orchestrator.store import (
    DomainRef,
    Sample,
    Store,
    StoreConfig,
    StoreWriter,
    WriterConfig,
    migrate,
    open_store,
)
from orchestrator.store.engine import resolve_db_url
from orchestrator.store.schema import SLOT_MS
from orchestrator.store.schema import samples as samples_table
from orchestrator.store.timeparse import to_ms

TARGET_INGEST_PER_S = 50_000
TARGET_QUERY_MS = 50.0
INTERVAL_S = 5  # kernel selfballoon's default interval, the controller's cycle
RAW_KEEP_S = 48 * 3600
GIB_KB = 1 << 20


# ---- synthetic VMs --------------------------------------------------------------


@dataclass
class VmWalk:
    """A VM whose memory wanders: a random walk around a working set."""

    ref: DomainRef
    max_kb: int
    demand_kb: int
    swap_kb: int = 0


def make_fleet(n: int, seed: int = 5) -> list[VmWalk]:
    rng = random.Random(seed)
    fleet = []
    for i in range(n):
        max_kb = rng.choice((1, 2, 4, 8, 16)) * GIB_KB
        ref = DomainRef(
            uuid=str(uuid.UUID(int=rng.getrandbits(128))), name=f"vm{i:04d}", domid=i + 1
        )
        fleet.append(VmWalk(ref=ref, max_kb=max_kb, demand_kb=max_kb // 2))
    return fleet


def cycle_samples(fleet: Sequence[VmWalk], at: datetime, rng: random.Random) -> list[Sample]:
    """One controller cycle's samples: figures that change like real ones
    (sizes drift, PSI mostly zero with spikes, rates small floats). One
    64-bit draw per VM keeps the generator cheap next to the store."""
    out = []
    for vm in fleet:
        bits = rng.getrandbits(64)
        vm.demand_kb = min(vm.max_kb, max(vm.max_kb // 8, vm.demand_kb + (bits & 0x1FFF) - 4096))
        bits >>= 13
        if bits & 0x7F == 0:  # about 1 cycle in 128, swap use moves
            vm.swap_kb = max(0, vm.swap_kb + ((bits >> 7) & 0x3FFF) - 8192)
        bits >>= 21
        pressure = bits & 0x1F == 0  # about 3 % of samples show PSI
        bits >>= 5
        target = min(vm.max_kb, vm.demand_kb + vm.demand_kb // 10)
        out.append(
            Sample(
                domain=vm.ref,
                time=at,
                target_kb=target,
                actual_kb=target - (bits & 0xFF),
                demand_kb=vm.demand_kb,
                available_kb=vm.max_kb - vm.demand_kb,
                committed_kb=vm.demand_kb - vm.demand_kb // 20,
                swap_used_kb=vm.swap_kb,
                psi_some_pct=((bits >> 8) & 0x7FF) / 100 if pressure else 0.0,
                psi_full_pct=((bits >> 8) & 0x1FF) / 100 if pressure else 0.0,
                refault_per_s=((bits >> 8) & 0xFF) ** 2 / 100,
                swapin_per_s=((bits >> 16) & 0xFF) / 10 if vm.swap_kb else 0.0,
            )
        )
    return out


class VirtualClock:
    """The store's clock during the build: virtual time, moved by the bench."""

    def __init__(self, start: datetime) -> None:
        self.t = start.timestamp()

    def __call__(self) -> float:
        return self.t


# ---- databases ------------------------------------------------------------------


@contextmanager
def pg_schema(base: str) -> Iterator[URL]:
    """A fresh PostgreSQL schema for one measurement, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextmanager
def fresh_db(kind: str, workdir: Path, pg_base: str, name: str) -> Iterator[URL]:
    if kind == "sqlite":
        path = workdir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = resolve_db_url(str(path))
        migrate.upgrade(url)
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    with pg_schema(pg_base) as url:
        migrate.upgrade(url)
        yield url


# ---- 1. ingest ------------------------------------------------------------------


def prebuilt_cycles(fleet: Sequence[VmWalk], cycles: int, start: datetime) -> list[list[Sample]]:
    rng = random.Random(11)
    return [
        cycle_samples(fleet, start + timedelta(seconds=INTERVAL_S * k), rng) for k in range(cycles)
    ]


Rate = tuple[float, float]  # samples per second of wall time, and of this process's CPU time


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Yields a list that receives [wall_s, cpu_s] (CPU of all this process's threads)."""
    out: list[float] = []
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out += [time.perf_counter() - wall, time.process_time() - cpu]


def ingest_writer(url: URL, cycles: Sequence[Sequence[Sample]], now: datetime) -> Rate:
    total = sum(len(c) for c in cycles)
    config = WriterConfig(
        max_queued_samples=total + 1,
        batch_max_samples=10_000,
        linger_s=0.05,
        maintenance_interval_s=3600,
    )
    with open_store(url, config=StoreConfig(host="bench"), clock=lambda: now.timestamp()) as store:
        with stopwatch() as took, StoreWriter(store, config) as writer:
            for cycle in cycles:
                writer.record_samples(cycle)
            if not writer.flush(timeout_s=3600):
                raise RuntimeError("writer did not finish")
            stats = writer.stats()
        if stats.samples_written != total:
            raise RuntimeError(f"wrote {stats.samples_written} of {total} samples: {stats}")
    return total / took[0], total / took[1]


def _rows(store: Store, cycles: Sequence[Sequence[Sample]]) -> list[dict[str, Any]]:
    # Domain ids as the store assigned them (written once beforehand).
    with store.engine.connect() as conn:
        ids: dict[str, int] = {
            r.uuid: r.id for r in conn.execute(text("SELECT uuid, id FROM domains"))
        }
    return [
        {
            "slot": to_ms(s.time) // SLOT_MS,
            "domain_id": ids[s.domain.uuid],
            "t_ms": to_ms(s.time),
            "target_kb": s.target_kb,
            "actual_kb": s.actual_kb,
            "demand_kb": s.demand_kb,
            "available_kb": s.available_kb,
            "committed_kb": s.committed_kb,
            "swap_used_kb": s.swap_used_kb,
            "psi_some_pct": s.psi_some_pct,
            "psi_full_pct": s.psi_full_pct,
            "refault_per_s": s.refault_per_s,
            "swapin_per_s": s.swapin_per_s,
            "state": s.state.value,
        }
        for cycle in cycles
        for s in cycle
    ]


def _prepared_store(url: URL, fleet: Sequence[VmWalk], now: datetime) -> Store:
    store = open_store(url, config=StoreConfig(host="bench"), clock=lambda: now.timestamp())
    # Register the domains, as the writer does on its first batch.
    store.write(cycle_samples(fleet, now - timedelta(days=1), random.Random(2)))
    return store


def ingest_core_dicts(
    url: URL, fleet: Sequence[VmWalk], cycles: Sequence[Sequence[Sample]], now: datetime
) -> Rate:
    store = _prepared_store(url, fleet, now)
    rows = _rows(store, cycles)
    with stopwatch() as took, store.engine.connect() as conn:
        for i in range(0, len(rows), 10_000):
            with conn.begin():
                conn.execute(insert(samples_table), rows[i : i + 10_000])
    store.close()
    return len(rows) / took[0], len(rows) / took[1]


class _OrmSample:
    """Plain class mapped onto the samples table for the ORM baseline."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


_ORM = registry()
_ORM.map_imperatively(_OrmSample, samples_table)


def ingest_orm(
    url: URL, fleet: Sequence[VmWalk], cycles: Sequence[Sequence[Sample]], now: datetime
) -> Rate:
    store = _prepared_store(url, fleet, now)
    rows = _rows(store, cycles)
    with stopwatch() as took, Session(store.engine) as session:
        for i in range(0, len(rows), 10_000):
            session.add_all([_OrmSample(**r) for r in rows[i : i + 10_000]])
            session.commit()
    store.close()
    return len(rows) / took[0], len(rows) / took[1]


def pg_bytes_per_sample(
    url: URL, fleet: Sequence[VmWalk], cycles: Sequence[Sequence[Sample]], now: datetime
) -> float:
    with open_store(url, config=StoreConfig(host="bench"), clock=lambda: now.timestamp()) as store:
        for cycle in cycles:
            store.write(cycle)
        with store.engine.connect() as conn:
            size = conn.execute(text("SELECT pg_total_relation_size('samples')")).scalar_one()
            rows = conn.execute(text("SELECT count(*) FROM samples")).scalar_one()
    return int(size) / int(rows)


def section_ingest(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    fleet = make_fleet(args.vms)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=12)
    n_cycles = max(1, args.ingest_samples // args.vms)
    base_cycles = max(1, args.baseline_samples // args.vms)
    print(
        f"\n== 1. ingest: {n_cycles * args.vms:,} samples of {args.vms:,} VMs "
        f"(baselines: {base_cycles * args.vms:,}) =="
    )
    cycles = prebuilt_cycles(fleet, n_cycles, start)
    engines = ["sqlite"] + ([] if args.no_pg else ["postgresql"])
    results: dict[str, dict[str, Rate]] = {}
    for kind in engines:
        res: dict[str, Rate] = {}
        with fresh_db(kind, workdir, args.pg, "ingest") as url:
            res["writer"] = ingest_writer(url, cycles, now)
        with fresh_db(kind, workdir, args.pg, "ingest") as url:
            res["core"] = ingest_core_dicts(url, fleet, cycles[:base_cycles], now)
        with fresh_db(kind, workdir, args.pg, "ingest") as url:
            res["orm"] = ingest_orm(url, fleet, cycles[:base_cycles], now)
        results[kind] = res
    head = "".join(f"{k + ' wall':>16}{k + ' cpu':>16}" for k in engines)
    print(f"{'samples/s (cpu: per second of client CPU)':<46}{head}")
    labels = {
        "writer": "Ballast StoreWriter",
        "core": "baseline: Core insert(), dict rows",
        "orm": "baseline: ORM Session.add_all",
    }
    for key, label in labels.items():
        cells = "".join(
            f"{results[k][key][0]:>16,.0f}{results[k][key][1]:>16,.0f}" for k in engines
        )
        print(f"{label:<46}{cells}")
    for kind in engines:
        r = results[kind]
        print(
            f"{kind}: writer = {r['writer'][0] / r['core'][0]:.1f}x Core-dict, "
            f"{r['writer'][0] / r['orm'][0]:.1f}x ORM (wall)"
        )
    if len(engines) > 1:
        ratio = results["postgresql"]["writer"][0] / results["sqlite"]["writer"][0]
        print(f"PostgreSQL / SQLite, writer, wall: {ratio:.2f}x")
    sqlite_rate = results["sqlite"]["writer"][0]
    verdict = "meets" if sqlite_rate >= TARGET_INGEST_PER_S else "MISSES"
    print(
        f"SQLite writer {sqlite_rate:,.0f} samples/s (wall) {verdict} the target of "
        f"{TARGET_INGEST_PER_S:,} ({sqlite_rate / TARGET_INGEST_PER_S:.2f}x)"
    )
    out = {"sqlite_writer": sqlite_rate}
    if not args.no_pg:
        with fresh_db("postgresql", workdir, args.pg, "size") as url:
            out["pg_bytes_per_sample"] = pg_bytes_per_sample(url, fleet, cycles[:base_cycles], now)
    return out


# ---- 1b. steady-state write volume ------------------------------------------------


def bytes_written() -> int:
    """Bytes this process passed to write(2) so far (SQLite's WAL and checkpoints)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def section_write_volume(args: argparse.Namespace, workdir: Path) -> None:
    """Bytes written to disk per sample (samples, rollups once a minute, WAL
    and checkpoints) when the controller records one cycle per batch (the
    writer's default 0.2 s linger), against batching several cycles (a
    longer `linger_s`)."""
    fleet = make_fleet(args.vms)
    now = datetime.now(UTC).replace(microsecond=0)
    warm_cycles, cycles = 720, 360  # 1 h of history first, then 30 min measured
    rng = random.Random(13)
    print(
        f"\n== 1b. steady-state disk writes, SQLite: {args.vms:,} VMs, "
        f"{cycles * INTERVAL_S // 60} min of 5 s cycles after 1 h of history =="
    )
    print(f"{'cycles per batch':<34}{'bytes/sample':>14}{'MiB per hour':>14}{'GiB per day':>13}")
    for per_batch, label in ((1, "1 (default linger)"), (6, "6 (linger 30 s)"), (60, "60 (5 min)")):
        with fresh_db("sqlite", workdir, args.pg, "volume") as url:
            clock = VirtualClock(now - timedelta(hours=2))
            with open_store(url, config=StoreConfig(host="bench"), clock=clock) as store:
                t = now - timedelta(hours=2)
                for start in range(0, warm_cycles, 60):
                    batch = []
                    for _ in range(start, start + 60):
                        batch += cycle_samples(fleet, t, rng)
                        t += timedelta(seconds=INTERVAL_S)
                    clock.t = t.timestamp()
                    store.write(batch)
                with store.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                store.maintain()
                before = bytes_written()
                for start in range(0, cycles, per_batch):
                    batch = []
                    for _ in range(start, min(cycles, start + per_batch)):
                        batch += cycle_samples(fleet, t, rng)
                        t += timedelta(seconds=INTERVAL_S)
                    clock.t = t.timestamp()
                    store.write(batch)
                    if start % 12 + per_batch >= 12:  # rollups once a minute
                        store.maintain()
                with store.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                written = bytes_written() - before
        per_sample = written / (cycles * args.vms)
        per_hour = written * 3600 / (cycles * INTERVAL_S)
        print(
            f"{label:<34}{per_sample:>14,.0f}{per_hour / 2**20:>14,.0f}"
            f"{per_hour * 24 / 2**30:>13,.1f}"
        )


# ---- 2. the synthetic history ---------------------------------------------------


def build_history(path: Path, vms: int, days: int) -> tuple[Store, VirtualClock, dict[str, float]]:
    fleet = make_fleet(vms)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    raw_from = max(start, end - timedelta(seconds=RAW_KEEP_S))
    clock = VirtualClock(start)
    url = resolve_db_url(str(path))
    migrate.upgrade(url)
    store = open_store(url, config=StoreConfig(host="bench"), clock=clock)
    # Large batches: the bench feeds as fast as it can, and each batch rewrites
    # the newest page of every VM whatever its size.
    config = WriterConfig(
        max_queued_samples=600_000,
        batch_max_samples=100_000,
        linger_s=0.05,
        maintenance_interval_s=5.0,
    )
    rng = random.Random(7)
    timings: dict[str, float] = {}
    counts = {"old": 0, "raw": 0}
    with StoreWriter(store, config) as writer:

        def feed(frm: datetime, to: datetime, step_s: int, phase: str) -> None:
            queued = 0
            t = frm
            started = time.perf_counter()
            last_print = started
            while t < to:
                clock.t = t.timestamp()
                batch = cycle_samples(fleet, t, rng)
                writer.record_samples(batch)
                queued += len(batch)
                counts[phase] += len(batch)
                if queued >= 400_000:  # back-pressure: never let the queue drop
                    writer.flush(timeout_s=3600)
                    queued = 0
                if time.perf_counter() - last_print > 30:
                    last_print = time.perf_counter()
                    done = (t - frm) / (to - frm)
                    print(
                        f"   {phase}: {done:6.1%} of {frm:%m-%d %H:%M}..{to:%m-%d %H:%M}, "
                        f"{counts[phase] / (last_print - started):,.0f} samples/s",
                        flush=True,
                    )
                t += timedelta(seconds=step_s)
            writer.flush(timeout_s=3600)
            timings[phase] = time.perf_counter() - started

        if raw_from > start:
            print(
                f"-- days older than 48 h: {vms} VMs, one sample a minute (rolled up, then pruned)"
            )
            feed(start, raw_from, 60, "old")
        hours = (end - raw_from).total_seconds() / 3600
        print(f"-- last {hours:.0f} h: {vms} VMs every {INTERVAL_S} s")
        feed(raw_from, end, INTERVAL_S, "raw")
        clock.t = end.timestamp()
        stats = writer.stats()
    started = time.perf_counter()
    store.maintain()
    timings["final maintain"] = time.perf_counter() - started
    if stats.samples_dropped or stats.samples_rejected:
        print(f"!! writer dropped {stats.samples_dropped} and rejected {stats.samples_rejected}")
    timings["old samples"] = counts["old"]
    timings["raw samples"] = counts["raw"]
    return store, clock, timings


def reopen_history(path: Path) -> Store:
    """A kept synthetic database, migrated, with the clock at its newest sample."""
    url = resolve_db_url(str(path))
    migrate.upgrade(url)
    with closing(sqlite3.connect(path)) as conn:
        newest_ms = conn.execute("SELECT max(last_sample_ms) FROM domains").fetchone()[0]
    return open_store(url, config=StoreConfig(host="bench"), clock=lambda: newest_ms / 1000)


def timed_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float, float, float]:
    """(first wall, median wall, p95 wall, median CPU) in ms; the first run is
    reported apart and left out of the statistics."""
    walls, cpus = [], []
    for _ in range(repeat + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    ordered = sorted(walls[1:])
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return walls[0], statistics.median(ordered), p95, statistics.median(cpus[1:])


def section_queries(store: Store, vms: int, days: int, repeat: int) -> None:
    names = [r.name for r in store.domains()]
    rng = random.Random(3)
    print(f"\n== 2b. query latency on {vms:,} VMs x {days} days (SQLite, {repeat} runs each) ==")
    print(
        f"{'query (a random VM each run)':<44}{'rows':>6}{'res':>7}{'first':>8}{'median':>8}"
        f"{'p95':>8}{'cpu':>8}  ms, target {TARGET_QUERY_MS:.0f}"
    )
    cases: list[tuple[str, str, str | None]] = []
    for span in ("1h", "24h", f"{days}d"):
        cases.append((span, f"history(vm, since={span}) all 10 figures", None))
        cases.append(
            (span, f"history(vm, since={span}, target,actual,demand)", "target,actual,demand")
        )
    for span, label, figures in cases:
        shown = store.history(names[0], since=span, figures=figures)

        def query(span: str = span, figures: str | None = figures) -> object:
            return store.history(rng.choice(names), since=span, figures=figures)

        first, median, p95, cpu = timed_ms(query, repeat)
        ok = "ok" if p95 < TARGET_QUERY_MS else "MISS"
        print(
            f"{label:<44}{len(shown):>6}{shown.resolution.name:>7}{first:>8.1f}{median:>8.1f}"
            f"{p95:>8.1f}{cpu:>8.1f}  {ok}"
        )
    rows = len(store.fleet_latest())
    first, median, p95, cpu = timed_ms(store.fleet_latest, repeat)
    ok = "ok" if p95 < TARGET_QUERY_MS else "MISS"
    print(
        f"{'fleet_latest()':<44}{rows:>6}{'RAW':>7}{first:>8.1f}{median:>8.1f}{p95:>8.1f}"
        f"{cpu:>8.1f}  {ok}"
    )


def load_average() -> str:
    """The machine's 1-minute load average: other work competes for the CPUs."""
    return Path("/proc/loadavg").read_text().split()[0]


# ---- 3. size --------------------------------------------------------------------


def section_size(store: Store, path: Path, vms: int, days: int, pg_bytes: float | None) -> None:
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        per_table: dict[str, int] = {
            r[0]: int(r[1])
            for r in conn.exec_driver_sql(
                "SELECT name, sum(pgsize) FROM dbstat WHERE aggregate = 0 GROUP BY name"
            )
        }
    counts = store.row_counts()
    raw_rows, min_rows, hour_rows = (
        counts["samples"],
        counts["rollups_60s"],
        counts["rollups_3600s"],
    )
    raw_b = per_table.get("samples", 0) / max(raw_rows, 1)
    rollup_b = per_table.get("rollups", 0) / max(min_rows + hour_rows, 1)
    file_bytes = path.stat().st_size
    keep = StoreConfig().retention
    raw_per_vm = keep.raw_s / INTERVAL_S
    min_per_vm = keep.minute_s / 60
    hour_per_vm = keep.hour_s / 3600
    steady = raw_b * raw_per_vm + rollup_b * (min_per_vm + hour_per_vm)
    print(f"\n== 3. size (SQLite, after {days} days; dbstat) ==")
    print(f"{'table':<20}{'rows':>14}{'MiB':>11}{'bytes/row':>11}")
    for name, rows in (("samples", raw_rows), ("rollups", min_rows + hour_rows)):
        size = per_table.get(name, 0)
        print(f"{name:<20}{rows:>14,}{size / 2**20:>11.1f}{size / max(rows, 1):>11.1f}")
    print(f"{'(1-minute rollups)':<20}{min_rows:>14,}")
    print(f"{'(1-hour rollups)':<20}{hour_rows:>14,}")
    print(
        f"database file: {file_bytes / 2**30:.2f} GiB = {file_bytes / vms / 2**20:.1f} MiB per VM "
        f"after {days} days"
    )
    print(
        f"bytes per raw sample: {raw_b:.1f} (SQLite)"
        + (f", {pg_bytes:.1f} (PostgreSQL, table + index)" if pg_bytes else "")
    )
    print(
        f"steady state per VM-year (48 h raw + 30 d of minutes + 1 y of hours): "
        f"{raw_per_vm:,.0f} x {raw_b:.0f} B + {min_per_vm + hour_per_vm:,.0f} x {rollup_b:.0f} B "
        f"= {steady / 2**20:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="100 VMs x 3 days, small ingest test")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "out" / "store")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic database")
    parser.add_argument(
        "--reuse", action="store_true", help="query a kept synthetic database instead of building"
    )
    parser.add_argument("--ingest-samples", type=int, default=300_000)
    parser.add_argument("--baseline-samples", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--only",
        choices=("ingest", "volume", "history"),
        help="run one section (history = build, queries and size)",
    )
    args = parser.parse_args()
    if args.quick:
        args.vms, args.days = 100, 3
        args.ingest_samples, args.baseline_samples = 100_000, 20_000
    args.dir.mkdir(parents=True, exist_ok=True)
    print(
        f"bench/store.py: {args.vms:,} VMs x {args.days} days, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {load_average()}, database directory {args.dir}"
    )
    ingest: dict[str, float] = {}
    if args.only in (None, "ingest"):
        ingest = section_ingest(args, args.dir)
    if args.only in (None, "volume"):
        section_write_volume(args, args.dir)
    if args.only not in (None, "history"):
        return

    path = args.dir / "history.db"
    if args.reuse and path.exists():
        store = reopen_history(path)
        print(f"\n== 2a. reusing {path} (migrated to the newest schema) ==")
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        print(f"\n== 2a. building {args.vms:,} VMs x {args.days} days with the store's writer ==")
        started = time.perf_counter()
        store, _clock, timings = build_history(path, args.vms, args.days)
        total = timings["old samples"] + timings["raw samples"]
        print(
            f"built in {time.perf_counter() - started:,.0f} s: {timings['old samples']:,.0f} "
            f"per-minute samples for older days ({timings.get('old', 0):,.0f} s), "
            f"{timings['raw samples']:,.0f} 5-second samples ({timings['raw']:,.0f} s), "
            f"{total / (timings.get('old', 0) + timings['raw']):,.0f} samples/s overall incl. "
            f"rollups and pruning"
        )
    print(f"load average now {load_average()}")
    section_queries(store, args.vms, args.days, args.repeat)
    section_size(store, path, args.vms, args.days, ingest.get("pg_bytes_per_sample"))
    store.close()
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if not any(args.dir.iterdir()):
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
