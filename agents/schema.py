"""Wire codecs shared by the guest agent and the dom0 controller.

Two documents cross xenstore between a guest and dom0 (DESIGN.md, "xenstore
contract"):

* ``~/data/ballast/report`` — the agent's report, schema v1: one compact JSON
  object with raw, cumulative counters; the controller takes differences.
* ``~/data/ballast/directive`` — the controller's swap-shrink directive.

Both are written by one side and read by the other, and the report is
untrusted input from a guest: decoding is strict (exact types, every number
bounded, no NaN or infinities, no duplicate keys, size limited) and a bad
document raises :class:`InvalidDocument`, never returns a half-filled value.
Unknown fields are ignored so newer agents can talk to older controllers.
These are pure functions from bytes to typed values and back (sans-I/O).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

from orchestrator.errors import BallastError

REPORT_VERSION: Final = 1
DIRECTIVE_VERSION: Final = 1

# XENSTORE_PAYLOAD_MAX from xen/include/public/io/xs_wire.h: a value plus its
# path must fit in one 4096-byte packet.
XENSTORE_PAYLOAD_MAX: Final = 4096
# Leave room for the path in the WRITE packet; reports are far smaller.
MAX_DOCUMENT_BYTES: Final = 2048

# 16 TiB in KiB: more than any Xen host has (Xen 4.17 supports up to 16 TiB of
# host RAM). Any memory figure above this is a lie or a bug.
MAX_MEMORY_KB: Final = 1 << 34
# Cumulative event counters (pages swapped, refaults) and microsecond totals.
MAX_COUNTER: Final = (1 << 63) - 1
# About 300 years of uptime.
MAX_UPTIME_S: Final = 10**10
MAX_SEQ: Final = (1 << 63) - 1


class InvalidDocument(BallastError):
    """A report or directive that does not follow its schema."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectiveAck:
    """What the agent did with a directive, echoed in its next report."""

    seq: int
    """Sequence number of the directive this acknowledges."""
    outcome: str
    """``done``, ``partial``, ``refused`` or ``unsupported``."""
    detail: str = ""
    """Short human-readable reason, e.g. why a step was refused."""


ACK_OUTCOMES: Final = frozenset({"done", "partial", "refused", "unsupported"})
MAX_ACK_DETAIL_CHARS: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One guest memory report, schema v1. Sizes KiB, counters cumulative."""

    seq: int
    """Monotonic sequence number of this report (per agent run)."""
    uptime_s: float
    """Guest uptime in seconds; a drop means the guest rebooted."""
    mem_total_kb: int
    """MemTotal: RAM the guest kernel can use."""
    mem_free_kb: int
    """MemFree."""
    mem_available_kb: int
    """MemAvailable: the kernel's estimate of memory available without swapping."""
    cached_kb: int
    """Cached + Buffers: page cache."""
    committed_as_kb: int
    """Committed_AS: memory committed to allocations."""
    totalreserve_kb: int
    """The kernel's totalreserve_pages, from /proc/zoneinfo, in KiB."""
    anon_kb: int
    """AnonPages."""
    swap_total_kb: int
    """SwapTotal."""
    swap_free_kb: int
    """SwapFree."""
    pswpin: int
    """Pages swapped in since boot (/proc/vmstat)."""
    pswpout: int
    """Pages swapped out since boot (/proc/vmstat)."""
    frontswap_kb: int | None = None
    """Pages held by zswap/frontswap/tmem, in KiB, where the guest has them."""
    psi_some_avg10: float | None = None
    """PSI memory "some" avg10, percent; None where PSI is absent."""
    psi_full_avg10: float | None = None
    """PSI memory "full" avg10, percent; None where PSI is absent."""
    psi_some_total_us: int | None = None
    """PSI memory "some" total stall time, microseconds, cumulative."""
    refault_anon: int | None = None
    """workingset_refault_anon, cumulative; None on kernels without it."""
    refault_file: int | None = None
    """workingset_refault_file (or the older workingset_refault), cumulative."""
    balloon_current_kb: int | None = None
    """The balloon driver's current_kb, where the guest exposes it."""
    active_file_kb: int | None = None
    """Active(file) from /proc/meminfo: page cache on the kernel's active list.
    Optional: agents before it leave it out, and controllers before it ignore it
    as an unknown field. An estimate of the hot cache that errs high: pages stay
    on the active list until reclaim ages them, so it also counts cache that is
    no longer touched (under reclaim it can miss hot pages passing through the
    inactive list)."""
    directive_ack: DirectiveAck | None = None
    """Outcome of the last swap-shrink directive the agent acted on."""

    @property
    def swap_used_kb(self) -> int:
        """Swap in use, KiB."""
        return self.swap_total_kb - self.swap_free_kb


