"""The scenario format: a host and its guests, each following a workload trace.

This format is stable: other tools feed their own traces through it. A
scenario is a TOML file::

    [host]
    memory_mb = 32768          # RAM of the host
    dom0_reserve_mb = 2048     # kept by dom0 and Xen, never given to guests
    duration_s = 86400         # optional; default: the last trace row

    [[vm]]
    name = "web-1"
    static_max_mb = 4096
    swap_mb = 1024
    trace = "traces/web-1.csv" # relative to this file
    min_mb = 512               # optional bounds for controllers
    max_mb = 4096              # optional, at most static_max_mb
    weight = 1.0               # optional share when the host is short

and one CSV per guest with the header
``t_s,unreclaimable_mb,hot_cache_mb,cold_cache_mb,committed_mb``; each row
holds from its ``t_s`` until the next row's. MB means MiB throughout.
Loading is strict: every problem is reported as one clear line naming the
file (and the CSV line), as a :class:`ScenarioError`.
"""

from __future__ import annotations

import bisect
import csv
import math
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from orchestrator.errors import UsageError
from orchestrator.sim.model import KB_PER_MB, Demand, GuestConfig, ModelParams

TRACE_HEADER: Final = ("t_s", "unreclaimable_mb", "hot_cache_mb", "cold_cache_mb", "committed_mb")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_KEYS: Final = {"memory_mb", "dom0_reserve_mb", "duration_s"}
_VM_REQUIRED: Final = ("name", "static_max_mb", "swap_mb", "trace")
_VM_KEYS: Final = {*_VM_REQUIRED, "min_mb", "max_mb", "weight"}
# 16 TiB, as agents.schema.MAX_MEMORY_KB: no Xen host has more.
_MAX_MB: Final = 16 * 1024 * 1024
# A week of virtual time is more than any benchmark needs.
_MAX_DURATION_S: Final = 7 * 86400
_MAX_TRACE_ROWS: Final = 1_000_000


class ScenarioError(UsageError):
    """A scenario file or trace that does not follow the format."""


@dataclass(frozen=True, slots=True)
class Trace:
    """A guest's workload over time, rows held until the next one."""

    path: str
    times_s: tuple[float, ...]
    demands: tuple[Demand, ...]

    def demand_at(self, t_s: float) -> Demand:
        """The row in force at ``t_s``."""
        i = bisect.bisect_right(self.times_s, t_s) - 1
        return self.demands[max(i, 0)]


