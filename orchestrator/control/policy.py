"""The policy model: what an operator may say about memory, validated.

A :class:`Policy` is a host part (:class:`HostPolicy`, with the defaults every
VM inherits, :class:`VmDefaults`) and per-VM overrides (:class:`VmPolicy`,
keyed by VM uuid, every field optional: ``None`` means "inherit the host
default"). Everything is frozen; changes go through :func:`apply_change`, the
one function the CLI and MQTT commands both call, which coerces operator
values ("512M", "6h", "on"), validates the result and says what to change
when it is impossible. ``to_dict``/``from_dict`` give a plain, stable form
for the history database and MQTT.

Sizes are KiB (``_kb``), durations seconds (``_s``), as on the wire.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeVar

from orchestrator.control import kernel
from orchestrator.errors import UsageError
from orchestrator.units import (
    MAX_DURATION_S,
    MAX_SIZE_KB,
    format_size_kb,
    parse_duration_s,
    parse_size_kb,
)


class PolicyError(UsageError):
    """A policy value or combination that cannot be applied; says what to change."""


class Mode(StrEnum):
    """How Ballast treats a VM."""

    AUTO = "auto"
    """Ballast decides the target from the VM's demand."""
    FIXED = "fixed"
    """The target is pinned to the policy's ``target_kb``."""
    OFF = "off"
    """Ballast never writes this VM's target (its memory still counts)."""


class Estimator(StrEnum):
    """How a VM's memory demand is estimated (see docs/control.md)."""

    COMMITTED = "committed"
    """The kernel law: Committed_AS + totalreserve + reserve (+ frontswap)."""
    WORKING_SET = "working-set"
    """What the guest cannot give back (MemTotal - MemAvailable) plus a reserve."""
    PRESSURE = "pressure"
    """Senpai/TMO style: shrink slowly while PSI and refaults stay near zero."""
    BASIC = "basic"
    """Only meminfo_total/meminfo_free, for guests without the Ballast agent."""


# Provisional default estimator. The control benchmark of the simulation
# (bench control) picks the final one; change this one constant then.
DEFAULT_ESTIMATOR: Final = Estimator.PRESSURE

# Xen credit scheduler: default domain weight 256, valid range 1..65535.
# Ballast borrows the scale so memory and CPU weights read alike.
DEFAULT_WEIGHT: Final = 256
MAX_WEIGHT: Final = 65535
# Hysteresis divisors above this are meaningless (the step would round to 0).
MAX_HYSTERESIS: Final = 1 << 20

# Ballast's pacing defaults. A shrink of at most 512 MiB per 5 s cycle is about
# the 100 MB/s balloon rate that Qubes' qmemman assumes: asking for more per
# cycle cannot be followed any faster and only makes a guest look stuck.
DEFAULT_MAX_SHRINK_KB: Final = 512 * 1024
DEFAULT_MAX_GROW_KB: Final = 0  # 0 = unlimited: grow at once (kernel uphysteresis 1)
DEFAULT_DEADBAND_KB: Final = 1024  # changes under 1 MiB are not worth a xenstore write

