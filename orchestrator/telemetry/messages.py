"""What a Ballast host publishes over MQTT, as typed values and their JSON form.

Three documents (docs/mqtt.md has the full schema):

* host status, retained on ``<prefix>/<host>/status``: ``state`` is
  ``online`` with the host's figures, or ``offline`` (the last will, or the
  goodbye of a clean shutdown);
* VM state, retained on ``<prefix>/<host>/vm/<name>/state``; an empty retained
  payload clears it when the VM goes away;
* events on ``<prefix>/<host>/events`` (not retained).

Sizes are KiB, times are Unix seconds supplied by the caller (the controller
reads its clock once per cycle; nothing here reads a clock). Encoding and
strict decoding are pure functions (sans-I/O); the fleet view decodes what
other hosts publish, so a bad document raises :class:`InvalidPayload`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from orchestrator.telemetry._json import (
    MAX_MEMORY_KB,
    MAX_TIMESTAMP_S,
    InvalidPayload,
    dump,
    get_bool,
    get_int,
    get_num,
    get_str,
    load_object,
)

SCHEMA_VERSION: Final = 1
# Status and VM state documents are a few hundred bytes; anything far larger
# is not ours.
MAX_MESSAGE_BYTES: Final = 4096
MAX_VMS: Final = 100_000
MAX_REASON_CHARS: Final = 200
# A day: a status interval longer than that makes staleness meaningless.
MAX_INTERVAL_S: Final = 86_400.0

# Short lower-case tokens for VM states and event kinds.
_TOKEN_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# Event kinds the controller emits (DESIGN.md "Guards", issue 8); others are
# allowed so newer controllers can add kinds without breaking older viewers.
EVENT_UNCOOPERATIVE: Final = "uncooperative"
EVENT_STALE: Final = "stale"
EVENT_SHORT_OF_MEMORY: Final = "short_of_memory"
EVENT_POLICY_CHANGED: Final = "policy_changed"


def _check_token(value: str, name: str) -> str:
    if not _TOKEN_RE.match(value):
        raise InvalidPayload(
            f"{name} {value!r} must be 1-32 lower-case letters, digits or '_', "
            "starting with a letter"
        )
    return value


def _check_kb(value: int | None, name: str) -> None:
    if value is not None and not 0 <= value <= MAX_MEMORY_KB:
        raise InvalidPayload(f"{name} = {value} is outside 0..{MAX_MEMORY_KB} KiB")


def _check_time(value: float | None, name: str) -> None:
    if value is not None and not 0 <= value <= MAX_TIMESTAMP_S:
        raise InvalidPayload(f"{name} = {value} is not a Unix time")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatusMsg:
    """A host that is up: published every cycle (or on change), retained."""

    version: str
    """Ballast version running on the host."""
    vms_managed: int
    """Number of VMs the controller manages."""
    host_total_kb: int
    """Host memory, KiB."""
    host_free_kb: int
    """Host memory not given to any domain, KiB."""
    budget_kb: int
    """Memory the controller may hand out to guests, KiB."""
    budget_used_kb: int
    """Sum of the current targets, KiB."""
    paused: bool
    """True while a global pause stops all target writes."""
    interval_s: float
    """How often this status is refreshed, seconds; viewers judge staleness by it."""
    updated: float
    """When the figures were taken, Unix seconds."""

    def __post_init__(self) -> None:
        if not 0 <= self.vms_managed <= MAX_VMS:
            raise InvalidPayload(f"vms_managed = {self.vms_managed} is outside 0..{MAX_VMS}")
        for name in ("host_total_kb", "host_free_kb", "budget_kb", "budget_used_kb"):
            _check_kb(getattr(self, name), name)
        if not 0 < self.interval_s <= MAX_INTERVAL_S:
            raise InvalidPayload(f"interval_s = {self.interval_s} is outside (0, {MAX_INTERVAL_S}]")
        _check_time(self.updated, "updated")
        if len(self.version) > 64:
            raise InvalidPayload("version is longer than 64 characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostOfflineMsg:
    """A host that is gone: its last will, or its goodbye on clean shutdown."""

    version: str
    """Ballast version that was running."""
    updated: float | None = None
    """When it went offline (clean shutdown); ``None`` for the last will."""

    def __post_init__(self) -> None:
        _check_time(self.updated, "updated")


HostMsg = HostStatusMsg | HostOfflineMsg


@dataclass(frozen=True, slots=True, kw_only=True)
class VmStateMsg:
    """The controller's view of one VM, retained."""

    target_kb: int
    """Balloon target written to ``~/memory/target``, KiB."""
    actual_kb: int | None
    """Memory the domain holds now, KiB; ``None`` if unknown."""
    demand_kb: int | None
    """Estimated memory demand, KiB; ``None`` without a valid report."""
    state: str
    """Short token: ``ok``, ``stale``, ``uncooperative``, ``held``, ..."""
    reason: str
    """Why the target is what it is, for humans (at most 200 characters)."""
    updated: float
    """When this state last changed, Unix seconds. Keep it while nothing else
    changes: an identical state is then not sent again."""

    def __post_init__(self) -> None:
        _check_kb(self.target_kb, "target_kb")
        _check_kb(self.actual_kb, "actual_kb")
        _check_kb(self.demand_kb, "demand_kb")
        _check_token(self.state, "state")
        if len(self.reason) > MAX_REASON_CHARS:
            raise InvalidPayload(f"reason is longer than {MAX_REASON_CHARS} characters")
        _check_time(self.updated, "updated")


