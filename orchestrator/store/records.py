"""Typed, immutable records that cross the store's boundary.

The controller hands the store `Sample`, `Decision` and `Event` values; the
store hands back the same types plus `PolicyRecord`, `HostSettings`,
`AuditEntry`, `Series` and `FleetRow`. None of them mention SQLAlchemy, so
callers never import it (one edge per external system). Every time is a
timezone-aware `datetime`; sizes are KiB and rates per second, as the field
names say. Values are checked on construction, so a bad record fails where it
is made, not later in the background writer.
"""

from __future__ import annotations

import enum
import json
import math
import uuid as uuid_mod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.store.errors import RecordError

# Largest KiB figure the store accepts: 2**40 KiB = 1 PiB, far above any Xen
# host (16 TiB) yet well inside a signed 64-bit column.
MAX_KB = 1 << 40
# Largest per-second rate or count accepted (refaults/s, swap-ins/s).
MAX_RATE = 1e12
# Largest JSON document (policy, settings, event details) accepted, in bytes.
MAX_DOCUMENT_BYTES = 16 * 1024


class Figure(enum.StrEnum):
    """One sampled quantity of a VM, as named on the CLI (`--figure target`)."""

    TARGET = "target"
    ACTUAL = "actual"
    DEMAND = "demand"
    AVAILABLE = "available"
    COMMITTED = "committed"
    SWAP_USED = "swap_used"
    PSI_SOME = "psi_some"
    PSI_FULL = "psi_full"
    REFAULT_RATE = "refault_rate"
    SWAPIN_RATE = "swapin_rate"

    @property
    def column(self) -> str:
        """The field of `Sample` (and column of the store) holding this figure."""
        return _FIGURE_COLUMN[self]

    @property
    def is_kb(self) -> bool:
        """True when the figure is a size in KiB (stored as an integer)."""
        return self.column.endswith("_kb")

    @classmethod
    def parse(cls, text: str) -> Figure:
        """Accept a figure name (`target`) or its column name (`target_kb`)."""
        key = text.strip().lower().replace("-", "_")
        for fig in cls:
            if key in (fig.value, fig.column):
                return fig
        names = ", ".join(f.value for f in cls)
        raise UsageError(f"unknown figure {text!r}: choose from {names}")


_FIGURE_COLUMN: dict[Figure, str] = {
    Figure.TARGET: "target_kb",
    Figure.ACTUAL: "actual_kb",
    Figure.DEMAND: "demand_kb",
    Figure.AVAILABLE: "available_kb",
    Figure.COMMITTED: "committed_kb",
    Figure.SWAP_USED: "swap_used_kb",
    Figure.PSI_SOME: "psi_some_pct",
    Figure.PSI_FULL: "psi_full_pct",
    Figure.REFAULT_RATE: "refault_per_s",
    Figure.SWAPIN_RATE: "swapin_per_s",
}

ALL_FIGURES: tuple[Figure, ...] = tuple(Figure)


class VmState(enum.StrEnum):
    """How the controller saw a VM when it took a sample (shown by `status`).

    The control law's states (`orchestrator.control.VmState`) are all here;
    the column is a short string, so new states need no migration.
    """

    OK = "ok"
    STALE = "stale"
    DEAD = "dead"
    INACTIVE = "inactive"
    UNCOOPERATIVE = "uncooperative"
    PAUSED = "paused"
    FIXED = "fixed"
    OFF = "off"
    NO_AGENT = "no_agent"
    UNMANAGED = "unmanaged"


class EventKind(enum.StrEnum):
    """Things worth a line in `ballast events`."""

    STALE = "stale"
    FRESH = "fresh"
    UNCOOPERATIVE = "uncooperative"
    COOPERATIVE = "cooperative"
    PAUSED = "paused"
    RESUMED = "resumed"
    HOST_SHORT = "host_short"
    INVALID_REPORT = "invalid_report"
    DOMAIN_APPEARED = "domain_appeared"
    DOMAIN_GONE = "domain_gone"
    POLICY_CHANGED = "policy_changed"
    CONTROLLER_STARTED = "controller_started"
    CONTROLLER_STOPPED = "controller_stopped"
    # Written by the store's own writer after it had to drop samples.
    SAMPLES_DROPPED = "samples_dropped"


class AuditSource(enum.StrEnum):
    """Where a policy or settings change came from."""

    CLI = "cli"
    MQTT = "mqtt"
    API = "api"


class AuditSubject(enum.StrEnum):
    """What an audit entry changed."""

    POLICY = "policy"
    SETTINGS = "settings"


def _check_time(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise RecordError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _check_kb(name: str, value: int | None, *, optional: bool = True) -> None:
    if value is None:
        if not optional:
            raise RecordError(f"{name} is required")
        return
    if type(value) is not int or not 0 <= value <= MAX_KB:
        raise RecordError(f"{name} must be an integer KiB in [0, {MAX_KB}], got {value!r}")


def _check_real(name: str, value: float | None, high: float) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RecordError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= high):
        raise RecordError(f"{name} must be finite and in [0, {high:g}], got {value!r}")