# Host defaults. qmemman keeps XEN_FREE_MEM_LEFT = 50 MiB free in Xen for its own
# allocations; squeezed keeps a 9 MiB "slush fund". Ballast takes the larger.
DEFAULT_FREE_MARGIN_KB: Final = 50 * 1024
DEFAULT_DOM0_RESERVE_KB: Final = 0  # dom0 normally runs with a fixed dom0_mem
DEFAULT_INTERVAL_S: Final = float(kernel.SELFBALLOON_INTERVAL_S)
DEFAULT_STALE_S: Final = 60.0  # a report older than this: hold the target
DEFAULT_DEAD_S: Final = 300.0  # older than this: drift to the policy fallback
MAX_INTERVAL_S: Final = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VmDefaults:
    """Per-VM settings every VM inherits unless its own policy overrides them."""

    min_kb: int | None = None
    """Lowest target, KiB; None: the kernel's floor curve applied to static-max."""
    max_kb: int | None = None
    """Highest target, KiB; None: static-max. Never above static-max."""
    weight: int = DEFAULT_WEIGHT
    """Share of memory above the minimums when the host is short (1..65535)."""
    mode: Mode = Mode.AUTO
    """auto, fixed or off."""
    estimator: Estimator = DEFAULT_ESTIMATOR
    """Demand estimator."""
    reserve_kb: int | None = None
    """Headroom added to the demand, KiB; None: the kernel's 10 % of static-max."""
    down_hysteresis: int = kernel.SELFBALLOON_DOWNHYSTERESIS
    """A shrink closes 1/down_hysteresis of the gap per interval (kernel: 8)."""
    up_hysteresis: int = kernel.SELFBALLOON_UPHYSTERESIS
    """A growth closes 1/up_hysteresis of the gap per interval (kernel: 1)."""
    max_grow_kb: int = DEFAULT_MAX_GROW_KB
    """Largest growth per cycle, KiB; 0: unlimited."""
    max_shrink_kb: int = DEFAULT_MAX_SHRINK_KB
    """Largest shrink per interval, KiB; 0: unlimited."""
    deadband_kb: int = DEFAULT_DEADBAND_KB
    """Changes smaller than this are not written, KiB; 0: write every change."""
    fallback_kb: int | None = None
    """Target a VM drifts to when its reports are dead, KiB; None: its max."""
    min_usable_kb: int | None = None
    """Kernel min_usable floor above totalreserve, KiB; None: the piecewise curve."""
    swap_shrink: bool = True
    """Run the kernel's frontswap self-shrink law and send swap-shrink directives."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VmPolicy:
    """One VM's overrides; every None inherits the host's :class:`VmDefaults`."""

    min_kb: int | None = None
    """Lowest target, KiB."""
    max_kb: int | None = None
    """Highest target, KiB (never above static-max)."""
    weight: int | None = None
    """Share of memory above the minimums when the host is short."""
    mode: Mode | None = None
    """auto, fixed or off."""
    estimator: Estimator | None = None
    """Demand estimator."""
    reserve_kb: int | None = None
    """Headroom added to the demand, KiB."""
    down_hysteresis: int | None = None
    """Shrink divisor per interval."""
    up_hysteresis: int | None = None
    """Growth divisor per interval."""
    max_grow_kb: int | None = None
    """Largest growth per cycle, KiB; 0: unlimited."""
    max_shrink_kb: int | None = None
    """Largest shrink per interval, KiB; 0: unlimited."""
    deadband_kb: int | None = None
    """Changes smaller than this are not written, KiB."""
    fallback_kb: int | None = None
    """Target to drift to when reports are dead, KiB."""
    min_usable_kb: int | None = None
    """Kernel min_usable floor above totalreserve, KiB."""
    swap_shrink: bool | None = None
    """Send swap-shrink directives."""
    target_kb: int | None = None
    """The pinned target in mode fixed, KiB (ignored in other modes)."""

    def is_empty(self) -> bool:
        """True when the VM inherits everything."""
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPolicy:
    """Host-wide settings and the per-VM defaults."""

    dom0_reserve_kb: int = DEFAULT_DOM0_RESERVE_KB
    """Memory kept free for dom0 and the toolstack, KiB."""
    free_margin_kb: int = DEFAULT_FREE_MARGIN_KB
    """Memory always left free in Xen for its own allocations, KiB."""
    interval_s: float = DEFAULT_INTERVAL_S
    """Control interval, seconds (kernel selfballoon_interval: 5)."""
    paused: bool = False
    """Global pause: no target or directive is written."""
    stale_s: float = DEFAULT_STALE_S
    """Report age after which a VM's target is held, seconds."""
    dead_s: float = DEFAULT_DEAD_S
    """Report age after which a VM drifts to its fallback, seconds."""
    defaults: VmDefaults = field(default_factory=VmDefaults)
    """Per-VM defaults."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VmFacts:
    """What validation needs to know about a VM that the policy does not hold."""

    name: str
    """VM name, for messages."""
    static_max_kb: int
    """memory/static-max, KiB."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyContext:
    """Facts about the host that let validation catch impossible policies."""

    vms: Mapping[str, VmFacts] = field(default_factory=dict)
    """Known VMs by uuid."""
    capacity_kb: int | None = None
    """What the host can give guests (see ``control.host_capacity_kb``), KiB."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EffectiveVmPolicy:
    """A VM's policy with every default resolved and bounds clamped to static-max."""

    min_kb: int
    max_kb: int
    weight: int
    mode: Mode
    estimator: Estimator
    reserve_kb: int
    down_hysteresis: int
    up_hysteresis: int
    max_grow_kb: int
    max_shrink_kb: int
    deadband_kb: int
    fallback_kb: int
    min_usable_kb: int | None
    swap_shrink: bool
    target_kb: int | None
    kernel_reserve: bool
    """True when ``reserve_kb`` is the kernel default (10 % of static-max, whole MiB)."""


