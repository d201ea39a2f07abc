"""Where the agent's memory figures come from: the ``MemorySource`` interface.

The agent never opens ``/proc`` itself; it asks a ``MemorySource`` for a
``MemorySample``. ``ProcMemorySource`` reads a Linux guest's ``/proc`` and
``/sys`` under a configurable root directory (``/`` in a guest, a captured tree
in tests); the simulator implements the same interface with simulated memory.

A sample holds every figure the report needs, each possibly ``None``, plus the
problems met while reading. Turning a sample into a report is a separate step
that refuses a sample missing a required figure, so no half-read guest state
ever reaches the controller.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from agents.procfs import (
    Parsed,
    parse_kb_file,
    parse_meminfo,
    parse_pressure,
    parse_uptime,
    parse_vmstat,
    parse_zoneinfo,
    totalreserve_pages,
)
from agents.schema import DirectiveAck, Report
from orchestrator.errors import TransientError

Severity = Literal["info", "warning"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """Something the source could not read. ``key`` is stable across samples."""

    key: str
    """Stable identity, so the same problem is logged once until it clears."""
    message: str
    """One line for the operator."""
    severity: Severity = "warning"
    """``info`` for an expected absence (no PSI on an old kernel), else ``warning``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySample:
    """One reading of the guest's memory state. Sizes KiB, counters cumulative."""

    uptime_s: float | None = None
    """Seconds since the guest booted."""
    mem_total_kb: int | None = None
    """MemTotal."""
    mem_free_kb: int | None = None
    """MemFree."""
    mem_available_kb: int | None = None
    """MemAvailable."""
    cached_kb: int | None = None
    """Cached + Buffers."""
    committed_as_kb: int | None = None
    """Committed_AS."""
    totalreserve_kb: int | None = None
    """The kernel's totalreserve_pages, KiB."""
    anon_kb: int | None = None
    """AnonPages."""
    swap_total_kb: int | None = None
    """SwapTotal."""
    swap_free_kb: int | None = None
    """SwapFree."""
    pswpin: int | None = None
    """Pages swapped in since boot."""
    pswpout: int | None = None
    """Pages swapped out since boot."""
    frontswap_kb: int | None = None
    """Swapped pages held in zswap/frontswap, KiB (uncompressed size)."""
    psi_some_avg10: float | None = None
    """PSI memory some avg10, percent."""
    psi_full_avg10: float | None = None
    """PSI memory full avg10, percent."""
    psi_some_total_us: int | None = None
    """PSI memory some total, microseconds."""
    refault_anon: int | None = None
    """workingset_refault_anon."""
    refault_file: int | None = None
    """workingset_refault_file, or workingset_refault before Linux 5.9."""
    balloon_current_kb: int | None = None
    """Balloon driver current_kb."""
    active_file_kb: int | None = None
    """Active(file): page cache on the active list."""
    balloon_target_kb: int | None = None
    """Balloon driver target_kb (what the guest's driver is moving towards)."""
    problems: tuple[Problem, ...] = field(default=())
    """What could not be read for this sample."""

    @property
    def swap_used_kb(self) -> int | None:
        """Swap in use, KiB, when both swap figures are known."""
        if self.swap_total_kb is None or self.swap_free_kb is None:
            return None
        return max(self.swap_total_kb - self.swap_free_kb, 0)


# Report fields a sample must have; the rest of schema v1 is optional.
REQUIRED_FIELDS: Final = (
    "uptime_s",
    "mem_total_kb",
    "mem_free_kb",
    "mem_available_kb",
    "cached_kb",
    "committed_as_kb",
    "totalreserve_kb",
    "anon_kb",
    "swap_total_kb",
    "swap_free_kb",
    "pswpin",
    "pswpout",
)
OPTIONAL_FIELDS: Final = (
    "frontswap_kb",
    "psi_some_avg10",
    "psi_full_avg10",
    "psi_some_total_us",
    "refault_anon",
    "refault_file",
    "balloon_current_kb",
    "active_file_kb",
)
assert set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS) | {"seq", "directive_ack"} == {
    f.name for f in fields(Report)
}


class IncompleteSample(TransientError):
    """A sample lacks a figure the report requires; no report can be built."""

    def __init__(self, missing: tuple[str, ...]) -> None:
        super().__init__(f"cannot report: missing {', '.join(missing)}")
        self.missing = missing