def check_document(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON-safe copy of `value`, or raise `UsageError` saying why not.

    Documents (policies, settings, event details) are opaque to the store but
    must be a JSON object with string keys, finite numbers and a bounded size.
    """
    if not isinstance(value, Mapping):
        raise UsageError(f"{name} must be a JSON object, got {type(value).__name__}")
    try:
        text = json.dumps(dict(value), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name} is not valid JSON: {exc}") from exc
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise UsageError(f"{name} is larger than {MAX_DOCUMENT_BYTES} bytes of JSON")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainRef:
    """Identity of a VM: `uuid` is permanent, `name` and `domid` change across
    reboots and migrations."""

    uuid: str
    """Canonical lower-case UUID of the domain (Xen `vm` UUID)."""
    name: str
    """Domain name as the toolstack shows it."""
    domid: int
    """Current Xen domain id (0..32751; dom0 is 0)."""

    def __post_init__(self) -> None:
        try:
            canonical = str(uuid_mod.UUID(self.uuid))
        except (ValueError, AttributeError, TypeError) as exc:
            raise RecordError(f"domain uuid {self.uuid!r} is not a UUID") from exc
        if canonical != self.uuid:
            raise RecordError(f"domain uuid {self.uuid!r} is not canonical (use {canonical})")
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 255:
            raise RecordError(f"domain name must be 1..255 characters, got {self.name!r}")
        # DOMID_FIRST_RESERVED is 0x7FF0 in Xen's public headers.
        if type(self.domid) is not int or not 0 <= self.domid < 0x7FF0:
            raise RecordError(f"domid must be in [0, 32752), got {self.domid!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """What the controller knew about one VM at one instant."""

    domain: DomainRef
    """The VM."""
    time: datetime
    """When the figures were observed (timezone-aware)."""
    target_kb: int
    """Balloon target in force, KiB."""
    actual_kb: int
    """Memory actually allocated to the domain, KiB."""
    demand_kb: int | None = None
    """The controller's demand estimate, KiB."""
    available_kb: int | None = None
    """Guest MemAvailable, KiB."""
    committed_kb: int | None = None
    """Guest Committed_AS, KiB."""
    swap_used_kb: int | None = None
    """Guest swap in use (SwapTotal - SwapFree), KiB."""
    psi_some_pct: float | None = None
    """Memory PSI `some` avg10, percent."""
    psi_full_pct: float | None = None
    """Memory PSI `full` avg10, percent."""
    refault_per_s: float | None = None
    """Workingset refaults (anon + file) per second."""
    swapin_per_s: float | None = None
    """Pages swapped in per second."""
    state: VmState = VmState.OK
    """How the controller classified the VM at this instant."""

    def __post_init__(self) -> None:
        _check_time("sample time", self.time)
        _check_kb("target_kb", self.target_kb, optional=False)
        _check_kb("actual_kb", self.actual_kb, optional=False)
        _check_kb("demand_kb", self.demand_kb)
        _check_kb("available_kb", self.available_kb)
        _check_kb("committed_kb", self.committed_kb)
        _check_kb("swap_used_kb", self.swap_used_kb)
        _check_real("psi_some_pct", self.psi_some_pct, 100.0)
        _check_real("psi_full_pct", self.psi_full_pct, 100.0)
        _check_real("refault_per_s", self.refault_per_s, MAX_RATE)
        _check_real("swapin_per_s", self.swapin_per_s, MAX_RATE)
        if not isinstance(self.state, VmState):
            raise RecordError(f"state must be a VmState, got {self.state!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One change the controller made (or chose to make) for one VM."""

    domain: DomainRef
    """The VM."""
    time: datetime
    """When the decision was taken."""
    old_target_kb: int
    """Balloon target before, KiB."""
    new_target_kb: int
    """Balloon target after, KiB."""
    reason: str
    """Short reason code from the control law (e.g. `grow`, `pace_down`)."""
    swap_target_kb: int | None = None
    """Swap self-shrink directive sent with this decision, KiB (None: none)."""
    policy_version: int | None = None
    """Version of the VM's policy the decision was computed under."""

    def __post_init__(self) -> None:
        _check_time("decision time", self.time)
        _check_kb("old_target_kb", self.old_target_kb, optional=False)
        _check_kb("new_target_kb", self.new_target_kb, optional=False)
        _check_kb("swap_target_kb", self.swap_target_kb)
        if not isinstance(self.reason, str) or not 0 < len(self.reason) <= 64:
            raise RecordError(f"reason must be 1..64 characters, got {self.reason!r}")
        if self.policy_version is not None and (
            type(self.policy_version) is not int or self.policy_version < 0
        ):
            raise RecordError(f"policy_version must be >= 0, got {self.policy_version!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something that happened on the host or to one VM."""

    kind: EventKind
    """What happened."""
    time: datetime
    """When it happened."""
    domain: DomainRef | None = None
    """The VM concerned, or None for host-wide events."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Free-form JSON object with the specifics."""

    def __post_init__(self) -> None:
        _check_time("event time", self.time)
        if not isinstance(self.kind, EventKind):
            raise RecordError(f"event kind must be an EventKind, got {self.kind!r}")
        try:
            check_document("event details", self.details)
        except UsageError as exc:
            raise RecordError(str(exc)) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRecord:
    """A VM's policy document as stored, with its version."""

    domain: DomainRef
    """The VM the policy belongs to."""
    version: int
    """Incremented by every change; 0 when the VM never had a policy."""
    document: Mapping[str, Any]
    """The policy fields set for this VM (opaque to the store); empty: defaults."""
    updated_at: datetime | None
    """Time of the last change, None when never set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSettings:
    """Host-wide operator settings shared by the CLI and the controller."""

    host: str
    """Host name the settings belong to."""
    version: int
    """Incremented by every change; 0 when never set."""
    paused: bool
    """True while the operator has paused all target writes."""
    document: Mapping[str, Any]
    """All settings as stored (includes `paused`)."""
    updated_at: datetime | None
    """Time of the last change, None when never set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus:
    """The controller's latest view of its host, overwritten every cycle."""

    host: str
    """Host name."""
    time: datetime
    """When the controller wrote it."""
    document: Mapping[str, Any]
    """Host figures and one entry per VM (see `orchestrator.controller.status`)."""


# A status document holds every VM of a host: about 400 bytes per VM.
MAX_STATUS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One line of the append-only audit log."""

    id: int
    """Position in the log (increasing)."""
    time: datetime
    """When the change was committed."""
    host: str
    """Host whose store recorded the change."""
    subject: AuditSubject
    """Whether a VM policy or the host settings changed."""
    domain: DomainRef | None
    """The VM whose policy changed (None for host settings)."""
    who: str
    """Operator or client identity that made the change."""
    source: AuditSource
    """Channel the change came through."""
    old: Mapping[str, Any] | None
    """Document before the change (None if there was none)."""
    new: Mapping[str, Any]
    """Document after the change."""
    version: int
    """Version number the change produced."""


@dataclass(frozen=True, slots=True)
class FigureValue:
    """One figure over one history point: for raw samples all four are equal."""

    min: float | None
    max: float | None
    mean: float | None
    last: float | None


class Resolution(enum.IntEnum):
    """Resolution of a history series, in seconds (RAW = individual samples)."""

    RAW = 0
    MINUTE = 60
    HOUR = 3600

    @classmethod
    def parse(cls, text: str) -> Resolution | None:
        """`auto` -> None, else `raw`, `1m`/`minute`, `1h`/`hour`."""
        key = text.strip().lower()
        table = {
            "auto": None,
            "raw": cls.RAW,
            "1m": cls.MINUTE,
            "minute": cls.MINUTE,
            "1h": cls.HOUR,
            "hour": cls.HOUR,
        }
        if key not in table:
            raise UsageError(f"unknown resolution {text!r}: use auto, raw, 1m or 1h")
        return table[key]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPoint:
    """One row of a history series."""

    time: datetime
    """Sample time (raw) or start of the bucket (rollups)."""
    count: int
    """Number of raw samples behind the point (1 for raw)."""
    values: Mapping[Figure, FigureValue]
    """Requested figures."""


@dataclass(frozen=True, slots=True)
class FigureSeries:
    """One figure along a series: four parallel tuples, one entry per point.
    For raw samples the four are the same tuple (the sample values)."""

    min: tuple[float | None, ...]
    max: tuple[float | None, ...]
    mean: tuple[float | None, ...]
    last: tuple[float | None, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """Answer of `Store.history`, stored by column (cheap to build, to plot
    and to write as CSV); `points` gives the same data row by row."""

    domain: DomainRef
    """The VM."""
    resolution: Resolution
    """Resolution the points were read at."""
    step_s: int
    """Seconds per point (0 for raw; a multiple of the resolution when an
    automatic query merged buckets to fit its row budget)."""
    since: datetime
    """Start of the requested range."""
    until: datetime
    """End of the requested range (included)."""
    figures: tuple[Figure, ...]
    """Figures present in `values`."""
    times: tuple[datetime, ...]
    """Sample time (raw) or bucket start (rollups) of each point, oldest first."""
    counts: tuple[int, ...]
    """Raw samples behind each point (1 for raw)."""
    values: Mapping[Figure, FigureSeries]
    """The figures' values, by figure."""

    def __len__(self) -> int:
        return len(self.times)

    @property
    def points(self) -> tuple[HistoryPoint, ...]:
        """The series row by row."""
        cols = {fig: self.values[fig] for fig in self.figures}
        return tuple(
            HistoryPoint(
                time=t,
                count=self.counts[i],
                values={
                    fig: FigureValue(c.min[i], c.max[i], c.mean[i], c.last[i])
                    for fig, c in cols.items()
                },
            )
            for i, t in enumerate(self.times)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetRow:
    """The newest known state of one VM (answer of `Store.fleet_latest`)."""

    domain: DomainRef
    """The VM."""
    sample: Sample | None
    """Newest raw sample still kept, or None."""
    decision: Decision | None
    """Newest decision, or None."""