class Policy:
    """The whole policy: host settings and per-VM overrides by uuid. Immutable."""

    __slots__ = ("_vms", "host")

    host: HostPolicy
    _vms: Mapping[str, VmPolicy]

    def __init__(
        self, *, host: HostPolicy | None = None, vms: Mapping[str, VmPolicy] | None = None
    ) -> None:
        object.__setattr__(self, "host", host if host is not None else HostPolicy())
        kept = {uuid: vm for uuid, vm in sorted((vms or {}).items()) if not vm.is_empty()}
        object.__setattr__(self, "_vms", MappingProxyType(kept))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Policy is immutable; use apply_change or with_vm")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self.host == other.host and dict(self._vms) == dict(other._vms)

    def __hash__(self) -> int:
        return hash((self.host, tuple(self._vms.items())))

    def __repr__(self) -> str:
        return f"Policy(host={self.host!r}, vms={dict(self._vms)!r})"

    @property
    def vms(self) -> Mapping[str, VmPolicy]:
        """Per-VM overrides by uuid (only VMs that override something)."""
        return self._vms

    def vm(self, uuid: str) -> VmPolicy:
        """The overrides of one VM (empty when it has none)."""
        return self._vms.get(uuid, _EMPTY_VM)

    def with_vm(self, uuid: str, vm: VmPolicy) -> Policy:
        """A copy with one VM's overrides replaced (not validated)."""
        vms = dict(self._vms)
        vms[uuid] = vm
        return Policy(host=self.host, vms=vms)

    def with_host(self, host: HostPolicy) -> Policy:
        """A copy with the host part replaced (not validated)."""
        return Policy(host=host, vms=self._vms)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for storage and MQTT: ``{"host": {...}, "vms": {uuid: {...}}}``."""
        return {
            "host": host_to_dict(self.host),
            "vms": {uuid: vm_to_dict(vm) for uuid, vm in self._vms.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Policy:
        """Parse and validate the plain form; raise :class:`PolicyError` if bad."""
        _only_keys(doc, {"host", "vms"}, "policy")
        host = host_from_dict(_mapping(doc.get("host", {}), "host"))
        vms_doc = _mapping(doc.get("vms", {}), "vms")
        vms = {}
        for uuid, vm_doc in vms_doc.items():
            if not isinstance(uuid, str) or not uuid:
                raise PolicyError("VM keys in a policy must be non-empty uuid strings")
            vms[uuid] = vm_from_dict(_mapping(vm_doc, f"vms.{uuid}"), where=f"VM {uuid}")
        policy = cls(host=host, vms=vms)
        validate(policy)
        return policy


_EMPTY_VM: Final = VmPolicy()

VM_FIELDS: Final = tuple(f.name for f in fields(VmPolicy))
DEFAULT_FIELDS: Final = tuple(f.name for f in fields(VmDefaults))
HOST_FIELDS: Final = tuple(f.name for f in fields(HostPolicy) if f.name != "defaults")

_SIZE_FIELDS: Final = frozenset(
    {
        "min_kb", "max_kb", "reserve_kb", "max_grow_kb", "max_shrink_kb", "deadband_kb",
        "fallback_kb", "min_usable_kb", "target_kb", "dom0_reserve_kb", "free_margin_kb",
    }
)
_DURATION_FIELDS: Final = frozenset({"interval_s", "stale_s", "dead_s"})
_BOOL_FIELDS: Final = frozenset({"swap_shrink", "paused"})
_INT_FIELDS: Final = {
    "weight": (1, MAX_WEIGHT),
    "down_hysteresis": (1, MAX_HYSTERESIS),
    "up_hysteresis": (1, MAX_HYSTERESIS),
}
# Fields whose None in VmDefaults is a meaningful value, not "missing".
_NULLABLE_DEFAULTS: Final = frozenset(
    {"min_kb", "max_kb", "reserve_kb", "fallback_kb", "min_usable_kb"}
)
_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})

_FLAG_NAMES: Final = {
    "min_kb": "min", "max_kb": "max", "target_kb": "target", "reserve_kb": "reserve",
    "max_grow_kb": "max-grow", "max_shrink_kb": "max-shrink", "deadband_kb": "deadband",
    "fallback_kb": "fallback", "min_usable_kb": "min-usable",
    "down_hysteresis": "down-hysteresis", "up_hysteresis": "up-hysteresis",
    "swap_shrink": "swap-shrink", "dom0_reserve_kb": "dom0-reserve",
    "free_margin_kb": "free-margin", "interval_s": "interval", "stale_s": "stale",
    "dead_s": "dead",
}


def field_label(name: str) -> str:
    """The operator-facing name of a policy field (``min_kb`` -> ``min``)."""
    short = name.removeprefix("defaults.")
    label = _FLAG_NAMES.get(short, short)
    return f"default {label}" if name.startswith("defaults.") else label


def coerce_value(name: str, value: object) -> object:
    """Turn an operator or JSON value into the typed value of field ``name``.

    Sizes accept whole KiB or strings with K/M/G/T suffixes; durations accept
    seconds or strings with s/m/h/d/w suffixes; modes and estimators their
    names; booleans true/false, yes/no, on/off, 1/0. ``None`` stays ``None``.
    """
    label = field_label(name)
    short = name.removeprefix("defaults.")
    if value is None:
        return None
    if short in _SIZE_FIELDS:
        if isinstance(value, str):
            try:
                return parse_size_kb(value)
            except UsageError as exc:
                raise PolicyError(f"{label}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{label} must be a size such as 512M or a whole number of KiB")
        if not 0 <= value <= MAX_SIZE_KB:
            raise PolicyError(f"{label} must be between 0 and 16T, not {value} KiB")
        return value
    if short in _DURATION_FIELDS:
        if isinstance(value, str):
            try:
                return parse_duration_s(value)
            except UsageError as exc:
                raise PolicyError(f"{label}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(f"{label} must be a duration such as 5s or 2m")
        seconds = float(value)
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION_S:
            raise PolicyError(f"{label} must be a duration between 0 and ten years")
        return seconds
    if short in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise PolicyError(f"{label} must be true or false (also yes/no, on/off)")
    if short in _INT_FIELDS:
        low, high = _INT_FIELDS[short]
        number: object = value
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            number = int(value.strip())
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            raise PolicyError(f"{label} must be a whole number from {low} to {high}")
        return number
    if short == "mode":
        try:
            return Mode(str(value).strip().lower())
        except ValueError:
            raise PolicyError(
                f"mode must be one of {', '.join(m.value for m in Mode)}, not {value!r}"
            ) from None
    if short == "estimator":
        try:
            return Estimator(str(value).strip().lower())
        except ValueError:
            raise PolicyError(
                f"estimator must be one of {', '.join(e.value for e in Estimator)}, "
                f"not {value!r}"
            ) from None
    raise PolicyError(f"unknown policy field {name!r}")


def _to_plain(value: object) -> object:
    if isinstance(value, StrEnum):
        return value.value
    return value


def vm_to_dict(vm: VmPolicy) -> dict[str, Any]:
    """Plain form of a VM's overrides: only the fields it sets."""
    return {
        name: _to_plain(getattr(vm, name))
        for name in VM_FIELDS
        if getattr(vm, name) is not None
    }


