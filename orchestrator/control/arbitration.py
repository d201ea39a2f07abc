"""Host arbitration: share a memory budget by weighted water-filling.

Every flexible VM first gets its minimum; reservations for starting VMs are
served next; what remains is shared by weight, never giving a VM more than it
wants. With weights w and a water level L, VM i gets
``min_i + min(want_i - min_i, w_i * L)``, L chosen so the shares fill the
budget. Sorting by ``(want - min) / weight`` makes this one O(n log n) pass;
the arithmetic is integer KiB, rounded down, so the shares never exceed the
budget.

A claim may name a core between its minimum and its want: the memory the VM
uses now, as opposed to headroom for what it might use next. When the host is
short, the cores are filled first (by the same water-filling) and headroom
only from what is left, so one VM's reserve never costs another VM its
working set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class Claim(NamedTuple):
    """One flexible VM's claim on the budget."""

    lo_kb: int
    """What it must get (its minimum), KiB."""
    hi_kb: int
    """What it wants (>= lo_kb), KiB."""
    weight: int
    """Its weight (>= 1)."""
    core_kb: int | None = None
    """What it uses now, served before any VM's headroom above its core
    (clamped into [lo_kb, hi_kb]); None: all of ``hi_kb`` is core."""


@dataclass(frozen=True, slots=True)
class Sharing:
    """The outcome of sharing a budget."""

    grants_kb: tuple[int, ...]
    """Per claim, in the order given, KiB."""
    reservations_kb: tuple[int, ...]
    """Per reservation, in the order given, KiB."""
    short: bool
    """Not every claim and reservation got what it asked for."""
    overcommitted: bool
    """The budget does not even cover the minimums."""


def share(budget_kb: int, claims: Sequence[Claim], reservations_kb: Sequence[int] = ()) -> Sharing:
    """Share ``budget_kb`` among ``claims`` after serving ``reservations_kb``."""
    lo_total = sum(c.lo_kb for c in claims)
    hi_total = sum(c.hi_kb for c in claims)
    room = budget_kb - lo_total
    if room < 0:
        return Sharing(
            grants_kb=tuple(c.lo_kb for c in claims),
            reservations_kb=tuple(0 for _ in reservations_kb),
            short=True,
            overcommitted=True,
        )
    granted_res = []
    for request in reservations_kb:
        got = min(max(request, 0), room)
        granted_res.append(got)
        room -= got
    res_short = any(g < r for g, r in zip(granted_res, reservations_kb, strict=True))
    if hi_total - lo_total <= room:
        return Sharing(
            grants_kb=tuple(c.hi_kb for c in claims),
            reservations_kb=tuple(granted_res),
            short=res_short,
            overcommitted=False,
        )
    cores = [
        c.hi_kb if c.core_kb is None else min(max(c.core_kb, c.lo_kb), c.hi_kb) for c in claims
    ]
    core_room = sum(cores) - lo_total
    if core_room >= room:
        # Not even every core fits: share the room up to the cores.
        extra = water_fill(room, [(k - c.lo_kb, c.weight) for c, k in zip(claims, cores,
                                                                           strict=True)])
        grants = [c.lo_kb + e for c, e in zip(claims, extra, strict=True)]
    else:
        # Every core fits; the rest is headroom, shared the same way.
        extra = water_fill(room - core_room, [(c.hi_kb - k, c.weight)
                                              for c, k in zip(claims, cores, strict=True)])
        grants = [k + e for k, e in zip(cores, extra, strict=True)]
    return Sharing(
        grants_kb=tuple(grants),
        reservations_kb=tuple(granted_res),
        short=True,
        overcommitted=False,
    )


def water_fill(room_kb: int, heads: Sequence[tuple[int, int]]) -> list[int]:
    """Weighted water-filling of ``room_kb`` over ``(headroom_kb, weight)`` pairs.

    Returns per pair an amount in ``[0, headroom]``, together at most
    ``room_kb``. Pairs whose headroom is under their weighted share get all
    of it; the others share what is left in proportion to their weights.
    """
    out = [0] * len(heads)
    order = sorted(range(len(heads)), key=lambda i: (heads[i][0] / heads[i][1], i))
    room = max(room_kb, 0)
    weight_left = sum(w for _, w in heads)
    for position, index in enumerate(order):
        head, weight = heads[index]
        # Satisfiable at the current level: head / weight <= room / weight_left.
        if head * weight_left <= room * weight:
            out[index] = head
            room -= head
            weight_left -= weight
            continue
        for rest in order[position:]:
            rest_head, rest_weight = heads[rest]
            out[rest] = min(rest_head, room * rest_weight // weight_left)
        break
    return out
