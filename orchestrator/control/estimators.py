"""Demand estimators: how much usable RAM a guest should have, in pages.

Each estimator returns a goal in the guest's ``totalram`` units (what
``MemTotal`` shows), in 4 KiB pages, like the kernel law's ``goal``; the law
(``orchestrator.control.law``) paces it and converts it to a balloon target.

* ``committed``: the kernel law exactly (KERNEL-LAW.md).
* ``working-set``: what the guest cannot give back without swapping
  (``MemTotal - MemAvailable``) plus its reserve; grows at once on pressure.
* ``pressure``: Senpai/TMO style probing: shrink about 1 % per interval while
  PSI, refaults and swap-ins stay near zero; grow at once when pressure
  appears; never below the working set plus reserve.
* ``basic``: ``meminfo_total - meminfo_free`` plus reserve, for guests that
  only write the classic ``~/data/meminfo_*`` keys.

Guest figures are untrusted: :func:`figures_of` clamps every number into
range and rejects a report that cannot be used, without raising.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

from agents.schema import MAX_MEMORY_KB, Report
from orchestrator.control.kernel import PAGE_KB

# Senpai (oomd plugin, 2019 defaults): a target of 10 ms of stall per 6 s
# interval, probe at most 1 % per interval, back off at most 100 %,
# coefficients 10 (probe) and 20 (backoff).
SENPAI_MAX_PROBE: Final = 0.01
SENPAI_MAX_BACKOFF: Final = 1.0
SENPAI_COEFF_PROBE: Final = 10.0
SENPAI_COEFF_BACKOFF: Final = 20.0
# TMO (Weiner et al., ASPLOS 2022) runs Senpai against a PSI "some" target of
# 0.1 % of wall time; Ballast uses the same anchor (and the control benchmark
# scores the share of time above it).
PRESSURE_TARGET_FRAC: Final = 0.001
# Ballast's own thresholds (not from a peer; the control benchmark tunes them).
# Refaults and swap-ins at or under these rates count as "near zero"...
REFAULT_QUIET_PPS: Final = 16.0  # 64 KiB/s
SWAPIN_QUIET_PPS: Final = 1.0
# ...and at or above these they are pressure even without PSI.
REFAULT_PRESSURE_PPS: Final = 256.0  # 1 MiB/s of evicted cache needed again
SWAPIN_PRESSURE_PPS: Final = 64.0  # 256 KiB/s of anonymous memory read back
# Rates over less than a second of guest uptime are noise (or a lie).
MIN_RATE_WINDOW_S: Final = 1.0
# On pressure, grow by at least this share of MemTotal: "at once" means a
# step that ends the stall, not Senpai's gentle squared backoff for small errors.
MIN_PRESSURE_GROW_FRAC: Final = 0.05
# While the guest's demand grows, the floor keeps this many intervals of the
# growth in hand: one until the next decision sees it, one for the balloon to
# deliver it (Ballast's own; docs/control.md).
RAMP_INTERVALS: Final = 2


class Signals(NamedTuple):
    """Pressure signals of one report, from counter differences with the previous one."""

    stall_frac: float | None
    """Share of time some task stalled on memory (PSI some), 0..1; None: unknown."""
    refault_pps: float | None
    """Workingset refaults per second; None: unknown."""
    swapin_pps: float | None
    """Pages swapped in per second; None: unknown."""
    growth_kb_s: float | None = None
    """How fast the guest's demand (used memory plus active cache) grew, KiB/s;
    negative when it fell; None: unknown."""


class Figures(NamedTuple):
    """A report's figures, sanitised: every size a KiB int in [0, 16 TiB].

    Immutable; a NamedTuple rather than a dataclass because one is built per
    VM and report, and the control law has a budget of 20 ms per 1,000 VMs.
    """

    seq: int
    uptime_s: float
    mem_total_kb: int
    mem_free_kb: int
    mem_available_kb: int
    cached_kb: int
    committed_as_kb: int
    totalreserve_kb: int
    swap_used_kb: int
    pswpin: int
    frontswap_kb: int | None
    psi_some_avg10: float | None
    psi_some_total_us: int | None
    refaults: int | None
    balloon_current_kb: int | None
    active_file_kb: int | None = None

    @property
    def used_kb(self) -> int:
        """What the guest cannot give back without swapping: MemTotal - MemAvailable."""
        return self.mem_total_kb - self.mem_available_kb

    @property
    def demand_kb(self) -> int:
        """What the guest uses now: ``used_kb`` plus its active page cache
        (``Active(file)``, capped at the page cache; 0 when not reported)."""
        active = self.active_file_kb
        if active is None:
            return self.mem_total_kb - self.mem_available_kb
        return self.mem_total_kb - self.mem_available_kb + min(active, self.cached_kb)


def _int(value: object, high: int = MAX_MEMORY_KB) -> int:
    if type(value) is int:  # the common case, checked first for speed
        return value if 0 <= value <= high else min(max(value, 0), high)
    if isinstance(value, bool):
        raise TypeError("bool is not a number here")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    else:
        raise TypeError(f"not a finite number: {value!r}")
    return min(max(number, 0), high)


def _opt_int(value: object, high: int = MAX_MEMORY_KB) -> int | None:
    return None if value is None else _int(value, high)


def _opt_pct(value: object) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    return min(max(number, 0.0), 100.0)


_MAX_COUNTER: Final = (1 << 63) - 1


def _plain(value: object, high: int) -> bool:
    """None, or an int already in [0, high] (what the strict decoder yields)."""
    return value is None or (type(value) is int and 0 <= value <= high)


def figures_of(report: Report) -> Figures | None:
    """Sanitise a report; None when it cannot be used (e.g. no MemTotal).

    Reports from ``agents.schema.decode_report`` are already strict, so they
    take a fast path; anything else (the simulator's, a test's, a hostile
    object) is clamped field by field.
    """
    r = report
    sizes = (
        r.mem_total_kb, r.mem_free_kb, r.mem_available_kb, r.cached_kb, r.committed_as_kb,
        r.totalreserve_kb, r.swap_total_kb, r.swap_free_kb,
    )
    if (
        set(map(type, sizes)) == {int}
        and min(sizes) >= 0
        and max(sizes) <= MAX_MEMORY_KB
        and r.mem_total_kb >= PAGE_KB
        and r.mem_free_kb <= r.mem_total_kb
        and r.mem_available_kb <= r.mem_total_kb
        and r.cached_kb <= r.mem_total_kb
        and r.swap_free_kb <= r.swap_total_kb
        and type(r.uptime_s) is float
        and 0.0 <= r.uptime_s <= 1e12
        and _plain(r.seq, _MAX_COUNTER)
        and r.seq is not None
        and _plain(r.pswpin, _MAX_COUNTER)
        and r.pswpin is not None
        and _plain(r.frontswap_kb, MAX_MEMORY_KB)
        and _plain(r.psi_some_total_us, _MAX_COUNTER)
        and _plain(r.refault_anon, _MAX_COUNTER)
        and _plain(r.refault_file, _MAX_COUNTER)
        and _plain(r.balloon_current_kb, MAX_MEMORY_KB)
        and (r.active_file_kb is None
             or (type(r.active_file_kb) is int and 0 <= r.active_file_kb <= r.mem_total_kb))
        and (r.psi_some_avg10 is None or (type(r.psi_some_avg10) is float
                                          and 0.0 <= r.psi_some_avg10 <= 100.0))
    ):
        anon, file = r.refault_anon, r.refault_file
        refaults = None if anon is None and file is None else (anon or 0) + (file or 0)
        return Figures(
            r.seq, r.uptime_s, r.mem_total_kb, r.mem_free_kb, r.mem_available_kb, r.cached_kb,
            r.committed_as_kb, r.totalreserve_kb, r.swap_total_kb - r.swap_free_kb, r.pswpin,
            r.frontswap_kb, r.psi_some_avg10, r.psi_some_total_us, refaults,
            r.balloon_current_kb, r.active_file_kb,
        )
    return _figures_clamped(report)


def _figures_clamped(report: Report) -> Figures | None:
    try:
        total = _int(report.mem_total_kb)
        if total < PAGE_KB:
            return None
        refault_parts = [
            _opt_int(report.refault_anon, _MAX_COUNTER),
            _opt_int(report.refault_file, _MAX_COUNTER),
        ]
        known = [part for part in refault_parts if part is not None]
        uptime = report.uptime_s
        if isinstance(uptime, bool) or not isinstance(uptime, int | float):
            return None
        uptime_s = float(uptime)
        if not math.isfinite(uptime_s):
            return None
        swap_total = _int(report.swap_total_kb)
        return Figures(
            seq=_int(report.seq, _MAX_COUNTER),
            uptime_s=max(uptime_s, 0.0),
            mem_total_kb=total,
            mem_free_kb=min(_int(report.mem_free_kb), total),
            mem_available_kb=min(_int(report.mem_available_kb), total),
            cached_kb=min(_int(report.cached_kb), total),
            committed_as_kb=_int(report.committed_as_kb),
            totalreserve_kb=_int(report.totalreserve_kb),
            swap_used_kb=max(swap_total - min(_int(report.swap_free_kb), swap_total), 0),
            pswpin=_int(report.pswpin, _MAX_COUNTER),
            frontswap_kb=_opt_int(report.frontswap_kb),
            psi_some_avg10=_opt_pct(report.psi_some_avg10),
            psi_some_total_us=_opt_int(report.psi_some_total_us, _MAX_COUNTER),
            refaults=sum(known) if known else None,
            balloon_current_kb=_opt_int(report.balloon_current_kb),
            active_file_kb=_opt_int(report.active_file_kb, total),
        )
    except TypeError:
        return None


def signals_between(previous: Figures | None, current: Figures) -> Signals:
    """Pressure signals from two consecutive reports of the same guest boot.

    Rates need a positive uptime difference and counters that did not go
    backwards (a reboot resets them); otherwise only PSI avg10 is used.
    """
    avg_frac = None if current.psi_some_avg10 is None else current.psi_some_avg10 / 100.0
    if previous is None:
        return Signals(stall_frac=avg_frac, refault_pps=None, swapin_pps=None)
    dt_s = current.uptime_s - previous.uptime_s
    if not dt_s >= MIN_RATE_WINDOW_S:
        return Signals(stall_frac=avg_frac, refault_pps=None, swapin_pps=None)
    stall = avg_frac
    if (
        current.psi_some_total_us is not None
        and previous.psi_some_total_us is not None
        and current.psi_some_total_us >= previous.psi_some_total_us
    ):
        stall = min((current.psi_some_total_us - previous.psi_some_total_us) / (dt_s * 1e6), 1.0)
    refault = None
    if (
        current.refaults is not None
        and previous.refaults is not None
        and current.refaults >= previous.refaults
    ):
        refault = (current.refaults - previous.refaults) / dt_s
    swapin = None
    if current.pswpin >= previous.pswpin:
        swapin = (current.pswpin - previous.pswpin) / dt_s
    growth = None
    if (current.active_file_kb is None) == (previous.active_file_kb is None):
        growth = (current.demand_kb - previous.demand_kb) / dt_s
    return Signals(stall_frac=stall, refault_pps=refault, swapin_pps=swapin, growth_kb_s=growth)


def under_pressure(signals: Signals | None) -> bool:
    """PSI above the TMO target, or refaults or swap-ins at pressure rates."""
    if signals is None:
        return False
    return (
        (signals.stall_frac is not None and signals.stall_frac > PRESSURE_TARGET_FRAC)
        or (signals.refault_pps is not None and signals.refault_pps >= REFAULT_PRESSURE_PPS)
        or (signals.swapin_pps is not None and signals.swapin_pps >= SWAPIN_PRESSURE_PPS)
    )


def is_quiet(signals: Signals | None) -> bool:
    """PSI, refaults and swap-ins all known and near zero: safe to probe lower."""
    if signals is None:
        return False
    stall_quiet = signals.stall_frac is None or signals.stall_frac < PRESSURE_TARGET_FRAC
    has_evidence = signals.stall_frac is not None or (
        signals.refault_pps is not None and signals.swapin_pps is not None
    )
    return (
        has_evidence
        and stall_quiet
        and (signals.refault_pps is None or signals.refault_pps <= REFAULT_QUIET_PPS)
        and (signals.swapin_pps is None or signals.swapin_pps <= SWAPIN_QUIET_PPS)
    )


def pressure_grow_pages(cur: int, signals: Signals, interval_s: float) -> int:
    """How much to grow at once under pressure, pages.

    The largest of Senpai's backoff (``cur * min((stall/target/20)**2, 1)``),
    the pages the guest had to read back during one interval (refaults and
    swap-ins), and 5 % of its RAM.
    """
    ratio = 0.0
    if signals.stall_frac is not None:
        ratio = signals.stall_frac / PRESSURE_TARGET_FRAC
    if signals.refault_pps is not None:
        ratio = max(ratio, signals.refault_pps / REFAULT_PRESSURE_PPS)
    if signals.swapin_pps is not None:
        ratio = max(ratio, signals.swapin_pps / SWAPIN_PRESSURE_PPS)
    # Past ratio 20 the backoff is capped anyway; capping first avoids overflow.
    ratio = min(ratio, SENPAI_COEFF_BACKOFF)
    backoff = min((ratio / SENPAI_COEFF_BACKOFF) ** 2, SENPAI_MAX_BACKOFF)
    evidence = ((signals.refault_pps or 0.0) + (signals.swapin_pps or 0.0)) * interval_s
    grow = max(cur * backoff, evidence, cur * MIN_PRESSURE_GROW_FRAC)
    return int(min(grow, MAX_MEMORY_KB // PAGE_KB))


def probe_shrink_pages(cur: int, signals: Signals) -> int:
    """Senpai's probe: shrink ``cur * min(((target/stall)/10)**2 * 1 %, 1 %)`` pages."""
    stall = signals.stall_frac if signals.stall_frac is not None else 0.0
    if stall * SENPAI_COEFF_PROBE <= PRESSURE_TARGET_FRAC:
        adj = SENPAI_MAX_PROBE  # the probe is at its cap (and no overflow for tiny stalls)
    else:
        ratio = PRESSURE_TARGET_FRAC / stall
        adj = min((ratio / SENPAI_COEFF_PROBE) ** 2 * SENPAI_MAX_PROBE, SENPAI_MAX_PROBE)
    return int(cur * adj)