def defaults_to_dict(defaults: VmDefaults) -> dict[str, Any]:
    """Plain form of the per-VM defaults: every field, None included."""
    return {name: _to_plain(getattr(defaults, name)) for name in DEFAULT_FIELDS}


def host_to_dict(host: HostPolicy) -> dict[str, Any]:
    """Plain form of the host policy, with its defaults under ``"defaults"``."""
    doc: dict[str, Any] = {name: getattr(host, name) for name in HOST_FIELDS}
    doc["defaults"] = defaults_to_dict(host.defaults)
    return doc


def vm_from_dict(doc: Mapping[str, Any], *, where: str = "VM policy") -> VmPolicy:
    """Parse a VM's overrides (values coerced, combination validated)."""
    _only_keys(doc, set(VM_FIELDS), where)
    values: dict[str, Any] = {name: coerce_value(name, value) for name, value in doc.items()}
    vm = VmPolicy(**values)
    _check_vm(vm, VmDefaults(), where)
    return vm


def defaults_from_dict(doc: Mapping[str, Any]) -> VmDefaults:
    """Parse the per-VM defaults; missing fields take Ballast's defaults."""
    _only_keys(doc, set(DEFAULT_FIELDS), "defaults")
    values: dict[str, Any] = {}
    for name, value in doc.items():
        coerced = coerce_value(name, value)
        if coerced is None and name not in _NULLABLE_DEFAULTS:
            raise PolicyError(f"default {field_label(name)} cannot be empty")
        values[name] = coerced
    return VmDefaults(**values)


