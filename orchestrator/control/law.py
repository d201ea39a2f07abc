"""``decide``: one snapshot, one policy, the carried state -> one plan.

The pipeline per VM (docs/control.md has the full story):

1. guards: progress score from the allocation's movement (inactive,
   uncooperative);
2. data: a fresh report runs the VM's estimator; a stale one holds the last
   good target; no data for ``dead_s`` drifts towards the policy fallback;
   guests with only ``~/data/meminfo_*`` use the ``basic`` estimator;
3. the law in pages: step from ``cur = MemTotal`` towards the goal with the
   kernel's hysteresis (or the estimator's own increment), apply the kernel's
   floor, convert to balloon units with ``+ (balloon_current - totalram)``;
   shrinks only once per interval, growth at once;
4. pacing and bounds: maximum step, policy min/max, no more for an
   uncooperative VM, dead-band;
5. the frontswap self-shrink law, once per interval;

then the host: fixed, off, paused and stuck VMs are charged what they hold,
reservations and the rest are shared by weighted water-filling, and the
writes are ordered shrinks first. Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final, NamedTuple

from agents.schema import MAX_MEMORY_KB, Directive, Report
from orchestrator.control import estimators, guards, kernel
from orchestrator.control.arbitration import Claim, share
from orchestrator.control.estimators import Estimate, Figures, Signals
from orchestrator.control.kernel import PAGE_KB
from orchestrator.control.plan import HostPlan, Plan, Reason, ReservationPlan, VmPlan, VmState
from orchestrator.control.policy import (
    EffectiveVmPolicy,
    Estimator,
    HostPolicy,
    Mode,
    Policy,
    resolve,
)
from orchestrator.control.snapshot import Snapshot, VmObservation
from orchestrator.control.state import ControlState, VmMemory

# A cycle that arrives up to 10 % early still counts as the next interval, so
# a controller whose timer jitters does not halve the kernel's pace.
STEP_JITTER_FRACTION: Final = 0.1
# ``pressure`` estimator: after pressure, do not probe below the guest's size
# again for this long, while the host has room (Ballast's own; docs/control.md).
CALM_AFTER_PRESSURE_S: Final = 600.0


@dataclass(slots=True)
class _Vm:
    """Working record of one VM while the plan is built (never escapes)."""

    obs: VmObservation
    eff: EffectiveVmPolicy
    actual_kb: int
    current_kb: int
    want_kb: int
    reason: Reason
    state: VmState
    estimator: Estimator | None
    demand_kb: int | None
    pressure: bool
    directive: Directive | None
    kind: str  # "flex" (shared by weight), "must" (fixed target), "hold" (charged what it holds)
    # What goes into the next VmMemory (built once, with the final target).
    score_s: float
    uncooperative: bool
    last_step_s: float | None
    last_target_kb: int | None
    report: Report | None
    figures: Figures | None
    signals: Signals | None
    swap_last_pages: int
    swap_counter: int
    directive_seq: int
    quiet_pages: int
    calm_until_s: float | None
    core_kb: int | None = None
    granted_kb: int = 0


# ``resolve`` is pure, so memoising it is safe; policies change rarely and a
# fleet has few distinct (policy, static-max) pairs.
_resolve = functools.lru_cache(maxsize=16384)(resolve)


def host_budget_kb(snapshot: Snapshot, host: HostPolicy) -> int:
    """What the guests may hold together, in memory/target units, KiB.

    ``free + sum(actual - memory_offset) - dom0_reserve - free_margin``: when
    every VM has reached its target, the hypervisor then still has the dom0
    reserve and the free margin free.
    """
    held = sum(vm.actual_target_kb for vm in snapshot.vms)
    return snapshot.host_free_kb + held - host.dom0_reserve_kb - host.free_margin_kb


def host_capacity_kb(snapshot: Snapshot, host: HostPolicy) -> int:
    """The budget before reservations: what validation checks minimums against."""
    return host_budget_kb(snapshot, host)


def decide(snapshot: Snapshot, policy: Policy, state: ControlState | None = None) -> Plan:
    """Decide every VM's target and directive for one cycle."""
    carried = state if state is not None else ControlState()
    host = policy.host
    resolved: dict[tuple[int, int], EffectiveVmPolicy] = {}
    work: list[_Vm] = []
    # What the host could still give if every VM reached (or kept) its target.
    room_kb = host_budget_kb(snapshot, host) - sum(
        max(vm.actual_target_kb, vm.target_kb or 0) for vm in snapshot.vms
    )
    for obs in sorted(snapshot.vms, key=lambda vm: vm.domid):
        vm_policy = policy.vm(obs.uuid)
        key = (id(vm_policy), obs.static_max_kb)
        eff = resolved.get(key)
        if eff is None:
            eff = _resolve(vm_policy, host.defaults, obs.static_max_kb)
            resolved[key] = eff
        work.append(
            _decide_vm(obs, eff, carried.get(obs.uuid), host, snapshot.now_s, room_kb)
        )
    return _arbitrate(snapshot, host, work)


