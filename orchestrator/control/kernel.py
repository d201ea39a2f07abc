"""Exact ports of the two Linux ``xen-selfballoon`` laws, in 4 KiB pages.

Ballast moves the in-guest self-ballooning law into dom0 (KERNEL-LAW.md). To
be able to claim "the kernel law" the arithmetic here is the kernel's own:
whole pages, integer (floor) division, the piecewise floor curve with its
jumps, and the conversion from the guest's usable RAM (``totalram``, what
``MemTotal`` shows) to the balloon's reservation units. Every constant names
its origin. Nothing here knows about policy, hosts or time.

The kernel's variables are unsigned longs; Python integers never wrap, so a
hostile input that would underflow in C (``totalreserve > max_pfn``) lands in
the "do not balloon" branch here instead of a huge unsigned value.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# x86 PAGE_SIZE: 4 KiB. xenstore and /proc/meminfo speak KiB, the law pages.
PAGE_KB: Final = 4
# MB2PAGES(mb) = mb << (20 - PAGE_SHIFT) in xen-selfballoon.c: 256 pages per MiB.
PAGES_PER_MB: Final = 1024 // PAGE_KB

# xen-selfballoon.c defaults.
SELFBALLOON_INTERVAL_S: Final = 5  # selfballoon_interval (the comment says HZ; it is seconds)
SELFBALLOON_DOWNHYSTERESIS: Final = 8  # selfballoon_downhysteresis
SELFBALLOON_UPHYSTERESIS: Final = 1  # selfballoon_uphysteresis
SELFBALLOON_MIN_USABLE_MB: Final = 0  # selfballoon_min_usable_mb: 0 = piecewise curve
# selfballoon_reserved_mb is set at init to 10 % of the RAM the guest booted with
# (added after OOM reports: Committed_AS misses kernel memory).
SELFBALLOON_RESERVED_PERCENT: Final = 10
# Frontswap self-shrinking defaults (xen-selfballoon.c).
FRONTSWAP_HYSTERESIS: Final = 20  # frontswap_hysteresis: shed 1/20 per shrink
FRONTSWAP_INERTIA: Final = 3  # frontswap_inertia: intervals without growth before a shrink

# Breakpoints of the kernel's piecewise floor, in MiB of "useful" memory.
_FLOOR_NO_BALLOON_MB: Final = 16  # under 16 MiB: not worth ballooning
_FLOOR_HALF_MB: Final = 64  # under 64 MiB: 16 MiB + half of the rest
_FLOOR_EIGHTH_MB: Final = 512  # under 512 MiB: 40 MiB + an eighth of (useful - 40 MiB)
_FLOOR_EIGHTH_BASE_MB: Final = 40
_FLOOR_TAIL_BASE_MB: Final = 99  # otherwise: 99 MiB + 1/32 of (useful - 99 MiB)


def mb_to_pages(mb: int) -> int:
    """``MB2PAGES``: whole MiB to pages."""
    return mb * PAGES_PER_MB


def pages_to_mb(pages: int) -> int:
    """``PAGES2MB``: pages to whole MiB, rounded down."""
    return pages // PAGES_PER_MB


def kb_to_pages(kb: int) -> int:
    """KiB to whole pages, rounded down (a partial page is not a page)."""
    return kb // PAGE_KB


def pages_to_kb(pages: int) -> int:
    """Pages to KiB."""
    return pages * PAGE_KB


def default_reserved_mb(totalram_pages: int) -> int:
    """The kernel's init-time ``selfballoon_reserved_mb``: 10 % of RAM, whole MiB.

    ``reserve_pages = totalram_pages() / 10; reserved_mb = PAGES2MB(reserve_pages)``.
    """
    return pages_to_mb(totalram_pages * SELFBALLOON_RESERVED_PERCENT // 100)


def selfballoon_goal_pages(
    *, committed: int, totalreserve: int, reserved_mb: int, frontswap: int = 0
) -> int:
    """``goal = Committed_AS + totalreserve + MB(reserved_mb) (+ frontswap pages)``.

    Pass ``frontswap`` only when frontswap self-shrinking is on, as the kernel
    does, so the pages it shrinks have room to come back.
    """
    return committed + totalreserve + mb_to_pages(reserved_mb) + frontswap


def selfballoon_step_pages(
    *,
    cur: int,
    goal: int,
    downhysteresis: int = SELFBALLOON_DOWNHYSTERESIS,
    uphysteresis: int = SELFBALLOON_UPHYSTERESIS,
) -> int:
    """One step of the law from ``cur`` towards ``goal``, before the floor.

    Above the goal the target falls by ``(cur - goal) // downhysteresis``; a
    gap smaller than ``downhysteresis`` pages is therefore never closed. Below
    it the target rises by ``(goal - cur) // uphysteresis``: with the default 1
    the goal is requested in one step.
    """
    if downhysteresis < 1 or uphysteresis < 1:
        # The kernel's sysfs stores refuse 0 ("fix potential divides-by-zero").
        raise ValueError("hysteresis must be at least 1")
    if cur > goal:
        return cur - (cur - goal) // downhysteresis
    if cur < goal:
        return cur + (goal - cur) // uphysteresis
    return cur


def selfballoon_floor_pages(*, max_pfn: int, totalreserve: int, min_usable_mb: int = 0) -> int:
    """The floor the target is never allowed under.

    ``min_usable_mb`` when set; otherwise the kernel's piecewise curve over
    ``useful = max_pfn - totalreserve`` ("piecewise linear function ending in
    ~3% slope"). The floor jumps up by 3 MiB at 64 MiB and by about 12.9 MiB
    at 512 MiB of useful memory.
    """
    if min_usable_mb != 0:
        return totalreserve + mb_to_pages(min_usable_mb)
    useful = max_pfn - totalreserve
    if useful < mb_to_pages(_FLOOR_NO_BALLOON_MB):
        return max_pfn  # not worth ballooning
    if useful < mb_to_pages(_FLOOR_HALF_MB):
        return (
            totalreserve
            + mb_to_pages(_FLOOR_NO_BALLOON_MB)
            + ((useful - mb_to_pages(_FLOOR_NO_BALLOON_MB)) >> 1)
        )
    if useful < mb_to_pages(_FLOOR_EIGHTH_MB):
        return (
            totalreserve
            + mb_to_pages(_FLOOR_EIGHTH_BASE_MB)
            + ((useful - mb_to_pages(_FLOOR_EIGHTH_BASE_MB)) >> 3)
        )
    return (
        totalreserve
        + mb_to_pages(_FLOOR_TAIL_BASE_MB)
        + ((useful - mb_to_pages(_FLOOR_TAIL_BASE_MB)) >> 5)
    )


def to_balloon_target_pages(*, tgt: int, balloon_current: int, totalram: int) -> int:
    """Convert a target in ``totalram`` units to the balloon's reservation units.

    ``balloon_set_new_target(tgt + balloon_stats.current_pages - totalram_pages())``:
    the guest holds ``balloon_current - totalram`` pages that ``MemTotal`` never
    shows (kernel image, memmap, reserved ranges); they are added back so the
    guest ends with ``tgt`` pages of usable RAM.
    """
    return tgt + (balloon_current - totalram)


def selfballoon_target_pages(
    *,
    totalram: int,
    balloon_current: int,
    committed: int,
    totalreserve: int,
    reserved_mb: int,
    max_pfn: int,
    min_usable_mb: int = SELFBALLOON_MIN_USABLE_MB,
    downhysteresis: int = SELFBALLOON_DOWNHYSTERESIS,
    uphysteresis: int = SELFBALLOON_UPHYSTERESIS,
    frontswap: int = 0,
) -> int:
    """One whole tick of ``selfballoon_process``: the new balloon target, pages."""
    goal = selfballoon_goal_pages(
        committed=committed, totalreserve=totalreserve, reserved_mb=reserved_mb,
        frontswap=frontswap,
    )
    tgt = selfballoon_step_pages(
        cur=totalram, goal=goal, downhysteresis=downhysteresis, uphysteresis=uphysteresis
    )
    floor = selfballoon_floor_pages(
        max_pfn=max_pfn, totalreserve=totalreserve, min_usable_mb=min_usable_mb
    )
    tgt = max(tgt, floor)
    return to_balloon_target_pages(tgt=tgt, balloon_current=balloon_current, totalram=totalram)


class FrontswapState(NamedTuple):
    """What ``frontswap_selfshrink`` keeps between ticks (its two statics)."""

    last_pages: int = 0
    """Frontswap pages seen at the previous tick."""
    counter: int = 0
    """``frontswap_inertia_counter``: ticks left before the next shrink."""


def frontswap_tick(
    state: FrontswapState,
    cur_pages: int,
    *,
    hysteresis: int = FRONTSWAP_HYSTERESIS,
    inertia: int = FRONTSWAP_INERTIA,
) -> tuple[FrontswapState, int | None]:
    """One tick of frontswap self-shrinking: the next state and a shrink target.

    Returns ``(state, None)`` when nothing is to be shrunk this tick, else the
    number of pages to shrink frontswap to. While the pages are zero or still
    growing the counter is re-armed to ``inertia``; after ``inertia`` ticks
    without growth the pages shrink to ``cur - cur // hysteresis`` (to 0 when
    ``hysteresis`` pages or fewer remain), and the counter is re-armed (the
    later kernels' behaviour), so shrinks repeat every ``inertia`` ticks.
    """
    if hysteresis < 1 or inertia < 0:
        raise ValueError("frontswap hysteresis must be >= 1 and inertia >= 0")
    if cur_pages <= 0 or cur_pages > state.last_pages:
        return FrontswapState(max(cur_pages, 0), inertia), None
    counter = state.counter
    if counter != 0:
        counter -= 1
        if counter != 0:
            return FrontswapState(cur_pages, counter), None
    target = 0 if cur_pages <= hysteresis else cur_pages - cur_pages // hysteresis
    return FrontswapState(cur_pages, inertia), target