def host_from_dict(doc: Mapping[str, Any]) -> HostPolicy:
    """Parse the host policy; missing fields take Ballast's defaults."""
    _only_keys(doc, {*HOST_FIELDS, "defaults"}, "host")
    values: dict[str, Any] = {}
    for name, value in doc.items():
        if name == "defaults":
            values["defaults"] = defaults_from_dict(_mapping(value, "host.defaults"))
            continue
        coerced = coerce_value(name, value)
        if coerced is None:
            raise PolicyError(f"{field_label(name)} cannot be empty")
        values[name] = coerced
    host = HostPolicy(**values)
    _check_host(host)
    return host


def _only_keys(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in doc if key not in allowed)
    if unknown:
        raise PolicyError(
            f"unknown field(s) {', '.join(unknown)} in {where}; "
            f"known: {', '.join(sorted(allowed))}"
        )


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where} must be an object of field names to values")
    return value


# ---------------------------------------------------------------------------
# Resolution and validation


def kernel_floor_kb(static_max_kb: int) -> int:
    """The kernel's piecewise floor for a VM of ``static_max_kb``, KiB.

    Used as the default minimum target: Ballast never goes lower than the
    guest's own kernel would have ballooned itself.
    """
    max_pfn = kernel.kb_to_pages(max(static_max_kb, 0))
    return kernel.pages_to_kb(kernel.selfballoon_floor_pages(max_pfn=max_pfn, totalreserve=0))


def kernel_reserve_kb(static_max_kb: int) -> int:
    """The kernel's default reserve (10 % of RAM, whole MiB) for ``static_max_kb``, KiB."""
    mb = kernel.default_reserved_mb(kernel.kb_to_pages(max(static_max_kb, 0)))
    return kernel.pages_to_kb(kernel.mb_to_pages(mb))


