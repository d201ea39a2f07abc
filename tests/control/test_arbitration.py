"""Weighted water-filling against an independent exact reference."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.control.arbitration import Claim, share, water_fill


def reference_level(room: int, heads: list[tuple[int, int]]) -> Fraction:
    """The water level L with sum(min(head, w*L)) == room, found by exact bisection."""
    lo, hi = Fraction(0), Fraction(max(h for h, _ in heads) + 1)
    for _ in range(80):
        mid = (lo + hi) / 2
        if sum(min(Fraction(h), w * mid) for h, w in heads) > room:
            hi = mid
        else:
            lo = mid
    return lo


heads_st = st.lists(
    st.tuples(st.integers(0, 1 << 30), st.integers(1, 65535)), min_size=1, max_size=40
)


@given(heads_st, st.integers(0, 1 << 33))
def test_water_fill_matches_the_exact_level(heads: list[tuple[int, int]], room: int) -> None:
    out = water_fill(room, heads)
    assert all(0 <= got <= head for got, (head, _) in zip(out, heads, strict=True))
    assert sum(out) <= room
    if sum(h for h, _ in heads) <= room:
        assert out == [h for h, _ in heads]
        return
    level = reference_level(room, heads)
    for got, (head, weight) in zip(out, heads, strict=True):
        ideal = min(Fraction(head), weight * level)
        assert abs(got - ideal) < 2  # integer rounding only
    # Nothing is wasted beyond one KiB per claim of rounding.
    assert sum(out) >= room - len(heads)


def test_weights_share_in_proportion() -> None:
    assert water_fill(300, [(1000, 1), (1000, 2)]) == [100, 200]


def test_a_small_want_is_met_and_the_rest_shared() -> None:
    assert water_fill(300, [(50, 1), (1000, 1), (1000, 1)]) == [50, 125, 125]


def test_minimums_first_then_reservations_then_weights() -> None:
    claims = [Claim(lo_kb=100, hi_kb=1000, weight=1), Claim(lo_kb=200, hi_kb=1000, weight=3)]
    result = share(1000, claims, reservations_kb=[300])
    assert result.reservations_kb == (300,)
    # 1000 - 300 (mins) - 300 (reservation) = 400 shared 1:3 above the mins.
    assert result.grants_kb == (200, 500)
    assert result.short and not result.overcommitted


def test_a_reservation_larger_than_the_room_gets_what_is_left() -> None:
    claims = [Claim(lo_kb=100, hi_kb=1000, weight=1)]
    result = share(500, claims, reservations_kb=[300, 300])
    assert result.reservations_kb == (300, 100)
    assert result.grants_kb == (100,)
    assert result.short


def test_overcommitted_gives_minimums_and_no_reservation() -> None:
    claims = [Claim(lo_kb=600, hi_kb=1000, weight=1), Claim(lo_kb=600, hi_kb=900, weight=1)]
    result = share(1000, claims, reservations_kb=[10])
    assert result.grants_kb == (600, 600)
    assert result.reservations_kb == (0,)
    assert result.overcommitted


def test_cores_are_served_before_anyone_s_headroom() -> None:
    # A needs 800 of its 1000, B needs 200 of its 1000 (the rest is headroom).
    claims = [Claim(lo_kb=0, hi_kb=1000, weight=1, core_kb=800),
              Claim(lo_kb=0, hi_kb=1000, weight=1, core_kb=200)]
    # Without cores an even split would leave A 300 short of what it uses.
    assert share(1000, [c._replace(core_kb=None) for c in claims]).grants_kb == (500, 500)
    assert share(1000, claims).grants_kb == (800, 200)
    # Room beyond the cores is headroom, shared by weight as before.
    assert share(1400, claims).grants_kb == (1000, 400)
    # Not even the cores fit: they are shared like wants were.
    assert share(600, claims).grants_kb == (400, 200)


def test_a_core_outside_the_claim_is_clamped_into_it() -> None:
    wild = [Claim(lo_kb=300, hi_kb=600, weight=1, core_kb=5000),
            Claim(lo_kb=300, hi_kb=600, weight=1, core_kb=-7)]
    assert share(900, wild).grants_kb == (600, 300)


@given(
    st.lists(
        st.tuples(st.integers(0, 1 << 26), st.integers(0, 1 << 26), st.integers(1, 1000),
                  st.none() | st.integers(-(1 << 20), 1 << 27)),
        max_size=30,
    ),
    st.integers(-(1 << 28), 1 << 30),
    st.lists(st.integers(0, 1 << 27), max_size=3),
)
def test_share_respects_bounds_and_budget(
    raw: list[tuple[int, int, int, int | None]], budget: int, reservations: list[int]
) -> None:
    claims = [Claim(lo_kb=min(a, b), hi_kb=max(a, b), weight=w, core_kb=c) for a, b, w, c in raw]
    result = share(budget, claims, reservations)
    room = budget - sum(c.lo_kb for c in claims) - sum(result.reservations_kb)
    cores = [min(max(c.core_kb if c.core_kb is not None else c.hi_kb, c.lo_kb), c.hi_kb)
             for c in claims]
    if room >= sum(cores) - sum(c.lo_kb for c in claims):
        # Every core fits: every claim gets at least its core.
        assert all(got >= core for got, core in zip(result.grants_kb, cores, strict=True))
    else:
        # Some core does not fit: nobody gets headroom beyond its core.
        assert all(got <= core for got, core in zip(result.grants_kb, cores, strict=True))
    for got, claim in zip(result.grants_kb, claims, strict=True):
        assert claim.lo_kb <= got <= claim.hi_kb
    assert all(0 <= g <= r for g, r in zip(result.reservations_kb, reservations, strict=True))
    if sum(c.lo_kb for c in claims) <= budget:
        assert sum(result.grants_kb) + sum(result.reservations_kb) <= budget
        assert not result.overcommitted
    else:
        assert result.overcommitted