@dataclass(frozen=True, slots=True, kw_only=True)
class Directive:
    """The controller's swap-shrink directive to one guest."""

    seq: int
    """Monotonic sequence number; the agent acts on each value once."""
    swap_target_kb: int | None
    """Shrink swapped/frontswapped memory to at most this, KiB; None: no shrink."""


# Field name -> (kind, lower bound, upper bound, required). Kinds: "int", "num".
_Spec = tuple[str, float, float, bool]
_REPORT_SPEC: Final[dict[str, _Spec]] = {
    "seq": ("int", 0, MAX_SEQ, True),
    "uptime_s": ("num", 0, MAX_UPTIME_S, True),
    "mem_total_kb": ("int", 1, MAX_MEMORY_KB, True),
    "mem_free_kb": ("int", 0, MAX_MEMORY_KB, True),
    "mem_available_kb": ("int", 0, MAX_MEMORY_KB, True),
    "cached_kb": ("int", 0, MAX_MEMORY_KB, True),
    "committed_as_kb": ("int", 0, MAX_MEMORY_KB, True),
    "totalreserve_kb": ("int", 0, MAX_MEMORY_KB, True),
    "anon_kb": ("int", 0, MAX_MEMORY_KB, True),
    "swap_total_kb": ("int", 0, MAX_MEMORY_KB, True),
    "swap_free_kb": ("int", 0, MAX_MEMORY_KB, True),
    "pswpin": ("int", 0, MAX_COUNTER, True),
    "pswpout": ("int", 0, MAX_COUNTER, True),
    "frontswap_kb": ("int", 0, MAX_MEMORY_KB, False),
    # PSI averages are percentages of wall time.
    "psi_some_avg10": ("num", 0, 100, False),
    "psi_full_avg10": ("num", 0, 100, False),
    "psi_some_total_us": ("int", 0, MAX_COUNTER, False),
    "refault_anon": ("int", 0, MAX_COUNTER, False),
    "refault_file": ("int", 0, MAX_COUNTER, False),
    "balloon_current_kb": ("int", 0, MAX_MEMORY_KB, False),
    "active_file_kb": ("int", 0, MAX_MEMORY_KB, False),
}
assert set(_REPORT_SPEC) | {"directive_ack"} == {f.name for f in fields(Report)}


def _reject_constant(name: str) -> Any:
    raise InvalidDocument(f"non-finite number {name} is not allowed")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidDocument(f"duplicate field {key!r}")
        result[key] = value
    return result


# Reports are flat but for one nested object; deeper documents are refused
# before parsing, so hostile nesting never reaches the recursive JSON decoder.
MAX_NESTING: Final = 4