def resolve(vm: VmPolicy, defaults: VmDefaults, static_max_kb: int) -> EffectiveVmPolicy:
    """Resolve a VM's policy against the defaults and its static-max.

    Never raises: a policy that became impossible (static-max shrank) is
    clamped so that ``min_kb <= max_kb <= static_max_kb``; validation is what
    tells the operator, this keeps the control loop running.
    """
    static_max = max(static_max_kb, 0)
    max_kb = vm.max_kb if vm.max_kb is not None else defaults.max_kb
    max_kb = static_max if max_kb is None else min(max_kb, static_max)
    min_kb = vm.min_kb if vm.min_kb is not None else defaults.min_kb
    min_kb = kernel_floor_kb(static_max) if min_kb is None else min_kb
    min_kb = min(min_kb, max_kb)
    reserve = vm.reserve_kb if vm.reserve_kb is not None else defaults.reserve_kb
    fallback = vm.fallback_kb if vm.fallback_kb is not None else defaults.fallback_kb
    fallback = max_kb if fallback is None else min(max(fallback, min_kb), max_kb)
    target = vm.target_kb
    if target is not None:
        target = min(max(target, min_kb), max_kb)
    return EffectiveVmPolicy(
        min_kb=min_kb,
        max_kb=max_kb,
        weight=vm.weight if vm.weight is not None else defaults.weight,
        mode=vm.mode if vm.mode is not None else defaults.mode,
        estimator=vm.estimator if vm.estimator is not None else defaults.estimator,
        reserve_kb=kernel_reserve_kb(static_max) if reserve is None else reserve,
        kernel_reserve=reserve is None,
        down_hysteresis=_pick(vm.down_hysteresis, defaults.down_hysteresis),
        up_hysteresis=_pick(vm.up_hysteresis, defaults.up_hysteresis),
        max_grow_kb=_pick(vm.max_grow_kb, defaults.max_grow_kb),
        max_shrink_kb=_pick(vm.max_shrink_kb, defaults.max_shrink_kb),
        deadband_kb=_pick(vm.deadband_kb, defaults.deadband_kb),
        fallback_kb=fallback,
        min_usable_kb=vm.min_usable_kb if vm.min_usable_kb is not None else defaults.min_usable_kb,
        swap_shrink=vm.swap_shrink if vm.swap_shrink is not None else defaults.swap_shrink,
        target_kb=target,
    )


_T = TypeVar("_T")


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _size(kb: int) -> str:
    return format_size_kb(kb)


def _check_host(host: HostPolicy) -> None:
    if not 0 < host.interval_s <= MAX_INTERVAL_S:
        raise PolicyError(
            f"interval must be more than 0 and at most {MAX_INTERVAL_S:.0f}s, "
            f"not {host.interval_s:g}s (the kernel default is 5s)"
        )
    if host.stale_s < host.interval_s:
        raise PolicyError(
            f"stale ({host.stale_s:g}s) is shorter than the interval ({host.interval_s:g}s): "
            "every VM would look stale; raise --stale or lower --interval"
        )
    if host.dead_s <= host.stale_s:
        raise PolicyError(
            f"dead ({host.dead_s:g}s) must be longer than stale ({host.stale_s:g}s): "
            "raise --dead or lower --stale"
        )
    if host.defaults.mode is Mode.FIXED:
        raise PolicyError(
            "the default mode cannot be fixed (a fixed target is per VM); "
            "use auto or off as the default and --mode fixed --target on single VMs"
        )
    _check_vm(_defaults_as_vm(host.defaults), VmDefaults(), "the defaults")


def _defaults_as_vm(defaults: VmDefaults) -> VmPolicy:
    return VmPolicy(**{name: getattr(defaults, name) for name in DEFAULT_FIELDS})


def _check_vm(vm: VmPolicy, defaults: VmDefaults, where: str) -> None:
    """Checks that need no knowledge of the VM's static-max."""
    min_kb = vm.min_kb if vm.min_kb is not None else defaults.min_kb
    max_kb = vm.max_kb if vm.max_kb is not None else defaults.max_kb
    if min_kb is not None and max_kb is not None and min_kb > max_kb:
        raise PolicyError(
            f"{where}: min {_size(min_kb)} is above max {_size(max_kb)}; "
            f"lower --min to at most {_size(max_kb)} or raise --max"
        )
    if max_kb == 0:
        raise PolicyError(f"{where}: max cannot be 0; give a size such as 1G")
    mode = vm.mode if vm.mode is not None else defaults.mode
    if mode is Mode.FIXED and vm.target_kb is None:
        raise PolicyError(f"{where}: mode fixed needs a target; add --target SIZE")
    if vm.target_kb is not None:
        if min_kb is not None and vm.target_kb < min_kb:
            raise PolicyError(
                f"{where}: target {_size(vm.target_kb)} is below min {_size(min_kb)}; "
                f"raise --target to at least {_size(min_kb)} or lower --min"
            )
        if max_kb is not None and vm.target_kb > max_kb:
            raise PolicyError(
                f"{where}: target {_size(vm.target_kb)} is above max {_size(max_kb)}; "
                f"lower --target to at most {_size(max_kb)} or raise --max"
            )
    fallback = vm.fallback_kb if vm.fallback_kb is not None else defaults.fallback_kb
    if fallback is not None:
        if min_kb is not None and fallback < min_kb:
            raise PolicyError(
                f"{where}: fallback {_size(fallback)} is below min {_size(min_kb)}; "
                f"raise --fallback or lower --min"
            )
        if max_kb is not None and fallback > max_kb:
            raise PolicyError(
                f"{where}: fallback {_size(fallback)} is above max {_size(max_kb)}; "
                f"lower --fallback or raise --max"
            )


