"""The reconcile loop: observe -> snapshot -> decide -> apply -> record -> publish.

Level-triggered (STYLE 2): each cycle recomputes from what it observes.
Watches only mark a guest dirty and wake the loop for a *peek*: the dirty
guests' keys are read, and if the law, asked about such a VM alone, wants to
give it more memory, a full cycle runs at once; otherwise the next cycle comes
at the interval, which paces every shrink anyway. Floods of watch events
coalesce, because a cycle re-reads state instead of consuming events, and
cycles are at least ``min_gap_s`` apart. A rolling resync re-reads every
domain's keys within ``resync_s``, paced by time, so an early cycle costs no
more than its dirty guests (docs/controller.md has the figures).

A cycle that cannot observe the fleet (xenstore or the hypervisor is down)
writes nothing; after a new connection to xenstored, every domain is re-read
before the next decision, and a cycle during which the connection changed
writes nothing, so no target is ever written from stale data.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from orchestrator.control import ControlState, Plan, Policy, Snapshot, decide
from orchestrator.controller.actuate import ApplyResult, apply_plan
from orchestrator.controller.events import ControllerEvent, events_between
from orchestrator.controller.observe import (
    DOM0_KEYS,
    GUEST_KEYS,
    IDENTITY_KEYS,
    DomainView,
    LogOnce,
    ReadResult,
    apply_dom0_keys,
    apply_guest_keys,
    build_snapshot,
    dom0_keys,
    first_error,
    guest_keys,
    home,
    identity,
    list_domids,
    observation,
    read_paths,
)
from orchestrator.errors import TransientError
from orchestrator.hypervisor import DomainMemory, Hypervisor
from orchestrator.xenstore.client import XenstoreClient
from orchestrator.xenstore.errors import XenstoreConnectionError, XenstoreError

log = logging.getLogger("ballast.controller")



@dataclass(frozen=True, slots=True, kw_only=True)
class LoopSettings:
    """Timing of the reconcile loop (the control interval itself is policy)."""

    min_gap_s: float = 0.02
    """Shortest time between two cycles, seconds: coalesces report floods."""
    peek_delay_s: float = 0.005
    """After a guest's ``~/data`` changes, wait this long before reading it, seconds:
    the keys an agent writes for one report (report, ``meminfo_*``) come together."""
    resync_s: float = 30.0
    """Every domain's keys are re-read at least this often, seconds."""
    rescan_s: float = 10.0
    """The domain list is re-read at least this often, seconds."""
    read_concurrency: int = 2048
    """Most xenstore reads in flight at once."""
    freeze_gc: bool = True
    """After the first cycle of :meth:`Controller.run`, move everything alive into the
    garbage collector's permanent generation (``gc.freeze``): the start-up state is
    then never scanned again by full collections, which otherwise pause a cycle
    for tens of milliseconds at 1,000 domains (bench/controller.py)."""
    time_scale: float = 1.0
    """Seconds of the controller's clock per wall second: every wait is divided
    by it (``ballast sim`` runs the clock ``speed`` times the wall clock)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedPolicy:
    """The policy in force and the version of each VM's policy document."""

    policy: Policy
    versions: Mapping[str, int] = field(default_factory=dict)


class PolicySource(Protocol):
    """Where the controller gets its policy each interval."""

    async def load(self) -> LoadedPolicy:
        """The current policy; raise TransientError to keep the previous one."""
        ...


