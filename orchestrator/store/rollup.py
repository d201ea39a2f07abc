"""Rollups of raw samples into 1-minute and 1-hour series, and retention.

Each rollup row holds, per figure, the min, max, mean and last value of the
raw samples in its bucket, and `n`, how many samples there were. Rollups are
computed from raw samples by SQL, one chunk of closed buckets per
transaction; a per-resolution mark (`rollup_marks.through_ms`) records how
far they are done, so the work is incremental, survives a crash (mark and
rows commit together) and catches up after downtime. A sample that arrives
after its bucket was rolled up makes the store recompute that bucket.

Raw samples are pruned only behind both marks, so no sample is deleted before
it is rolled up, whatever the retention settings. A 10-second slot never
straddles a minute, so a range of buckets is a range of slots.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Delete,
    Insert,
    Integer,
    Select,
    SmallInteger,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.store.records import ALL_FIGURES, Resolution
from orchestrator.store.schema import SLOT_MS, domains, rollup_marks, rollups, samples

ROLLUP_RESOLUTIONS: tuple[Resolution, ...] = (Resolution.MINUTE, Resolution.HOUR)
AGGREGATES = ("min", "max", "mean", "last")

# Column order of the rollups table after (res_s, domain_id, t_ms, n).
ROLLUP_FIGURE_COLUMNS: tuple[str, ...] = tuple(
    f"{fig.column}_{agg}" for fig in ALL_FIGURES for agg in AGGREGATES
)


def bucket_start(t_ms: int, res: Resolution) -> int:
    """Start (ms) of the bucket of resolution `res` holding `t_ms`."""
    step = res.value * 1000
    return t_ms - t_ms % step


# Longest list of slots one statement names (SQLite allows 32,766 parameters).
MAX_SLOTS_PER_QUERY = 2000


def spans(start_ms: int, end_ms: int, res: Resolution) -> Iterator[tuple[int, int]]:
    """[start_ms, end_ms) cut at bucket boundaries into pieces of at most
    `MAX_SLOTS_PER_QUERY` slots (`start_ms` is a bucket start)."""
    step = res.value * 1000
    width = max(step, MAX_SLOTS_PER_QUERY * SLOT_MS // step * step)
    while start_ms < end_ms:
        yield start_ms, min(end_ms, start_ms + width)
        start_ms += width


def slots_between(start_ms: int, end_ms: int) -> list[int]:
    """The raw-sample slots that hold times in [start_ms, end_ms)."""
    if end_ms <= start_ms:
        return []
    return list(range(start_ms // SLOT_MS, (end_ms - 1) // SLOT_MS + 1))


def aggregate_select(res: Resolution, *, by_domain: bool) -> Select[Any]:
    """Rollup rows of the raw samples with `start_ms <= t_ms < end_ms`, in the
    rollups' column order; bind them with `aggregate_params`. Built once per
    shape and cached: building and compiling the statement costs more than
    running it on a small range.

    For all VMs the samples are read as one range of slots (consecutive
    pages); `by_domain`, as one primary-key seek per slot and VM.
    """
    return _aggregate_select(res, by_domain)


@functools.cache
def _aggregate_select(res: Resolution, by_domain: bool) -> Select[Any]:
    # Steps are inlined (not bound parameters) so the GROUP BY expression is
    # textually the selected one, as PostgreSQL requires; `//` on integers is
    # integer division on both engines.
    step = literal_column(str(res.value * 1000), BigInteger)
    slot_ms = literal_column(str(SLOT_MS), BigInteger)
    s = samples
    bucket_expr = (s.c.t_ms // step) * step
    bucket = bucket_expr.label("t_ms")
    in_range = and_(
        s.c.t_ms >= bindparam("start_ms", type_=BigInteger),
        s.c.t_ms < bindparam("end_ms", type_=BigInteger),
    )
    aggs: list[ColumnElement[Any]] = []
    for fig in ALL_FIGURES:
        col = s.c[fig.column]
        mean: ColumnElement[Any] = func.avg(col)
        if fig.is_kb:
            mean = cast(func.round(mean), BigInteger)
        aggs += [
            func.min(col).label(f"{fig.column}_min"),
            func.max(col).label(f"{fig.column}_max"),
            mean.label(f"{fig.column}_mean"),
        ]
    grouped = select(
        s.c.domain_id,
        bucket,
        func.count().label("n"),
        func.max(s.c.t_ms).label("last_t"),
        *aggs,
    )
    if by_domain:
        chosen = and_(
            s.c.slot.in_(bindparam("slots", expanding=True)),
            s.c.domain_id.in_(bindparam("domain_ids", expanding=True)),
        )
    else:
        chosen = and_(
            s.c.slot >= bindparam("start_slot", type_=Integer),
            s.c.slot <= bindparam("end_slot", type_=Integer),
        )
    grouped = grouped.where(chosen, in_range)
    g = grouped.group_by(s.c.domain_id, bucket_expr).subquery("g")
    last = samples.alias("last_sample")
    columns: list[ColumnElement[Any]] = [
        literal_column(str(res.value), SmallInteger).label("res_s"),
        g.c.domain_id,
        g.c.t_ms,
        g.c.n,
    ]
    for fig in ALL_FIGURES:
        columns += [
            g.c[f"{fig.column}_min"],
            g.c[f"{fig.column}_max"],
            g.c[f"{fig.column}_mean"],
            last.c[fig.column].label(f"{fig.column}_last"),
        ]
    return select(*columns).select_from(
        g.join(
            last,
            and_(
                last.c.slot == g.c.last_t // slot_ms,
                last.c.domain_id == g.c.domain_id,
                last.c.t_ms == g.c.last_t,
            ),
        )
    )


@functools.cache
def _recompute_statements(res: Resolution, by_domain: bool) -> tuple[Delete, Insert]:
    cond = and_(
        rollups.c.res_s == res.value,
        rollups.c.t_ms >= bindparam("start_ms", type_=BigInteger),
        rollups.c.t_ms < bindparam("end_ms", type_=BigInteger),
    )
    if by_domain:
        cond = and_(cond, rollups.c.domain_id.in_(bindparam("domain_ids", expanding=True)))
    else:
        # Rollups are keyed by VM first: name the VMs, so the delete is one
        # primary-key range per VM instead of a scan of the resolution.
        cond = and_(cond, rollups.c.domain_id.in_(select(domains.c.id)))
    names = ["res_s", "domain_id", "t_ms", "n", *ROLLUP_FIGURE_COLUMNS]
    return (
        delete(rollups).where(cond),
        insert(rollups).from_select(names, _aggregate_select(res, by_domain)),
    )


def aggregate_params(
    start_ms: int, end_ms: int, domain_ids: Sequence[int] | None = None
) -> dict[str, Any]:
    """Parameters of `aggregate_select` and `recompute`'s statements."""
    params: dict[str, Any] = {"start_ms": start_ms, "end_ms": end_ms}
    if domain_ids is not None:
        params["domain_ids"] = list(domain_ids)
        params["slots"] = slots_between(start_ms, end_ms)
    else:
        params["start_slot"] = start_ms // SLOT_MS
        params["end_slot"] = (end_ms - 1) // SLOT_MS
    return params


