"""Parsers for the kernel's memory files: text in, typed values out.

The agent reads ``/proc/meminfo``, ``/proc/vmstat``, ``/proc/pressure/memory``,
``/proc/zoneinfo``, ``/proc/swaps`` and ``/proc/uptime``. These functions take
the text and never open a file, so live files, captured fixtures and simulated
memory go through the same code (sans-I/O). Each parser returns what it could
read together with complaints about what it could not; the caller decides which
values are required. Nothing here raises on malformed input: a guest with an odd
kernel must still report what it can.

A file whose text does not end in a newline was cut short (every line the kernel
prints ends in one), so its last line is dropped rather than read as a smaller
number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

T = TypeVar("T")

# The kernel prints every meminfo size in "kB", meaning KiB (fs/proc/meminfo.c,
# show_val_kb). Other units only appear in hand-made or foreign files; read them
# with the same binary convention, and refuse anything that is not a size.
_UNIT_TO_KB: Final[dict[str, float]] = {
    "b": 1 / 1024,
    "kb": 1,
    "kib": 1,
    "k": 1,
    "mb": 1024,
    "mib": 1024,
    "m": 1024,
    "gb": 1024**2,
    "gib": 1024**2,
    "g": 1024**2,
}
# Lines the kernel prints without a unit because they count pages, not bytes
# (fs/proc/meminfo.c, hugetlb_report_meminfo in mm/hugetlb.c).
_UNITLESS_MEMINFO: Final = frozenset(
    {"HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp"}
)
_MEMINFO_NAME = re.compile(r"[A-Za-z0-9_()]+")
# How many complaints one parse may produce; a garbage file must not flood logs.
MAX_PROBLEMS: Final = 8


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """A parser's result: the values it could read and what it could not."""

    value: T
    problems: tuple[str, ...] = ()