def _nesting_depth(raw: bytes) -> int:
    """Deepest ``[``/``{`` nesting outside JSON strings."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _load_object(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument(f"{what} is {len(raw)} bytes, over the {MAX_DOCUMENT_BYTES} limit")
    if _nesting_depth(raw) > MAX_NESTING:
        raise InvalidDocument(f"{what} nests deeper than {MAX_NESTING} levels")
    try:
        text = raw.decode("utf-8")
        doc = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates
        )
    except InvalidDocument:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidDocument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidDocument(f"{what} must be a JSON object, not {type(doc).__name__}")
    return doc


def _number(doc: dict[str, Any], name: str, spec: _Spec) -> int | float | None:
    kind, low, high, required = spec
    if name not in doc or doc[name] is None:
        if required:
            raise InvalidDocument(f"required field {name!r} is missing")
        return None
    value = doc[name]
    # bool is a subclass of int in Python; JSON true/false is never a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidDocument(f"field {name!r} must be a number, not {type(value).__name__}")
    if kind == "int" and not isinstance(value, int):
        raise InvalidDocument(f"field {name!r} must be a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidDocument(f"field {name!r} is not finite")
    if not low <= value <= high:
        raise InvalidDocument(f"field {name!r}={value} is outside [{low}, {high}]")
    return value


def _decode_ack(value: Any) -> DirectiveAck | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidDocument("field 'directive_ack' must be an object")
    seq = value.get("seq")
    outcome = value.get("outcome")
    detail = value.get("detail", "")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise InvalidDocument("directive_ack.seq must be a non-negative whole number")
    if outcome not in ACK_OUTCOMES:
        raise InvalidDocument(f"directive_ack.outcome must be one of {sorted(ACK_OUTCOMES)}")
    if not isinstance(detail, str) or len(detail) > MAX_ACK_DETAIL_CHARS:
        raise InvalidDocument(
            f"directive_ack.detail must be a string of at most {MAX_ACK_DETAIL_CHARS} characters"
        )
    return DirectiveAck(seq=seq, outcome=outcome, detail=detail)


def decode_report(raw: bytes) -> Report:
    """Parse and validate a report; raise :class:`InvalidDocument` if it is bad."""
    doc = _load_object(raw, "report")
    version = doc.get("v")
    if version != REPORT_VERSION or isinstance(version, bool):
        raise InvalidDocument(f"report version {version!r} is not supported (want 1)")
    values: dict[str, Any] = {name: _number(doc, name, spec) for name, spec in _REPORT_SPEC.items()}
    if values["mem_free_kb"] > values["mem_total_kb"]:
        raise InvalidDocument("mem_free_kb is larger than mem_total_kb")
    if values["mem_available_kb"] > values["mem_total_kb"]:
        raise InvalidDocument("mem_available_kb is larger than mem_total_kb")
    if values["active_file_kb"] is not None and values["active_file_kb"] > values["mem_total_kb"]:
        raise InvalidDocument("active_file_kb is larger than mem_total_kb")
    if values["swap_free_kb"] > values["swap_total_kb"]:
        raise InvalidDocument("swap_free_kb is larger than swap_total_kb")
    if isinstance(values["uptime_s"], int):
        values["uptime_s"] = float(values["uptime_s"])
    for name in ("psi_some_avg10", "psi_full_avg10"):
        if isinstance(values[name], int):
            values[name] = float(values[name])
    return Report(**values, directive_ack=_decode_ack(doc.get("directive_ack")))


def encode_report(report: Report) -> bytes:
    """Serialise a report as one compact JSON object (schema v1)."""
    doc: dict[str, Any] = {"v": REPORT_VERSION}
    for name, value in asdict(report).items():
        if value is not None:
            doc[name] = value
    raw = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument(f"encoded report is {len(raw)} bytes, over {MAX_DOCUMENT_BYTES}")
    return raw


def decode_directive(raw: bytes) -> Directive:
    """Parse and validate a directive; raise :class:`InvalidDocument` if it is bad."""
    doc = _load_object(raw, "directive")
    version = doc.get("v")
    if version != DIRECTIVE_VERSION or isinstance(version, bool):
        raise InvalidDocument(f"directive version {version!r} is not supported (want 1)")
    seq = _number(doc, "seq", ("int", 0, MAX_SEQ, True))
    target = _number(doc, "swap_target_kb", ("int", 0, MAX_MEMORY_KB, False))
    assert isinstance(seq, int)
    assert target is None or isinstance(target, int)
    return Directive(seq=seq, swap_target_kb=target)


def encode_directive(directive: Directive) -> bytes:
    """Serialise a directive as one compact JSON object."""
    doc = {"v": DIRECTIVE_VERSION, "seq": directive.seq, "swap_target_kb": directive.swap_target_kb}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