def recompute(
    conn: Connection,
    res: Resolution,
    start_ms: int,
    end_ms: int,
    domain_ids: Sequence[int] | None = None,
) -> int:
    """Replace the rollup rows of [start_ms, end_ms) (optionally of some domains)."""
    remove, add = _recompute_statements(res, domain_ids is not None)
    conn.execute(remove, aggregate_params(start_ms, end_ms, domain_ids))
    # By VM, the statement names every slot: cut long ranges into pieces.
    pieces = [(start_ms, end_ms)] if domain_ids is None else spans(start_ms, end_ms, res)
    written = 0
    for lo, hi in pieces:
        result = conn.execute(
            add,
            aggregate_params(lo, hi, domain_ids),
            execution_options={"preserve_rowcount": True},
        )
        written += max(result.rowcount, 0)
    return written


def read_marks(conn: Connection) -> dict[Resolution, int]:
    """How far each resolution is rolled up (ms; absent: never)."""
    rows = conn.execute(select(rollup_marks.c.res_s, rollup_marks.c.through_ms)).all()
    return {Resolution(int(r.res_s)): int(r.through_ms) for r in rows}


def earliest_sample_ms(conn: Connection, *, at_or_after: int | None = None) -> int | None:
    """The time of a sample in the earliest slot holding samples (at or after
    `at_or_after`), or None: the first row in primary-key order. Precise to a
    slot, which is all rollups need (a slot never straddles a minute)."""
    query = select(samples.c.t_ms)
    if at_or_after is not None:
        query = query.where(samples.c.slot >= at_or_after // SLOT_MS, samples.c.t_ms >= at_or_after)
    value = conn.execute(query.order_by(samples.c.slot).limit(1)).scalar()
    return None if value is None else int(value)


def lock_mark(conn: Connection, res: Resolution, initial: Callable[[], int]) -> int:
    """Read a resolution's mark inside the caller's write transaction, creating
    it at `initial()` when missing; on PostgreSQL the row stays locked until
    commit, so two hosts never roll up the same chunk at once."""
    query = select(rollup_marks.c.through_ms).where(rollup_marks.c.res_s == res.value)
    current = conn.execute(query.with_for_update()).scalar()
    if current is not None:
        return int(current)
    start = initial()
    # Two hosts may both find the mark missing: the loser's insert is ignored
    # and it locks the winner's row instead.
    ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(rollup_marks)
    conn.execute(ins.values(res_s=res.value, through_ms=start).on_conflict_do_nothing())
    return int(conn.execute(query.with_for_update()).scalar_one())


def set_mark(conn: Connection, res: Resolution, through_ms: int) -> None:
    """Record that `res` is rolled up through `through_ms`."""
    conn.execute(
        update(rollup_marks).where(rollup_marks.c.res_s == res.value).values(through_ms=through_ms)
    )
