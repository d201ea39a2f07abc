"""Per-VM policies and host settings: atomic, versioned, audited, and shared
between processes through the database."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from orchestrator.errors import UsageError
from orchestrator.store import (
    AuditSource,
    AuditSubject,
    Store,
    StoreConfig,
    UnknownDomain,
    open_store,
)
from tests.store.conftest import T0, FakeClock, sample, vm


@pytest.fixture
def known(store: Store, clock: FakeClock) -> Store:
    """The store with VMs vm1 and vm2 seen on host h1."""
    clock.set(T0)
    store.write([sample(vm(1), T0), sample(vm(2), T0)])
    return store


def test_set_and_unset_policy_versions_and_audit(known: Store, clock: FakeClock) -> None:
    store = known
    assert store.policy("vm1").version == 0 and store.policy("vm1").document == {}
    first = store.set_policy("vm1", {"min_kb": 524288}, who="alice", source=AuditSource.CLI)
    assert (first.version, dict(first.document)) == (1, {"min_kb": 524288})
    clock.advance(60)
    second = store.set_policy(
        "vm1", {"max_kb": 4194304, "weight": 2}, who="mqtt-client-7", source=AuditSource.MQTT
    )
    assert second.version == 2
    assert dict(second.document) == {"min_kb": 524288, "max_kb": 4194304, "weight": 2}
    third = store.unset_policy("vm1", ["weight"], who="alice", source=AuditSource.CLI)
    assert third.version == 3 and dict(third.document) == {"min_kb": 524288, "max_kb": 4194304}
    cleared = store.unset_policy("vm1", who="bob", source=AuditSource.CLI)
    assert cleared.version == 4 and dict(cleared.document) == {}
    assert store.policy(vm(1)) == cleared

    log = store.audit_log("vm1", since=T0)
    assert [(e.version, e.who, e.source) for e in log] == [
        (1, "alice", AuditSource.CLI),
        (2, "mqtt-client-7", AuditSource.MQTT),
        (3, "alice", AuditSource.CLI),
        (4, "bob", AuditSource.CLI),
    ]
    assert log[0].old is None and dict(log[0].new) == {"min_kb": 524288}
    assert log[1].old == log[0].new
    assert log[3].new == {}
    assert all(e.subject is AuditSubject.POLICY and e.domain == vm(1) for e in log)
    assert log[1].time == T0 + timedelta(seconds=60)
    assert log[0].host == "h1"


def test_unchanged_policy_is_not_a_new_version(known: Store) -> None:
    known.set_policy("vm1", {"mode": "auto"}, who="a", source=AuditSource.CLI)
    again = known.set_policy("vm1", {"mode": "auto"}, who="a", source=AuditSource.CLI)
    nothing = known.unset_policy("vm1", ["not-set"], who="a", source=AuditSource.CLI)
    assert again.version == nothing.version == 1
    assert len(known.audit_log(since=T0)) == 1
    never = known.unset_policy("vm2", who="a", source=AuditSource.CLI)
    assert never.version == 0 and len(known.audit_log(since=T0)) == 1


def test_policies_listing(known: Store) -> None:
    known.set_policy("vm2", {"weight": 3}, who="a", source=AuditSource.CLI)
    listing = known.policies()
    assert list(listing) == [vm(2).uuid]
    assert listing[vm(2).uuid].document == {"weight": 3}


def test_validator_runs_inside_the_change(known: Store) -> None:
    def validate(doc: dict[str, Any]) -> Mapping[str, Any]:
        if doc.get("min_kb", 0) > doc.get("max_kb", 1 << 40):
            raise UsageError("min above max: lower --min or raise --max")
        return {k: v for k, v in doc.items() if v is not None}

    known.set_policy("vm1", {"max_kb": 1000}, who="a", source=AuditSource.CLI, validate=validate)
    with pytest.raises(UsageError, match="min above max"):
        known.set_policy(
            "vm1", {"min_kb": 2000}, who="a", source=AuditSource.CLI, validate=validate
        )
    record = known.set_policy(
        "vm1", {"min_kb": 500, "note": None}, who="a", source=AuditSource.CLI, validate=validate
    )
    assert record.version == 2 and dict(record.document) == {"max_kb": 1000, "min_kb": 500}
    assert len(known.audit_log(since=T0)) == 2


@pytest.mark.parametrize(
    ("changes", "who", "message"),
    [
        ({"x": float("nan")}, "a", "not valid JSON"),
        ({"x": object()}, "a", "not valid JSON"),
        ({"x": "y" * 20000}, "a", "larger than"),
        ({"x": 1}, "", "audit identity"),
    ],
    ids=["nan", "object", "too-large", "no-identity"],
)
def test_bad_policy_changes_change_nothing(
    known: Store, changes: dict[str, Any], who: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        known.set_policy("vm1", changes, who=who, source=AuditSource.CLI)
    assert known.policy("vm1").version == 0
    assert known.audit_log(since=T0) == []


def test_policy_of_unknown_vm(known: Store) -> None:
    with pytest.raises(UnknownDomain, match=r"no VM 'ghost'.*known: "):
        known.set_policy("ghost", {"weight": 1}, who="a", source=AuditSource.CLI)


def test_pause_and_settings(known: Store, clock: FakeClock) -> None:
    store = known
    fresh = store.settings()
    assert (fresh.paused, fresh.version, fresh.updated_at) == (False, 0, None)
    paused = store.set_paused(True, who="alice", source=AuditSource.CLI)
    assert (paused.paused, paused.version) == (True, 1)
    assert store.set_paused(True, who="alice", source=AuditSource.CLI).version == 1
    clock.advance(5)
    extra = store.update_settings({"note": "maintenance"}, who="bob", source=AuditSource.MQTT)
    assert extra.version == 2 and extra.paused and extra.document["note"] == "maintenance"
    resumed = store.set_paused(False, who="alice", source=AuditSource.CLI)
    assert (resumed.paused, resumed.version) == (False, 3)
    assert store.settings() == resumed
    entries = [e for e in store.audit_log(since=T0) if e.subject is AuditSubject.SETTINGS]
    assert [(e.version, e.domain, e.new.get("paused")) for e in entries] == [
        (1, None, True),
        (2, None, True),
        (3, None, False),
    ]
    with pytest.raises(UsageError, match="true or false"):
        store.update_settings({"paused": "yes"}, who="a", source=AuditSource.CLI)


def test_settings_are_per_host(known: Store, migrated_url: URL, clock: FakeClock) -> None:
    known.set_paused(True, who="a", source=AuditSource.CLI)
    with open_store(migrated_url, config=StoreConfig(host="h2"), clock=clock) as other:
        assert other.settings().paused is False
        assert other.settings("h1").paused is True


def test_concurrent_changes_get_distinct_versions(
    known: Store, migrated_url: URL, clock: FakeClock
) -> None:
    """Writers in separate connections (as the CLI and MQTT handler are)
    never lose an update nor reuse a version."""
    writers, per_writer = 4, 5
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with open_store(migrated_url, config=StoreConfig(host="h1"), clock=clock) as mine:
                for k in range(per_writer):
                    mine.set_policy("vm1", {f"w{n}_{k}": k}, who=f"w{n}", source=AuditSource.API)
                    mine.set_paused(k % 2 == 0, who=f"w{n}", source=AuditSource.API)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = known.policy("vm1")
    assert final.version == writers * per_writer
    assert len(final.document) == writers * per_writer  # no merge was lost
    versions = [e.version for e in known.audit_log("vm1", since=T0)]
    assert sorted(versions) == list(range(1, writers * per_writer + 1))


def test_audit_log_is_append_only_in_the_database(known: Store) -> None:
    known.set_policy("vm1", {"weight": 1}, who="a", source=AuditSource.CLI)
    for statement in ("UPDATE audit SET who = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(DBAPIError, match="append-only"), known.engine.begin() as conn:
            conn.execute(text(statement))
    assert [e.who for e in known.audit_log(since=T0)] == ["a"]