def _check_against_facts(vm: VmPolicy, defaults: VmDefaults, facts: VmFacts) -> None:
    static_max = facts.static_max_kb
    where = f"VM {facts.name}"
    for name in ("max_kb", "min_kb", "target_kb", "fallback_kb"):
        value = getattr(vm, name)
        if value is not None and value > static_max:
            flag = field_label(name)
            raise PolicyError(
                f"{where}: {flag} {_size(value)} is above its static-max {_size(static_max)}; "
                f"use --{flag} {_size(static_max)} or less"
            )
    if defaults.min_kb is not None and vm.min_kb is None and vm.max_kb is not None:
        # The default minimum may exceed a VM's own (smaller) max.
        effective_min = min(defaults.min_kb, static_max)
        if effective_min > vm.max_kb:
            raise PolicyError(
                f"{where}: max {_size(vm.max_kb)} is below the default min "
                f"{_size(effective_min)}; raise --max or set a lower --min for this VM"
            )


def reserved_kb(policy: Policy, uuid: str, facts: VmFacts) -> int:
    """What a VM needs the host to guarantee: its minimum, or its fixed target."""
    eff = resolve(policy.vm(uuid), policy.host.defaults, facts.static_max_kb)
    if eff.mode is Mode.FIXED and eff.target_kb is not None:
        return eff.target_kb
    if eff.mode is Mode.OFF:
        return 0
    return eff.min_kb


def validate(policy: Policy, context: PolicyContext | None = None) -> None:
    """Raise :class:`PolicyError` naming what to change if the policy is impossible.

    Without ``context`` only the policy's own consistency is checked. With it,
    bounds are checked against each known VM's static-max and the minimums
    (fixed targets for fixed VMs) of all known VMs against the host capacity.
    """
    _check_host(policy.host)
    defaults = policy.host.defaults
    for uuid, vm in policy.vms.items():
        where = f"VM {context.vms[uuid].name}" if context and uuid in context.vms else f"VM {uuid}"
        _check_vm(vm, defaults, where)
    if context is None:
        return
    for uuid, facts in context.vms.items():
        _check_against_facts(policy.vm(uuid), defaults, facts)
    if context.capacity_kb is None:
        return
    needs = sorted(
        ((reserved_kb(policy, uuid, facts), facts.name) for uuid, facts in context.vms.items()),
        reverse=True,
    )
    total = sum(kb for kb, _ in needs)
    if total > context.capacity_kb:
        largest = ", ".join(f"{name} {_size(kb)}" for kb, name in needs[:3])
        raise PolicyError(
            f"the minimums of all VMs add up to {_size(total)} but the host can give guests "
            f"at most {_size(max(context.capacity_kb, 0))}; lower --min (largest: {largest}) "
            "or lower --dom0-reserve/--free-margin"
        )