class Estimate(NamedTuple):
    """An estimator's answer, in pages of usable RAM (totalram units)."""

    goal_pages: int
    """Where the guest's MemTotal should go."""
    incremental: bool
    """The goal is already this interval's step (no hysteresis on top)."""
    pressure: bool
    """The guest shows memory pressure."""
    probing: bool = False
    """A slow pressure-free shrink (reason ``probe``)."""
    quiet: bool = False
    """The guest showed no pressure at all (the law remembers its size)."""
    core_pages: int | None = None
    """The part of the goal the guest uses now (no headroom), served first when
    the host is short; None: all of the goal."""


def committed(
    fig: Figures, *, reserve_pages: int, swap_shrink: bool, signals: Signals | None
) -> Estimate:
    """The kernel law: ``Committed_AS + totalreserve + reserved (+ frontswap pages)``."""
    frontswap = 0
    if swap_shrink and fig.frontswap_kb is not None:
        frontswap = fig.frontswap_kb // PAGE_KB
    goal = (
        fig.committed_as_kb // PAGE_KB
        + fig.totalreserve_kb // PAGE_KB
        + reserve_pages
        + frontswap
    )
    return Estimate(goal_pages=goal, incremental=False, pressure=under_pressure(signals))


def working_set(
    fig: Figures,
    *,
    reserve_pages: int,
    swap_shrink: bool,
    signals: Signals | None,
    interval_s: float,
) -> Estimate:
    """``MemTotal - MemAvailable + reserve (+ frontswap)``; at once above it on pressure."""
    frontswap = 0
    if swap_shrink and fig.frontswap_kb is not None:
        frontswap = fig.frontswap_kb // PAGE_KB
    goal = fig.used_kb // PAGE_KB + reserve_pages + frontswap
    pressure = under_pressure(signals)
    if pressure and signals is not None:
        cur = fig.mem_total_kb // PAGE_KB
        goal = max(goal, cur + pressure_grow_pages(cur, signals, interval_s))
    return Estimate(goal_pages=goal, incremental=False, pressure=pressure)