class StaticPolicy:
    """A fixed policy (tests, benchmarks, a controller without a store)."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()

    async def load(self) -> LoadedPolicy:
        return LoadedPolicy(policy=self.policy)


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleTimings:
    """Where one cycle's wall time went, seconds (for status, metrics, the benchmark)."""

    observe_s: float = 0.0
    """Reading xenstore and the hypervisor and building the snapshot."""
    decide_s: float = 0.0
    """The control law."""
    apply_s: float = 0.0
    """Writing targets, directives and flags."""
    domains_read: int = 0
    """Domains whose guest keys were read (dirty or due for resync)."""
    domains_resynced: int = 0
    """Domains whose dom0-owned keys were re-read as well."""
    xenstore_reads: int = 0
    """READ requests the cycle sent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleResult:
    """Everything one cycle saw and did, handed to the sinks."""

    wall_time: datetime
    """When the cycle observed the fleet (UTC)."""
    snapshot: Snapshot
    plan: Plan
    applied: ApplyResult
    events: tuple[ControllerEvent, ...]
    policy: LoadedPolicy
    views: Mapping[int, DomainView]
    duration_s: float
    """Wall time the cycle took, seconds."""
    timings: CycleTimings = field(default_factory=CycleTimings)
    """The phases of ``duration_s``."""


class CycleSink(Protocol):
    """Something fed after every cycle (store, telemetry, metrics); must not block."""

    def cycle(self, result: CycleResult) -> None:
        """Take the result of a cycle; must return at once."""
        ...


class Controller:
    """The dom0 controller. ``async with`` it, then ``await run(stop)``."""

    def __init__(
        self,
        *,
        xs: XenstoreClient,
        hypervisor: Hypervisor,
        policy: PolicySource,
        sinks: Sequence[CycleSink] = (),
        settings: LoopSettings | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        start_details: Mapping[str, Any] | None = None,
    ) -> None:
        """``start_details``: added to the ``controller_started`` event of the first
        cycle (how the previous run ended, see ``daemon.previous_run``)."""
        self._xs = xs
        self._start_details = dict(start_details or {})
        self._hv = hypervisor
        self._policy_source = policy
        self._sinks = list(sinks)
        self.settings = settings or LoopSettings()
        self._clock = clock
        self._wall = wall_clock or (lambda: datetime.now(UTC))
        self._views: dict[int, DomainView] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._dirty: set[int] = set()
        self._resync_queue: deque[int] = deque()
        self._resync_at: float | None = None
        self._resync_credit = 0.0
        self._reread: set[int] = set()
        self._connects: int | None = None
        self._reads = 0
        self._need_full_read = True
        self._need_rescan = True
        self._last_rescan = float("-inf")
        self._first_rescan = True
        self._state = ControlState()
        self._plan: Plan | None = None
        self._loaded: LoadedPolicy | None = None
        self._policy_loaded_at = float("-inf")
        self._policy_dirty = True
        self._wake = asyncio.Event()
        """Run a full cycle as soon as the minimum gap allows."""
        self._changed = asyncio.Event()
        """A guest's ``~/data`` changed: peek at it."""
        self._peeks = 0
        self._last_snapshot: Snapshot | None = None
        self._last_allocations: Mapping[int, DomainMemory] = {}
        self._pending_events: list[ControllerEvent] = []
        self._problems = LogOnce(log)
        self._read_counts = (0, 0)
        self.cycles = 0
        self.failed_cycles = 0

    # ------------------------------------------------------------------ wiring

    def now(self) -> float:
        """The controller's monotonic clock, seconds."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def add_sink(self, sink: CycleSink) -> None:
        """Feed ``sink`` after every cycle from now on."""
        self._sinks.append(sink)

    def wake(self) -> None:
        """Run a cycle as soon as the minimum gap allows."""
        self._wake.set()

    @property
    def peeks(self) -> int:
        """Watch-woken looks at changed guests (each may or may not start a cycle)."""
        return self._peeks

    def reread_all(self) -> None:
        """Re-read every domain's keys before the next decision (as after a reconnect)."""
        self._need_full_read = True

    def policy_changed(self) -> None:
        """Reload the policy before the next cycle and run it soon."""
        self._policy_dirty = True
        self._wake.set()

    @property
    def last_plan(self) -> Plan | None:
        """The plan of the last successful cycle."""
        return self._plan

    @property
    def views(self) -> Mapping[int, DomainView]:
        """What the controller knows of each domain."""
        return self._views

    # -------------------------------------------------------------------- loop

    async def run(self, stop: asyncio.Event) -> None:
        """Run cycles until ``stop`` is set; the cycle in flight always finishes.

        A cycle runs every interval; at once when woken (:meth:`wake`, a policy
        change, a domain found or gone, a new connection to xenstored); and at
        once when a guest's ``~/data`` changed and the law, asked about that VM
        alone, wants to give it more memory (a *peek*: the changed guests' keys
        are read, nothing is written). Other changes wait for the interval,
        which paces every downward move anyway; their keys are already read.
        """
        domain_watch = asyncio.create_task(self._watch_domains(), name="watch-domains")
        try:
            last_start = float("-inf")
            next_cycle = self.now()
            frozen = False
            while not stop.is_set():
                now = self.now()
                if now < next_cycle and not self._wake.is_set() and not self._changed.is_set():
                    await _wait_any(stop, self._wake, self._changed,
                                    timeout_s=(next_cycle - now) / self.settings.time_scale)
                    continue
                if not self._wake.is_set() and now < next_cycle:
                    await asyncio.sleep(self.settings.peek_delay_s / self.settings.time_scale)
                self._changed.clear()
                full = self._wake.is_set() or now >= next_cycle or await self._peek()
                if not full:
                    continue
                gap = last_start + self.settings.min_gap_s - self.now()
                if gap > 0:
                    # floods of wake-ups coalesce
                    await asyncio.sleep(gap / self.settings.time_scale)
                last_start = self.now()
                self._wake.clear()
                result = await self.run_cycle()
                next_cycle = last_start + self._interval_s()
                if result is not None and not frozen and self.settings.freeze_gc:
                    gc.freeze()
                    frozen = True
        finally:
            domain_watch.cancel()
            for task in self._watchers.values():
                task.cancel()
            await asyncio.gather(domain_watch, *self._watchers.values(), return_exceptions=True)
            self._watchers.clear()

    def _interval_s(self) -> float:
        if self._loaded is None:
            return 5.0
        return self._loaded.policy.host.interval_s

    async def run_cycle(self) -> CycleResult | None:
        """One reconcile cycle; None when the fleet could not be observed."""
        started = time.perf_counter()
        try:
            loaded = await self._load_policy()
            snapshot = await self._observe(loaded)
        except TransientError as exc:
            self.failed_cycles += 1
            if isinstance(exc, XenstoreConnectionError):
                self._need_full_read = True
            self._problems.problem("cycle", f"cycle skipped, nothing written: {exc}")
            return None
        self._problems.recovered("cycle", "observing the fleet again")
        observed = time.perf_counter()
        plan = decide(snapshot, loaded.policy, self._state)
        decided = time.perf_counter()
        if getattr(self._xs, "connects", None) != self._connects:
            # xenstored was reconnected to while we read: what we read may be gone.
            self.failed_cycles += 1
            self._need_full_read = True
            self._problems.problem("cycle", "cycle skipped, nothing written: xenstore "
                                   "reconnected during the cycle; reading everything again")
            return None
        applied = await apply_plan(self._xs, plan, self._views)
        applied_at = time.perf_counter()
        self._after_apply(plan, applied)
        events = (*self._pending_events,
                  *events_between(self._plan, plan, started=self._start_details))
        self._pending_events.clear()
        self._plan = plan
        self._state = plan.state
        self.cycles += 1
        result = CycleResult(
            wall_time=self._wall(),
            snapshot=snapshot,
            plan=plan,
            applied=applied,
            events=events,
            policy=loaded,
            views=dict(self._views),
            duration_s=time.perf_counter() - started,
            timings=CycleTimings(
                observe_s=observed - started,
                decide_s=decided - observed,
                apply_s=applied_at - decided,
                domains_read=self._read_counts[0],
                domains_resynced=self._read_counts[1],
                xenstore_reads=self._reads,
            ),
        )
        for sink in self._sinks:
            try:
                sink.cycle(result)
            except Exception:  # a sink bug must never stop control
                log.exception("a cycle sink failed: %r", sink)
        return result

    def _after_apply(self, plan: Plan, applied: ApplyResult) -> None:
        for domid, target in applied.targets_written.items():
            if domid in self._views:
                self._views[domid] = replace(self._views[domid], target_kb=target)
        for domid, seq in applied.directives_written.items():
            if domid in self._views:
                self._views[domid] = replace(self._views[domid], directive_seq=seq)
        for domid, flag in applied.flags_changed.items():
            if domid in self._views:
                self._views[domid] = replace(self._views[domid], uncooperative_flag=flag)
        for domid, exc in applied.errors.items():
            self._problems.problem(f"{domid}/apply", f"domain {domid}: write failed: {exc}")
            # Re-read this domain fully next cycle: our picture of it may be wrong.
            self._reread.add(domid)
        for domid in plan.write_order:
            if domid not in applied.errors:
                self._problems.recovered(f"{domid}/apply")

    async def _load_policy(self) -> LoadedPolicy:
        now = self.now()
        stale = now - self._policy_loaded_at >= self._interval_s()
        if self._loaded is None or self._policy_dirty or stale:
            try:
                self._loaded = await self._policy_source.load()
                self._policy_dirty = False
                self._policy_loaded_at = now
                self._problems.recovered("policy", "policy source readable again")
            except TransientError as exc:
                if self._loaded is None:
                    raise
                self._problems.problem("policy", f"keeping the last policy: {exc}")
        return self._loaded

    # ----------------------------------------------------------------- observe

    async def _observe(self, loaded: LoadedPolicy) -> Snapshot:
        await asyncio.sleep(0)  # let watch events that have just arrived mark their domains
        now = self.now()
        self._reads = 0
        connects = getattr(self._xs, "connects", None)
        if connects != self._connects:
            # A new connection (the first one, or xenstored came back): whatever was
            # read before may be gone or changed; read everything before deciding.
            self._connects = connects
            self._need_full_read = True
            self._need_rescan = True
        host_task = asyncio.create_task(self._hv.host_memory())
        domains_task = asyncio.create_task(self._hv.domains())
        try:
            found: set[int] = set()
            if self._need_rescan or now - self._last_rescan >= self.settings.rescan_s:
                found = await self._rescan(await domains_task)
                self._first_rescan = False
                self._last_rescan = now
                self._need_rescan = False
            if self._need_full_read:
                resync = set(self._views) - found  # the rescan has just read those
                self._resync_queue.clear()
                self._resync_credit = 0.0
                self._resync_at = now
            else:
                resync = (self._resync_slice(now) | self._reread) & self._views.keys()
            guests = (self._dirty | resync) & self._views.keys()
            self._dirty.clear()
            self._reread.clear()
            self._read_counts = (len(guests), len(resync))
            await self._read(resync, guests)
            self._need_full_read = False
            host = await host_task
            allocations = await domains_task
        except XenstoreError:
            self._dirty.update(self._views)
            raise
        finally:
            for task in (host_task, domains_task):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await task  # also retrieves an exception nobody awaited
        paused = [d for d, m in allocations.items() if m.paused]
        snapshot = build_snapshot(self.now(), host, self._views, allocations, paused,
                                  unknown_age_s=_unknown_age_s(loaded))
        self._last_snapshot, self._last_allocations = snapshot, allocations
        return snapshot

    async def _peek(self) -> bool:
        """Read the guests whose ``~/data`` changed; True if a cycle must run now.

        A cycle is needed at once when the law, given that VM alone (its new
        report, the last cycle's allocation and host figures, the carried
        state), wants a larger target than the current one: ``want_kb`` is
        decided per VM before the host is shared, so it is the same as in the
        full cycle that follows (tests/controller/test_peek.py holds the law to
        that). Anything unusual runs the full cycle.
        """
        last, loaded = self._last_snapshot, self._loaded
        if self._need_full_read or self._need_rescan or last is None or loaded is None:
            return True
        if getattr(self._xs, "connects", None) != self._connects:
            return True
        dirty = self._dirty & self._views.keys()
        self._dirty -= dirty
        if not dirty:
            return False
        before = {d: self._views[d] for d in dirty}
        try:
            self._reads = 0
            await self._read(set(), dirty)
        except XenstoreError:
            self._dirty |= dirty
            return True  # the cycle meets the error again, and says so
        self._peeks += 1
        now = self.now()
        for domid in sorted(dirty):
            view = self._views.get(domid)
            if view is None or view is before[domid]:
                continue  # gone, or nothing the law reads changed
            memory = self._last_allocations.get(domid)
            if memory is None:
                return True
            obs = observation(view, memory, now, domain_paused=memory.paused,
                              unknown_age_s=_unknown_age_s(loaded))
            if obs is None:
                continue  # no bounds: the cycle skips it as well
            alone = Snapshot(now_s=now, host_total_kb=last.host_total_kb,
                             host_free_kb=last.host_free_kb, vms=(obs,))  # fmt: skip
            plan = decide(alone, loaded.policy, self._state)
            for vm in plan.vms:
                base = vm.previous_target_kb if vm.previous_target_kb is not None else vm.actual_kb
                if vm.want_kb > base:
                    return True
        return False

    def _resync_slice(self, now: float) -> set[int]:
        """The domains due for a full re-read: ``len(views) * elapsed / resync_s`` of
        them, round-robin, so each is re-read every ``resync_s`` however often cycles
        run (a watch-woken cycle costs no more than its dirty domains)."""
        elapsed = max(now - self._resync_at, 0.0) if self._resync_at is not None else 0.0
        self._resync_at = now
        total = len(self._views)
        credit = self._resync_credit + total * elapsed / max(self.settings.resync_s, 1e-3)
        count = int(min(credit, total))
        self._resync_credit = min(credit - count, 1.0)
        chunk: set[int] = set()
        refilled = False
        while len(chunk) < count:
            if not self._resync_queue:
                if refilled:
                    break
                self._resync_queue.extend(sorted(self._views))
                refilled = True
            domid = self._resync_queue.popleft()
            if domid in self._views:
                chunk.add(domid)
        return chunk

    async def _read(self, resync: set[int], guests: set[int]) -> None:
        """Re-read the dom0-owned keys of ``resync`` and the guest keys of ``guests``."""
        now = self.now()
        dom0_order = sorted(resync)
        guest_order = sorted(guests)
        paths = [f"{home(d)}/{k}" for d in dom0_order for k in DOM0_KEYS]
        paths += [f"{home(d)}/{k}" for d in guest_order for k in GUEST_KEYS]
        self._reads += len(paths)
        results = await read_paths(self._xs, paths, window=self.settings.read_concurrency)
        lost = first_error(results)
        if isinstance(lost, XenstoreConnectionError):
            raise lost  # nothing of this cycle is applied: everything is read again
        n_dom0, n_guest = len(DOM0_KEYS), len(GUEST_KEYS)
        for i, domid in enumerate(dom0_order):
            values = results[i * n_dom0:(i + 1) * n_dom0]
            exc = first_error(values)
            if exc is not None:
                self._problems.problem(f"{domid}/read", f"domain {domid}: read failed: {exc}")
                continue
            if domid in self._views:
                self._views[domid] = apply_dom0_keys(self._views[domid], dom0_keys(_ok(values)))
        offset = len(dom0_order) * n_dom0
        for i, domid in enumerate(guest_order):
            values = results[offset + i * n_guest:offset + (i + 1) * n_guest]
            exc = first_error(values)
            if exc is not None:
                self._problems.problem(f"{domid}/read", f"domain {domid}: read failed: {exc}")
                continue
            self._problems.recovered(f"{domid}/read")
            if domid in self._views:
                old = self._views[domid]
                view = apply_guest_keys(old, guest_keys(_ok(values)), now)
                if view.report_error and view.report_raw != old.report_raw:
                    logged = self._problems.problem(
                        f"{domid}/report",
                        f"domain {domid} ({view.name}): invalid report ignored: "
                        f"{view.report_error}",
                    )
                    if logged:
                        self._pending_events.append(ControllerEvent(
                            kind="invalid_report", uuid=view.uuid, name=view.name,
                            domid=domid, details={"error": view.report_error[:200]},
                        ))
                elif view.report_error is None and view.report is not None:
                    self._problems.recovered(f"{domid}/report")
                self._views[domid] = view

    async def _rescan(self, allocations: Mapping[int, DomainMemory]) -> set[int]:
        """Forget domains that went away, start managing new ones; returns the new."""
        present = set(await list_domids(self._xs))
        for domid in sorted(set(self._views) - present):
            self._forget(domid)
        new = sorted(present - set(self._views))
        keys = (*DOM0_KEYS, *IDENTITY_KEYS)
        paths = [f"{home(d)}/{k}" for d in new for k in keys]
        results = await read_paths(self._xs, paths, window=self.settings.read_concurrency)
        self._reads += len(paths) + 1
        added: set[int] = set()
        for i, domid in enumerate(new):
            values = results[i * len(keys):(i + 1) * len(keys)]
            got = first_error(values)
            if isinstance(got, XenstoreConnectionError):
                raise got
            if got is not None:
                self._problems.problem(f"{domid}/new", f"domain {domid}: cannot read it: {got}")
                continue
            found = dom0_keys(_ok(values[:len(DOM0_KEYS)]), _ok(values[len(DOM0_KEYS):]))
            ident = identity(domid, found, allocations.get(domid))
            if ident is None:
                self._problems.problem(
                    f"{domid}/new", f"domain {domid}: no uuid in the hypervisor or xenstore; "
                    "not managed"
                )
                continue
            uuid, name = ident
            view = DomainView(
                domid=domid, uuid=uuid, name=name, trust_first_report=not self._first_rescan
            )
            self._views[domid] = apply_dom0_keys(view, found)
            self._dirty.add(domid)
            self._watchers[domid] = asyncio.create_task(
                self._watch_guest(domid), name=f"watch-domain-{domid}"
            )
            added.add(domid)
            log.info("managing domain %d (%s, %s)", domid, name, uuid)
        return added

    def _forget(self, domid: int) -> None:
        view = self._views.pop(domid, None)
        task = self._watchers.pop(domid, None)
        if task is not None:
            task.cancel()
        self._dirty.discard(domid)
        self._problems.forget(f"{domid}/")
        if view is not None:
            log.info("domain %d (%s) is gone", domid, view.name)

    # ----------------------------------------------------------------- watches

    async def _watch_domains(self) -> None:
        async def one(path: str) -> None:
            while True:
                try:
                    async with self._xs.watch(path) as events:
                        async for _ in events:
                            self._need_rescan = True
                            self._wake.set()
                except XenstoreError as exc:
                    self._problems.problem(f"watch{path}", f"watch {path} failed: {exc}")
                    await asyncio.sleep(1.0)

        await asyncio.gather(one("@introduceDomain"), one("@releaseDomain"))

    async def _watch_guest(self, domid: int) -> None:
        data = f"{home(domid)}/data"
        ignore = f"{data}/ballast/directive"
        while domid in self._views:
            try:
                async with self._xs.watch(data) as events:
                    async for path in events:
                        if path == ignore:
                            continue
                        self._dirty.add(domid)
                        self._changed.set()
            except XenstoreError:
                await asyncio.sleep(1.0)


def _unknown_age_s(loaded: LoadedPolicy) -> float:
    """The age given to a report found at start: just past the stale limit, so the
    VM holds its target until the report changes or has been there for dead_s."""
    return loaded.policy.host.stale_s + 1e-3


async def _wait_any(*events: asyncio.Event, timeout_s: float) -> None:
    """Return when one of ``events`` is set, or after ``timeout_s``."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.create_task(e.wait(), name="wait-event") for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)



def _ok(values: Sequence[ReadResult]) -> list[bytes | None]:
    """``values`` once :func:`first_error` found no error among them."""
    return [v for v in values if not isinstance(v, XenstoreError)]