class _Complaints:
    """Collects at most MAX_PROBLEMS complaints, then counts the rest."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._items: list[str] = []
        self._dropped = 0

    def add(self, text: str) -> None:
        if len(self._items) < MAX_PROBLEMS:
            self._items.append(f"{self._what}: {text}")
        else:
            self._dropped += 1

    def done(self) -> tuple[str, ...]:
        if self._dropped:
            return (*self._items, f"{self._what}: {self._dropped} more problems not shown")
        return tuple(self._items)


def _complete_lines(text: str, complaints: _Complaints) -> list[str]:
    lines = text.split("\n")
    # "a\nb\n".split("\n") ends with "", a complete file; anything else was cut.
    last = lines.pop()
    if last:
        complaints.add(f"file is truncated; ignored its last line {last[:40]!r}")
    return lines


def parse_meminfo(text: str) -> Parsed[dict[str, int]]:
    """Parse ``/proc/meminfo`` into KiB per field (page counts for HugePages_*)."""
    complaints = _Complaints("meminfo")
    values: dict[str, int] = {}
    for number, line in enumerate(_complete_lines(text, complaints), start=1):
        # "Name:   value unit", split by hand: this runs every second.
        name, colon, rest = line.partition(":")
        parts = rest.split()
        if not colon or not 1 <= len(parts) <= 2 or not parts[0].isdigit() or (
            _MEMINFO_NAME.fullmatch(name) is None
        ):
            if line.strip():
                complaints.add(f"line {number} not understood: {line[:60]!r}")
            continue
        if name in values:
            complaints.add(f"{name} appears twice; kept the first value")
            continue
        if len(parts) == 1:
            if name in _UNITLESS_MEMINFO:
                values[name] = int(parts[0])
            else:
                complaints.add(f"{name} has no unit (kB expected); ignored")
            continue
        unit = parts[1]
        if unit == "kB":
            values[name] = int(parts[0])
            continue
        factor = _UNIT_TO_KB.get(unit.lower())
        if factor is None:
            complaints.add(f"{name} is in unknown unit {unit!r}; ignored")
            continue
        complaints.add(f"{name} is in {unit!r}, not kB; converted")
        values[name] = math.floor(int(parts[0]) * factor)
    return Parsed(values, complaints.done())


def parse_vmstat(text: str) -> Parsed[dict[str, int]]:
    """Parse ``/proc/vmstat`` (``name value`` per line) into counters."""
    complaints = _Complaints("vmstat")
    values: dict[str, int] = {}
    for number, line in enumerate(_complete_lines(text, complaints), start=1):
        name, space, value = line.partition(" ")
        if not value.isdigit():  # the kernel prints "name value"; be lenient otherwise
            parts = line.split()
            name, space, value = (parts[0], " ", parts[1]) if len(parts) == 2 else ("", "", "")
        # Counters are unsigned, but a few gauges (nr_*) can read negative for a
        # moment because per-CPU deltas are folded in lazily (mm/vmstat.c).
        if not (space and name and (value.isdigit() or (
            value[:1] == "-" and value[1:].isdigit()
        ))):
            if line.strip():
                complaints.add(f"line {number} not understood: {line[:60]!r}")
            continue
        if name in values:
            complaints.add(f"{name} appears twice; kept the first value")
            continue
        values[name] = int(value)
    return Parsed(values, complaints.done())


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryPressure:
    """PSI for memory (``/proc/pressure/memory``, Linux 4.20+)."""

    some_avg10: float | None
    """Share of the last 10 s in which some task stalled on memory, percent."""
    full_avg10: float | None
    """Share of the last 10 s in which all non-idle tasks stalled, percent."""
    some_total_us: int | None
    """Cumulative "some" stall time, microseconds."""


def _psi_fields(rest: list[str]) -> dict[str, str] | None:
    fields: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep:
            return None
        fields[key] = value
    return fields


def _percent(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value <= 100 else None


def parse_pressure(text: str) -> Parsed[MemoryPressure]:
    """Parse the ``some``/``full`` lines of ``/proc/pressure/memory``."""
    complaints = _Complaints("pressure/memory")
    lines: dict[str, dict[str, str]] = {}
    for number, line in enumerate(_complete_lines(text, complaints), start=1):
        parts = line.split()
        if not parts:
            continue
        fields = _psi_fields(parts[1:])
        if parts[0] not in ("some", "full") or fields is None:
            complaints.add(f"line {number} not understood: {line[:60]!r}")
            continue
        lines.setdefault(parts[0], fields)
    some, full = lines.get("some", {}), lines.get("full", {})
    some_avg10 = _percent(some.get("avg10"))
    full_avg10 = _percent(full.get("avg10"))
    total = some.get("total")
    some_total_us = int(total) if total is not None and total.isdigit() else None
    if some_avg10 is None or some_total_us is None:
        complaints.add("no valid 'some' line (avg10 and total)")
    if full_avg10 is None:
        complaints.add("no valid 'full' line")
    return Parsed(
        MemoryPressure(some_avg10=some_avg10, full_avg10=full_avg10, some_total_us=some_total_us),
        complaints.done(),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ZoneReserve:
    """What ``calculate_totalreserve_pages`` needs from one zone, in pages."""

    node: int
    """NUMA node number."""
    zone: str
    """Zone name (DMA, DMA32, Normal, HighMem, Movable, Device)."""
    high_pages: int
    """High watermark without the transient boost, pages."""
    max_protection_pages: int
    """Largest lowmem_reserve ("protection") entry, pages."""
    managed_pages: int
    """Pages the buddy allocator manages in this zone."""

    @property
    def reserve_pages(self) -> int:
        """This zone's share of totalreserve_pages."""
        return min(self.max_protection_pages + self.high_pages, self.managed_pages)


_ZONE_HEADER = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)\s*$")
_ZONE_VALUE = re.compile(r"^\s+(pages free|boost|min|low|high|managed|present)\s+(\d+)\s*$")
_ZONE_WORDS = ("Node ", "pages free", "boost ", "min ", "low ", "high ", "managed ",
               "present ", "protection:")
_PROTECTION = re.compile(r"^\s+protection:\s+\(([-\d,\s]*)\)\s*$")


def _zone(node: int, name: str, values: dict[str, int], protection: list[int]) -> ZoneReserve:
    # The printed "high" is high_wmark_pages(), which includes watermark_boost
    # (Linux 5.0+, mm/vmstat.c zoneinfo_show_print). totalreserve_pages is
    # computed when the watermarks are set up, right after
    # __setup_per_zone_wmarks() has zeroed the boost, so the boost is removed
    # here where the kernel prints it (5.x "boost" line); older kernels have none.
    return ZoneReserve(
        node=node,
        zone=name,
        high_pages=max(values["high"] - values.get("boost", 0), 0),
        max_protection_pages=max([0, *protection]),
        managed_pages=values["managed"],
    )