@dataclass(frozen=True, slots=True, kw_only=True)
class EventMsg:
    """Something an operator may want to hear about once (not retained)."""

    kind: str
    """``uncooperative``, ``stale``, ``short_of_memory``, ``policy_changed``, ..."""
    at: float
    """When it happened, Unix seconds."""
    vm: str | None = None
    """The VM concerned, if any."""
    detail: str = ""
    """Human-readable detail (at most 200 characters)."""

    def __post_init__(self) -> None:
        _check_token(self.kind, "kind")
        if len(self.detail) > MAX_REASON_CHARS:
            raise InvalidPayload(f"detail is longer than {MAX_REASON_CHARS} characters")
        if self.vm is not None and not self.vm:
            raise InvalidPayload("vm may not be empty")
        _check_time(self.at, "at")


# ---- encoding ---------------------------------------------------------------


def encode_status(msg: HostMsg) -> bytes:
    """JSON of an online or offline host status."""
    if isinstance(msg, HostOfflineMsg):
        doc = {"v": SCHEMA_VERSION, "state": "offline", "version": msg.version}
        return dump({**doc, "updated": msg.updated})
    return dump(
        {
            "v": SCHEMA_VERSION,
            "state": "online",
            "version": msg.version,
            "vms_managed": msg.vms_managed,
            "host_total_kb": msg.host_total_kb,
            "host_free_kb": msg.host_free_kb,
            "budget_kb": msg.budget_kb,
            "budget_used_kb": msg.budget_used_kb,
            "paused": msg.paused,
            "interval_s": msg.interval_s,
            "updated": msg.updated,
        }
    )


def encode_vm_state(msg: VmStateMsg) -> bytes:
    """JSON of one VM's state."""
    return dump(
        {
            "v": SCHEMA_VERSION,
            "target_kb": msg.target_kb,
            "actual_kb": msg.actual_kb,
            "demand_kb": msg.demand_kb,
            "state": msg.state,
            "reason": msg.reason,
            "updated": msg.updated,
        }
    )


def encode_event(msg: EventMsg) -> bytes:
    """JSON of one event."""
    return dump(
        {"v": SCHEMA_VERSION, "kind": msg.kind, "vm": msg.vm, "detail": msg.detail, "at": msg.at}
    )


# ---- decoding ---------------------------------------------------------------


