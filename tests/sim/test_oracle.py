"""The clairvoyant oracle is feasible and no feasible allocation is below it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.sim.oracle import clairvoyant_kb

UP = 100
DOWN = 100

needs = st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=80)


def feasible(alloc: list[int], need: list[int], start: int) -> bool:
    if alloc[0] != start:
        return False
    for k in range(1, len(alloc)):
        if alloc[k] < need[k]:
            return False
        if alloc[k] - alloc[k - 1] > UP or alloc[k - 1] - alloc[k] > DOWN:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(need=needs)
def test_the_oracle_is_feasible_from_a_high_start(need: list[int]) -> None:
    start = max(need)
    alloc = clairvoyant_kb(need, dt_s=1.0, up_kb_s=UP, down_kb_s=DOWN, start_kb=start)
    assert feasible(alloc, need, start)


@settings(max_examples=200, deadline=None)
@given(need=needs, extra=st.lists(st.integers(min_value=0, max_value=3000), min_size=80))
def test_every_feasible_allocation_is_at_or_above_the_oracle(
    need: list[int], extra: list[int]
) -> None:
    start = 6000
    oracle = clairvoyant_kb(need, dt_s=1.0, up_kb_s=UP, down_kb_s=DOWN, start_kb=start)
    # Any feasible allocation for a larger need is feasible for this one; the
    # oracle of that larger need stands for an arbitrary feasible controller.
    bigger = [n + e for n, e in zip(need, extra, strict=False)]
    other = clairvoyant_kb(bigger, dt_s=1.0, up_kb_s=UP, down_kb_s=DOWN, start_kb=start)
    assert feasible(other, need, start)
    assert all(o >= a for o, a in zip(other, oracle, strict=True))
    assert sum(other) >= sum(oracle)
    # Holding the start forever (static) is feasible too, and never below.
    assert all(start >= a for a in oracle)


@settings(max_examples=200, deadline=None)
@given(need=needs)
def test_no_point_of_the_oracle_can_be_lowered(need: list[int]) -> None:
    start = max(need) + 500
    alloc = clairvoyant_kb(need, dt_s=1.0, up_kb_s=UP, down_kb_s=DOWN, start_kb=start)
    for k in range(1, len(alloc)):
        lowered = [*alloc[:k], alloc[k] - 1, *alloc[k + 1 :]]
        assert not feasible(lowered, need, start)


def test_the_oracle_grows_ahead_of_a_step_and_shrinks_at_the_balloon_rate() -> None:
    need = [0] * 10 + [1000] * 5 + [0] * 20
    alloc = clairvoyant_kb(need, dt_s=1.0, up_kb_s=UP, down_kb_s=DOWN, start_kb=0)
    # It starts rising ten steps before the need arrives, at 100 per step ...
    assert alloc[:2] == [0, 100]
    assert alloc[10] == 1000
    # ... holds, then returns at the shrink rate.
    assert alloc[14] == 1000 and alloc[15] == 900 and alloc[24] == 0