# ---------------------------------------------------------------------------
# Per VM


def _decide_vm(
    obs: VmObservation,
    eff: EffectiveVmPolicy,
    prev: VmMemory | None,
    host: HostPolicy,
    now_s: float,
    host_room_kb: int,
) -> _Vm:
    actual = obs.actual_target_kb
    current = obs.target_kb if obs.target_kb is not None and obs.target_kb >= 0 else actual
    if prev is not None and prev.domid != obs.domid:
        # A new domain under the same uuid (reboot, migration): only the
        # directive sequence survives, so the agent never sees a number twice.
        prev = VmMemory(
            domid=obs.domid, last_seen_s=now_s, last_actual_kb=actual,
            directive_seq=prev.directive_seq,
        )
    not_scored = host.paused or obs.paused or eff.mode is Mode.OFF
    score, uncooperative = _progress(prev, obs, actual, current, now_s, host, not_scored)
    inactive = score >= guards.INACTIVE_AFTER_S

    fig, report, figures, signals = _remember_report(prev, obs)
    directive_seq = max(
        prev.directive_seq if prev is not None else 0, obs.directive_seq or 0
    )
    last_step_s = prev.last_step_s if prev is not None else None
    swap_last = prev.swap_last_pages if prev is not None else 0
    swap_counter = prev.swap_counter if prev is not None else 0
    last_target = prev.last_target_kb if prev is not None else None
    quiet_pages = prev.quiet_pages if prev is not None else 0
    calm_until = prev.calm_until_s if prev is not None else None

    # The working record starts as "hold the current target" and is filled in.
    vm = _Vm(
        obs, eff, actual, current, current, Reason.STEADY, VmState.OK, None, None, False,
        None, "hold", score, uncooperative, last_step_s, last_target, report, figures,
        signals, swap_last, swap_counter, directive_seq, quiet_pages, calm_until,
    )
    if host.paused:
        vm.reason, vm.state = Reason.PAUSED, VmState.PAUSED
        return vm
    if eff.mode is Mode.OFF:
        vm.reason, vm.state = Reason.OFF, VmState.OFF
        return vm
    if obs.paused:
        vm.reason, vm.state = Reason.DOMAIN_PAUSED, VmState.PAUSED
        return vm

    due = _due(last_step_s, now_s, host.interval_s)
    age = obs.report_age_s
    fresh = fig is not None and age is not None and age <= host.stale_s
    estimator: Estimator | None = None
    demand: int | None = None
    pressure = False
    directive: Directive | None = None
    stepped = False

    if eff.mode is Mode.FIXED:
        target = eff.target_kb if eff.target_kb is not None else current
        reason, vm_state, kind = Reason.FIXED, VmState.FIXED, "must"
    else:
        kind = "flex"
        vm_state = VmState.OK
        basic_data = _basic_figures(obs, fig if fresh else None, eff, host)
        report_dead = obs.report is None or (age is not None and age > host.dead_s)
        if fresh and eff.estimator is not Estimator.BASIC:
            assert fig is not None
            estimator = eff.estimator
            calm = (
                calm_until is not None
                and now_s < calm_until
                and host_room_kb >= eff.reserve_kb
            )
            history = estimators.History(quiet_pages=quiet_pages, may_probe=not calm)
            law = _run_law(obs, eff, fig, signals, host.interval_s, actual, current, due, history)
            target, demand, reason = law.target_kb, law.demand_kb, law.reason
            pressure = law.pressure
            vm.core_kb = law.core_kb
            if law.quiet:
                quiet_pages = fig.mem_total_kb // PAGE_KB
            if pressure and eff.estimator is Estimator.PRESSURE:
                calm_until = now_s + CALM_AFTER_PRESSURE_S
            stepped = due
        elif basic_data is not None and (fresh or report_dead):
            estimator = Estimator.BASIC
            target, demand, reason = _run_basic(obs, eff, basic_data, actual, current, due)
            stepped = due
        elif obs.report is not None and not report_dead:
            # Stale (or unknown age, or a report that cannot be used): hold.
            target = last_target if last_target is not None else current
            reason = Reason.STALE if fig is not None else Reason.INVALID_REPORT
            vm_state = VmState.STALE
        else:
            target, reason = _drift(eff, current, due)
            reason = Reason.NO_DATA if obs.report is None else reason
            vm_state = VmState.DEAD
            stepped = due
        target, reason = _pace(target, reason, current, eff, due)

    # Bounds: the policy min and max always win (validation keeps them sane).
    if target < eff.min_kb:
        target, reason = eff.min_kb, Reason.AT_MIN
    elif target > eff.max_kb:
        target, reason = eff.max_kb, Reason.AT_MAX

    if uncooperative:
        # Keeps what it holds (or was last given), gets no more.
        cap = max(current, actual, eff.min_kb)
        if target > cap:
            target, reason = cap, Reason.UNCOOPERATIVE
        vm_state = VmState.UNCOOPERATIVE if vm_state is not VmState.FIXED else vm_state
    elif inactive and vm_state is VmState.OK:
        vm_state = VmState.INACTIVE

    if (
        kind == "flex"
        and obs.target_kb is not None
        and target != current
        and abs(target - current) < eff.deadband_kb
        and eff.min_kb <= current <= eff.max_kb
    ):
        target, reason = current, Reason.DEADBAND

    if eff.swap_shrink and fresh and due and fig is not None:
        swap_pages = (
            fig.frontswap_kb if fig.frontswap_kb is not None else fig.swap_used_kb
        ) // PAGE_KB
        new_swap, shrink_to = kernel.frontswap_tick(
            kernel.FrontswapState(swap_last, swap_counter), swap_pages
        )
        swap_last, swap_counter = new_swap.last_pages, new_swap.counter
        stepped = True
        if shrink_to is not None:
            directive_seq += 1
            directive = Directive(seq=directive_seq, swap_target_kb=shrink_to * PAGE_KB)

    if (uncooperative or inactive) and actual > target:
        kind = "hold"  # it is not moving: charge what it holds, do not count on it
    vm.want_kb, vm.reason, vm.state, vm.kind = target, reason, vm_state, kind
    vm.estimator, vm.demand_kb, vm.pressure, vm.directive = estimator, demand, pressure, directive
    if stepped:
        vm.last_step_s = now_s
    vm.swap_last_pages, vm.swap_counter, vm.directive_seq = swap_last, swap_counter, directive_seq
    vm.quiet_pages, vm.calm_until_s = quiet_pages, calm_until
    return vm