@dataclass(frozen=True, slots=True, kw_only=True)
class VmSpec:
    """One guest of a scenario. Sizes KiB."""

    name: str
    static_max_kb: int
    swap_kb: int
    trace: Trace
    min_kb: int
    """Lowest target a controller may set (0 when the scenario gives none)."""
    max_kb: int
    """Highest target a controller may set (static-max when not given)."""
    weight: float
    min_given: bool = False
    """Whether the scenario set ``min_mb`` (some peers derive their own minimum)."""

    def guest_config(self, params: ModelParams) -> GuestConfig:
        """The model's view of this guest."""
        return GuestConfig(
            name=self.name,
            static_max_kb=self.static_max_kb,
            swap_kb=self.swap_kb,
            workload=self.trace,
            params=params,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A host and its guests."""

    name: str
    source: str
    memory_kb: int
    dom0_reserve_kb: int
    duration_s: float
    vms: tuple[VmSpec, ...]

    @property
    def budget_kb(self) -> int:
        """Memory the host can give its guests."""
        return self.memory_kb - self.dom0_reserve_kb


def builtin_dir() -> Path:
    """Directory holding the built-in scenarios (package data)."""
    return Path(str(resources.files("orchestrator.sim") / "scenarios"))


def builtin_names() -> list[str]:
    """Names of the built-in scenarios, sorted."""
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def resolve(spec: str) -> Path:
    """A scenario argument (built-in name or TOML path) as a file path."""
    path = Path(spec)
    if spec.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ScenarioError(f"scenario file {spec} does not exist")
        return path
    candidate = builtin_dir() / f"{spec}.toml"
    if candidate.is_file():
        return candidate
    raise ScenarioError(
        f"unknown scenario {spec!r}: give a TOML path or one of {', '.join(builtin_names())}"
    )


def load(spec: str) -> Scenario:
    """Load a built-in scenario by name, or a scenario TOML by path."""
    return load_file(resolve(spec))


def load_file(path: Path) -> Scenario:
    """Load and validate a scenario TOML and its traces."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ScenarioError(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: invalid TOML: {exc}") from None
    unknown = set(doc) - {"host", "vm"}
    if unknown:
        raise ScenarioError(
            f"{where}: unknown top-level keys {sorted(unknown)} (want [host] and [[vm]])"
        )
    host = doc.get("host")
    if not isinstance(host, dict):
        raise ScenarioError(f"{where}: missing [host] table")
    _no_unknown(f"{where}: [host]", host, _HOST_KEYS)
    memory_kb = _size_kb(where, "[host] memory_mb", host.get("memory_mb"), positive=True)
    reserve_kb = _size_kb(where, "[host] dom0_reserve_mb", host.get("dom0_reserve_mb"))
    if reserve_kb >= memory_kb:
        raise ScenarioError(f"{where}: [host] dom0_reserve_mb must be less than memory_mb")
    vms_raw = doc.get("vm")
    if not isinstance(vms_raw, list) or not vms_raw:
        raise ScenarioError(f"{where}: no [[vm]] tables: a scenario needs at least one guest")
    vms: list[VmSpec] = []
    for index, item in enumerate(vms_raw, start=1):
        vms.append(_vm(path, index, item))
    names = [vm.name for vm in vms]
    for name in names:
        if names.count(name) > 1:
            raise ScenarioError(f"{where}: two [[vm]] tables are named {name!r}")
    budget = memory_kb - reserve_kb
    if sum(vm.min_kb for vm in vms) > budget:
        raise ScenarioError(
            f"{where}: the guests' min_mb add up to more than memory_mb - dom0_reserve_mb"
        )
    if "duration_s" in host:
        duration = _number(where, "[host] duration_s", host["duration_s"])
        if not 0 < duration <= _MAX_DURATION_S:
            raise ScenarioError(f"{where}: [host] duration_s must be in (0, {_MAX_DURATION_S}]")
    else:
        duration = max(vm.trace.times_s[-1] for vm in vms)
        if duration <= 0:
            raise ScenarioError(
                f"{where}: every trace has a single row at t_s=0: set [host] duration_s"
            )
    return Scenario(
        name=path.stem,
        source=where,
        memory_kb=memory_kb,
        dom0_reserve_kb=reserve_kb,
        duration_s=duration,
        vms=tuple(vms),
    )