# ---------------------------------------------------------------------------
# Changes


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyChange:
    """A partial change: set some fields, unset others, for one VM or the host.

    Host fields are the :class:`HostPolicy` names; per-VM defaults are
    addressed as ``defaults.<field>``. Unsetting a VM field makes it inherit
    the default again; unsetting a host field restores Ballast's default.
    """

    vm: str | None = None
    """The VM's uuid, or None for the host policy."""
    set: Mapping[str, object] = field(default_factory=dict)
    """Fields to set, values as typed or as operator strings ("512M", "on")."""
    unset: tuple[str, ...] = ()
    """Fields to reset to their inherited or built-in default."""

    def to_dict(self) -> dict[str, Any]:
        """Plain form (for MQTT commands and the audit log)."""
        return {
            "vm": self.vm,
            "set": {name: _to_plain(value) for name, value in self.set.items()},
            "unset": list(self.unset),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PolicyChange:
        """Parse the plain form; raise :class:`PolicyError` if malformed."""
        _only_keys(doc, {"vm", "set", "unset"}, "policy change")
        vm = doc.get("vm")
        if vm is not None and (not isinstance(vm, str) or not vm):
            raise PolicyError("policy change 'vm' must be a VM uuid string or null (the host)")
        assign = _mapping(doc.get("set", {}), "policy change 'set'")
        unset = doc.get("unset", [])
        if not isinstance(unset, list | tuple) or not all(isinstance(n, str) for n in unset):
            raise PolicyError("policy change 'unset' must be a list of field names")
        return cls(vm=vm, set=dict(assign), unset=tuple(unset))


def apply_change(
    policy: Policy, change: PolicyChange, context: PolicyContext | None = None
) -> Policy:
    """Apply a partial change and validate the result; the policy itself is unchanged.

    This is the single entry point the CLI and MQTT commands use. It raises
    :class:`PolicyError` (a ``UsageError``) with a message that names what to
    change; on error nothing is applied.
    """
    overlap = set(change.set) & set(change.unset)
    if overlap:
        raise PolicyError(f"cannot both set and unset {', '.join(sorted(overlap))}")
    if not change.set and not change.unset:
        raise PolicyError("nothing to change: give at least one field to set or unset")
    if change.vm is None:
        new = policy.with_host(_changed_host(policy.host, change))
    else:
        new = policy.with_vm(change.vm, _changed_vm(policy.vm(change.vm), change))
    validate(new, context)
    return new


def _changed_vm(vm: VmPolicy, change: PolicyChange) -> VmPolicy:
    values: dict[str, Any] = {}
    for name in (*change.set, *change.unset):
        if name not in VM_FIELDS:
            raise PolicyError(f"unknown VM policy field {name!r}; known: {', '.join(VM_FIELDS)}")
    for name, value in change.set.items():
        coerced = coerce_value(name, value)
        if coerced is None:
            raise PolicyError(f"give a value for {field_label(name)}, or unset it")
        values[name] = coerced
    for name in change.unset:
        values[name] = None
    return replace(vm, **values)


def _changed_host(host: HostPolicy, change: PolicyChange) -> HostPolicy:
    host_values: dict[str, Any] = {}
    default_values: dict[str, Any] = {}
    builtin_host = HostPolicy()
    builtin_defaults = VmDefaults()
    known = [*HOST_FIELDS, *(f"defaults.{n}" for n in DEFAULT_FIELDS)]
    for name in (*change.set, *change.unset):
        if name not in known:
            raise PolicyError(f"unknown host policy field {name!r}; known: {', '.join(known)}")
    for name, value in change.set.items():
        coerced = coerce_value(name, value)
        if name.startswith("defaults."):
            short = name.removeprefix("defaults.")
            if coerced is None and short not in _NULLABLE_DEFAULTS:
                raise PolicyError(f"give a value for {field_label(name)}, or unset it")
            default_values[short] = coerced
        else:
            if coerced is None:
                raise PolicyError(f"give a value for {field_label(name)}, or unset it")
            host_values[name] = coerced
    for name in change.unset:
        if name.startswith("defaults."):
            short = name.removeprefix("defaults.")
            default_values[short] = getattr(builtin_defaults, short)
        else:
            host_values[name] = getattr(builtin_host, name)
    return replace(host, defaults=replace(host.defaults, **default_values), **host_values)


def policy_fields(names: Iterable[str]) -> tuple[str, ...]:
    """Normalise operator field names (``min`` -> ``min_kb``); unknown names raise."""
    by_label = {field_label(n): n for n in (*VM_FIELDS, *HOST_FIELDS)}
    out = []
    for name in names:
        if name in VM_FIELDS or name in HOST_FIELDS:
            out.append(name)
        elif name in by_label:
            out.append(by_label[name])
        else:
            known = ", ".join(sorted(by_label))
            raise PolicyError(f"unknown policy field {name!r}; known: {known}")
    return tuple(out)
