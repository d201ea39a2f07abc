"""The history store: write samples, decisions and events; query them back;
keep per-VM policies and host settings with an audit log.

`open_store()` is what the controller and the CLI call. It refuses a database
whose schema is not exactly what this code expects (see `migrate`). A
`Store` is thread-safe and synchronous; the controller writes through the
background `StoreWriter` so its loop never waits for the database, and reads
policies from a worker thread.

Policy and settings changes are read-modify-write transactions that take the
write lock first (BEGIN IMMEDIATE on SQLite, a row lock on PostgreSQL), so the
CLI, the MQTT command handler and the controller, in different processes,
always see one order of versions, and every change is audited in the same
transaction that makes it.
"""

from __future__ import annotations

import functools
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from orchestrator.errors import UsageError
from orchestrator.store import rollup
from orchestrator.store.engine import (
    display_url,
    make_engine,
    one_line,
    resolve_db_url,
    write_transaction,
)
from orchestrator.store.errors import RecordError, StoreUnavailable, UnknownDomain
from orchestrator.store.migrate import check_schema
from orchestrator.store.records import (
    ALL_FIGURES,
    MAX_STATUS_BYTES,
    AuditEntry,
    AuditSource,
    AuditSubject,
    Decision,
    DomainRef,
    Event,
    EventKind,
    Figure,
    FigureSeries,
    FleetRow,
    HostSettings,
    HostStatus,
    PolicyRecord,
    Resolution,
    Sample,
    Series,
    VmState,
    check_document,
)
from orchestrator.store.schema import (
    SLOT_MS,
    audit,
    decisions,
    domains,
    events,
    host_settings,
    host_status,
    hosts,
    policies,
    rollups,
    samples,
)
from orchestrator.store.timeparse import from_ms, parse_range, to_ms