def parse_zoneinfo(text: str) -> Parsed[tuple[ZoneReserve, ...] | None]:
    """Read each zone's high watermark, protection and managed pages.

    The value is ``None`` when any zone is incomplete or the file was cut short,
    because a partial sum would understate the reserve.
    """
    complaints = _Complaints("zoneinfo")
    if not text.endswith("\n"):
        complaints.add(
            "file is empty" if not text else "file is truncated; cannot sum every zone's reserve"
        )
        return Parsed(None, complaints.done())
    zones: list[ZoneReserve] = []
    incomplete = False
    current: tuple[int, str] | None = None
    values: dict[str, int] = {}
    protection: list[int] | None = None

    def finish() -> None:
        nonlocal incomplete
        if current is None:
            return
        if "high" in values and "managed" in values and protection is not None:
            zones.append(_zone(current[0], current[1], values, protection))
        else:
            incomplete = True
            complaints.add(f"node {current[0]} zone {current[1]} lacks high, managed or protection")

    for line in text.split("\n"):
        # Most lines are statistics the reserve does not need; skip them cheaply.
        if not line.lstrip().startswith(_ZONE_WORDS):
            continue
        header = _ZONE_HEADER.match(line)
        if header is not None:
            finish()
            current, values, protection = (int(header.group(1)), header.group(2)), {}, None
            continue
        if current is None:
            continue
        value = _ZONE_VALUE.match(line)
        if value is not None:
            # The per-zone block prints each of these once; later lines with the
            # same words (pagesets' "high:") have a colon and do not match.
            values.setdefault(value.group(1), int(value.group(2)))
            continue
        prot = _PROTECTION.match(line)
        if prot is not None and protection is None:
            try:
                protection = [int(item) for item in prot.group(1).split(",") if item.strip()]
            except ValueError:
                complaints.add(f"node {current[0]} zone {current[1]}: bad protection line")
    finish()
    if not zones:
        complaints.add("no zones found")
        return Parsed(None, complaints.done())
    if incomplete:
        return Parsed(None, complaints.done())
    return Parsed(tuple(zones), complaints.done())


def totalreserve_pages(zones: tuple[ZoneReserve, ...]) -> int:
    """The kernel's ``totalreserve_pages``, summed over every node and zone.

    ``calculate_totalreserve_pages()`` in mm/page_alloc.c: for each zone, the
    largest ``lowmem_reserve[j]`` for j at or above the zone's own index plus
    the zone's high watermark, capped at its managed pages; summed over all
    zones of all online nodes. ``setup_per_zone_lowmem_reserve()`` only fills
    entries above the zone's index, so the largest printed "protection" entry is
    the same maximum.
    """
    return sum(zone.reserve_pages for zone in zones)


@dataclass(frozen=True, slots=True, kw_only=True)
class SwapDevice:
    """One line of ``/proc/swaps``; sizes KiB."""

    path: str
    """Device or file path, with the kernel's octal escapes decoded."""
    kind: str
    """``partition`` or ``file``."""
    size_kb: int
    """Size, KiB."""
    used_kb: int
    """Space in use, KiB."""
    priority: int
    """Priority; negative values were assigned by the kernel, not the operator."""

    @property
    def deleted(self) -> bool:
        """The swap file was unlinked while active: it cannot be re-enabled."""
        return self.path.endswith(" (deleted)")


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(path: str) -> str:
    # seq_file_path() escapes space, tab, newline and backslash as \ooo
    # (mm/swapfile.c swap_show).
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def parse_swaps(text: str) -> Parsed[tuple[SwapDevice, ...]]:
    """Parse ``/proc/swaps`` (header line, then one line per active device)."""
    complaints = _Complaints("swaps")
    devices: list[SwapDevice] = []
    for number, line in enumerate(_complete_lines(text, complaints), start=1):
        parts = line.split()
        if not parts or parts[0] == "Filename":
            continue
        numbers = parts[2:5]
        if len(parts) != 5 or not all(p.lstrip("-").isdigit() for p in numbers):
            complaints.add(f"line {number} not understood: {line[:60]!r}")
            continue
        size, used, priority = (int(p) for p in numbers)
        if size < 0 or used < 0 or used > size:
            complaints.add(f"line {number} has impossible sizes: {line[:60]!r}")
            continue
        devices.append(
            SwapDevice(
                path=_unescape(parts[0]), kind=parts[1], size_kb=size, used_kb=used,
                priority=priority,
            )
        )
    return Parsed(tuple(devices), complaints.done())


def parse_uptime(text: str) -> Parsed[float | None]:
    """Parse ``/proc/uptime`` (seconds since boot, then idle seconds)."""
    parts = text.split()
    try:
        value = float(parts[0]) if parts and text.endswith("\n") else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        return Parsed(None, (f"uptime: not understood: {text[:40]!r}",))
    return Parsed(value)


def parse_kb_file(text: str, what: str) -> Parsed[int | None]:
    """Parse a sysfs file holding one non-negative number (e.g. ``current_kb``)."""
    stripped = text.strip()
    if not text.endswith("\n") or not stripped.isdigit():
        return Parsed(None, (f"{what}: not understood: {text[:40]!r}",))
    return Parsed(int(stripped))
