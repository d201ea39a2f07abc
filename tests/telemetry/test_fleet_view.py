"""The fleet table built from retained messages (pure collector)."""

from __future__ import annotations

import pytest

from orchestrator.telemetry.fleet import FleetCollector, view_as_json
from orchestrator.telemetry.messages import (
    HostOfflineMsg,
    HostStatusMsg,
    VmStateMsg,
    encode_status,
    encode_vm_state,
)
from orchestrator.telemetry.topics import HostTopics

NOW = 1_800_000_000.0


def _status(updated: float, interval_s: float = 5.0) -> bytes:
    return encode_status(
        HostStatusMsg(
            version="0.1.0", vms_managed=1, host_total_kb=1 << 24, host_free_kb=1 << 20,
            budget_kb=1 << 23, budget_used_kb=1 << 21, paused=False, interval_s=interval_s,
            updated=updated,
        )
    )


def _state(target_kb: int) -> bytes:
    return encode_vm_state(
        VmStateMsg(
            target_kb=target_kb, actual_kb=target_kb, demand_kb=None, state="ok", reason="",
            updated=NOW,
        )
    )


@pytest.mark.parametrize(
    ("age_s", "interval_s", "stale_intervals", "condition"),
    [
        (0.0, 5.0, 3, "online"),
        (14.9, 5.0, 3, "online"),
        (15.1, 5.0, 3, "stale"),
        (15.1, 5.0, 4, "online"),
        (100.0, 60.0, 3, "online"),
        (-30.0, 5.0, 3, "online"),
    ],
    ids=["fresh", "just-fresh", "just-stale", "more-intervals", "slow-host", "clock-ahead"],
)
def test_staleness(age_s: float, interval_s: float, stale_intervals: int, condition: str) -> None:
    fleet = FleetCollector("ballast")
    fleet.feed(HostTopics("ballast", "h").status, _status(NOW - age_s, interval_s))
    (row,) = fleet.view(now=NOW, stale_intervals=stale_intervals).hosts
    assert row.condition == condition
    assert row.age_s is not None and row.age_s >= 0


def test_hosts_vms_offline_unknown_invalid() -> None:
    fleet = FleetCollector("ballast")
    a, b, c, d = (HostTopics("ballast", n) for n in ("a", "b/x", "c", "d"))
    fleet.feed(a.status, _status(NOW))
    fleet.feed(a.vm_state("vm 2"), _state(2048))
    fleet.feed(a.vm_state("vm#1"), _state(1024))
    fleet.feed(b.status, encode_status(HostOfflineMsg(version="0.1.0")))
    fleet.feed(b.vm_state("left"), _state(512))
    fleet.feed(c.vm_state("orphan"), _state(1))
    fleet.feed(d.status, b"offline")
    fleet.feed(d.vm_state("bad"), b"{}")
    fleet.feed("ballast/a/events", b"{}")
    fleet.feed("elsewhere/topic", b"x")
    view = fleet.view(now=NOW)
    assert [(h.name, h.condition) for h in view.hosts] == [
        ("a", "online"), ("b/x", "offline"), ("c", "unknown"), ("d", "invalid")
    ]
    assert [v.name for v in view.hosts[0].vms] == ["vm 2", "vm#1"]
    assert view.hosts[3].error and view.hosts[3].vms[0].error
    assert view.ignored == 2
    doc = view_as_json(view)
    assert doc["hosts"][0]["vms"][1]["target_kb"] == 1024
    assert doc["hosts"][1]["status"] == {"version": "0.1.0", "updated": None}


def test_empty_payload_clears() -> None:
    fleet = FleetCollector("ballast")
    t = HostTopics("ballast", "a")
    fleet.feed(t.status, _status(NOW))
    fleet.feed(t.vm_state("x"), _state(1))
    fleet.feed(t.vm_state("x"), b"")
    assert fleet.view(now=NOW).hosts[0].vms == ()
    fleet.feed(t.status, b"")
    assert fleet.view(now=NOW).hosts == ()