def to_report(sample: MemorySample, *, seq: int, ack: DirectiveAck | None) -> Report:
    """Build a schema v1 report; raise :class:`IncompleteSample` if a figure is missing."""
    missing = tuple(name for name in REQUIRED_FIELDS if getattr(sample, name) is None)
    if missing:
        raise IncompleteSample(missing)
    values = {name: getattr(sample, name) for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}
    return Report(seq=seq, directive_ack=ack, **values)


class MemorySource(Protocol):
    """Anything that can say how the guest's memory stands right now."""

    def sample(self) -> MemorySample:
        """Read the current state. Never raises for unreadable figures: they are
        ``None`` in the sample and described in ``problems``."""
        ...


# Files under the source root. The balloon paths are the Xen balloon driver's
# sysfs device (drivers/xen/xen-balloon.c: "info/current_kb", "target_kb").
MEMINFO: Final = "proc/meminfo"
VMSTAT: Final = "proc/vmstat"
PRESSURE: Final = "proc/pressure/memory"
ZONEINFO: Final = "proc/zoneinfo"
UPTIME: Final = "proc/uptime"
SWAPS: Final = "proc/swaps"
XEN_MEMORY: Final = "sys/devices/system/xen_memory/xen_memory0"
BALLOON_CURRENT: Final = f"{XEN_MEMORY}/info/current_kb"
BALLOON_TARGET: Final = f"{XEN_MEMORY}/target_kb"
SELFBALLOON_DIR: Final = f"{XEN_MEMORY}/selfballoon"
# zswap's debugfs counter (mm/zswap.c), the only count of zswap-held pages
# before Linux 5.19 added Zswapped to /proc/meminfo. Needs debugfs mounted.
ZSWAP_STORED_PAGES: Final = "sys/kernel/debug/zswap/stored_pages"
# Kernel files are small; zoneinfo on a large NUMA guest is the biggest, well
# under this. Anything longer is not a kernel file.
MAX_FILE_BYTES: Final = 1 << 20


def read_text(path: Path) -> str:
    """Read a small kernel file as text; ``OSError`` if it cannot be read."""
    with path.open("rb") as handle:
        raw = handle.read(MAX_FILE_BYTES)
    return raw.decode("utf-8", errors="replace")


