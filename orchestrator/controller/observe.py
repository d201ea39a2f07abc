"""Observe the fleet: xenstore and the hypervisor in, an immutable Snapshot out.

Per domain the controller keeps a :class:`DomainView` of what it last read
from xenstore. Watches on each guest's ``~/data`` mark a domain dirty; a
cycle re-reads the dirty domains' guest keys, plus a rolling slice of every
domain's keys (so the whole fleet is re-read every ``resync_s`` even if a
watch event was lost: correctness never depends on events). The
hypervisor's figures are read every cycle.

Trust: only ``~/data`` is guest-writable. Identity (``vm``, ``name``),
bounds (``memory/static-max``) and the current target come from dom0-owned
keys or the hypervisor; a guest's keys are used only as that guest's own
report, parsed strictly by :mod:`agents.schema`.
"""

from __future__ import annotations

import logging
import re
import uuid as uuid_mod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, TypeAlias

from agents.schema import InvalidDocument, Report, decode_directive, decode_report
from orchestrator.control import Snapshot, VmObservation
from orchestrator.hypervisor import DomainMemory, HostMemory
from orchestrator.xenstore.client import XenstoreClient
from orchestrator.xenstore.errors import NoEntryError, XenstoreConnectionError, XenstoreError

log = logging.getLogger(__name__)

REPORT_KEY = "data/ballast/report"
DIRECTIVE_KEY = "data/ballast/directive"
MEMINFO_TOTAL_KEY = "data/meminfo_total"
MEMINFO_FREE_KEY = "data/meminfo_free"
TARGET_KEY = "memory/target"
STATIC_MAX_KEY = "memory/static-max"
# libxl writes the HVM video RAM here; an HVM guest's allocation exceeds its
# balloon target by this much (squeezed's memory-offset).
VIDEORAM_KEY = "memory/videoram"
UNCOOPERATIVE_KEY = "memory/uncooperative"

_VM_PATH = re.compile(r"^/vm/([0-9a-fA-F-]{36})$")
_DECIMAL = re.compile(rb"^[0-9]{1,15}$")
# 16 TiB in KiB, as agents.schema: no honest memory figure is larger.
_MAX_KB = 1 << 34


def home(domid: int) -> str:
    """``/local/domain/<domid>``."""
    return f"/local/domain/{domid}"


