"""Status, VM state and event documents: round trips and hostile input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.telemetry.messages import (
    MAX_MESSAGE_BYTES,
    EventMsg,
    HostOfflineMsg,
    HostStatusMsg,
    InvalidPayload,
    VmStateMsg,
    decode_event,
    decode_status,
    decode_vm_state,
    encode_event,
    encode_status,
    encode_vm_state,
)

kb = st.integers(min_value=0, max_value=1 << 34)
when = st.floats(min_value=0, max_value=4e9, allow_nan=False)
token = st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z")
text = st.text(max_size=200)

statuses = st.builds(
    HostStatusMsg,
    version=st.text(max_size=64),
    vms_managed=st.integers(min_value=0, max_value=100_000),
    host_total_kb=kb,
    host_free_kb=kb,
    budget_kb=kb,
    budget_used_kb=kb,
    paused=st.booleans(),
    interval_s=st.floats(min_value=0.001, max_value=86_400),
    updated=when,
)
offlines = st.builds(HostOfflineMsg, version=st.text(max_size=64), updated=st.none() | when)
vm_states = st.builds(
    VmStateMsg,
    target_kb=kb,
    actual_kb=st.none() | kb,
    demand_kb=st.none() | kb,
    state=token,
    reason=text,
    updated=when,
)
events = st.builds(
    EventMsg, kind=token, at=when, vm=st.none() | st.text(min_size=1, max_size=50), detail=text
)


@given(statuses | offlines)
def test_status_round_trip(msg: HostStatusMsg | HostOfflineMsg) -> None:
    raw = encode_status(msg)
    assert len(raw) <= MAX_MESSAGE_BYTES
    assert decode_status(raw) == msg


@given(vm_states)
def test_vm_state_round_trip(msg: VmStateMsg) -> None:
    assert decode_vm_state(encode_vm_state(msg)) == msg


@given(events)
def test_event_round_trip(msg: EventMsg) -> None:
    assert decode_event(encode_event(msg)) == msg


def _status_doc(**changes: object) -> bytes:
    doc = json.loads(
        encode_status(
            HostStatusMsg(
                version="0.1.0", vms_managed=2, host_total_kb=1 << 24, host_free_kb=1 << 20,
                budget_kb=1 << 23, budget_used_kb=1 << 22, paused=False, interval_s=5.0,
                updated=1.7e9,
            )
        )
    )
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v != "DROP"}).encode()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"offline", "not valid JSON"),
        (b"[]", "JSON object"),
        (_status_doc(v=2), "schema version"),
        (_status_doc(state="maybe"), "neither"),
        (_status_doc(budget_kb=-1), "budget_kb"),
        (_status_doc(budget_kb=1 << 40), "budget_kb"),
        (_status_doc(paused="no"), "paused"),
        (_status_doc(interval_s=0), "interval_s"),
        (_status_doc(vms_managed=True), "vms_managed"),
        (_status_doc(updated="DROP"), "updated"),
        (b'{"v":1,"v":1}', "duplicate"),
        (b'{"v":1,"state":"online","updated":NaN}', "non-finite"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "limit"),
    ],
    ids=[
        "plain-word", "array", "future-schema", "bad-state", "negative-kb", "huge-kb",
        "bool-as-string", "zero-interval", "bool-as-int", "missing-updated", "duplicate-key",
        "nan", "oversize",
    ],
)
def test_bad_status(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidPayload, match=needle):
        decode_status(raw)


def test_unknown_fields_are_ignored_in_published_documents() -> None:
    assert isinstance(decode_status(_status_doc(extra_field=1)), HostStatusMsg)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"state": "Bad State"},
        {"target_kb": -1},
        {"reason": "x" * 201},
        {"updated": -5.0},
    ],
    ids=["state-token", "negative-target", "long-reason", "negative-time"],
)
def test_vm_state_checked_at_construction(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = dict(
        target_kb=1, actual_kb=None, demand_kb=None, state="ok", reason="", updated=1.0
    )
    with pytest.raises(InvalidPayload):
        VmStateMsg(**{**base, **kwargs})  # type: ignore[arg-type]
