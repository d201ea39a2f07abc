"""Operator and caller input at the store's edge: database names, times,
figures, and the checks every record makes when it is built."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import UsageError
from orchestrator.store import (
    Decision,
    DomainRef,
    Event,
    EventKind,
    Figure,
    RecordError,
    Resolution,
    Sample,
    StoreConfig,
    parse_time,
)
from orchestrator.store.engine import DEFAULT_DB_PATH, display_url, resolve_db_url
from orchestrator.store.store import Retention
from orchestrator.store.timeparse import from_ms, to_ms
from tests.store.conftest import T0, vm


def test_db_path_becomes_absolute_sqlite_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = resolve_db_url("demo/ballast.db")
    assert url.drivername == "sqlite+pysqlite"
    assert url.database == str(tmp_path / "demo" / "ballast.db")


def test_db_from_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALLAST_DB", "/srv/b.db")
    assert resolve_db_url(None).database == "/srv/b.db"
    assert resolve_db_url("/elsewhere.db").database == "/elsewhere.db"  # --db wins
    monkeypatch.delenv("BALLAST_DB")
    assert resolve_db_url(None).database == str(DEFAULT_DB_PATH)


@pytest.mark.parametrize(
    ("given_url", "driver"),
    [
        ("postgresql://u:secret@db:5432/ballast", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db/ballast", "postgresql+psycopg"),
        ("sqlite:////var/lib/ballast/x.db", "sqlite+pysqlite"),
    ],
)
def test_supported_urls(given_url: str, driver: str) -> None:
    assert resolve_db_url(given_url).drivername == driver


@pytest.mark.parametrize(
    ("given_url", "message"),
    [
        ("mysql://u@db/x", "unsupported database"),
        ("postgresql+psycopg2://u@db/x", "not supported"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_unsupported_urls(given_url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_db_url(given_url)


def test_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        resolve_db_url(str(tmp_path))


def test_password_never_shown() -> None:
    shown = display_url(resolve_db_url("postgresql://ballast:hunter2@db/ballast"))
    assert shown == "postgresql+psycopg://ballast:***@db/ballast"


NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("6h", NOW - timedelta(hours=6)),
        ("90s", NOW - timedelta(seconds=90)),
        ("7d", NOW - timedelta(days=7)),
        ("2w ago", NOW - timedelta(weeks=2)),
        ("-15m", NOW - timedelta(minutes=15)),
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00+02:00", datetime(2026, 3, 1, 8, tzinfo=UTC)),
        ("2026-03-01", datetime(2026, 3, 1).astimezone().astimezone(UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "6", "1700000000", "6x", "", "2026-13-01"])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="invalid time"):
        parse_time(text, NOW)


@given(
    st.datetimes(
        timezones=st.just(UTC), min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)
    )
)
def test_ms_round_trip(moment: datetime) -> None:
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert from_ms(to_ms(moment)) == truncated
    other_zone = moment.astimezone(timezone(timedelta(hours=-7)))
    assert to_ms(other_zone) == to_ms(moment)


def test_figure_and_resolution_names() -> None:
    assert Figure.parse("target") is Figure.TARGET
    assert Figure.parse("swap-used") is Figure.SWAP_USED
    assert Figure.parse("psi_some_pct") is Figure.PSI_SOME
    assert {f.is_kb for f in (Figure.TARGET, Figure.COMMITTED)} == {True}
    assert Figure.PSI_FULL.is_kb is False
    assert Resolution.parse("auto") is None and Resolution.parse("1h") is Resolution.HOUR


def _sample(**changes: Any) -> Sample:
    values: dict[str, Any] = {"domain": vm(1), "time": T0, "target_kb": 1, "actual_kb": 1}
    values.update(changes)
    return Sample(**values)


@pytest.mark.parametrize(
    "changes",
    [
        {"time": datetime(2026, 1, 1)},  # naive
        {"target_kb": -1},
        {"actual_kb": 1 << 41},
        {"demand_kb": 1.5},
        {"available_kb": True},
        {"psi_some_pct": 100.5},
        {"psi_full_pct": float("nan")},
        {"refault_per_s": float("inf")},
        {"swapin_per_s": -0.1},
        {"state": "ok"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_bad_samples_are_refused_where_built(changes: dict[str, Any]) -> None:
    with pytest.raises(RecordError):
        _sample(**changes)


@pytest.mark.parametrize(
    "fields",
    [
        {"uuid": "not-a-uuid", "name": "a", "domid": 1},
        {"uuid": "0000000A-0000-0000-0000-000000000000", "name": "a", "domid": 1},
        {"uuid": "00000000-0000-0000-0000-000000000001", "name": "", "domid": 1},
        {"uuid": "00000000-0000-0000-0000-000000000001", "name": "a", "domid": 0x7FF0},
    ],
    ids=["uuid", "uuid-case", "name", "domid"],
)
def test_bad_domain_refs(fields: dict[str, Any]) -> None:
    with pytest.raises(RecordError):
        DomainRef(**fields)


def test_bad_decisions_and_events() -> None:
    with pytest.raises(RecordError, match="reason"):
        Decision(domain=vm(1), time=T0, old_target_kb=1, new_target_kb=2, reason="")
    with pytest.raises(RecordError, match="policy_version"):
        Decision(
            domain=vm(1), time=T0, old_target_kb=1, new_target_kb=2, reason="x", policy_version=-1
        )
    with pytest.raises(RecordError, match="not valid JSON"):
        Event(kind=EventKind.STALE, time=T0, details={"x": float("nan")})
    with pytest.raises(RecordError, match="EventKind"):
        Event(kind="stale", time=T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"raw_s": 3600},
        {"minute_s": 3600 * 24, "raw_s": 3600 * 48},
        {"hour_s": float("inf")},
        {"events_s": 0},
    ],
)
def test_bad_retention(changes: dict[str, float]) -> None:
    with pytest.raises(UsageError, match="retention"):
        Retention(**changes)


def test_bad_store_config() -> None:
    with pytest.raises(UsageError, match="max_points"):
        StoreConfig(max_points=1)
    with pytest.raises(UsageError, match="host name"):
        StoreConfig(host="")
