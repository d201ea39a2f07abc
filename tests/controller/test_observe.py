"""Folding freshly read keys into a domain's view, and the view into an observation."""

from __future__ import annotations

from agents.schema import encode_report
from orchestrator.controller.observe import (
    DomainView,
    GuestKeys,
    apply_guest_keys,
    observation,
)
from orchestrator.hypervisor import DomainMemory
from tests.controller.conftest import GIB_KB, make_report

UUID = "00000000-0000-4000-8000-000000000005"
MEMORY = DomainMemory(domid=5, name="web", uuid=UUID, actual_kb=2 * GIB_KB, max_kb=4 * GIB_KB)


def test_meminfo_keys_are_parsed_once_and_bounded() -> None:
    view = DomainView(domid=5, uuid=UUID, name="web", static_max_kb=4 * GIB_KB)
    keys = GuestKeys(report=None, meminfo_total=b"2097152", meminfo_free=b"12x")
    seen = apply_guest_keys(view, keys, now_s=100.0)
    assert seen.meminfo_kb == (2097152, None)  # garbage is no figure at all
    obs = observation(seen, MEMORY, 103.0)
    assert obs is not None
    assert (obs.meminfo_total_kb, obs.meminfo_free_kb, obs.meminfo_age_s) == (2097152, None, 3.0)
    huge = apply_guest_keys(seen, GuestKeys(report=None, meminfo_total=b"9" * 15,
                                            meminfo_free=b"1024"), now_s=104.0)  # fmt: skip
    assert huge.meminfo_kb == (None, 1024)  # above 16 TiB: refused


def test_keys_that_did_not_change_leave_the_view_as_it_was() -> None:
    # The peek relies on this: an unchanged view is not asked about at all.
    raw = encode_report(make_report(seq=3, total_kb=2 * GIB_KB, committed_kb=GIB_KB))
    keys = GuestKeys(report=raw, meminfo_total=b"2097152", meminfo_free=b"1048576")
    view = apply_guest_keys(DomainView(domid=5, uuid=UUID, name="web"), keys, now_s=100.0)
    assert apply_guest_keys(view, keys, now_s=130.0) is view
    newer = GuestKeys(report=raw, meminfo_total=b"2097152", meminfo_free=b"1048000")
    assert apply_guest_keys(view, newer, now_s=130.0) is not view
