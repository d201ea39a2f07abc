"""The policy model: validation messages, round trips, partial changes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.control import (
    Estimator,
    HostPolicy,
    Mode,
    Policy,
    PolicyChange,
    PolicyContext,
    PolicyError,
    VmDefaults,
    VmFacts,
    VmPolicy,
    apply_change,
    resolve,
    validate,
)
from orchestrator.control.policy import kernel_floor_kb, kernel_reserve_kb
from orchestrator.errors import UsageError
from tests.control.helpers import GiB, MiB

WEB = "11111111-1111-1111-1111-111111111111"
DB = "22222222-2222-2222-2222-222222222222"
CONTEXT = PolicyContext(
    vms={
        WEB: VmFacts(name="web", static_max_kb=4 * GiB),
        DB: VmFacts(name="db", static_max_kb=8 * GiB),
    },
    capacity_kb=10 * GiB,
)


def change(vm: str | None = WEB, unset: tuple[str, ...] = (), **assign: Any) -> PolicyChange:
    return PolicyChange(vm=vm, set=assign, unset=unset)


def test_policy_error_is_a_usage_error() -> None:
    assert issubclass(PolicyError, UsageError)


def test_set_with_operator_strings() -> None:
    policy = apply_change(
        Policy(), change(min_kb="512M", max_kb="2G", weight="300", mode="fixed",
                         target_kb="1G", estimator="working-set", swap_shrink="off"), CONTEXT,
    )
    vm = policy.vm(WEB)
    assert vm == VmPolicy(
        min_kb=512 * MiB, max_kb=2 * GiB, weight=300, mode=Mode.FIXED, target_kb=1 * GiB,
        estimator=Estimator.WORKING_SET, swap_shrink=False,
    )


def test_unset_returns_to_the_default_and_drops_empty_vms() -> None:
    policy = apply_change(Policy(), change(weight=10), CONTEXT)
    assert policy.vm(WEB).weight == 10
    policy = apply_change(policy, change(unset=("weight",)), CONTEXT)
    assert policy.vm(WEB) == VmPolicy()
    assert WEB not in policy.vms


def test_apply_change_leaves_the_original_alone() -> None:
    original = Policy()
    apply_change(original, change(weight=10))
    assert original == Policy()


@pytest.mark.parametrize(
    ("assign", "fragment"),
    [
        ({"min_kb": "3G", "max_kb": "2G"}, "min 3G is above max 2G; lower --min"),
        ({"mode": "fixed"}, "mode fixed needs a target; add --target"),
        ({"mode": "fixed", "target_kb": "3G", "max_kb": "2G"}, "target 3G is above max 2G"),
        ({"target_kb": "100M", "min_kb": "200M"}, "target 100M is below min 200M"),
        ({"max_kb": "8G"}, "max 8G is above its static-max 4G; use --max 4G or less"),
        ({"min_kb": "5G"}, "min 5G is above its static-max"),
        ({"weight": 0}, "weight must be a whole number from 1 to 65535"),
        ({"down_hysteresis": 0}, "down-hysteresis must be a whole number"),
        # Unicode digits pass str.isdigit() but not int(): refused, not a crash.
        ({"down_hysteresis": "\u00b2"}, "down-hysteresis must be a whole number"),
        ({"mode": "sometimes"}, "mode must be one of auto, fixed, off"),
        ({"estimator": "magic"}, "estimator must be one of committed"),
        ({"min_kb": "lots"}, "invalid size 'lots'"),
        ({"min_kb": -5}, "min must be between 0 and 16T"),
        ({"swap_shrink": "maybe"}, "swap-shrink must be true or false"),
        ({"colour": "blue"}, "unknown VM policy field 'colour'"),
        ({"fallback_kb": "3G", "max_kb": "2G"}, "fallback 3G is above max 2G"),
    ],
)
def test_impossible_vm_changes_say_what_to_change(assign: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        apply_change(Policy(), PolicyChange(vm=WEB, set=assign), CONTEXT)
    assert fragment in str(info.value)


def test_minimums_the_host_cannot_honour_are_refused_with_the_largest_named() -> None:
    policy = apply_change(Policy(), change(min_kb="3G"), CONTEXT)
    # 3G + 7G is exactly the 10G the host can give: accepted.
    apply_change(policy, change(vm=DB, min_kb="7G"), CONTEXT)
    # One KiB more is not.
    with pytest.raises(PolicyError) as info:
        apply_change(policy, change(vm=DB, min_kb=7 * GiB + 1), CONTEXT)
    message = str(info.value)
    assert "the minimums of all VMs add up to" in message
    assert "at most 10G" in message
    assert "db 7.0G" in message and "web 3G" in message
    assert "lower --min" in message


def test_fixed_targets_count_as_minimums_for_the_host() -> None:
    policy = apply_change(Policy(), change(vm=DB, mode="fixed", target_kb="8G"), CONTEXT)
    with pytest.raises(PolicyError, match="add up to"):
        apply_change(policy, change(min_kb="2100M"), CONTEXT)


def test_default_minimum_is_the_kernel_floor_and_counts_for_capacity() -> None:
    small = PolicyContext(vms=CONTEXT.vms, capacity_kb=100 * MiB)
    with pytest.raises(PolicyError, match="add up to"):
        validate(Policy(), small)
    expected = kernel_floor_kb(4 * GiB) + kernel_floor_kb(8 * GiB)
    validate(Policy(), PolicyContext(vms=CONTEXT.vms, capacity_kb=expected))


@pytest.mark.parametrize(
    ("assign", "fragment"),
    [
        ({"interval_s": 0}, "interval must be more than 0"),
        ({"stale_s": "2s"}, "stale (2s) is shorter than the interval"),
        ({"dead_s": "30s"}, "dead (30s) must be longer than stale (60s)"),
        ({"defaults.mode": "fixed"}, "the default mode cannot be fixed"),
        ({"defaults.min_kb": "2G", "defaults.max_kb": "1G"}, "min 2G is above max 1G"),
        ({"defaults.weight": None}, "give a value for default weight"),
        ({"paused": "perhaps"}, "paused must be true or false"),
        ({"dom0_reserve_kb": "1T"}, "the minimums of all VMs add up to"),
        ({"stale": 5}, "unknown host policy field 'stale'"),
    ],
)
def test_impossible_host_changes_say_what_to_change(assign: dict[str, Any], fragment: str) -> None:
    context = PolicyContext(vms=CONTEXT.vms, capacity_kb=None)
    if "dom0_reserve_kb" in assign:
        # Capacity shrinks with the reserve; the caller recomputes it.
        context = PolicyContext(vms=CONTEXT.vms, capacity_kb=10 * GiB - 1024**3)
    with pytest.raises(PolicyError) as info:
        apply_change(Policy(), PolicyChange(vm=None, set=assign), context)
    assert fragment in str(info.value)


def test_host_changes_and_unsets() -> None:
    policy = apply_change(
        Policy(),
        PolicyChange(vm=None, set={
            "paused": "yes", "interval_s": "10s", "stale_s": "2m",
            "defaults.estimator": "committed", "defaults.max_shrink_kb": "1G",
        }),
    )
    assert policy.host.paused is True
    assert policy.host.interval_s == 10.0
    assert policy.host.stale_s == 120.0
    assert policy.host.defaults.estimator is Estimator.COMMITTED
    assert policy.host.defaults.max_shrink_kb == 1 * GiB
    restored = apply_change(
        policy,
        change(vm=None, unset=("paused", "interval_s", "stale_s", "defaults.estimator",
                               "defaults.max_shrink_kb")),
    )
    assert restored == Policy()


def test_a_change_that_sets_and_unsets_the_same_field_is_refused() -> None:
    with pytest.raises(PolicyError, match="both set and unset"):
        apply_change(Policy(), change(unset=("weight",), weight=3))


def test_an_empty_change_is_refused() -> None:
    with pytest.raises(PolicyError, match="nothing to change"):
        apply_change(Policy(), PolicyChange(vm=WEB))


def test_resolve_clamps_to_static_max_without_raising() -> None:
    vm = VmPolicy(min_kb=6 * GiB, max_kb=8 * GiB, fallback_kb=7 * GiB)
    eff = resolve(vm, VmDefaults(), static_max_kb=4 * GiB)
    assert eff.max_kb == 4 * GiB and eff.min_kb == 4 * GiB and eff.fallback_kb == 4 * GiB


def test_resolve_defaults() -> None:
    eff = resolve(VmPolicy(), VmDefaults(), static_max_kb=4 * GiB)
    assert eff.max_kb == 4 * GiB
    assert eff.min_kb == kernel_floor_kb(4 * GiB)
    assert eff.reserve_kb == kernel_reserve_kb(4 * GiB) == 409 * MiB
    assert eff.kernel_reserve is True
    assert eff.fallback_kb == 4 * GiB
    assert (eff.down_hysteresis, eff.up_hysteresis) == (8, 1)


# ---------------------------------------------------------------------------
# Plain form


def test_plain_form_is_json_and_stable() -> None:
    policy = apply_change(Policy(), change(min_kb="512M", mode="off"), CONTEXT)
    doc = policy.to_dict()
    text = json.dumps(doc, sort_keys=True)
    assert json.loads(text) == doc
    assert doc["vms"] == {WEB: {"min_kb": 512 * MiB, "mode": "off"}}
    assert set(doc["host"]) == {
        "dom0_reserve_kb", "free_margin_kb", "interval_s", "paused", "stale_s", "dead_s",
        "defaults",
    }
    assert Policy.from_dict(json.loads(text)) == policy


def test_from_dict_rejects_unknown_and_invalid() -> None:
    with pytest.raises(PolicyError, match="unknown field"):
        Policy.from_dict({"host": {"colour": 1}})
    with pytest.raises(PolicyError, match="must be an object"):
        Policy.from_dict({"vms": []})
    with pytest.raises(PolicyError, match="min 2G is above max 1G"):
        Policy.from_dict({"vms": {WEB: {"min_kb": 2 * GiB, "max_kb": 1 * GiB}}})


def test_policy_change_plain_form_round_trips() -> None:
    original = PolicyChange(vm=WEB, set={"min_kb": "1G", "mode": Mode.AUTO}, unset=("weight",))
    doc = json.loads(json.dumps(original.to_dict()))
    parsed = PolicyChange.from_dict(doc)
    assert apply_change(Policy(), parsed) == apply_change(Policy(), original)
    with pytest.raises(PolicyError):
        PolicyChange.from_dict({"vm": 5})
    with pytest.raises(PolicyError):
        PolicyChange.from_dict({"unset": "weight"})


sizes = st.one_of(st.none(), st.integers(0, 64 * GiB))


@st.composite
def vm_policies(draw: st.DrawFn) -> VmPolicy:
    lo = draw(st.integers(0, 8 * GiB))
    hi = draw(st.integers(lo, 16 * GiB))
    mode = draw(st.sampled_from([None, *Mode]))
    any_target = st.integers(lo, hi) if mode is Mode.FIXED else st.none() | st.integers(lo, hi)
    target = draw(any_target)
    return VmPolicy(
        min_kb=draw(st.none() | st.just(lo)),
        max_kb=draw(st.none() | st.just(hi)) if mode is not Mode.FIXED else hi,
        weight=draw(st.none() | st.integers(1, 65535)),
        mode=mode,
        estimator=draw(st.none() | st.sampled_from(Estimator)),
        reserve_kb=draw(sizes),
        down_hysteresis=draw(st.none() | st.integers(1, 64)),
        up_hysteresis=draw(st.none() | st.integers(1, 64)),
        max_grow_kb=draw(sizes),
        max_shrink_kb=draw(sizes),
        deadband_kb=draw(sizes),
        min_usable_kb=draw(sizes),
        swap_shrink=draw(st.none() | st.booleans()),
        target_kb=target,
    )


@given(st.dictionaries(st.uuids().map(str), vm_policies(), max_size=5), st.booleans())
def test_any_valid_policy_round_trips_through_json(vms: dict[str, VmPolicy], paused: bool) -> None:
    policy = Policy(host=HostPolicy(paused=paused), vms=vms)
    try:
        validate(policy)
    except PolicyError:
        return  # e.g. min above a default max; not a round-trip concern
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


@given(
    st.dictionaries(
        st.sampled_from(["min_kb", "max_kb", "weight", "mode", "target_kb", "estimator",
                         "deadband_kb", "swap_shrink", "down_hysteresis", "bogus"]),
        st.one_of(st.integers(-10, 10 * GiB), st.text(max_size=8), st.none(), st.booleans(),
                  st.floats(allow_nan=True)),
        max_size=4,
    )
)
def test_any_change_either_applies_validly_or_raises_policy_error(assign: dict[str, Any]) -> None:
    before = apply_change(Policy(), change(weight=7), CONTEXT)
    try:
        after = apply_change(before, PolicyChange(vm=WEB, set=assign), CONTEXT)
    except UsageError:
        assert before.vm(WEB).weight == 7  # nothing changed
        return
    validate(after, CONTEXT)