def _progress(
    prev: VmMemory | None,
    obs: VmObservation,
    actual: int,
    current: int,
    now_s: float,
    host: HostPolicy,
    not_scored: bool,
) -> tuple[float, bool]:
    if prev is None:
        return 0.0, False  # a new VM is making progress (squeezed does the same)
    if not_scored:
        return prev.stuck_score_s, prev.uncooperative
    # Positional: this runs for every VM every cycle (see guards.track's order).
    return guards.track(
        prev.stuck_score_s, prev.uncooperative, prev.last_actual_kb, actual, current,
        now_s - prev.last_seen_s, host.interval_s,
    )


def _remember_report(
    prev: VmMemory | None, obs: VmObservation
) -> tuple[Figures | None, Report | None, Figures | None, Signals | None]:
    """The current report's figures, and the report, figures and signals to carry.

    An unchanged report (same object, or same seq and uptime) is not parsed
    or differenced again; an unusable one leaves the carried ones in place.
    """
    if (
        prev is not None
        and prev.report is not None
        and obs.report is not None
        and (
            prev.report is obs.report
            # Cheap test first: a new report almost always has a new seq.
            or (prev.report.seq == obs.report.seq and prev.report == obs.report)
        )
    ):
        return prev.figures, prev.report, prev.figures, prev.signals
    kept = (prev.report, prev.figures, prev.signals) if prev is not None else (None, None, None)
    if obs.report is None:
        return None, *kept
    fig = estimators.figures_of(obs.report)
    if fig is None:
        return None, *kept
    previous = prev.figures if prev is not None else None
    if previous is not None and previous.seq == fig.seq and previous.uptime_s == fig.uptime_s:
        return fig, obs.report, fig, kept[2]  # the same report again
    return fig, obs.report, fig, estimators.signals_between(previous, fig)


