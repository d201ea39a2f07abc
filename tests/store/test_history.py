"""Writing samples, decisions and events and reading them back: raw history,
rollups checked against an independent computation, the automatic choice of
resolution, retention, and VM identity across renames."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL

from orchestrator.errors import UsageError
from orchestrator.store import (
    ALL_FIGURES,
    Decision,
    DomainRef,
    Event,
    EventKind,
    Figure,
    Resolution,
    Sample,
    Store,
    StoreConfig,
    UnknownDomain,
    VmState,
    open_store,
)
from tests.store.conftest import T0, FakeClock, every, sample, vm

H = 3600.0


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def test_raw_history_round_trip(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    times = every(T0, 5, 100)
    written = [
        sample(
            dom,
            t,
            target_kb=2_000_000 + k,
            actual_kb=1_900_000 + k,
            demand_kb=1_500_000 + 3 * k,
            available_kb=None if k % 7 == 0 else 400_000 - k,
            committed_kb=1_200_000,
            swap_used_kb=k * 4,
            psi_some_pct=k / 10,
            psi_full_pct=0.0,
            refault_per_s=12.5,
            swapin_per_s=None,
            state=VmState.STALE if k == 50 else VmState.OK,
        )
        for k, t in enumerate(times)
    ]
    clock.set(times[-1] + timedelta(seconds=1))
    result = store.write(written)
    assert (result.samples, result.too_late) == (100, 0)
    series = store.history("vm1", since=T0, until=times[-1], resolution="raw")
    assert series.resolution is Resolution.RAW and series.step_s == 0
    assert series.figures == ALL_FIGURES
    assert [p.time for p in series.points] == times
    for point, original in zip(series.points, written, strict=True):
        assert point.count == 1
        for fig in ALL_FIGURES:
            value = point.values[fig]
            expected = getattr(original, fig.column)
            assert value.min == value.max == value.mean == value.last == expected


def test_history_selects_figures_and_range(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    times = every(T0, 5, 60)
    clock.set(times[-1])
    store.write([sample(dom, t, target_kb=1000 + i) for i, t in enumerate(times)])
    series = store.history(dom, since=times[10], until=times[19], figures="target,actual_kb")
    assert series.figures == (Figure.TARGET, Figure.ACTUAL)
    assert [p.values[Figure.TARGET].last for p in series.points] == list(range(1010, 1020))
    # Relative times are taken from the store's clock; both ends are included.
    recent = store.history(dom, since="50s", figures=["target"])
    assert [p.time for p in recent.points] == times[-11:]


def _reference(
    samples: Sequence[Sample], res_s: int
) -> dict[int, tuple[int, dict[Figure, tuple[object, object, object, object]]]]:
    """min/max/mean/last per figure per bucket, computed without the store."""
    buckets: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        t_ms = _ms(s.time)
        buckets[t_ms - t_ms % (res_s * 1000)].append(s)
    out = {}
    for start, group in buckets.items():
        group.sort(key=lambda s: s.time)
        figs = {}
        for fig in ALL_FIGURES:
            values = [getattr(s, fig.column) for s in group]
            present = [v for v in values if v is not None]
            mean = sum(present) / len(present) if present else None
            figs[fig] = (
                min(present) if present else None,
                max(present) if present else None,
                mean,
                values[-1],
            )
        out[start] = (len(group), figs)
    return out


def _check_against_reference(store: Store, dom: DomainRef, written: Sequence[Sample]) -> None:
    start = min(s.time for s in written)
    end = max(s.time for s in written)
    for res in (Resolution.MINUTE, Resolution.HOUR):
        expected = _reference(written, res.value)
        series = store.history(dom, since=start, until=end, resolution=res)
        got = {_ms(p.time): p for p in series.points}
        assert set(got) == set(expected), res
        for start_ms, (count, figs) in expected.items():
            point = got[start_ms]
            assert point.count == count
            for fig, (lo, hi, mean, last) in figs.items():
                value = point.values[fig]
                assert (value.min, value.max, value.last) == (lo, hi, last), (res, fig)
                if mean is None:
                    assert value.mean is None
                elif fig.is_kb:
                    assert value.mean is not None and abs(value.mean - mean) <= 0.5
                else:
                    assert value.mean == pytest.approx(mean, rel=1e-9, abs=1e-9)


_kb = st.one_of(st.none(), st.integers(0, 1 << 34))
_pct = st.one_of(st.none(), st.floats(0, 100, allow_nan=False))
_offsets = st.lists(st.integers(0, 3 * 3600 * 1000), min_size=1, max_size=60, unique=True)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(offsets=_offsets, data=st.data())
def test_rollups_match_independent_aggregation(
    store: Store, clock: FakeClock, offsets: list[int], data: st.DataObject
) -> None:
    # Each example gets its own VM and its own day, after everything before.
    example = int(clock.t - T0.timestamp()) // 86400 + 1
    dom = vm(1000 + example)
    day = T0 + timedelta(days=example)
    written = [
        Sample(
            domain=dom,
            time=day + timedelta(milliseconds=off),
            target_kb=data.draw(st.integers(0, 1 << 34)),
            actual_kb=data.draw(st.integers(0, 1 << 34)),
            demand_kb=data.draw(_kb),
            available_kb=data.draw(_kb),
            committed_kb=data.draw(_kb),
            swap_used_kb=data.draw(_kb),
            psi_some_pct=data.draw(_pct),
            psi_full_pct=data.draw(_pct),
            refault_per_s=data.draw(_pct),
            swapin_per_s=data.draw(_pct),
        )
        for off in offsets
    ]
    clock.set(day)
    store.write(written)
    # Until the buckets close, history aggregates raw samples on the fly ...
    _check_against_reference(store, dom, written)
    # ... and after maintenance the stored rollups give the same answer.
    clock.set(day + timedelta(hours=4))
    report = store.maintain()
    assert report.marks[Resolution.HOUR] <= day + timedelta(hours=4)
    _check_against_reference(store, dom, written)


def test_rollups_are_incremental_and_catch_up(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    times = every(T0, 5, 12 * 60 * 3)  # three hours
    clock.set(T0)
    store.write([sample(dom, t, target_kb=i) for i, t in enumerate(times)])
    clock.set(T0 + timedelta(minutes=30, seconds=store.config.rollup_grace_s))
    first = store.maintain()
    assert first.rolled_up[Resolution.MINUTE] == 30
    assert first.rolled_up[Resolution.HOUR] == 0
    assert first.marks[Resolution.MINUTE] == T0 + timedelta(minutes=30)
    again = store.maintain()
    assert again.rolled_up[Resolution.MINUTE] == 0  # nothing new: nothing redone
    clock.set(T0 + timedelta(hours=5))
    later = store.maintain()
    assert later.rolled_up[Resolution.MINUTE] == 150
    assert later.rolled_up[Resolution.HOUR] == 3
    counts = store.row_counts()
    assert counts["rollups_60s"] == 180 and counts["rollups_3600s"] == 3


def test_large_fleet_rollups_are_split_by_vm(migrated_url: URL, clock: FakeClock) -> None:
    # 700 raw samples per transaction: each VM's hour (720 samples) alone.
    config = StoreConfig(host="h1", rollup_rows_per_tx=700)
    with open_store(migrated_url, config=config, clock=clock) as store:
        vms = [vm(i) for i in range(5)]
        written = {
            d.uuid: [sample(d, t, demand_kb=k * i) for k, t in enumerate(every(T0, 5, 1440))]
            for i, d in enumerate(vms)
        }
        clock.set(T0)
        store.write([s for group in written.values() for s in group])
        clock.set(T0 + timedelta(hours=3))
        report = store.maintain()
        assert report.rolled_up == {Resolution.MINUTE: 5 * 120, Resolution.HOUR: 5 * 2}
        for d in vms:
            _check_against_reference(store, d, written[d.uuid])


def test_minute_rollups_are_written_in_runs(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    clock.set(T0)
    store.write([sample(dom, t, demand_kb=i) for i, t in enumerate(every(T0, 5, 12 * 20))])
    grace = store.config.rollup_grace_s
    clock.set(T0 + timedelta(minutes=5, seconds=grace))
    assert store.maintain().rolled_up[Resolution.MINUTE] == 0  # a run is 10 minutes
    # History does not wait: the closed minutes are aggregated from raw samples.
    early = store.history(dom, since=T0, until=T0 + timedelta(seconds=299), resolution="1m")
    assert list(early.counts) == [12] * 5
    clock.set(T0 + timedelta(minutes=12, seconds=grace))
    assert store.maintain().rolled_up[Resolution.MINUTE] == 12
    stored = store.history(dom, since=T0, until=T0 + timedelta(seconds=299), resolution="1m")
    assert stored.values == early.values and stored.times == early.times


def test_late_sample_recomputes_its_bucket(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    clock.set(T0)
    store.write([sample(dom, t, demand_kb=500) for t in every(T0, 10, 6 * 60)])
    clock.set(T0 + timedelta(hours=2))
    store.maintain()
    before = store.history(dom, since=T0, until=T0 + timedelta(seconds=59), resolution="1m")
    assert before.points[0].count == 6 and before.points[0].values[Figure.DEMAND].min == 500
    late = sample(dom, T0 + timedelta(seconds=15), demand_kb=100)
    store.write([late])
    for res in ("1m", "1h"):
        after = store.history(dom, since=T0, until=T0 + timedelta(seconds=59), resolution=res)
        assert after.points[0].values[Figure.DEMAND].min == 100
    minute = store.history(dom, since=T0, until=T0 + timedelta(seconds=59), resolution="1m")
    assert minute.points[0].count == 7


def test_auto_resolution_picks_finest_within_budget(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    now = T0 + timedelta(days=2)
    clock.set(now)
    store.write([sample(dom, now - timedelta(seconds=5))])
    picks = {span: store.history(dom, since=span).resolution for span in ("1h", "2h", "24h", "30d")}
    # Budget 1500 points: 1 h of 5 s samples is 720, 24 h of minutes 1440,
    # 30 d of hours 720; 2 h raw would be 1440 points, still within budget.
    assert picks == {
        "1h": Resolution.RAW,
        "2h": Resolution.RAW,
        "24h": Resolution.MINUTE,
        "30d": Resolution.HOUR,
    }
    # A short window older than raw retention is read from the minute rollups.
    old = store.history(dom, since="3d", until="71h")
    assert old.resolution is Resolution.MINUTE


def test_auto_resolution_merges_to_fit_budget(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    clock.set(T0)
    times = every(T0, 600, 6 * 72)  # three days, one sample every ten minutes
    store.write([sample(dom, t, target_kb=i) for i, t in enumerate(times)])
    clock.set(T0 + timedelta(days=3, hours=1))
    store.maintain()
    series = store.history(dom, since=T0, until=times[-1], max_points=10, figures="target")
    # 72 hourly buckets do not fit 10 points: runs of 8 hours are merged.
    assert series.resolution is Resolution.HOUR
    assert series.step_s == 8 * 3600 and len(series.points) == 9
    assert sum(p.count for p in series.points) == len(times)
    first = series.points[0].values[Figure.TARGET]
    assert (first.min, first.max, first.last) == (0, 47, 47)
    assert first.mean is not None and abs(first.mean - 23.5) <= 0.5
    # An explicit resolution is never merged.
    assert len(store.history(dom, since=T0, until=times[-1], resolution="1h").points) == 72


def test_too_late_samples_are_refused(store: Store, clock: FakeClock) -> None:
    clock.set(T0 + timedelta(days=3))
    result = store.write([sample(vm(1), T0), sample(vm(1), T0 + timedelta(days=3))])
    assert (result.samples, result.too_late) == (1, 1)


def test_duplicate_sample_is_ignored(store: Store, clock: FakeClock) -> None:
    clock.set(T0)
    first = sample(vm(1), T0, target_kb=1)
    store.write([first])
    assert store.write([sample(vm(1), T0, target_kb=2)]).samples == 1
    assert store.row_counts()["samples"] == 1
    point = store.history("vm1", since=T0, until=T0, resolution="raw").points[0]
    assert point.values[Figure.TARGET].last == 1


def test_retention_prunes_each_resolution(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    # One sample a minute for 3 days, written day by day as time passes.
    pruned = 0
    for day in range(3):
        start = T0 + timedelta(days=day)
        clock.set(start + timedelta(days=1))
        store.write([sample(dom, t) for t in every(start, 60, 1440)])
        pruned += store.maintain().pruned["samples"]
    raw = store.history(dom, since=T0, until=T0 + timedelta(days=3), resolution="raw")
    # Raw samples are kept 48 h.
    assert raw.points[0].time == T0 + timedelta(days=1)
    assert pruned == 1440
    decision_time = T0 + timedelta(hours=1)
    store.write(
        decisions_=[
            Decision(domain=dom, time=decision_time, old_target_kb=1, new_target_kb=2, reason="x")
        ]
    )
    minutes = store.history(dom, since=T0, until=T0 + timedelta(days=3), resolution="1m")
    assert minutes.points[0].time == T0  # kept 30 days
    # Move 31 days on: the minute rollups of the first day go, hours stay.
    clock.set(T0 + timedelta(days=32))
    report = store.maintain()
    assert report.pruned["rollups_1m"] > 0
    assert report.pruned["samples"] > 0
    assert store.row_counts()["samples"] == 0
    hours = store.history(dom, since=T0, until=T0 + timedelta(days=3), resolution="1h")
    assert hours.points[0].time == T0 and len(hours.points) == 72
    assert store.decisions(dom, since=T0, until=T0 + timedelta(days=3))
    # And past a year, the hours and the decisions go too.
    clock.set(T0 + timedelta(days=400))
    store.maintain()
    counts = store.row_counts()
    assert counts["rollups_3600s"] == 0 and counts["decisions"] == 0


def test_raw_is_never_pruned_before_it_is_rolled_up(store: Store, clock: FakeClock) -> None:
    dom = vm(1)
    clock.set(T0)
    store.write([sample(dom, t) for t in every(T0, 60, 60)])
    # Jump far ahead: rollup catch-up happens before any raw sample is pruned.
    clock.set(T0 + timedelta(days=5))
    report = store.maintain()
    assert report.rolled_up[Resolution.MINUTE] == 60
    assert report.rolled_up[Resolution.HOUR] == 1
    assert store.row_counts()["samples"] == 0


def test_decisions_and_events(store: Store, clock: FakeClock) -> None:
    a, b = vm(1), vm(2)
    clock.set(T0 + timedelta(hours=1))
    decisions = [
        Decision(
            domain=a if k % 2 == 0 else b,
            time=T0 + timedelta(minutes=k),
            old_target_kb=1000 * k,
            new_target_kb=1000 * (k + 1),
            swap_target_kb=None if k % 3 else 64 * k,
            reason="pace_down" if k % 2 else "grow",
            policy_version=k,
        )
        for k in range(10)
    ]
    events = [
        Event(kind=EventKind.STALE, time=T0 + timedelta(minutes=1), domain=a, details={"age": 30}),
        Event(kind=EventKind.HOST_SHORT, time=T0 + timedelta(minutes=2), details={"short_kb": 5}),
        Event(kind=EventKind.UNCOOPERATIVE, time=T0 + timedelta(minutes=3), domain=b),
    ]
    store.write(decisions_=decisions, events_=events)
    assert store.decisions(a, since=T0) == decisions[0::2]
    assert store.decisions(since=T0) == decisions
    assert store.decisions(since=T0, limit=3) == decisions[-3:]
    assert store.events(since=T0) == events
    assert store.events(a, since=T0) == events[:1]
    assert store.events(since=T0, kinds=["host_short", EventKind.UNCOOPERATIVE]) == events[1:]
    with pytest.raises(UsageError, match="unknown event kind"):
        store.events(kinds=["nonsense"])


def test_fleet_latest(store: Store, clock: FakeClock) -> None:
    a, b, gone = vm(1), vm(2), vm(3)
    clock.set(T0)
    store.write([sample(gone, T0, target_kb=7)])
    later = T0 + timedelta(days=1)
    clock.set(later)
    times = every(later, 5, 10)
    store.write([sample(d, t, target_kb=i) for i, t in enumerate(times) for d in (a, b)])
    store.write(
        decisions_=[
            Decision(domain=a, time=times[k], old_target_kb=k, new_target_kb=k + 1, reason="x")
            for k in range(3)
        ]
    )
    clock.set(times[-1])
    rows = store.fleet_latest(within_s=3600)
    assert [r.domain for r in rows] == [a, b]
    assert all(r.sample is not None and r.sample.time == times[-1] for r in rows)
    assert rows[0].sample is not None and rows[0].sample.target_kb == 9
    assert rows[0].decision is not None and rows[0].decision.new_target_kb == 3
    assert rows[1].decision is None
    everyone = store.fleet_latest(within_s=2 * 86400)
    assert [r.domain.name for r in everyone] == ["vm1", "vm2", "vm3"]


def test_domain_identity_is_the_uuid(store: Store, clock: FakeClock) -> None:
    clock.set(T0)
    before = vm(1, name="web", domid=5)
    store.write([sample(before, T0)])
    # Rebooted and renamed: same UUID, new name and domid.
    after = vm(1, name="web-renamed", domid=9)
    clock.set(T0 + timedelta(hours=1))
    store.write([sample(after, T0 + timedelta(hours=1))])
    assert store.domains() == [after]
    assert store.resolve_domain("web-renamed") == after
    assert store.resolve_domain("9") == after
    assert store.resolve_domain(after.uuid.upper()) == after
    series = store.history("web-renamed", since=T0, until="now", resolution="raw")
    assert len(series.points) == 2
    with pytest.raises(UnknownDomain, match=r"no VM 'web'.*known: web-renamed"):
        store.resolve_domain("web")


def test_recreated_vm_name_means_the_newest(store: Store, clock: FakeClock) -> None:
    old, new = vm(1, name="db"), vm(2, name="db")
    clock.set(T0)
    store.write([sample(old, T0)])
    clock.set(T0 + timedelta(hours=1))
    store.write([sample(new, T0 + timedelta(hours=1))])
    assert store.resolve_domain("db") == new
    assert store.resolve_domain(old.uuid) == old


def test_query_input_errors(store: Store, clock: FakeClock) -> None:
    clock.set(T0)
    store.write([sample(vm(1), T0)])
    with pytest.raises(UsageError, match="unknown figure"):
        store.history("vm1", figures="target,bogus")
    with pytest.raises(UsageError, match="time range is empty"):
        store.history("vm1", since="1h", until="2h")
    with pytest.raises(UsageError, match="invalid time"):
        store.history("vm1", since="yesterday")
    with pytest.raises(UsageError, match="unknown resolution"):
        store.history("vm1", resolution="5m")
    with pytest.raises(UnknownDomain, match="no VM 'nope'"):
        store.history("nope")


def test_empty_store_queries(store: Store) -> None:
    assert store.fleet_latest() == []
    assert store.domains() == []
    assert store.decisions() == []
    assert store.events() == []
    with pytest.raises(UnknownDomain, match="holds no VMs yet"):
        store.history("vm1")
    assert math.isfinite(store.clock())