class ProcMemorySource:
    """A ``MemorySource`` over a Linux ``/proc`` and ``/sys`` under ``root``."""

    def __init__(self, root: Path, *, page_kb: int = 4, zoneinfo_every: int = 60) -> None:
        """``page_kb``: the guest's page size in KiB (4 on x86; zoneinfo counts pages).
        ``zoneinfo_every``: re-read zoneinfo every this many samples. It is the
        costliest file to read and parse, and the reserve only changes when the
        kernel recomputes watermarks (sysctl writes, memory hotplug)."""
        if page_kb <= 0 or zoneinfo_every <= 0:
            raise ValueError("page_kb and zoneinfo_every must be positive")
        self.root = root
        self.page_kb = page_kb
        self.zoneinfo_every = zoneinfo_every
        self._samples = 0
        self._reserve: tuple[int | None, tuple[Problem, ...]] | None = None

    def _read(
        self, relative: str, problems: list[Problem], *, optional: bool = False
    ) -> str | None:
        try:
            return read_text(self.root / relative)
        except OSError as exc:
            absent = exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EOPNOTSUPP)
            severity: Severity = "info" if optional and absent else "warning"
            reason = exc.strerror or type(exc).__name__
            problems.append(
                Problem(key=f"{relative}:unreadable", message=f"/{relative}: {reason}",
                        severity=severity)
            )
            return None

    @staticmethod
    def _note(parsed: Parsed[T], relative: str, problems: list[Problem]) -> T:
        for text in parsed.problems:
            # The key drops variable details (line numbers stay: they are stable).
            problems.append(Problem(key=f"{relative}:{text}", message=text))
        return parsed.value

    def sample(self) -> MemorySample:
        """Read every file once and assemble a sample."""
        problems: list[Problem] = []
        values: dict[str, Any] = {}

        text = self._read(UPTIME, problems)
        if text is not None:
            values["uptime_s"] = self._note(parse_uptime(text), UPTIME, problems)

        meminfo: dict[str, int] = {}
        text = self._read(MEMINFO, problems)
        if text is not None:
            meminfo = self._note(parse_meminfo(text), MEMINFO, problems)
        for name, key in (
            ("mem_total_kb", "MemTotal"),
            ("mem_free_kb", "MemFree"),
            ("mem_available_kb", "MemAvailable"),
            ("committed_as_kb", "Committed_AS"),
            ("anon_kb", "AnonPages"),
            ("swap_total_kb", "SwapTotal"),
            ("swap_free_kb", "SwapFree"),
            # Zswapped: uncompressed size of what zswap holds (Linux 5.19+).
            ("frontswap_kb", "Zswapped"),
            # Active(file): in every kernel's meminfo since 2.6.28 (split LRU).
            ("active_file_kb", "Active(file)"),
        ):
            values[name] = meminfo.get(key)
        if "Cached" in meminfo and "Buffers" in meminfo:
            values["cached_kb"] = meminfo["Cached"] + meminfo["Buffers"]
        if text is not None:
            wanted = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached",
                      "Committed_AS", "AnonPages", "SwapTotal", "SwapFree")
            for key in wanted:
                if key not in meminfo:
                    problems.append(Problem(key=f"{MEMINFO}:no {key}",
                                            message=f"meminfo: no valid {key} line"))

        text = self._read(VMSTAT, problems)
        if text is not None:
            vmstat = self._note(parse_vmstat(text), VMSTAT, problems)
            values["pswpin"] = vmstat.get("pswpin")
            values["pswpout"] = vmstat.get("pswpout")
            values["refault_anon"] = vmstat.get("workingset_refault_anon")
            # Before Linux 5.9 one counter, workingset_refault, covered the page
            # cache only (anon pages were not on the workingset lists).
            values["refault_file"] = vmstat.get(
                "workingset_refault_file", vmstat.get("workingset_refault")
            )
            for key in ("pswpin", "pswpout"):
                if vmstat.get(key) is None:
                    problems.append(Problem(key=f"{VMSTAT}:no {key}",
                                            message=f"vmstat: no valid {key} line"))
            for key in ("pswpin", "pswpout", "refault_anon", "refault_file"):
                count = values[key]
                if count is not None and count < 0:
                    values[key] = None

        values["totalreserve_kb"] = self._totalreserve_kb(problems)

        # PSI is absent before Linux 4.20 and when booted with psi=0.
        text = self._read(PRESSURE, problems, optional=True)
        if text is not None:
            psi = self._note(parse_pressure(text), PRESSURE, problems)
            values["psi_some_avg10"] = psi.some_avg10
            values["psi_full_avg10"] = psi.full_avg10
            values["psi_some_total_us"] = psi.some_total_us

        if values.get("frontswap_kb") is None and (self.root / ZSWAP_STORED_PAGES).exists():
            text = self._read(ZSWAP_STORED_PAGES, problems, optional=True)
            if text is not None:
                pages = self._note(parse_kb_file(text, "zswap stored_pages"),
                                   ZSWAP_STORED_PAGES, problems)
                values["frontswap_kb"] = None if pages is None else pages * self.page_kb

        # The balloon driver exists only in Xen guests; elsewhere that is normal.
        for name, relative in (("balloon_current_kb", BALLOON_CURRENT),
                               ("balloon_target_kb", BALLOON_TARGET)):
            text = self._read(relative, problems, optional=True)
            if text is not None:
                values[name] = self._note(parse_kb_file(text, relative), relative, problems)

        self._check_selfballoon(problems)
        return MemorySample(**values, problems=tuple(problems))

    def _totalreserve_kb(self, problems: list[Problem]) -> int | None:
        due = self._samples % self.zoneinfo_every == 0
        self._samples += 1
        if self._reserve is None or due or self._reserve[0] is None:
            found: list[Problem] = []
            reserve_kb: int | None = None
            text = self._read(ZONEINFO, found)
            if text is not None:
                zones = self._note(parse_zoneinfo(text), ZONEINFO, found)
                if zones is not None:
                    reserve_kb = totalreserve_pages(zones) * self.page_kb
            self._reserve = (reserve_kb, tuple(found))
        problems.extend(self._reserve[1])
        return self._reserve[0]

    def _check_selfballoon(self, problems: list[Problem]) -> None:
        path = self.root / SELFBALLOON_DIR / "selfballooning"
        try:
            enabled = read_text(path).strip() == "1"
        except OSError:
            return
        if enabled:
            # xen-selfballoon.c sets the guest's own balloon target every few
            # seconds; it and the controller would overwrite each other.
            problems.append(Problem(
                key="selfballooning:on",
                message="the kernel's own selfballooning is on and competes with the "
                        "controller's target; write 0 to /" + SELFBALLOON_DIR + "/selfballooning",
            ))