HOUR_S = 3600.0
DAY_S = 86400.0
# Upper bound of any retention: ten years (as units.MAX_DURATION_S).
MAX_RETENTION_S = 10 * 366 * DAY_S
# The domains row's last_seen is refreshed at most this often per VM.
LAST_SEEN_REFRESH_MS = 300_000
# Retention deletes at most this many slots (1 h) of raw samples, or the
# rollups of this many VMs, per transaction, so other writers get the lock.
PRUNE_SLOTS_PER_TX = 360
PRUNE_DOMAINS_PER_TX = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """How long each kind of history is kept, in seconds."""

    raw_s: float = 48 * HOUR_S
    """Raw samples."""
    minute_s: float = 30 * DAY_S
    """1-minute rollups."""
    hour_s: float = 365 * DAY_S
    """1-hour rollups."""
    decisions_s: float = 365 * DAY_S
    """Decisions."""
    events_s: float = 365 * DAY_S
    """Events. (The audit log is never pruned.)"""

    def __post_init__(self) -> None:
        for name in ("raw_s", "minute_s", "hour_s", "decisions_s", "events_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise UsageError(f"retention {name} must be a number of seconds")
            if not 0 < value <= MAX_RETENTION_S:
                raise UsageError(f"retention {name} must be between 0 and ten years")
        if self.raw_s < 2 * HOUR_S:
            # Hourly rollups are computed from raw samples after the hour closes.
            raise UsageError("raw sample retention must be at least 2h")
        if not self.raw_s <= self.minute_s <= self.hour_s:
            raise UsageError("retention must not shrink with coarser resolution (raw <= 1m <= 1h)")

    def of(self, res: Resolution) -> float:
        """Retention of one resolution, seconds."""
        return {
            Resolution.RAW: self.raw_s,
            Resolution.MINUTE: self.minute_s,
            Resolution.HOUR: self.hour_s,
        }[res]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Settings of a `Store`."""

    host: str = field(default_factory=socket.gethostname)
    """Name of the host this process records for."""
    retention: Retention = field(default_factory=Retention)
    """Retention per kind of history."""
    max_points: int = 1500
    """Row budget of an automatic-resolution history query."""
    sample_interval_s: float = 5.0
    """Nominal interval between raw samples of one VM (kernel selfballoon's
    default interval), used to estimate a raw query's size."""
    rollup_grace_s: float = 120.0
    """A bucket is rolled up once it closed this long ago (late writes)."""
    rollup_chunk_s: float = 86400.0
    """Longest span of buckets rolled up per step (`rollup_rows_per_tx`
    usually bounds it first)."""
    rollup_run_s: float = 600.0
    """Minute buckets are rolled up once at least this much is closed: each
    run writes one page per VM, so longer runs mean fewer disk writes (the
    history of the last minutes is aggregated from raw samples meanwhile)."""
    rollup_rows_per_tx: int = 50_000
    """About how many raw samples one rollup transaction reads: a chunk of a
    large fleet is split by VMs so the write lock is never held for long."""
    busy_timeout_s: float = 5.0
    """How long a statement waits for a lock another connection holds."""

    def __post_init__(self) -> None:
        if not 0 < len(self.host) <= 255:
            raise UsageError("host name must be 1..255 characters")
        if not 10 <= self.max_points <= 1_000_000:
            raise UsageError("max_points must be between 10 and 1,000,000")
        if not 0.1 <= self.sample_interval_s <= 3600:
            raise UsageError("sample_interval_s must be between 0.1 and 3600")
        if not 0 <= self.rollup_grace_s <= 3600:
            raise UsageError("rollup_grace_s must be between 0 and 3600")
        if not 60 <= self.rollup_chunk_s <= 86400:
            raise UsageError("rollup_chunk_s must be between 60 and 86400")
        if not 0 <= self.rollup_run_s <= 3600:
            raise UsageError("rollup_run_s must be between 0 and 3600")
        if not 100 <= self.rollup_rows_per_tx <= 10_000_000:
            raise UsageError("rollup_rows_per_tx must be between 100 and 10,000,000")
        if not 0.001 <= self.busy_timeout_s <= 600:
            raise UsageError("busy_timeout_s must be between 0.001 and 600")


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteResult:
    """What one `Store.write` committed."""

    samples: int
    """Raw samples inserted (duplicates of a kept sample are ignored)."""
    too_late: int
    """Samples refused because they are older than raw retention."""
    decisions: int
    events: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceReport:
    """What one `Store.maintain` did."""

    rolled_up: Mapping[Resolution, int]
    """Rollup rows written per resolution."""
    marks: Mapping[Resolution, datetime]
    """How far each resolution is rolled up now."""
    pruned: Mapping[str, int]
    """Rows deleted per table (best effort counts)."""


@dataclass(slots=True)
class _Columns:
    """A history series under construction: times, counts, and per figure
    the min/max/mean/last columns."""

    times_ms: list[int]
    counts: list[int]
    values: dict[Figure, FigureSeries]


@dataclass(slots=True)
class _CachedDomain:
    id: int
    name: str
    domid: int
    last_seen_ms: int


_SAMPLE_COLUMNS = tuple(fig.column for fig in ALL_FIGURES)
_STATE_TEXT = {state: state.value for state in VmState}
_SAMPLE_INSERT_COLUMNS = ("slot", "domain_id", "t_ms", *_SAMPLE_COLUMNS, "state")


def _driver_statement(dialect_name: str, name: str) -> Any:
    ins = pg_insert if dialect_name == "postgresql" else sqlite_insert
    if name == "insert_samples":
        return (
            ins(samples)
            .values({c: bindparam(c) for c in _SAMPLE_INSERT_COLUMNS})
            .on_conflict_do_nothing()
        )
    if name == "note_latest":
        newer = or_(domains.c.last_sample_ms.is_(None), domains.c.last_sample_ms < bindparam("t"))
        return (
            update(domains)
            .where(domains.c.id == bindparam("d"), newer)
            .values(last_sample_ms=bindparam("t"))
        )
    raise KeyError(name)


_DRIVER_SQL: dict[tuple[str, str], tuple[str, tuple[str, ...] | None]] = {}


def _compiled_driver_sql(
    dialect_name: str, dialect: Any, name: str
) -> tuple[str, tuple[str, ...] | None]:
    """A Core statement compiled once per dialect, for the driver's executemany:
    the SQL and, for positional drivers (SQLite), the parameter order."""
    key = (dialect_name, name)
    if key not in _DRIVER_SQL:
        compiled = _driver_statement(dialect_name, name).compile(dialect=dialect)
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        _DRIVER_SQL[key] = (str(compiled), order)
    return _DRIVER_SQL[key]


@functools.cache
def _tail_select(res: Resolution, figs: tuple[Figure, ...]) -> Select[Any]:
    """Rollup rows of not-yet-rolled-up buckets of one domain, aggregated from
    raw samples on the fly (cached: the statement is large to build)."""
    agg = rollup.aggregate_select(res, by_domain=True).subquery()
    names = [f"{f.column}_{a}" for f in figs for a in rollup.AGGREGATES]
    return select(agg.c.t_ms, agg.c.n, *(agg.c[n] for n in names)).order_by(agg.c.t_ms)


class Store:
    """A history database, opened and schema-checked by `open_store`."""

    def __init__(
        self,
        engine: Engine,
        url: URL,
        config: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._url = url
        self.config = config
        self.clock = clock
        self._dialect = engine.dialect.name
        self._host_id: int | None = None
        self._domains: dict[str, _CachedDomain] = {}
        self._refs: dict[tuple[str, str, int], DomainRef] = {}
        self._write_lock = threading.Lock()

    # ----------------------------------------------------------------- basics

    @property
    def url(self) -> URL:
        """The database URL."""
        return self._url

    @property
    def database(self) -> str:
        """The database as shown to operators (no password)."""
        return display_url(self._url)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for the store's own tools and tests)."""
        return self._engine

    def now(self) -> datetime:
        """The store's clock as an aware UTC datetime."""
        return datetime.fromtimestamp(self.clock(), UTC)

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise StoreUnavailable(
                f"history database {self.database}: {one_line(exc.orig)}"
            ) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(
                    f"history database {self.database}: {one_line(exc.orig)}"
                ) from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._errors(), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._errors(), write_transaction(self._engine) as conn:
            yield conn

    def _insert(self, table: Table) -> Any:
        if self._dialect == "postgresql":
            return pg_insert(table)
        return sqlite_insert(table)

    def _ensure_host(self, conn: Connection) -> int:
        if self._host_id is not None:
            return self._host_id
        query = select(hosts.c.id).where(hosts.c.name == self.config.host)
        found = conn.execute(query).scalar()
        if found is not None:
            # Cached only once seen committed: an id from a transaction that
            # later rolls back must not outlive it.
            self._host_id = int(found)
            return self._host_id
        conn.execute(
            self._insert(hosts)
            .values(name=self.config.host, created_ms=to_ms(self.now()))
            .on_conflict_do_nothing(index_elements=[hosts.c.name])
        )
        return int(conn.execute(query).scalar_one())

    def _find_host_id(self, conn: Connection, host: str | None) -> int | None:
        name = host or self.config.host
        if name == self.config.host and self._host_id is not None:
            return self._host_id
        found = conn.execute(select(hosts.c.id).where(hosts.c.name == name)).scalar()
        return None if found is None else int(found)

    # ---------------------------------------------------------------- domains

    def resolve_domain(self, vm: str | DomainRef) -> DomainRef:
        """The VM an operator means by a UUID, a name or a domid.

        Names and domids prefer this host's VMs, and among several VMs that
        carried the name, the one seen last (a recreated VM)."""
        with self._read() as conn:
            ref, _ = self._resolve(conn, vm)
            return ref

    def domains(self, *, all_hosts: bool = False) -> list[DomainRef]:
        """Every VM the history knows on this host (or on all hosts), by name."""
        with self._read() as conn:
            query = select(domains.c.uuid, domains.c.name, domains.c.domid).order_by(
                domains.c.name, domains.c.uuid
            )
            if not all_hosts:
                host_id = self._find_host_id(conn, None)
                if host_id is None:
                    return []
                query = query.where(domains.c.host_id == host_id)
            return [_domain_ref(r) for r in conn.execute(query)]

    def _resolve(self, conn: Connection, vm: str | DomainRef) -> tuple[DomainRef, int]:
        cols = (
            domains.c.id,
            domains.c.uuid,
            domains.c.name,
            domains.c.domid,
            domains.c.host_id,
            domains.c.last_seen_ms,
        )
        if isinstance(vm, DomainRef):
            row = conn.execute(select(*cols).where(domains.c.uuid == vm.uuid)).first()
            if row is None:
                raise UnknownDomain(f"VM {vm.name} ({vm.uuid}) has no history in {self.database}")
            return _domain_ref(row), int(row.id)
        text = vm.strip()
        if not text:
            raise UnknownDomain("no VM given")
        host_id = self._find_host_id(conn, None)
        by_uuid = conn.execute(select(*cols).where(domains.c.uuid == text.lower())).first()
        if by_uuid is not None:
            return _domain_ref(by_uuid), int(by_uuid.id)
        rows = conn.execute(select(*cols).where(domains.c.name == text)).all()
        if not rows and text.isdigit():
            rows = conn.execute(
                select(*cols).where(domains.c.domid == int(text), domains.c.host_id == host_id)
            ).all()
        local = [r for r in rows if r.host_id == host_id]
        candidates = local or rows
        if candidates:
            # A name reused by a recreated VM means the newest one.
            best = max(candidates, key=lambda r: (r.last_seen_ms, r.id))
            return _domain_ref(best), int(best.id)
        known = conn.execute(
            select(domains.c.name)
            .group_by(domains.c.name)
            .order_by(func.max(domains.c.last_seen_ms).desc())
            .limit(8)
        ).scalars()
        hint = ", ".join(known)
        raise UnknownDomain(
            f"no VM {text!r} in the history at {self.database}"
            + (f" (known: {hint})" if hint else " (it holds no VMs yet)")
        )

    def _domain_ids(
        self, conn: Connection, refs: Iterable[DomainRef], seen_ms: int
    ) -> dict[str, int]:
        """Ids of `refs`, inserting or refreshing their rows as needed.

        Returns the ids; the cache is updated by the caller after commit, so a
        rolled-back transaction never leaves ids behind.
        """
        host_id = self._ensure_host(conn)
        wanted: dict[str, DomainRef] = {}
        ids: dict[str, int] = {}
        for ref in refs:
            cached = self._domains.get(ref.uuid)
            if (
                cached is not None
                and cached.name == ref.name
                and cached.domid == ref.domid
                and seen_ms - cached.last_seen_ms < LAST_SEEN_REFRESH_MS
            ):
                ids[ref.uuid] = cached.id
            else:
                wanted[ref.uuid] = ref
        if not wanted:
            return ids
        ins = self._insert(domains)
        stmt = ins.on_conflict_do_update(
            index_elements=[domains.c.uuid],
            set_={
                "name": ins.excluded.name,
                "domid": ins.excluded.domid,
                "host_id": ins.excluded.host_id,
                "last_seen_ms": case(
                    (
                        ins.excluded.last_seen_ms > domains.c.last_seen_ms,
                        ins.excluded.last_seen_ms,
                    ),
                    else_=domains.c.last_seen_ms,
                ),
            },
        )
        conn.execute(
            stmt,
            [
                {
                    "uuid": ref.uuid,
                    "name": ref.name,
                    "domid": ref.domid,
                    "host_id": host_id,
                    "first_seen_ms": seen_ms,
                    "last_seen_ms": seen_ms,
                }
                for ref in wanted.values()
            ],
        )
        rows = conn.execute(
            select(domains.c.uuid, domains.c.id).where(domains.c.uuid.in_(list(wanted)))
        )
        for row in rows:
            ids[row.uuid] = int(row.id)
        return ids

    def _remember(
        self, refs: Mapping[str, DomainRef], ids: Mapping[str, int], seen_ms: int
    ) -> None:
        for uuid, ref in refs.items():
            cached = self._domains.get(uuid)
            if (
                cached is not None
                and cached.name == ref.name
                and cached.domid == ref.domid
                and seen_ms - cached.last_seen_ms < LAST_SEEN_REFRESH_MS
            ):
                continue
            self._domains[uuid] = _CachedDomain(ids[uuid], ref.name, ref.domid, seen_ms)

    # ----------------------------------------------------------------- writes

    def write(
        self,
        samples_: Sequence[Sample] = (),
        decisions_: Sequence[Decision] = (),
        events_: Sequence[Event] = (),
    ) -> WriteResult:
        """Commit samples, decisions and events in one transaction.

        Samples older than raw retention are refused (counted in `too_late`);
        a sample whose bucket was already rolled up makes that bucket be
        recomputed in the same transaction. Raises `StoreUnavailable` when the
        database is locked, full or unreachable; nothing is written then.
        """
        now_ms = to_ms(self.now())
        cutoff_ms = now_ms - int(self.config.retention.raw_s * 1000)
        refs: dict[str, DomainRef] = {}
        for s in samples_:
            refs[s.domain.uuid] = s.domain
        for d in decisions_:
            refs[d.domain.uuid] = d.domain
        for e in events_:
            if e.domain is not None:
                refs[e.domain.uuid] = e.domain
        with self._write_lock, self._write() as conn:
            ids = self._domain_ids(conn, refs.values(), now_ms)
            rows: list[tuple[Any, ...]] = []
            too_late = 0
            for s in samples_:
                t_ms = to_ms(s.time)
                if t_ms < cutoff_ms:
                    too_late += 1
                    continue
                # In _SAMPLE_INSERT_COLUMNS order.
                rows.append(
                    (
                        t_ms // SLOT_MS,
                        ids[s.domain.uuid],
                        t_ms,
                        s.target_kb,
                        s.actual_kb,
                        s.demand_kb,
                        s.available_kb,
                        s.committed_kb,
                        s.swap_used_kb,
                        s.psi_some_pct,
                        s.psi_full_pct,
                        s.refault_per_s,
                        s.swapin_per_s,
                        _STATE_TEXT[s.state],
                    )
                )
            if rows:
                self._insert_samples(conn, rows)
                self._note_latest(conn, rows)
                self._fix_late(conn, rows)
            if decisions_:
                conn.execute(
                    insert(decisions),
                    [
                        {
                            "domain_id": ids[d.domain.uuid],
                            "t_ms": to_ms(d.time),
                            "old_target_kb": d.old_target_kb,
                            "new_target_kb": d.new_target_kb,
                            "swap_target_kb": d.swap_target_kb,
                            "reason": d.reason,
                            "policy_version": d.policy_version,
                        }
                        for d in decisions_
                    ],
                )
            if events_:
                host_id = self._ensure_host(conn)
                conn.execute(
                    insert(events),
                    [
                        {
                            "host_id": host_id,
                            "domain_id": None if e.domain is None else ids[e.domain.uuid],
                            "t_ms": to_ms(e.time),
                            "kind": e.kind.value,
                            "details": json.dumps(dict(e.details), sort_keys=True),
                        }
                        for e in events_
                    ],
                )
        self._remember(refs, ids, now_ms)
        return WriteResult(
            samples=len(rows), too_late=too_late, decisions=len(decisions_), events=len(events_)
        )

    def _insert_samples(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert raw sample rows, ignoring duplicates of kept samples.

        The statement is a Core `insert()`, compiled once per dialect and run
        with the driver's executemany on plain tuples: SQLAlchemy's per-row
        parameter processing would cost more than SQLite's insert itself.
        """
        sql, order = _compiled_driver_sql(self._dialect, conn.dialect, "insert_samples")
        if order is not None:
            if order != _SAMPLE_INSERT_COLUMNS:
                raise AssertionError(f"unexpected parameter order {order}")
            conn.exec_driver_sql(sql, rows)
        else:
            conn.exec_driver_sql(
                sql, [dict(zip(_SAMPLE_INSERT_COLUMNS, r, strict=True)) for r in rows]
            )

    def _note_latest(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Record each VM's newest sample time (how `fleet_latest` finds it)."""
        latest: dict[int, int] = {}
        for _slot, domain_id, t_ms, *_ in rows:
            if t_ms > latest.get(domain_id, -1):
                latest[domain_id] = t_ms
        sql, order = _compiled_driver_sql(self._dialect, conn.dialect, "note_latest")
        params = [{"d": d, "t": t} for d, t in latest.items()]
        if order is not None:
            conn.exec_driver_sql(sql, [tuple(p[k] for k in order) for p in params])
        else:
            conn.exec_driver_sql(sql, params)

    def _fix_late(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        oldest = min(r[2] for r in rows)
        marks = rollup.read_marks(conn)
        for res, mark in marks.items():
            if oldest >= mark:
                continue
            dirty: dict[int, tuple[int, int]] = {}
            for _slot, domain_id, t_ms, *_ in rows:
                if t_ms < mark:
                    b = rollup.bucket_start(t_ms, res)
                    lo, hi = dirty.get(domain_id, (b, b))
                    dirty[domain_id] = (min(lo, b), max(hi, b))
            for domain_id, (lo, hi) in dirty.items():
                rollup.recompute(conn, res, lo, hi + res.value * 1000, [domain_id])

    # ------------------------------------------------------ rollups, retention

    def maintain(
        self, *, now: datetime | None = None, pending_since: datetime | None = None
    ) -> MaintenanceReport:
        """Roll up closed buckets and prune what retention no longer keeps.

        `pending_since` is the time of the oldest sample not yet written (the
        writer's queue): buckets from there on are not closed yet.
        """
        moment = now or self.now()
        now_ms = to_ms(moment)
        limit_ms = now_ms - int(self.config.rollup_grace_s * 1000)
        if pending_since is not None:
            limit_ms = min(limit_ms, to_ms(pending_since))
        rolled: dict[Resolution, int] = {}
        marks: dict[Resolution, int] = {}
        for res in rollup.ROLLUP_RESOLUTIONS:
            rolled[res], marks[res] = self._roll(res, rollup.bucket_start(limit_ms, res))
        pruned = self._prune(now_ms, marks)
        return MaintenanceReport(
            rolled_up=rolled,
            marks={res: from_ms(ms) for res, ms in marks.items()},
            pruned=pruned,
        )

    def _roll(self, res: Resolution, end_ms: int) -> tuple[int, int]:
        step_ms = res.value * 1000
        with self._read() as conn:
            n_domains = max(1, int(conn.execute(select(func.count(domains.c.id))).scalar() or 1))
        # Samples are clustered by time: a chunk short enough to hold about
        # `rollup_rows_per_tx` samples is one range read and one short
        # transaction. Only an hour bucket of a large fleet is split by VM.
        rows_span_ms = int(
            self.config.rollup_rows_per_tx * self.config.sample_interval_s * 1000 / n_domains
        )
        chunk_ms = rollup.bucket_start(
            min(int(self.config.rollup_chunk_s * 1000), rows_span_ms), res
        )
        chunk_ms = max(step_ms, chunk_ms)
        min_run_ms = int(self.config.rollup_run_s * 1000) if res is Resolution.MINUTE else 0
        first_run = True
        written = 0
        while True:
            with self._write() as conn:

                def initial(conn: Connection = conn) -> int:
                    first = rollup.earliest_sample_ms(conn)
                    return end_ms if first is None else min(rollup.bucket_start(first, res), end_ms)

                mark = rollup.lock_mark(conn, res, initial)
                if mark >= end_ms or (first_run and end_ms - mark < min_run_ms):
                    return written, mark
                first_run = False
                nxt = rollup.earliest_sample_ms(conn, at_or_after=mark)
                if nxt is None or rollup.bucket_start(nxt, res) >= end_ms:
                    rollup.set_mark(conn, res, end_ms)
                    return written, end_ms
                # No samples between the mark and `nxt`: start the chunk there.
                mark = max(mark, rollup.bucket_start(nxt, res))
                chunk_end = min(end_ms, mark + chunk_ms)
                ids = [int(i) for i in conn.execute(select(domains.c.id)).scalars()]
                group = self._domains_per_rollup_tx(chunk_end - mark)
                if len(ids) <= group:
                    written += rollup.recompute(conn, res, mark, chunk_end)
                    rollup.set_mark(conn, res, chunk_end)
                    continue
            # A large fleet: one transaction per group of VMs, so no transaction
            # holds the write lock for long, then the mark. A crash in between
            # only means the chunk is recomputed (delete + insert) next time.
            for i in range(0, len(ids), group):
                with self._write() as conn:
                    written += rollup.recompute(conn, res, mark, chunk_end, ids[i : i + group])
            with self._write() as conn:
                done_through = mark  # the mark exists: created by the first step

                def known(value: int = done_through) -> int:
                    return value

                if rollup.lock_mark(conn, res, known) < chunk_end:
                    rollup.set_mark(conn, res, chunk_end)

    def _domains_per_rollup_tx(self, span_ms: int) -> int:
        """How many VMs' raw samples of a `span_ms` chunk make one rollup
        transaction of about `rollup_rows_per_tx` samples."""
        per_domain = max(1.0, span_ms / 1000 / self.config.sample_interval_s)
        return max(1, int(self.config.rollup_rows_per_tx / per_domain))

    def _prune(self, now_ms: int, marks: Mapping[Resolution, int]) -> dict[str, int]:
        keep = self.config.retention
        raw_cut = min(now_ms - int(keep.raw_s * 1000), *marks.values())
        pruned: dict[str, int] = {}
        # Everything is clustered by time: retention deletes ranges at the
        # front of the b-trees, a bounded range per transaction.
        pruned["samples"] = self._delete_before(
            samples.c.slot, raw_cut // SLOT_MS, PRUNE_SLOTS_PER_TX, samples.c.slot >= 0
        )
        # Rollups are keyed by VM first: one primary-key range per VM.
        with self._read() as conn:
            domain_ids = [int(i) for i in conn.execute(select(domains.c.id)).scalars()]
        for name, res, keep_s in (
            ("rollups_1m", Resolution.MINUTE, keep.minute_s),
            ("rollups_1h", Resolution.HOUR, keep.hour_s),
        ):
            cond = and_(
                rollups.c.res_s == res.value,
                rollups.c.domain_id == bindparam("d"),
                rollups.c.t_ms < now_ms - int(keep_s * 1000),
            )
            count = 0
            for i in range(0, len(domain_ids), PRUNE_DOMAINS_PER_TX):
                with self._write() as conn:
                    result = conn.execute(
                        delete(rollups).where(cond),
                        [{"d": d} for d in domain_ids[i : i + PRUNE_DOMAINS_PER_TX]],
                    )
                    count += max(result.rowcount, 0)
            pruned[name] = count
        with self._write() as conn:
            pruned["decisions"] = max(
                conn.execute(
                    delete(decisions).where(
                        decisions.c.t_ms < now_ms - int(keep.decisions_s * 1000)
                    )
                ).rowcount,
                0,
            )
            pruned["events"] = max(
                conn.execute(
                    delete(events).where(events.c.t_ms < now_ms - int(keep.events_s * 1000))
                ).rowcount,
                0,
            )
        return pruned

    def _delete_before(self, column: Any, cut: int, step: int, scope: ColumnElement[bool]) -> int:
        """Delete rows (within `scope`) whose `column` is below `cut`, from the
        oldest on, at most `step` of `column` per transaction."""
        count = 0
        while True:
            with self._write() as conn:
                first = conn.execute(select(func.min(column)).where(scope)).scalar()
                if first is None or first >= cut:
                    return count
                upto = min(cut, int(first) + step)
                table = column.table
                result = conn.execute(delete(table).where(scope, column < upto))
                count += max(result.rowcount, 0)

    # ---------------------------------------------------------------- queries

    def history(
        self,
        vm: str | DomainRef,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        figures: Sequence[Figure | str] | str | None = None,
        resolution: Resolution | str | None = "auto",
        *,
        max_points: int | None = None,
    ) -> Series:
        """A VM's figures from `since` to `until` (both included).

        Times are aware datetimes, ISO strings or relative forms (`6h`); the
        default range is the last 6 hours. `resolution` `auto` (or None) picks
        the finest resolution whose retention covers `since` and whose row
        count fits `max_points`, merging hour buckets further if even those
        do not fit; `raw`, `1m`, `1h` force one.
        """
        figs = _parse_figures(figures)
        now = self.now()
        start, end = parse_range(since, until, now, default_span_s=6 * HOUR_S)
        budget = max_points or self.config.max_points
        forced = Resolution.parse(resolution) if isinstance(resolution, str) else resolution
        res = forced if forced is not None else self._pick_resolution(start, end, now, budget)
        start_ms, end_ms = to_ms(start), to_ms(end)
        with self._read() as conn:
            ref, domain_id = self._resolve(conn, vm)
            if res is Resolution.RAW:
                cols = self._raw_columns(conn, domain_id, figs, start_ms, end_ms)
            else:
                cols = self._rollup_columns(conn, domain_id, figs, res, start_ms, end_ms)
        step_s = res.value
        if forced is None and len(cols.times_ms) > budget:
            factor = math.ceil(len(cols.times_ms) / budget)
            cols = _merge_columns(cols, figs, factor)
            step_s *= factor
        return Series(
            domain=ref,
            resolution=res,
            step_s=step_s,
            since=start,
            until=end,
            figures=figs,
            times=tuple(map(from_ms, cols.times_ms)),
            counts=tuple(cols.counts),
            values=cols.values,
        )

    def _pick_resolution(
        self, start: datetime, end: datetime, now: datetime, budget: int
    ) -> Resolution:
        span_s = (end - start).total_seconds()
        age_s = (now - start).total_seconds()
        keep = self.config.retention
        steps = (
            (Resolution.RAW, self.config.sample_interval_s),
            (Resolution.MINUTE, 60.0),
            (Resolution.HOUR, 3600.0),
        )
        for res, step_s in steps:
            if span_s / step_s <= budget and age_s <= keep.of(res):
                return res
        return Resolution.HOUR

    def _raw_columns(
        self, conn: Connection, domain_id: int, figs: Sequence[Figure], start_ms: int, end_ms: int
    ) -> _Columns:
        # One primary-key seek per 10-second slot of the range.
        query = (
            select(samples.c.t_ms, *(samples.c[f.column] for f in figs))
            .where(
                samples.c.slot.in_(bindparam("slots", expanding=True)),
                samples.c.domain_id == domain_id,
                samples.c.t_ms >= start_ms,
                samples.c.t_ms <= end_ms,
            )
            .order_by(samples.c.t_ms)
        )
        rows: list[Any] = []
        oldest_raw = rollup.earliest_sample_ms(conn)
        if oldest_raw is None:
            return _Columns([], [], {f: FigureSeries((), (), (), ()) for f in figs})
        first_slot_ms = oldest_raw - oldest_raw % SLOT_MS
        all_slots = rollup.slots_between(max(start_ms, first_slot_ms), end_ms + 1)
        for slots in _chunks(all_slots, rollup.MAX_SLOTS_PER_QUERY):
            rows += conn.execute(query, {"slots": slots}).all()
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else []
        values = {}
        for i, fig in enumerate(figs, start=1):
            col = cols[i] if cols else ()
            values[fig] = FigureSeries(col, col, col, col)
        times = list(cols[0]) if cols else []
        return _Columns(times, [1] * len(times), values)

    def _rollup_columns(
        self,
        conn: Connection,
        domain_id: int,
        figs: Sequence[Figure],
        res: Resolution,
        start_ms: int,
        end_ms: int,
    ) -> _Columns:
        first = rollup.bucket_start(start_ms, res)
        mark = rollup.read_marks(conn).get(res)
        names = [f"{f.column}_{agg}" for f in figs for agg in rollup.AGGREGATES]
        rows: list[Any] = []
        if mark is not None and mark > first:
            # One contiguous primary-key range: rollups are keyed by VM first.
            rows += conn.execute(
                select(rollups.c.t_ms, rollups.c.n, *(rollups.c[n] for n in names))
                .where(
                    rollups.c.res_s == res.value,
                    rollups.c.domain_id == domain_id,
                    rollups.c.t_ms >= first,
                    rollups.c.t_ms < min(end_ms + 1, mark),
                )
                .order_by(rollups.c.t_ms)
            ).all()
        tail_start = first if mark is None else max(first, mark)
        oldest_raw = rollup.earliest_sample_ms(conn)
        if oldest_raw is not None:
            tail_start = max(tail_start, rollup.bucket_start(oldest_raw, res))
        if oldest_raw is not None and tail_start <= end_ms:
            # Buckets not rolled up yet (the last few minutes): aggregate raw now.
            for lo, hi in rollup.spans(tail_start, end_ms + 1, res):
                rows += conn.execute(
                    _tail_select(res, tuple(figs)), rollup.aggregate_params(lo, hi, [domain_id])
                ).all()
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else []
        values = {}
        for i, fig in enumerate(figs):
            base = 2 + 4 * i
            values[fig] = FigureSeries(
                *(cols[base + k] if cols else () for k in range(4))  # min, max, mean, last
            )
        return _Columns(
            list(cols[0]) if cols else [], [int(n) for n in cols[1]] if cols else [], values
        )

    def decisions(
        self,
        vm: str | DomainRef | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        *,
        limit: int = 1000,
    ) -> list[Decision]:
        """Decisions from `since` to `until` (default: last 24 h), oldest first, at most
        `limit` (the newest ones)."""
        start, end = parse_range(since, until, self.now(), default_span_s=24 * HOUR_S)
        _check_limit(limit)
        with self._read() as conn:
            query = (
                select(decisions, domains.c.uuid, domains.c.name, domains.c.domid)
                .join(domains, domains.c.id == decisions.c.domain_id)
                .where(decisions.c.t_ms >= to_ms(start), decisions.c.t_ms <= to_ms(end))
            )
            if vm is not None:
                _, domain_id = self._resolve(conn, vm)
                query = query.where(decisions.c.domain_id == domain_id)
            else:
                host_id = self._find_host_id(conn, None)
                query = query.where(domains.c.host_id == host_id)
            query = query.order_by(decisions.c.t_ms.desc(), decisions.c.id.desc()).limit(limit)
            rows = conn.execute(query).all()
        return [_decision(r) for r in reversed(rows)]

    def events(
        self,
        vm: str | DomainRef | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        *,
        kinds: Iterable[EventKind | str] | None = None,
        limit: int = 1000,
        all_hosts: bool = False,
    ) -> list[Event]:
        """Events from `since` to `until` (default: last 24 h), oldest first, at most
        `limit` (the newest ones); of one VM, or of this host (or all hosts)."""
        start, end = parse_range(since, until, self.now(), default_span_s=24 * HOUR_S)
        _check_limit(limit)
        wanted = None if kinds is None else [_event_kind(k).value for k in kinds]
        with self._read() as conn:
            query = (
                select(events, domains.c.uuid, domains.c.name, domains.c.domid)
                .outerjoin(domains, domains.c.id == events.c.domain_id)
                .where(events.c.t_ms >= to_ms(start), events.c.t_ms <= to_ms(end))
            )
            if vm is not None:
                _, domain_id = self._resolve(conn, vm)
                query = query.where(events.c.domain_id == domain_id)
            elif not all_hosts:
                query = query.where(events.c.host_id == self._find_host_id(conn, None))
            if wanted is not None:
                query = query.where(events.c.kind.in_(wanted))
            query = query.order_by(events.c.t_ms.desc(), events.c.id.desc()).limit(limit)
            rows = conn.execute(query).all()
        return [_event(r) for r in reversed(rows)]

    def fleet_latest(self, *, within_s: float | None = None) -> list[FleetRow]:
        """The newest sample and decision of every VM of this host seen within
        `within_s` (default: raw retention), by name."""
        window_s = self.config.retention.raw_s if within_s is None else within_s
        seen_after = to_ms(self.now()) - int(window_s * 1000)
        s, d, x = samples, domains, decisions
        # One primary-key seek per VM for each: the newest sample is where
        # `domains.last_sample_ms` says; the alias keeps the decision
        # subquery correlated to `domains` only.
        x2 = decisions.alias("x2")
        slot_ms = literal_column(str(SLOT_MS), BigInteger)
        at_newest = and_(
            s.c.slot == d.c.last_sample_ms // slot_ms,
            s.c.domain_id == d.c.id,
            s.c.t_ms == d.c.last_sample_ms,
        )
        newest_decision = (
            select(x2.c.id)
            .where(x2.c.domain_id == d.c.id)
            .order_by(x2.c.t_ms.desc(), x2.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        sample_cols = [s.c.t_ms.label("s_t_ms"), *(s.c[c] for c in _SAMPLE_COLUMNS), s.c.state]
        decision_cols = [
            x.c.t_ms.label("x_t_ms"),
            x.c.old_target_kb,
            x.c.new_target_kb,
            x.c.swap_target_kb,
            x.c.reason,
            x.c.policy_version,
        ]
        with self._read() as conn:
            host_id = self._find_host_id(conn, None)
            if host_id is None:
                return []
            query = (
                select(d.c.uuid, d.c.name, d.c.domid, *sample_cols, *decision_cols)
                .select_from(d.outerjoin(s, at_newest).outerjoin(x, x.c.id == newest_decision))
                .where(d.c.host_id == host_id, d.c.last_seen_ms >= seen_after)
                .order_by(d.c.name, d.c.uuid)
            )
            rows = conn.execute(query).all()
        # Rows come from our own database, checked when written: build the
        # records without re-validating them (1,000 VMs in a few ms).
        n_fig = len(_SAMPLE_COLUMNS)
        out = []
        for r in rows:
            ref = self._cached_ref(r[0], r[1], r[2])
            sample = None
            if r[3] is not None:
                figures = dict(zip(_SAMPLE_COLUMNS, r[4 : 4 + n_fig], strict=True))
                sample = _trusted(
                    Sample, domain=ref, time=from_ms(r[3]), state=VmState(r[4 + n_fig]), **figures
                )
            decision = None
            k = 5 + n_fig
            if r[k] is not None:
                decision = _trusted(
                    Decision,
                    domain=ref,
                    time=from_ms(r[k]),
                    old_target_kb=r[k + 1],
                    new_target_kb=r[k + 2],
                    swap_target_kb=r[k + 3],
                    reason=r[k + 4],
                    policy_version=r[k + 5],
                )
            out.append(FleetRow(domain=ref, sample=sample, decision=decision))
        return out

    def _cached_ref(self, uuid: str, name: str, domid: int) -> DomainRef:
        key = (uuid, name, domid)
        ref = self._refs.get(key)
        if ref is None:
            ref = DomainRef(uuid=uuid, name=name, domid=domid)
            if len(self._refs) > 100_000:
                self._refs.clear()
            self._refs[key] = ref
        return ref

    # --------------------------------------------------------------- policies

    def policy(self, vm: str | DomainRef) -> PolicyRecord:
        """A VM's policy (version 0 and an empty document when never set)."""
        with self._read() as conn:
            ref, domain_id = self._resolve(conn, vm)
            row = conn.execute(select(policies).where(policies.c.domain_id == domain_id)).first()
        return _policy(ref, row)

    def policies(self, *, all_hosts: bool = False) -> dict[str, PolicyRecord]:
        """Every stored policy of this host's VMs (or all), keyed by VM UUID."""
        with self._read() as conn:
            query = select(policies, domains.c.uuid, domains.c.name, domains.c.domid).join(
                domains, domains.c.id == policies.c.domain_id
            )
            if not all_hosts:
                query = query.where(domains.c.host_id == self._find_host_id(conn, None))
            rows = conn.execute(query).all()
        return {r.uuid: _policy(_domain_ref(r), r) for r in rows}

    def set_policy(
        self,
        vm: str | DomainRef,
        changes: Mapping[str, Any],
        *,
        who: str,
        source: AuditSource,
        validate: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    ) -> PolicyRecord:
        """Merge `changes` into a VM's policy atomically; returns the new record.

        `validate` (the policy model's validator) sees the merged document
        inside the transaction and may normalise it or raise `UsageError`. A
        change that leaves the document as it was changes nothing (same
        version, no audit entry).
        """
        clean = check_document("policy change", changes)
        return self._change_policy(vm, lambda old: {**old, **clean}, who, source, validate)

    def unset_policy(
        self,
        vm: str | DomainRef,
        fields: Iterable[str] | None = None,
        *,
        who: str,
        source: AuditSource,
        validate: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    ) -> PolicyRecord:
        """Remove some fields (or, with None, all) from a VM's policy atomically."""
        names = None if fields is None else set(fields)

        def drop(old: dict[str, Any]) -> dict[str, Any]:
            if names is None:
                return {}
            return {k: v for k, v in old.items() if k not in names}

        return self._change_policy(vm, drop, who, source, validate)

    def _change_policy(
        self,
        vm: str | DomainRef,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        who: str,
        source: AuditSource,
        validate: Callable[[dict[str, Any]], Mapping[str, Any]] | None,
    ) -> PolicyRecord:
        _check_actor(who, source)
        with self._write() as conn:
            ref, domain_id = self._resolve(conn, vm)
            # Serialises concurrent changes of this VM on PostgreSQL (SQLite
            # already holds the database's write lock).
            conn.execute(select(domains.c.id).where(domains.c.id == domain_id).with_for_update())
            row = conn.execute(select(policies).where(policies.c.domain_id == domain_id)).first()
            old_doc: dict[str, Any] = json.loads(row.document) if row is not None else {}
            new_doc = change(dict(old_doc))
            if validate is not None:
                new_doc = dict(validate(new_doc))
            new_doc = check_document("policy", new_doc)
            if new_doc == old_doc:
                return _policy(ref, row)
            version = (int(row.version) if row is not None else 0) + 1
            now_ms = to_ms(self.now())
            values = {
                "domain_id": domain_id,
                "version": version,
                "document": json.dumps(new_doc, sort_keys=True),
                "updated_ms": now_ms,
            }
            ins = self._insert(policies)
            conn.execute(
                ins.values(values).on_conflict_do_update(
                    index_elements=[policies.c.domain_id],
                    set_={k: ins.excluded[k] for k in ("version", "document", "updated_ms")},
                )
            )
            conn.execute(
                insert(audit).values(
                    t_ms=now_ms,
                    host_id=self._ensure_host(conn),
                    subject=AuditSubject.POLICY.value,
                    domain_id=domain_id,
                    who=who,
                    source=source.value,
                    old=None if row is None else row.document,
                    new=values["document"],
                    version=version,
                )
            )
        return PolicyRecord(
            domain=ref, version=version, document=new_doc, updated_at=from_ms(now_ms)
        )

    # ------------------------------------------------------------- host status

    def put_status(self, document: Mapping[str, Any], time: datetime) -> None:
        """Replace this host's live status document (the controller, each cycle)."""
        try:
            text = json.dumps(dict(document), allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise RecordError(f"status document is not valid JSON: {exc}") from exc
        if len(text) > MAX_STATUS_BYTES:
            raise RecordError(f"status document is over {MAX_STATUS_BYTES} bytes")
        with self._write() as conn:
            values = {"host_id": self._ensure_host(conn), "t_ms": to_ms(time), "document": text}
            ins = self._insert(host_status)
            conn.execute(
                ins.values(values).on_conflict_do_update(
                    index_elements=[host_status.c.host_id],
                    set_={k: ins.excluded[k] for k in ("t_ms", "document")},
                )
            )

    def status(self, host: str | None = None) -> HostStatus | None:
        """A host's last live status, or None when its controller never ran."""
        name = host or self.config.host
        with self._read() as conn:
            host_id = self._find_host_id(conn, name)
            if host_id is None:
                return None
            row = conn.execute(select(host_status).where(host_status.c.host_id == host_id)).first()
        if row is None:
            return None
        return HostStatus(host=name, time=from_ms(int(row.t_ms)), document=json.loads(row.document))

    # ----------------------------------------------------------- host settings

    def settings(self, host: str | None = None) -> HostSettings:
        """A host's settings (defaults, version 0, when never set)."""
        name = host or self.config.host
        with self._read() as conn:
            host_id = self._find_host_id(conn, name)
            row = None
            if host_id is not None:
                row = conn.execute(
                    select(host_settings).where(host_settings.c.host_id == host_id)
                ).first()
        return _settings(name, row)

    def set_paused(self, paused: bool, *, who: str, source: AuditSource) -> HostSettings:
        """Pause or resume this host's target writes; returns the new settings."""
        return self.update_settings({"paused": bool(paused)}, who=who, source=source)

    def update_settings(
        self, changes: Mapping[str, Any], *, who: str, source: AuditSource
    ) -> HostSettings:
        """Merge `changes` into this host's settings atomically, with audit."""
        _check_actor(who, source)
        clean = check_document("settings change", changes)
        if "paused" in clean and not isinstance(clean["paused"], bool):
            raise UsageError("setting 'paused' must be true or false")
        with self._write() as conn:
            host_id = self._ensure_host(conn)
            conn.execute(select(hosts.c.id).where(hosts.c.id == host_id).with_for_update())
            row = conn.execute(
                select(host_settings).where(host_settings.c.host_id == host_id)
            ).first()
            old_doc: dict[str, Any] = (
                json.loads(row.document) if row is not None else {"paused": False}
            )
            new_doc = check_document("settings", {**old_doc, **clean})
            if row is not None and new_doc == old_doc:
                return _settings(self.config.host, row)
            version = (int(row.version) if row is not None else 0) + 1
            now_ms = to_ms(self.now())
            values = {
                "host_id": host_id,
                "version": version,
                "paused": bool(new_doc.get("paused", False)),
                "document": json.dumps(new_doc, sort_keys=True),
                "updated_ms": now_ms,
            }
            ins = self._insert(host_settings)
            conn.execute(
                ins.values(values).on_conflict_do_update(
                    index_elements=[host_settings.c.host_id],
                    set_={
                        k: ins.excluded[k] for k in ("version", "paused", "document", "updated_ms")
                    },
                )
            )
            conn.execute(
                insert(audit).values(
                    t_ms=now_ms,
                    host_id=host_id,
                    subject=AuditSubject.SETTINGS.value,
                    domain_id=None,
                    who=who,
                    source=source.value,
                    old=None if row is None else row.document,
                    new=values["document"],
                    version=version,
                )
            )
        return HostSettings(
            host=self.config.host,
            version=version,
            paused=bool(values["paused"]),
            document=new_doc,
            updated_at=from_ms(now_ms),
        )

    def audit_log(
        self,
        vm: str | DomainRef | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        *,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Audit entries from `since` to `until` (default: last 30 days), oldest first."""
        start, end = parse_range(since, until, self.now(), default_span_s=30 * DAY_S)
        _check_limit(limit)
        with self._read() as conn:
            query = (
                select(
                    audit,
                    hosts.c.name.label("host_name"),
                    domains.c.uuid,
                    domains.c.name,
                    domains.c.domid,
                )
                .join(hosts, hosts.c.id == audit.c.host_id)
                .outerjoin(domains, domains.c.id == audit.c.domain_id)
                .where(audit.c.t_ms >= to_ms(start), audit.c.t_ms <= to_ms(end))
            )
            if vm is not None:
                _, domain_id = self._resolve(conn, vm)
                query = query.where(audit.c.domain_id == domain_id)
            query = query.order_by(audit.c.id.desc()).limit(limit)
            rows = conn.execute(query).all()
        return [_audit(r) for r in reversed(rows)]

    # ------------------------------------------------------------ bookkeeping

    def row_counts(self) -> dict[str, int]:
        """Rows per table (rollups split by resolution), for tools and benches."""
        with self._read() as conn:
            counts = {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
                for t in (hosts, domains, samples, decisions, events, policies, audit)
            }
            for res in rollup.ROLLUP_RESOLUTIONS:
                counts[f"rollups_{res.value}s"] = int(
                    conn.execute(select(func.count()).where(rollups.c.res_s == res.value)).scalar()
                    or 0
                )
        return counts


def open_store(
    db: str | URL | None = None,
    *,
    config: StoreConfig | None = None,
    clock: Callable[[], float] = time.time,
) -> Store:
    """Open the history database named by a path or URL (None: `$BALLAST_DB`,
    then /var/lib/ballast/ballast.db), refusing one whose schema does not
    match this code with a message naming the `ballast db` command to run."""
    url = db if isinstance(db, URL) else resolve_db_url(db)
    config = config or StoreConfig()
    engine = make_engine(url, busy_timeout_s=config.busy_timeout_s)
    try:
        with engine.connect() as conn:
            check_schema(conn, url)
    except OperationalError as exc:
        engine.dispose()
        raise StoreUnavailable(
            f"history database {display_url(url)}: {one_line(exc.orig)}"
        ) from exc
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, url, config, clock=clock)


# ------------------------------------------------------------------ helpers


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 1_000_000:
        raise UsageError("limit must be between 1 and 1,000,000")


def _check_actor(who: str, source: AuditSource) -> None:
    if not isinstance(who, str) or not 0 < len(who.strip()) <= 255:
        raise UsageError("the audit identity (who) must be 1..255 characters")
    if not isinstance(source, AuditSource):
        raise UsageError(f"audit source must be one of {', '.join(s.value for s in AuditSource)}")


def _parse_figures(figures: Sequence[Figure | str] | str | None) -> tuple[Figure, ...]:
    if figures is None:
        return ALL_FIGURES
    items: Iterable[Figure | str] = figures.split(",") if isinstance(figures, str) else figures
    out: list[Figure] = []
    for item in items:
        fig = item if isinstance(item, Figure) else Figure.parse(item)
        if fig not in out:
            out.append(fig)
    if not out:
        raise UsageError("no figures given")
    return tuple(out)


def _event_kind(kind: EventKind | str) -> EventKind:
    if isinstance(kind, EventKind):
        return kind
    try:
        return EventKind(kind.strip().lower())
    except ValueError:
        names = ", ".join(k.value for k in EventKind)
        raise UsageError(f"unknown event kind {kind!r}: choose from {names}") from None


def _merge_columns(cols: _Columns, figs: Sequence[Figure], factor: int) -> _Columns:
    """Merge runs of `factor` consecutive points (min of mins, max of maxes,
    mean weighted by sample count, last of lasts)."""
    n = len(cols.times_ms)
    starts = range(0, n, factor)
    counts = [sum(cols.counts[i : i + factor]) for i in starts]
    values = {}
    for fig in figs:
        c = cols.values[fig]
        mins, maxs, means, lasts = [], [], [], []
        for i in starts:
            j = i + factor
            lo = [v for v in c.min[i:j] if v is not None]
            hi = [v for v in c.max[i:j] if v is not None]
            pairs = zip(cols.counts[i:j], c.mean[i:j], strict=True)
            weighted = [(w, m) for w, m in pairs if m is not None]
            total = sum(w for w, _ in weighted)
            mean = sum(w * m for w, m in weighted) / total if total else None
            if mean is not None and fig.is_kb:
                mean = round(mean)
            tail = [v for v in c.last[i:j] if v is not None]
            mins.append(min(lo) if lo else None)
            maxs.append(max(hi) if hi else None)
            means.append(mean)
            lasts.append(tail[-1] if tail else None)
        values[fig] = FigureSeries(tuple(mins), tuple(maxs), tuple(means), tuple(lasts))
    return _Columns([cols.times_ms[i] for i in starts], counts, values)


_T = TypeVar("_T")


def _trusted(cls: type[_T], **values: Any) -> _T:
    """A frozen record from values read back from the database, which were
    checked on the way in, without running its checks again."""
    record = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(record, name, value)
    return record


def _domain_ref(row: Any) -> DomainRef:
    return DomainRef(uuid=row.uuid, name=row.name, domid=int(row.domid))


def _decision(row: Any) -> Decision:
    return Decision(
        domain=_domain_ref(row),
        time=from_ms(row.t_ms),
        old_target_kb=int(row.old_target_kb),
        new_target_kb=int(row.new_target_kb),
        swap_target_kb=None if row.swap_target_kb is None else int(row.swap_target_kb),
        reason=row.reason,
        policy_version=row.policy_version,
    )


def _event(row: Any) -> Event:
    return Event(
        kind=_event_kind(row.kind),
        time=from_ms(row.t_ms),
        domain=None if row.uuid is None else _domain_ref(row),
        details=json.loads(row.details),
    )


def _policy(ref: DomainRef, row: Any) -> PolicyRecord:
    if row is None:
        return PolicyRecord(domain=ref, version=0, document={}, updated_at=None)
    return PolicyRecord(
        domain=ref,
        version=int(row.version),
        document=json.loads(row.document),
        updated_at=from_ms(row.updated_ms),
    )


def _settings(host: str, row: Any) -> HostSettings:
    if row is None:
        return HostSettings(
            host=host, version=0, paused=False, document={"paused": False}, updated_at=None
        )
    return HostSettings(
        host=host,
        version=int(row.version),
        paused=bool(row.paused),
        document=json.loads(row.document),
        updated_at=from_ms(row.updated_ms),
    )


def _audit(row: Any) -> AuditEntry:
    return AuditEntry(
        id=int(row.id),
        time=from_ms(row.t_ms),
        host=row.host_name,
        subject=AuditSubject(row.subject),
        domain=None if row.uuid is None else _domain_ref(row),
        who=row.who,
        source=AuditSource(row.source),
        old=None if row.old is None else json.loads(row.old),
        new=json.loads(row.new),
        version=int(row.version),
    )


__all__ = [
    "MaintenanceReport",
    "Retention",
    "Store",
    "StoreConfig",
    "WriteResult",
    "open_store",
]