class History(NamedTuple):
    """What the ``pressure`` estimator remembers of a VM between intervals."""

    quiet_pages: int = 0
    """MemTotal (pages) at the last quiet interval: where the guest last ran
    without pressure; 0: unknown."""
    may_probe: bool = True
    """Whether probing below the current size is allowed this interval (the
    law forbids it for a while after pressure, unless the host needs memory)."""


NO_HISTORY: Final = History()


def pressure(
    fig: Figures,
    *,
    reserve_pages: int,
    swap_shrink: bool,
    signals: Signals | None,
    interval_s: float,
    history: History = NO_HISTORY,
) -> Estimate:
    """Senpai/TMO probing above a floor of what the guest uses.

    The floor is the guest's demand (``MemTotal - MemAvailable`` plus its
    active page cache, when reported), the reserve, and a ramp allowance of
    ``RAMP_INTERVALS`` intervals of growth while the demand grows; the goal
    never goes below it, and rises with it at once.

    Under pressure: if the guest already has free room for what it reads back
    (and 5 % of MemTotal), it is recovering: keep room for one more interval
    of it and give the rest of the free memory back. Otherwise grow at once to
    the last size it ran quietly at (or the current one, if larger) plus what
    it read back in one interval, at least 5 % of MemTotal.

    Otherwise: give back free memory beyond the headroom, and, when quiet and
    allowed to, probe the page cache down by Senpai's probe (1 % per interval).
    """
    cur = fig.mem_total_kb // PAGE_KB
    frontswap = 0
    if swap_shrink and fig.frontswap_kb is not None:
        frontswap = fig.frontswap_kb // PAGE_KB
    ramp = 0
    if signals is not None and signals.growth_kb_s is not None and signals.growth_kb_s > 0:
        ramp = int(RAMP_INTERVALS * signals.growth_kb_s * interval_s) // PAGE_KB
    # The core (served first when the host is short) is the working set: not
    # Active(file), which errs high, so one guest's stale cache never outranks
    # another guest's anonymous memory; cache and reserves then share by weight.
    core = fig.used_kb // PAGE_KB + frontswap + ramp
    headroom = reserve_pages + frontswap + ramp
    floor = fig.demand_kb // PAGE_KB + headroom
    if under_pressure(signals):
        assert signals is not None
        read_back = int(((signals.refault_pps or 0.0) + (signals.swapin_pps or 0.0)) * interval_s)
        step = max(read_back, int(cur * MIN_PRESSURE_GROW_FRAC))
        room = (fig.mem_free_kb - fig.totalreserve_kb) // PAGE_KB
        if room >= step:
            # Recovering, not short: the pages come back into free memory.
            # Keep room for one more interval of them; the rest of the free
            # memory goes back as when quiet.
            holds = (fig.mem_total_kb - fig.mem_free_kb) // PAGE_KB + headroom + read_back
            goal = max(min(cur, holds), floor)
        else:
            goal = max(cur, history.quiet_pages) + step
            goal = max(goal, floor)
        # A guest under pressure uses everything it asks for.
        return Estimate(goal_pages=goal, incremental=True, pressure=True, core_pages=goal)
    # Free memory beyond the headroom goes back (as fast as pacing allows).
    give_back = max(min(cur, (fig.mem_total_kb - fig.mem_free_kb) // PAGE_KB + headroom), floor)
    goal = give_back
    quiet = is_quiet(signals)
    if quiet and history.may_probe:
        assert signals is not None
        goal = max(min(goal, cur - probe_shrink_pages(cur, signals)), floor)
    return Estimate(
        goal_pages=goal, incremental=True, pressure=False, probing=goal < give_back, quiet=quiet,
        # Without Active(file) the hot cache is unknown: all of the goal is core.
        core_pages=None if fig.active_file_kb is None else core,
    )


def basic(total_kb: int, free_kb: int, *, reserve_pages: int) -> Estimate:
    """``meminfo_total - meminfo_free + reserve``: page cache counts as used."""
    used = max(total_kb - min(free_kb, total_kb), 0)
    return Estimate(
        goal_pages=used // PAGE_KB + reserve_pages, incremental=False, pressure=False
    )