def _load(raw: bytes, what: str) -> dict[str, Any]:
    doc = load_object(raw, what, max_bytes=MAX_MESSAGE_BYTES)
    version = get_int(doc, "v", low=1, high=1_000_000)
    # Newer minor additions keep v=1; a different major schema is refused.
    if version != SCHEMA_VERSION:
        raise InvalidPayload(
            f"{what} has schema version {version}, this Ballast reads {SCHEMA_VERSION}"
        )
    return doc


def _req_str(doc: dict[str, Any], name: str, max_chars: int) -> str:
    value = get_str(doc, name, max_chars=max_chars)
    assert value is not None
    return value


def _req_int(doc: dict[str, Any], name: str, high: int) -> int:
    value = get_int(doc, name, low=0, high=high)
    assert value is not None
    return value


def _req_num(doc: dict[str, Any], name: str, low: float, high: float) -> float:
    value = get_num(doc, name, low=low, high=high)
    assert value is not None
    return value


def decode_status(raw: bytes) -> HostMsg:
    """Decode a host status document (online or offline). Unknown fields are ignored."""
    doc = _load(raw, "host status")
    state = get_str(doc, "state", max_chars=16)
    version = _req_str(doc, "version", 64)
    if state == "offline":
        return HostOfflineMsg(
            version=version,
            updated=get_num(doc, "updated", low=0, high=MAX_TIMESTAMP_S, required=False),
        )
    if state != "online":
        raise InvalidPayload(f"host status state {state!r} is neither 'online' nor 'offline'")
    return HostStatusMsg(
        version=version,
        vms_managed=_req_int(doc, "vms_managed", MAX_VMS),
        host_total_kb=_req_int(doc, "host_total_kb", MAX_MEMORY_KB),
        host_free_kb=_req_int(doc, "host_free_kb", MAX_MEMORY_KB),
        budget_kb=_req_int(doc, "budget_kb", MAX_MEMORY_KB),
        budget_used_kb=_req_int(doc, "budget_used_kb", MAX_MEMORY_KB),
        paused=get_bool(doc, "paused"),
        interval_s=_req_num(doc, "interval_s", 1e-3, MAX_INTERVAL_S),
        updated=_req_num(doc, "updated", 0, MAX_TIMESTAMP_S),
    )


def decode_vm_state(raw: bytes) -> VmStateMsg:
    """Decode one VM's state document. Unknown fields are ignored."""
    doc = _load(raw, "VM state")
    return VmStateMsg(
        target_kb=_req_int(doc, "target_kb", MAX_MEMORY_KB),
        actual_kb=get_int(doc, "actual_kb", low=0, high=MAX_MEMORY_KB, required=False),
        demand_kb=get_int(doc, "demand_kb", low=0, high=MAX_MEMORY_KB, required=False),
        state=_req_str(doc, "state", 32),
        reason=_req_str(doc, "reason", MAX_REASON_CHARS),
        updated=_req_num(doc, "updated", 0, MAX_TIMESTAMP_S),
    )


def decode_event(raw: bytes) -> EventMsg:
    """Decode one event. Unknown fields are ignored."""
    doc = _load(raw, "event")
    return EventMsg(
        kind=_req_str(doc, "kind", 32),
        at=_req_num(doc, "at", 0, MAX_TIMESTAMP_S),
        vm=get_str(doc, "vm", max_chars=1000, required=False),
        detail=_req_str(doc, "detail", MAX_REASON_CHARS),
    )


__all__ = [
    "EVENT_POLICY_CHANGED",
    "EVENT_SHORT_OF_MEMORY",
    "EVENT_STALE",
    "EVENT_UNCOOPERATIVE",
    "SCHEMA_VERSION",
    "EventMsg",
    "HostMsg",
    "HostOfflineMsg",
    "HostStatusMsg",
    "InvalidPayload",
    "VmStateMsg",
    "decode_event",
    "decode_status",
    "decode_vm_state",
    "encode_event",
    "encode_status",
    "encode_vm_state",
]