def _vm(path: Path, index: int, item: Any) -> VmSpec:
    where = f"{path}: [[vm]] #{index}"
    if not isinstance(item, dict):
        raise ScenarioError(f"{where} must be a table")
    name = item.get("name")
    if isinstance(name, str) and _NAME_RE.match(name):
        where = f"{path}: [[vm]] {name!r}"
    for key in _VM_REQUIRED:
        if key not in item:
            raise ScenarioError(f"{where}: missing {key}")
    _no_unknown(where, item, _VM_KEYS)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ScenarioError(
            f"{where}: name must be 1-64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    static_max = _size_kb(where, "static_max_mb", item["static_max_mb"], positive=True)
    swap = _size_kb(where, "swap_mb", item["swap_mb"])
    max_kb = static_max
    if "max_mb" in item:
        max_kb = _size_kb(where, "max_mb", item["max_mb"], positive=True)
        if max_kb > static_max:
            raise ScenarioError(f"{where}: max_mb is larger than static_max_mb")
    min_kb = 0
    if "min_mb" in item:
        min_kb = _size_kb(where, "min_mb", item["min_mb"])
        if min_kb > max_kb:
            raise ScenarioError(f"{where}: min_mb is larger than max_mb")
    weight = 1.0
    if "weight" in item:
        weight = _number(where, "weight", item["weight"])
        if not 0 < weight <= 1000:
            raise ScenarioError(f"{where}: weight must be in (0, 1000]")
    trace_ref = item["trace"]
    if not isinstance(trace_ref, str) or not trace_ref:
        raise ScenarioError(f"{where}: trace must be a path (relative to the scenario file)")
    trace = load_trace(path.parent / trace_ref)
    spec = VmSpec(
        name=name,
        static_max_kb=static_max,
        swap_kb=swap,
        trace=trace,
        min_kb=min_kb,
        max_kb=max_kb,
        weight=weight,
        min_given="min_mb" in item,
    )
    _check_fits(spec)
    return spec


def _check_fits(spec: VmSpec) -> None:
    """Every row's demand must be satisfiable within the guest's maximum."""
    config = spec.guest_config(ModelParams())
    overhead = config.kernel_reserved_kb + config.totalreserve_kb
    for t_s, demand in zip(spec.trace.times_s, spec.trace.demands, strict=True):
        need = config.need_kb(demand)
        if need > spec.max_kb:
            raise ScenarioError(
                f"{spec.trace.path}: row at t_s={t_s:g}: unreclaimable + hot cache "
                f"({(need - overhead) / KB_PER_MB:.0f} MB) plus the kernel's own "
                f"{overhead / KB_PER_MB:.0f} MB exceed {spec.name}'s maximum "
                f"({spec.max_kb / KB_PER_MB:.0f} MB)"
            )


def load_trace(path: Path) -> Trace:
    """Load and validate one trace CSV."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"trace {where} does not exist") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise ScenarioError(f"{where}: cannot read: {exc.strerror}") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != TRACE_HEADER:
        raise ScenarioError(f"{where}:1: header must be {','.join(TRACE_HEADER)}")
    times: list[float] = []
    demands: list[Demand] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(TRACE_HEADER):
            raise ScenarioError(f"{where}:{line}: expected 5 fields, found {len(row)}")
        values: list[float] = []
        for column, cell in zip(TRACE_HEADER, row, strict=True):
            try:
                value = float(cell)
            except ValueError:
                raise ScenarioError(
                    f"{where}:{line}: {column} {cell.strip()!r} is not a number"
                ) from None
            if not math.isfinite(value) or value < 0:
                raise ScenarioError(f"{where}:{line}: {column} must be a finite number >= 0")
            if column != "t_s" and value > _MAX_MB:
                raise ScenarioError(f"{where}:{line}: {column} is larger than any Xen host")
            values.append(value)
        t_s = values[0]
        if not times and t_s != 0:
            raise ScenarioError(f"{where}:{line}: the first row must be at t_s=0")
        if times and t_s <= times[-1]:
            raise ScenarioError(f"{where}:{line}: t_s must increase from row to row")
        if len(times) >= _MAX_TRACE_ROWS:
            raise ScenarioError(f"{where}:{line}: more than {_MAX_TRACE_ROWS} rows")
        times.append(t_s)
        demands.append(
            Demand(
                unreclaimable_kb=_mb_to_kb(values[1]),
                hot_cache_kb=_mb_to_kb(values[2]),
                cold_cache_kb=_mb_to_kb(values[3]),
                committed_kb=_mb_to_kb(values[4]),
            )
        )
    if not times:
        raise ScenarioError(f"{where}: no rows after the header")
    return Trace(path=where, times_s=tuple(times), demands=tuple(demands))


def _mb_to_kb(mb: float) -> int:
    """MiB to KiB, rounded to whole 4 KiB pages."""
    return 4 * round(mb * KB_PER_MB / 4)


def _no_unknown(where: str, item: dict[str, Any], known: set[str]) -> None:
    unknown = set(item) - known
    if unknown:
        raise ScenarioError(
            f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})"
        )


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where}: {key} must be a number")
    if not math.isfinite(value):
        raise ScenarioError(f"{where}: {key} must be finite")
    return float(value)


def _size_kb(where: str, key: str, value: Any, *, positive: bool = False) -> int:
    if value is None:
        raise ScenarioError(f"{where}: missing {key}")
    mb = _number(where, key, value)
    if mb < 0 or (positive and mb == 0):
        raise ScenarioError(f"{where}: {key} must be {'positive' if positive else '>= 0'}")
    if mb > _MAX_MB:
        raise ScenarioError(f"{where}: {key} is larger than any Xen host (16 TiB)")
    return _mb_to_kb(mb)