def parse_kb(raw: bytes | None) -> int | None:
    """A decimal KiB value from xenstore, bounded; None if absent or malformed."""
    if raw is None or not _DECIMAL.match(raw):
        return None
    value = int(raw)
    return value if value <= _MAX_KB else None


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainView:
    """What the controller knows about one domain, from xenstore and its own clock."""

    domid: int
    uuid: str
    name: str
    static_max_kb: int | None = None
    target_kb: int | None = None
    videoram_kb: int = 0
    uncooperative_flag: bool = False
    report_raw: bytes | None = None
    """The last report value seen (valid or not)."""
    report: Report | None = None
    """The last valid report seen (kept while later values are invalid)."""
    report_seen_s: float | None = None
    """When ``report_raw`` last changed, on the controller's clock; None: not since start."""
    report_found_s: float | None = None
    """When a report of unknown age (already there when the controller started) was
    first read; its age counts from here for the dead limit (see :func:`observation`)."""
    report_error: str | None = None
    """Why the last report value was refused; None when it was valid."""
    meminfo_raw: tuple[bytes | None, bytes | None] = (None, None)
    meminfo_kb: tuple[int | None, int | None] = (None, None)
    """``meminfo_raw`` parsed (total, free), KiB: parsed once, not every cycle."""
    meminfo_seen_s: float | None = None
    directive_seq: int | None = None
    trust_first_report: bool = True
    """False for domains found at controller start: a report already there has an
    unknown age, so it counts as fresh only once it changes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestKeys:
    """The guest-writable keys of one domain as read in one go."""

    report: bytes | None
    meminfo_total: bytes | None
    meminfo_free: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Dom0Keys:
    """The dom0-owned keys of one domain as read in one go."""

    name: bytes | None
    vm: bytes | None
    static_max: bytes | None
    target: bytes | None
    videoram: bytes | None
    uncooperative: bytes | None
    directive: bytes | None


GUEST_KEYS: Final = (REPORT_KEY, MEMINFO_TOTAL_KEY, MEMINFO_FREE_KEY)
"""Read for a domain whose ``~/data`` changed, and on every resync."""
DOM0_KEYS: Final = (STATIC_MAX_KEY, TARGET_KEY, VIDEORAM_KEY, UNCOOPERATIVE_KEY, DIRECTIVE_KEY)
"""Read when a domain is found and on every resync (the rolling re-read)."""
IDENTITY_KEYS: Final = ("name", "vm")
"""Read once, when a domain is found: they only name it."""

ReadResult: TypeAlias = bytes | XenstoreError | None
"""A value, None for a key that does not exist, or the error met reading it."""


async def read_paths(
    xs: XenstoreClient, paths: Sequence[str], *, window: int = 2048
) -> list[ReadResult]:
    """Read every path, pipelined, at most ``window`` requests in flight.

    One result per path, in order: an error is returned, not raised, so that
    one domain's failure never hides the others' values.
    """
    results: list[ReadResult] = []
    for start in range(0, len(paths), max(window, 1)):
        for value in await xs.read_many(paths[start:start + window]):
            results.append(None if isinstance(value, NoEntryError) else value)
    return results


def first_error(values: Sequence[ReadResult]) -> XenstoreError | None:
    """The first error among ``values``, preferring a lost connection."""
    errors = [v for v in values if isinstance(v, XenstoreError)]
    for exc in errors:
        if isinstance(exc, XenstoreConnectionError):
            return exc
    return errors[0] if errors else None


def guest_keys(values: Sequence[bytes | None]) -> GuestKeys:
    """The values of :data:`GUEST_KEYS`, in that order."""
    report, total, free = values
    return GuestKeys(report=report, meminfo_total=total, meminfo_free=free)


def dom0_keys(
    values: Sequence[bytes | None], identity: Sequence[bytes | None] = (None, None)
) -> Dom0Keys:
    """The values of :data:`DOM0_KEYS` (and :data:`IDENTITY_KEYS`), in that order."""
    static_max, target, videoram, uncooperative, directive = values
    name, vm = identity
    return Dom0Keys(
        name=name, vm=vm, static_max=static_max, target=target, videoram=videoram,
        uncooperative=uncooperative, directive=directive,
    )


def _values(results: Sequence[ReadResult]) -> list[bytes | None]:
    exc = first_error(results)
    if exc is not None:
        raise exc
    return [r for r in results if not isinstance(r, XenstoreError)]


async def read_guest_keys(xs: XenstoreClient, domid: int) -> GuestKeys:
    """Read the guest-written keys of one domain (pipelined)."""
    base = home(domid)
    return guest_keys(_values(await read_paths(xs, [f"{base}/{k}" for k in GUEST_KEYS])))


async def read_dom0_keys(xs: XenstoreClient, domid: int) -> Dom0Keys:
    """Read the dom0-owned keys of one domain, with its name and ``vm`` path (pipelined)."""
    base = home(domid)
    keys = (*DOM0_KEYS, *IDENTITY_KEYS)
    values = _values(await read_paths(xs, [f"{base}/{k}" for k in keys]))
    return dom0_keys(values[: len(DOM0_KEYS)], values[len(DOM0_KEYS):])


def identity(
    domid: int, keys: Dom0Keys, hv: DomainMemory | None
) -> tuple[str, str] | None:
    """The (uuid, name) of a domain: the hypervisor's uuid, else libxl's ``vm`` key.

    None when neither names a uuid: such a domain is not managed (and logged).
    """
    uuid: str | None = hv.uuid if hv is not None else None
    if uuid is None and keys.vm is not None:
        match = _VM_PATH.match(keys.vm.decode("ascii", "replace"))
        if match:
            uuid = match.group(1)
    if uuid is None:
        return None
    try:
        uuid = str(uuid_mod.UUID(uuid))
    except ValueError:
        return None
    name = keys.name.decode("ascii", "replace") if keys.name else None
    if not name:
        name = hv.name if hv is not None and hv.name else f"domain-{domid}"
    return uuid, name[:255]


def apply_dom0_keys(view: DomainView, keys: Dom0Keys) -> DomainView:
    """Fold freshly read dom0-owned keys into a view."""
    directive_seq = view.directive_seq
    if keys.directive is not None:
        try:
            directive_seq = decode_directive(keys.directive).seq
        except InvalidDocument:
            directive_seq = None
    return replace(
        view,
        static_max_kb=parse_kb(keys.static_max),
        target_kb=parse_kb(keys.target),
        videoram_kb=parse_kb(keys.videoram) or 0,
        uncooperative_flag=keys.uncooperative is not None and keys.uncooperative != b"",
        directive_seq=directive_seq,
    )


def apply_guest_keys(view: DomainView, keys: GuestKeys, now_s: float) -> DomainView:
    """Fold freshly read guest keys into a view; a changed report is a fresh report."""
    result = view
    if keys.report != view.report_raw:
        if keys.report is None:
            # The report vanished (xenstored restarted without it, or the guest
            # removed it): nothing fresh. Keep the last valid report and its age,
            # so the VM holds its target and goes stale, then dead, on time;
            # treating it as "no data" would drift it to its fallback at once.
            result = replace(result, report_raw=None, report_error=None)
        else:
            try:
                report = decode_report(keys.report)
            except InvalidDocument as exc:
                # Keep the last valid report and its age: the VM holds its last
                # safe target, then drifts to its fallback as if the agent died.
                result = replace(result, report_raw=keys.report, report_error=str(exc))
            else:
                first_read = view.report_raw is None and view.report_seen_s is None
                fresh = view.trust_first_report or not first_read
                result = replace(
                    result, report_raw=keys.report, report=report, report_error=None,
                    # A report already there when the controller started has an
                    # unknown age: it counts as fresh only once it changes.
                    report_seen_s=now_s if fresh else view.report_seen_s,
                    report_found_s=None if fresh else now_s,
                )
    meminfo = (keys.meminfo_total, keys.meminfo_free)
    if meminfo != view.meminfo_raw:
        first = view.meminfo_seen_s is None and view.meminfo_raw == (None, None)
        seen = None if first and not view.trust_first_report else now_s
        result = replace(result, meminfo_raw=meminfo, meminfo_seen_s=seen,
                         meminfo_kb=(parse_kb(meminfo[0]), parse_kb(meminfo[1])))
    if not result.trust_first_report:
        result = replace(result, trust_first_report=True)
    return result


def observation(
    view: DomainView, hv: DomainMemory, now_s: float, *, domain_paused: bool = False,
    unknown_age_s: float | None = None,
) -> VmObservation | None:
    """The control law's view of one domain; None when a bound is unknown.

    A report of unknown age (found at start, unchanged since) is given the age
    ``max(time since found, unknown_age_s)``: with ``unknown_age_s`` just over
    the stale limit the VM holds its target at once, and drifts to its
    fallback once the report has been there, unchanged, for the dead limit
    (an agent that died before the controller started). Without it, the age
    stays unknown and the VM holds its target until the report changes.
    """
    static_max = view.static_max_kb if view.static_max_kb is not None else hv.max_kb
    if static_max is None:
        return None
    total_kb, free_kb = view.meminfo_kb
    report_age_s: float | None = None
    if view.report is not None:
        if view.report_seen_s is not None:
            report_age_s = now_s - view.report_seen_s
        elif view.report_found_s is not None and unknown_age_s is not None:
            report_age_s = max(now_s - view.report_found_s, unknown_age_s)
    return VmObservation(
        domid=view.domid,
        uuid=view.uuid,
        name=view.name,
        static_max_kb=static_max,
        actual_kb=hv.actual_kb,
        target_kb=view.target_kb,
        memory_offset_kb=view.videoram_kb,
        report=view.report,
        report_age_s=report_age_s,
        meminfo_total_kb=total_kb,
        meminfo_free_kb=free_kb,
        meminfo_age_s=(now_s - view.meminfo_seen_s) if view.meminfo_seen_s is not None else None,
        paused=domain_paused,
        directive_seq=view.directive_seq,
    )


def build_snapshot(
    now_s: float,
    host: HostMemory,
    views: Mapping[int, DomainView],
    allocations: Mapping[int, DomainMemory],
    paused_domids: Iterable[int] = (),
    *,
    unknown_age_s: float | None = None,
) -> Snapshot:
    """The immutable snapshot of one cycle: every guest with known bounds
    (``unknown_age_s``: see :func:`observation`)."""
    paused = set(paused_domids)
    vms = []
    seen_uuids: set[str] = set()
    for domid in sorted(views):
        hv = allocations.get(domid)
        view = views[domid]
        if domid == 0 or hv is None or view.uuid in seen_uuids:
            continue
        obs = observation(view, hv, now_s, domain_paused=domid in paused,
                          unknown_age_s=unknown_age_s)
        if obs is not None:
            seen_uuids.add(view.uuid)
            vms.append(obs)
    return Snapshot(
        now_s=now_s,
        host_total_kb=host.total_kb,
        host_free_kb=host.free_kb,
        vms=tuple(vms),
    )


async def list_domids(xs: XenstoreClient) -> list[int]:
    """Every domain under ``/local/domain``, dom0 excluded."""
    try:
        names = await xs.directory("/local/domain")
    except NoEntryError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and int(n) != 0)


class LogOnce:
    """Log a problem once per key until it recovers (STYLE: no log floods)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: dict[str, str] = {}

    def problem(self, key: str, message: str, level: int = logging.WARNING) -> bool:
        """Log ``message`` unless ``key`` already has the same problem; True if logged."""
        if self._active.get(key) == message:
            return False
        self._active[key] = message
        self._log.log(level, "%s", message)
        return True

    def recovered(self, key: str, message: str | None = None) -> None:
        """Clear ``key``'s problem, logging ``message`` if there was one."""
        if self._active.pop(key, None) is not None and message:
            self._log.info("%s", message)

    def forget(self, prefix: str) -> None:
        """Drop every key starting with ``prefix`` (a domain that went away)."""
        for key in [k for k in self._active if k.startswith(prefix)]:
            del self._active[key]


__all__ = [
    "DOM0_KEYS",
    "GUEST_KEYS",
    "IDENTITY_KEYS",
    "Dom0Keys",
    "DomainView",
    "GuestKeys",
    "LogOnce",
    "XenstoreError",
    "apply_dom0_keys",
    "apply_guest_keys",
    "build_snapshot",
    "dom0_keys",
    "first_error",
    "guest_keys",
    "home",
    "identity",
    "list_domids",
    "observation",
    "parse_kb",
    "read_dom0_keys",
    "read_guest_keys",
    "read_paths",
]
