"""A pure model of one Xen guest's memory, driven by a workload and a balloon target.

The model exists so controllers can be compared on the same workloads without
a hypervisor: ``step(state, target_kb, dt_s)`` returns the guest after
``dt_s`` seconds of following ``target_kb``, and ``report(state)`` renders
it as report schema v1, exactly what the real agent would send.

What it models (docs/simulation.md has the reasoning and the calibration):

* The allocation follows the balloon target at a finite rate (default
  100 MiB/s, qmemman's assumption). Inflating the balloon can push pages
  out but never kills: Linux's balloon allocations do not invoke the OOM
  killer, so the allocation stops where nothing more can be reclaimed.
* Memory is filled by priority: unreclaimable (anon, kernel, shmem), then
  hot page cache, then cold cache. When the allocation is short, cold cache
  goes first, then hot cache, then anonymous pages are swapped out.
* Missing hot cache is refaulted and swapped-out anon is swapped back in as
  the workload touches it; each fault stalls a task, and the stalls become
  PSI ``some``/``full`` figures the way the kernel's accounting would.
* When unreclaimable memory exceeds what the guest can hold even with all of
  its swap, the OOM killer frees the excess and the workload restarts.
* ``Active(file)`` is reported as the kernel would show it, not as the hot
  cache: pages that left the hot set and some freshly read cold pages stay on
  the active list for a while (``active_age_s``), so it errs high.

All sizes are KiB (as on the xenstore wire), times seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from agents.schema import DirectiveAck, Report

PAGE_KB: Final = 4
KB_PER_MB: Final = 1024

# qmemman (Qubes, qubes/qmemman/systemstate.py do_balloon: CHECK_MB_S = 100)
# gives up on a domain that returns memory slower than 100 MB/s; we take that
# as the rate a cooperative balloon driver moves at.
DEFAULT_BALLOON_RATE_KB_S: Final = 100 * KB_PER_MB

# Linux mm/page_alloc.c: min_free_kbytes = int_sqrt(lowmem_kbytes * 16),
# clamped to [128, 262144] KiB (upper bound since Linux 5.7).
_MIN_FREE_FLOOR_KB: Final = 128
_MIN_FREE_CEIL_KB: Final = 262144
# Linux vm.watermark_scale_factor default 10 (units of 0.01 % of memory).
_WATERMARK_SCALE_FACTOR: Final = 10


class Workload(Protocol):
    """What a guest's workload wants at a given time."""

    def demand_at(self, t_s: float) -> Demand:
        """The demand in force at ``t_s`` seconds after the start."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Demand:
    """What the workload holds or wants, KiB, at one moment."""

    unreclaimable_kb: int
    """Anonymous, kernel and shmem memory: can only be swapped, not dropped."""
    hot_cache_kb: int
    """Page cache the workload touches: refaulted when evicted."""
    cold_cache_kb: int
    """Page cache it would keep if allowed, never needed again."""
    committed_kb: int
    """Committed_AS: memory promised to allocations (may exceed what is touched)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelParams:
    """Calibration of the guest model; docs/simulation.md explains each value."""

    balloon_rate_kb_s: int = DEFAULT_BALLOON_RATE_KB_S
    """How fast the balloon driver moves the allocation, KiB/s, both ways."""
    hot_touch_s: float = 60.0
    """Mean time between touches of a hot cache page, s (sets the refault rate)."""
    anon_touch_s: float = 600.0
    """Mean time between touches of a swapped-out anon page, s (swap-in rate)."""
    refault_stall_us: float = 100.0
    """Stall per refaulted file page, µs (a 4 KiB random read from an SSD)."""
    swapin_stall_us: float = 100.0
    """Stall per page swapped in on a fault, µs."""
    swapout_stall_us: float = 10.0
    """Direct-reclaim stall per page swapped out, µs (writes are batched)."""
    runnable_tasks: int = 2
    """Tasks sharing the stalls; sets how PSI ``full`` relates to ``some``."""
    cache_fill_kb_s: int = 50 * KB_PER_MB
    """How fast cold cache grows back into free memory, KiB/s (disk reads)."""
    swapoff_rate_kb_s: int = 50 * KB_PER_MB
    """How fast a swap-shrink directive pulls pages back in, KiB/s."""
    oom_restart_s: float = 60.0
    """Time constant of a killed workload coming back, s."""
    active_age_s: float = 600.0
    """Time constant with which cache that is no longer touched leaves the
    reported Active(file), s. Only the report depends on it."""
    active_read_share: float = 0.5
    """Share of freshly read cold cache that the report counts in Active(file)."""

    def __post_init__(self) -> None:
        if self.balloon_rate_kb_s <= 0:
            raise ValueError("balloon_rate_kb_s must be positive")
        for name in ("hot_touch_s", "anon_touch_s", "oom_restart_s", "active_age_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.runnable_tasks < 1:
            raise ValueError("runnable_tasks must be at least 1")
        if not 0.0 <= self.active_read_share <= 1.0:
            raise ValueError("active_read_share must be within [0, 1]")


def min_free_kb(mem_kb: int) -> int:
    """The kernel's min_free_kbytes for a guest of ``mem_kb`` KiB."""
    return max(_MIN_FREE_FLOOR_KB, min(_MIN_FREE_CEIL_KB, math.isqrt(mem_kb * 16)))


def _round_page(kb: float) -> int:
    """Round up to whole pages (events happen to pages, not fractions)."""
    return PAGE_KB * math.ceil(kb / PAGE_KB - 1e-9) if kb > 0 else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestConfig:
    """The fixed facts of one simulated guest (derived sizes computed once)."""

    name: str
    static_max_kb: int
    """The guest's maximum (``memory/static-max``)."""
    swap_kb: int
    """Size of its swap device."""
    workload: Workload
    params: ModelParams = ModelParams()
    kernel_reserved_kb: int = field(init=False)
    """Memory the guest never sees in MemTotal: its struct page array, sized
    for static-max (64 bytes per 4 KiB page, 1/64), and 16 MiB of kernel
    image and boot allocations."""
    min_free_kb: int = field(init=False)
    """The min watermark (min_free_kbytes): ordinary allocations stop here."""
    low_wmark_kb: int = field(init=False)
    """The low watermark, used by MemAvailable."""
    totalreserve_kb: int = field(init=False)
    """totalreserve_pages in KiB: the high watermark the kernel keeps free,
    min + 2 × max(min / 4, memory × watermark_scale_factor / 10000); the
    lowmem reserves of a 64-bit guest are small and left out."""

    def __post_init__(self) -> None:
        if self.static_max_kb <= 0 or self.swap_kb < 0:
            raise ValueError(f"{self.name}: static_max_kb must be positive, swap_kb >= 0")
        reserved = self.static_max_kb // 64 + 16 * KB_PER_MB
        mem = max(0, self.static_max_kb - reserved)
        low = min_free_kb(mem)
        gap = max(low // 4, mem * _WATERMARK_SCALE_FACTOR // 10000)
        object.__setattr__(self, "kernel_reserved_kb", reserved)
        object.__setattr__(self, "min_free_kb", low)
        object.__setattr__(self, "low_wmark_kb", low + gap)
        object.__setattr__(self, "totalreserve_kb", low + 2 * gap)

    def need_kb(self, demand: Demand) -> int:
        """Allocation at which this demand runs without faults or swapping."""
        return (
            self.kernel_reserved_kb
            + self.totalreserve_kb
            + demand.unreclaimable_kb
            + demand.hot_cache_kb
        )

    def floor_kb(self, unreclaimable_kb: int) -> int:
        """Lowest allocation the balloon can reach: everything reclaimable is
        gone, anon fills the swap, and free memory is at the min watermark."""
        return self.kernel_reserved_kb + self.min_free_kb + max(0, unreclaimable_kb - self.swap_kb)


# The per-step state is made of NamedTuples rather than frozen dataclasses:
# just as immutable, and several times cheaper to build, which matters at
# hundreds of thousands of steps per simulated day.


class Pages(NamedTuple):
    """What the guest's memory holds. KiB."""

    demand: Demand
    """Demand in force now (before any OOM kill)."""
    unreclaimable_kb: int
    """Unreclaimable memory the workload holds now (demand minus killed)."""
    swapped_kb: int
    """Part of it swapped out."""
    hot_kb: int
    """Hot cache resident."""
    cold_kb: int
    """Cold cache resident."""
    killed_kb: int = 0
    """Memory freed by OOM kills that the workload has not yet taken back."""
    stale_kb: int = 0
    """Cache still on the active list but no longer hot, as of ``stale_at_s``
    (it decays with ``active_age_s``; only the report reads it)."""
    stale_at_s: float = 0.0
    """When ``stale_kb`` was last computed."""


class Counters(NamedTuple):
    """Cumulative event counters, as the guest kernel keeps them."""

    ooms: int = 0
    pswpin: int = 0
    """Pages swapped in, for any reason (/proc/vmstat pswpin)."""
    pswpout: int = 0
    swapin_faults: int = 0
    """Pages swapped in because a task touched them (pswpin minus swapoff)."""
    refault_file: int = 0
    psi_some_total_us: int = 0
    psi_full_total_us: int = 0


class Pressure(NamedTuple):
    """PSI memory averages, percent, and the last step's stall share."""

    some_avg10: float = 0.0
    full_avg10: float = 0.0
    stall_frac: float = 0.0
    """Share of the last step with some task stalled (instant PSI some)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SwapShrink:
    """The swap-shrink directive the guest's agent is carrying out."""

    seq: int
    target_kb: int | None
    """Bring swap use down to this, KiB; None: no shrink."""
    outcome: str
    """As acknowledged in the report: ``done`` or ``partial``."""


_NO_PRESSURE: Final = Pressure()


class GuestState(NamedTuple):
    """One guest at one moment. Sizes KiB."""

    config: GuestConfig
    t_s: float
    steps: int
    alloc_kb: int
    """Memory the guest holds (Xen's view, the balloon driver's current_kb)."""
    target_kb: int
    """The balloon target it is moving towards."""
    pages: Pages
    counters: Counters = Counters()
    pressure: Pressure = _NO_PRESSURE
    shrink: SwapShrink | None = None

    @property
    def mem_total_kb(self) -> int:
        """MemTotal as the guest sees it."""
        return self.alloc_kb - self.config.kernel_reserved_kb

    @property
    def swapped_kb(self) -> int:
        """Unreclaimable memory swapped out (swap in use)."""
        return self.pages.swapped_kb

    @property
    def resident_anon_kb(self) -> int:
        """Unreclaimable memory resident in RAM."""
        return self.pages.unreclaimable_kb - self.pages.swapped_kb

    @property
    def free_kb(self) -> int:
        """MemFree."""
        p = self.pages
        return self.mem_total_kb - (p.unreclaimable_kb - p.swapped_kb) - p.hot_kb - p.cold_kb

    @property
    def need_kb(self) -> int:
        """Allocation the current demand needs to run without stalls."""
        return self.config.need_kb(self.pages.demand)


def boot(config: GuestConfig, alloc_kb: int) -> GuestState:
    """The guest at t=0 holding ``alloc_kb``, its pages settled for the demand."""
    demand = config.workload.demand_at(0.0)
    floor = config.floor_kb(demand.unreclaimable_kb)
    if not floor <= alloc_kb <= config.static_max_kb:
        raise ValueError(
            f"{config.name}: initial allocation {alloc_kb} KiB outside [{floor}, "
            f"{config.static_max_kb}] KiB"
        )
    usable = alloc_kb - config.kernel_reserved_kb - config.totalreserve_kb
    anon = demand.unreclaimable_kb
    swapped = min(config.swap_kb, max(0, anon - usable))
    hot = min(demand.hot_cache_kb, max(0, usable - (anon - swapped)))
    cold = min(demand.cold_cache_kb, max(0, usable - (anon - swapped) - hot))
    pages = Pages(
        demand=demand, unreclaimable_kb=anon, swapped_kb=swapped, hot_kb=hot, cold_kb=cold
    )
    return GuestState(
        config=config, t_s=0.0, steps=0, alloc_kb=alloc_kb, target_kb=alloc_kb, pages=pages
    )


def apply_directive(state: GuestState, *, seq: int, swap_target_kb: int | None) -> GuestState:
    """The guest's agent receives a swap-shrink directive (acts on each seq once)."""
    if state.shrink is not None and seq <= state.shrink.seq:
        return state
    done = swap_target_kb is None or state.pages.swapped_kb <= swap_target_kb
    shrink = SwapShrink(seq=seq, target_kb=swap_target_kb, outcome="done" if done else "partial")
    return state._replace(shrink=shrink)


def step(state: GuestState, target_kb: int, dt_s: float) -> GuestState:
    """The guest after ``dt_s`` seconds following balloon target ``target_kb``."""
    if dt_s <= 0:
        raise ValueError("dt_s must be positive")
    cfg = state.config
    prm = cfg.params
    t1 = state.t_s + dt_s
    demand = cfg.workload.demand_at(t1)
    old = state.pages
    target = max(0, min(target_kb, cfg.static_max_kb))

    if (
        demand is old.demand
        and target == state.alloc_kb
        and state.pressure is _NO_PRESSURE
        and old.swapped_kb == 0
        and old.killed_kb == 0
        and old.hot_kb == demand.hot_cache_kb
        and old.cold_kb
        == min(demand.cold_cache_kb, max(0, state.free_kb - cfg.totalreserve_kb + old.cold_kb))
    ):
        # Settled: nothing moves, no faults, pressure decayed. Only time passes.
        return GuestState(
            config=cfg,
            t_s=t1,
            steps=state.steps + 1,
            alloc_kb=state.alloc_kb,
            target_kb=target,
            pages=old,
            counters=state.counters,
            pressure=_NO_PRESSURE,
            shrink=state.shrink,
        )

    # A killed workload comes back gradually (a service restarting).
    killed = int(old.killed_kb * math.exp(-dt_s / prm.oom_restart_s))
    if killed < 16 * KB_PER_MB:
        killed = 0
    anon = max(0, demand.unreclaimable_kb - killed)
    swapped = old.swapped_kb
    if anon < old.unreclaimable_kb:
        # Freed anon takes its share of swap slots with it.
        swapped = swapped * anon // old.unreclaimable_kb
    swapped = min(swapped, anon)

    # The balloon driver moves towards the target, at a finite rate; it can take
    # pages only while the guest can reclaim or swap them.
    move = int(prm.balloon_rate_kb_s * dt_s)
    alloc = state.alloc_kb
    if target >= alloc:
        alloc = min(target, alloc + move)
    else:
        alloc = max(target, alloc - move, min(alloc, cfg.floor_kb(anon)))
    mem_total = alloc - cfg.kernel_reserved_kb
    usable = mem_total - cfg.totalreserve_kb
    anon_cap = mem_total - cfg.min_free_kb

    # Tasks touch swapped-out pages: they come back in (swap-in faults).
    fault_in = (
        min(swapped, _round_page(swapped * -math.expm1(-dt_s / prm.anon_touch_s))) if swapped else 0
    )
    swapped -= fault_in
    resident_anon = anon - swapped

    # New hot data is read once (not a refault); missing hot pages refault.
    hot = min(
        old.hot_kb + max(0, demand.hot_cache_kb - old.demand.hot_cache_kb), demand.hot_cache_kb
    )
    missing = demand.hot_cache_kb - hot
    refaults = (
        min(missing, _round_page(missing * -math.expm1(-dt_s / prm.hot_touch_s))) if missing else 0
    )
    hot += refaults

    # A swap-shrink directive pulls pages in, but only into free room.
    swapoff_in = 0
    shrink = state.shrink
    if shrink is not None and shrink.target_kb is not None and swapped > shrink.target_kb:
        room = max(0, usable - resident_anon - hot)
        swapoff_in = min(swapped - shrink.target_kb, int(prm.swapoff_rate_kb_s * dt_s), room)
        swapoff_in -= swapoff_in % PAGE_KB
        swapped -= swapoff_in
        resident_anon += swapoff_in
        outcome = "done" if swapped <= shrink.target_kb else "partial"
        if outcome != shrink.outcome:
            shrink = SwapShrink(seq=shrink.seq, target_kb=shrink.target_kb, outcome=outcome)

    # Fit by priority: anon, then hot cache; cold cache takes what is left.
    swapout = 0
    ooms = state.counters.ooms
    if resident_anon > usable:
        hot = 0
        swapout = min(resident_anon - max(0, usable), cfg.swap_kb - swapped)
        swapped += swapout
        resident_anon -= swapout
        if resident_anon > anon_cap:
            # Out of memory and swap: the OOM killer frees the excess and a
            # tenth of the workload besides (it kills a whole process).
            freed = min(resident_anon, resident_anon - anon_cap + anon // 10)
            killed = demand.unreclaimable_kb - anon + freed
            anon -= freed
            resident_anon -= freed
            ooms += 1
    else:
        hot = min(hot, usable - resident_anon)
    cold_goal = min(demand.cold_cache_kb, max(0, usable - resident_anon - hot))
    cold = old.cold_kb
    if cold >= cold_goal:
        cold = cold_goal
    else:
        cold = min(cold_goal, cold + int(prm.cache_fill_kb_s * dt_s))

    # What Active(file) counts beyond the hot set (reported only): hot pages
    # the workload stopped touching and a share of freshly read cold pages
    # stay on the active list until reclaim ages them; they are part of the
    # cold cache, so they go when it goes.
    stale = (
        _stale_kb(old, t1, prm.active_age_s)
        + max(0, old.hot_kb - demand.hot_cache_kb)
        + int(prm.active_read_share * max(0, cold - old.cold_kb))
    )
    stale = min(stale, cold)

    # Stall accounting: each fault stalls the task that took it; n runnable
    # tasks share the stall load evenly. "some" is the share of time at
    # least one is stalled, "full" all of them (Linux kernel/sched/psi.c
    # semantics), averaged like the kernel's avg10 (exponential, 10 s).
    stall_us = (
        refaults / PAGE_KB * prm.refault_stall_us
        + fault_in / PAGE_KB * prm.swapin_stall_us
        + swapout / PAGE_KB * prm.swapout_stall_us
    )
    counters = state.counters
    if stall_us or swapoff_in or ooms != counters.ooms:
        n = prm.runnable_tasks
        per_task = min(1.0, stall_us / (dt_s * 1e6) / n)
        some = 1.0 - (1.0 - per_task) ** n
        full = per_task**n
        counters = Counters(
            ooms=ooms,
            pswpin=counters.pswpin + (fault_in + swapoff_in) // PAGE_KB,
            pswpout=counters.pswpout + swapout // PAGE_KB,
            swapin_faults=counters.swapin_faults + fault_in // PAGE_KB,
            refault_file=counters.refault_file + refaults // PAGE_KB,
            psi_some_total_us=counters.psi_some_total_us + int(some * dt_s * 1e6),
            psi_full_total_us=counters.psi_full_total_us + int(full * dt_s * 1e6),
        )
    else:
        some = full = 0.0
    pressure = _NO_PRESSURE
    if some or state.pressure is not _NO_PRESSURE:
        decay = math.exp(-dt_s / 10.0)
        some_avg = state.pressure.some_avg10 * decay + 100.0 * some * (1.0 - decay)
        full_avg = state.pressure.full_avg10 * decay + 100.0 * full * (1.0 - decay)
        # Below what /proc/pressure prints (two decimals) the average is zero.
        if some_avg >= 1e-4 or some:
            pressure = Pressure(some_avg10=some_avg, full_avg10=full_avg, stall_frac=some)
    pages = Pages(
        demand=demand,
        unreclaimable_kb=anon,
        swapped_kb=swapped,
        hot_kb=hot,
        cold_kb=cold,
        killed_kb=killed,
        stale_kb=stale,
        stale_at_s=t1,
    )
    return GuestState(
        config=cfg,
        t_s=t1,
        steps=state.steps + 1,
        alloc_kb=alloc,
        target_kb=target,
        pages=pages,
        counters=counters,
        pressure=pressure,
        shrink=shrink,
    )


def _stale_kb(pages: Pages, t_s: float, age_s: float) -> int:
    """Stale active cache at ``t_s``: what was there at ``stale_at_s``, decayed."""
    if not pages.stale_kb:
        return 0
    return int(pages.stale_kb * math.exp(-max(0.0, t_s - pages.stale_at_s) / age_s))


def active_file_kb(state: GuestState) -> int:
    """Active(file) as the guest's /proc/meminfo would show it: the resident hot
    cache plus the stale part of the cold cache (never more than the cache)."""
    pages = state.pages
    stale = min(_stale_kb(pages, state.t_s, state.config.params.active_age_s), pages.cold_kb)
    return pages.hot_kb + stale - stale % PAGE_KB


def report(state: GuestState) -> Report:
    """The guest's report, schema v1, as the real agent would write it."""
    cfg = state.config
    pages = state.pages
    counters = state.counters
    cached = pages.hot_kb + pages.cold_kb
    free = state.free_kb
    # Linux si_mem_available(): free above the reserve, plus the page cache
    # that can go without dropping below the low watermark.
    available = free - cfg.totalreserve_kb + cached - min(cached // 2, cfg.low_wmark_kb)
    available = max(0, min(available, state.mem_total_kb))
    shrink = state.shrink
    ack = None if shrink is None else DirectiveAck(seq=shrink.seq, outcome=shrink.outcome)
    return Report(
        seq=state.steps,
        uptime_s=state.t_s,
        mem_total_kb=state.mem_total_kb,
        mem_free_kb=free,
        mem_available_kb=available,
        cached_kb=cached,
        committed_as_kb=max(0, pages.demand.committed_kb - pages.killed_kb),
        totalreserve_kb=cfg.totalreserve_kb,
        anon_kb=pages.unreclaimable_kb - pages.swapped_kb,
        swap_total_kb=cfg.swap_kb,
        swap_free_kb=cfg.swap_kb - pages.swapped_kb,
        pswpin=counters.pswpin,
        pswpout=counters.pswpout,
        frontswap_kb=None,
        psi_some_avg10=round(min(100.0, state.pressure.some_avg10), 2),
        psi_full_avg10=round(min(100.0, state.pressure.full_avg10), 2),
        psi_some_total_us=counters.psi_some_total_us,
        refault_anon=counters.swapin_faults,
        refault_file=counters.refault_file,
        balloon_current_kb=state.alloc_kb,
        active_file_kb=active_file_kb(state),
        directive_ack=ack,
    )