def _due(last_step_s: float | None, now_s: float, interval_s: float) -> bool:
    if last_step_s is None:
        return True
    elapsed = now_s - last_step_s
    return elapsed < 0 or elapsed >= interval_s * (1.0 - STEP_JITTER_FRACTION)


def _reserve_pages(eff: EffectiveVmPolicy) -> int:
    # With no policy reserve, ``resolve`` already gave the kernel's
    # selfballoon_reserved_mb: 10 % of the RAM the guest booted with, whole MiB
    # (dom0 does not know the boot size; static-max stands in for it).
    return eff.reserve_kb // PAGE_KB


def _floor_pages(eff: EffectiveVmPolicy, static_max_kb: int, totalreserve: int) -> int:
    if eff.min_usable_kb is not None:
        return totalreserve + eff.min_usable_kb // PAGE_KB
    return _kernel_floor(static_max_kb // PAGE_KB, totalreserve)


@functools.lru_cache(maxsize=16384)
def _kernel_floor(max_pfn: int, totalreserve: int) -> int:
    # Pure and called for every VM every cycle with the same few arguments.
    return kernel.selfballoon_floor_pages(max_pfn=max_pfn, totalreserve=totalreserve)


def balloon_offset_pages(
    *, mem_total_kb: int, balloon_current_kb: int | None, actual_kb: int, static_max_kb: int
) -> int:
    """Pages the guest holds that MemTotal does not show, in memory/target units.

    The kernel's own ``balloon_current - totalram`` when the guest reports its
    balloon's ``current_kb`` and the figure is plausible (at least MemTotal, at
    most static-max); otherwise the hypervisor's allocation (already minus
    memory-offset) stands in for ``balloon_current``. Never negative.
    """
    totalram = mem_total_kb // PAGE_KB
    if balloon_current_kb is not None and mem_total_kb <= balloon_current_kb <= static_max_kb:
        return balloon_current_kb // PAGE_KB - totalram
    return max(actual_kb // PAGE_KB - totalram, 0)


class _LawResult(NamedTuple):
    target_kb: int
    demand_kb: int
    reason: Reason
    pressure: bool
    quiet: bool
    """The guest showed no pressure (its size is remembered)."""
    core_kb: int | None
    """What it uses now, in target units (arbitration serves it first)."""


def _run_law(
    obs: VmObservation,
    eff: EffectiveVmPolicy,
    fig: Figures,
    signals: Signals | None,
    interval_s: float,
    actual: int,
    current: int,
    due: bool,
    history: estimators.History,
) -> _LawResult:
    """Estimator + kernel step + floor + conversion: a target in KiB."""
    reserve = _reserve_pages(eff)
    est: Estimate
    if eff.estimator is Estimator.COMMITTED:
        est = estimators.committed(
            fig, reserve_pages=reserve, swap_shrink=eff.swap_shrink, signals=signals
        )
    elif eff.estimator is Estimator.WORKING_SET:
        est = estimators.working_set(
            fig, reserve_pages=reserve, swap_shrink=eff.swap_shrink, signals=signals,
            interval_s=interval_s,
        )
    else:
        est = estimators.pressure(
            fig, reserve_pages=reserve, swap_shrink=eff.swap_shrink, signals=signals,
            interval_s=interval_s, history=history,
        )
    cur = fig.mem_total_kb // PAGE_KB
    offset = balloon_offset_pages(
        mem_total_kb=fig.mem_total_kb, balloon_current_kb=fig.balloon_current_kb,
        actual_kb=actual, static_max_kb=obs.static_max_kb,
    )
    totalreserve = fig.totalreserve_kb // PAGE_KB
    target, reason = _step(est, cur, offset, eff, obs.static_max_kb, totalreserve)
    demand = (est.goal_pages + offset) * PAGE_KB
    if not due and target < current:
        target, reason = current, Reason.NOT_DUE
    core = None if est.core_pages is None else (est.core_pages + offset) * PAGE_KB
    return _LawResult(target, demand, reason, est.pressure, est.quiet, core)


def _step(
    est: Estimate,
    cur: int,
    offset: int,
    eff: EffectiveVmPolicy,
    static_max_kb: int,
    totalreserve: int,
) -> tuple[int, Reason]:
    if est.incremental:
        tgt = est.goal_pages
    else:
        tgt = kernel.selfballoon_step_pages(
            cur=cur, goal=est.goal_pages, downhysteresis=eff.down_hysteresis,
            uphysteresis=eff.up_hysteresis,
        )
    if tgt > cur:
        reason = Reason.PRESSURE if est.pressure else Reason.GROW
    elif tgt < cur:
        reason = Reason.PROBE if est.probing else Reason.SHRINK
    else:
        reason = Reason.STEADY
    floor = _floor_pages(eff, static_max_kb, totalreserve)
    if tgt < floor:
        tgt, reason = floor, Reason.FLOOR
    return (tgt + offset) * PAGE_KB, reason


def _basic_figures(
    obs: VmObservation, fig: Figures | None, eff: EffectiveVmPolicy, host: HostPolicy
) -> tuple[int, int] | None:
    """(total, free) KiB for the basic estimator: meminfo keys, else a fresh report."""
    total, free = obs.meminfo_total_kb, obs.meminfo_free_kb
    if obs.meminfo_age_s is None:
        # The keys carry no time. Trust them for guests that never had an
        # agent; where an agent wrote them, they went stale with its reports.
        meminfo_fresh = obs.report is None
    else:
        meminfo_fresh = obs.meminfo_age_s <= host.stale_s
    if total is not None and free is not None and meminfo_fresh and total >= PAGE_KB:
        total = min(total, MAX_MEMORY_KB)
        return total, min(max(free, 0), total)
    if fig is not None and eff.estimator is Estimator.BASIC:
        return fig.mem_total_kb, fig.mem_free_kb
    return None


def _run_basic(
    obs: VmObservation,
    eff: EffectiveVmPolicy,
    data: tuple[int, int],
    actual: int,
    current: int,
    due: bool,
) -> tuple[int, int, Reason]:
    total_kb, free_kb = data
    est = estimators.basic(total_kb, free_kb, reserve_pages=_reserve_pages(eff))
    cur = total_kb // PAGE_KB
    offset = max(actual // PAGE_KB - cur, 0)
    target, reason = _step(est, cur, offset, eff, obs.static_max_kb, 0)
    if not due and target < current:
        target, reason = current, Reason.NOT_DUE
    return target, (est.goal_pages + offset) * PAGE_KB, reason


def _drift(eff: EffectiveVmPolicy, current: int, due: bool) -> tuple[int, Reason]:
    """Move towards the policy fallback with the VM's own hysteresis."""
    goal = eff.fallback_kb // PAGE_KB
    cur = current // PAGE_KB
    if goal < cur and not due:
        return current, Reason.DEAD
    tgt = kernel.selfballoon_step_pages(
        cur=cur, goal=goal, downhysteresis=eff.down_hysteresis, uphysteresis=eff.up_hysteresis
    )
    if tgt == cur:
        return current, Reason.DEAD
    return tgt * PAGE_KB, Reason.DEAD


def _pace(
    target: int, reason: Reason, current: int, eff: EffectiveVmPolicy, due: bool
) -> tuple[int, Reason]:
    """Maximum step per cycle (growth) and per interval (shrink)."""
    if eff.max_grow_kb > 0 and target > current + eff.max_grow_kb:
        return current + eff.max_grow_kb, Reason.STEP_LIMIT
    if target < current:
        if not due:
            return current, Reason.NOT_DUE
        if eff.max_shrink_kb > 0 and target < current - eff.max_shrink_kb:
            return current - eff.max_shrink_kb, Reason.STEP_LIMIT
    return target, reason


# ---------------------------------------------------------------------------
# Host


def _arbitrate(snapshot: Snapshot, host: HostPolicy, work: list[_Vm]) -> Plan:
    budget = host_budget_kb(snapshot, host)
    fixed_charge = 0
    flex: list[_Vm] = []
    for vm in work:
        if vm.kind == "flex":
            flex.append(vm)
        elif vm.kind == "must":
            fixed_charge += vm.want_kb
        else:
            fixed_charge += max(vm.actual_kb, vm.want_kb)
    claims = [
        Claim(min(vm.eff.min_kb, vm.want_kb), vm.want_kb, max(vm.eff.weight, 1), vm.core_kb)
        for vm in flex
    ]
    requests = [r.size_kb for r in snapshot.reservations]
    sharing = share(budget - fixed_charge, claims, requests)
    for vm, granted in zip(flex, sharing.grants_kb, strict=True):
        vm.granted_kb = granted

    plans: list[VmPlan] = []
    shrinks: list[tuple[int, int]] = []
    grows: list[tuple[int, int]] = []
    sum_targets = sum_charged = sum_wanted = sum_min = 0
    memories: dict[str, VmMemory] = {}
    for vm in work:
        target, reason = vm.want_kb, vm.reason
        if vm.kind == "flex":
            if vm.granted_kb < target:
                target = vm.granted_kb
                reason = Reason.OVERCOMMITTED if sharing.overcommitted else Reason.HOST_SHORT
            charge = target
            sum_min += min(vm.eff.min_kb, vm.want_kb)
        elif vm.kind == "must":
            charge = target
            sum_min += target
        else:
            charge = max(vm.actual_kb, target)
            sum_min += charge
        managed = vm.reason not in (Reason.PAUSED, Reason.OFF, Reason.DOMAIN_PAUSED)
        write = managed and (target != vm.current_kb or vm.obs.target_kb is None)
        if write:
            delta = target - vm.current_kb
            (shrinks if delta < 0 else grows).append((delta, vm.obs.domid))
        memories[vm.obs.uuid] = VmMemory(
            domid=vm.obs.domid,
            last_seen_s=snapshot.now_s,
            last_actual_kb=vm.actual_kb,
            stuck_score_s=vm.score_s,
            uncooperative=vm.uncooperative,
            last_step_s=vm.last_step_s,
            last_target_kb=target if managed else vm.last_target_kb,
            report=vm.report,
            figures=vm.figures,
            signals=vm.signals,
            swap_last_pages=vm.swap_last_pages,
            swap_counter=vm.swap_counter,
            directive_seq=vm.directive_seq,
            quiet_pages=vm.quiet_pages,
            calm_until_s=vm.calm_until_s,
        )
        sum_targets += target
        sum_charged += charge
        sum_wanted += vm.want_kb
        plans.append(
            VmPlan(
                domid=vm.obs.domid, uuid=vm.obs.uuid, name=vm.obs.name, target_kb=target,
                previous_target_kb=vm.obs.target_kb, write=write, directive=vm.directive,
                uncooperative=vm.uncooperative, state=vm.state, reason=reason,
                estimator=vm.estimator, demand_kb=vm.demand_kb, want_kb=vm.want_kb,
                min_kb=vm.eff.min_kb, max_kb=vm.eff.max_kb, actual_kb=vm.actual_kb,
                charge_kb=charge, pressure=vm.pressure, stuck_score_s=vm.score_s,
            )
        )
    # Shrinks first, largest first, so memory is freed before it is granted;
    # then grows, smallest first (most likely to fit while shrinks complete).
    shrinks.sort()
    grows.sort()
    reservations = tuple(
        ReservationPlan(key=r.key, requested_kb=r.size_kb, granted_kb=g)
        for r, g in zip(snapshot.reservations, sharing.reservations_kb, strict=True)
    )
    return Plan(
        now_s=snapshot.now_s,
        vms=tuple(plans),
        host=HostPlan(
            total_kb=snapshot.host_total_kb,
            free_kb=snapshot.host_free_kb,
            budget_kb=budget,
            sum_targets_kb=sum_targets,
            sum_charged_kb=sum_charged,
            sum_wanted_kb=sum_wanted,
            sum_min_kb=sum_min,
            reserved_kb=sum(sharing.reservations_kb),
            short=sharing.short or fixed_charge > budget,
            overcommitted=sharing.overcommitted or fixed_charge > budget,
            paused=host.paused,
            reservations=reservations,
        ),
        write_order=tuple(d for _, d in shrinks) + tuple(d for _, d in grows),
        state=ControlState(memories),
    )
