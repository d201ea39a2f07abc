"""Straight transcriptions of the pseudo-code in KERNEL-LAW.md, for the tests.

Written from the document, line by line, in pages, without using anything
from ``orchestrator.control``; the golden tests compare the port against
these. Do not "improve" them: their value is that they read like the text.
"""

from __future__ import annotations


def MB(x: int) -> int:
    """x MiB in 4 KiB pages."""
    return x * 1024 * 1024 // 4096


def selfballoon_tick(
    *,
    totalram: int,
    committed: int,
    totalreserve: int,
    reserved_mb: int,
    max_pfn: int,
    balloon_current: int,
    min_usable_mb: int = 0,
    downhysteresis: int = 8,
    uphysteresis: int = 1,
    frontswap: int = 0,
) -> int:
    """One tick of self-ballooning; returns the balloon target in pages."""
    cur = totalram
    goal = committed + totalreserve + MB(reserved_mb) + frontswap

    if cur > goal:
        tgt = cur - (cur - goal) // downhysteresis
    elif cur < goal:
        tgt = cur + (goal - cur) // uphysteresis
    else:
        tgt = cur

    useful = max_pfn - totalreserve
    if min_usable_mb != 0:
        floor = totalreserve + MB(min_usable_mb)
    elif useful < MB(16):
        floor = max_pfn
    elif useful < MB(64):
        floor = totalreserve + MB(16) + (useful - MB(16)) // 2
    elif useful < MB(512):
        floor = totalreserve + MB(40) + (useful - MB(40)) // 8
    else:
        floor = totalreserve + MB(99) + (useful - MB(99)) // 32
    tgt = max(tgt, floor)

    return tgt + (balloon_current - totalram)


def floor_pages(*, max_pfn: int, totalreserve: int, min_usable_mb: int = 0) -> int:
    """The floor part of the same pseudo-code."""
    useful = max_pfn - totalreserve
    if min_usable_mb != 0:
        return totalreserve + MB(min_usable_mb)
    if useful < MB(16):
        return max_pfn
    if useful < MB(64):
        return totalreserve + MB(16) + (useful - MB(16)) // 2
    if useful < MB(512):
        return totalreserve + MB(40) + (useful - MB(40)) // 8
    return totalreserve + MB(99) + (useful - MB(99)) // 32


class FrontswapReference:
    """Frontswap self-shrinking with its two statics, as in the document."""

    def __init__(self, *, hysteresis: int = 20, inertia: int = 3) -> None:
        self.hysteresis = hysteresis
        self.inertia = inertia
        self.cur = 0
        self.counter = 0

    def tick(self, frontswap_pages: int) -> int | None:
        """Returns the shrink target in pages, or None when nothing is shrunk."""
        last = self.cur
        self.cur = frontswap_pages
        if self.cur == 0 or self.cur > last:
            self.counter = self.inertia
            return None
        if self.counter != 0:
            self.counter -= 1
            if self.counter != 0:
                return None
        tgt = 0 if self.cur <= self.hysteresis else self.cur - self.cur // self.hysteresis
        self.counter = self.inertia
        return tgt
