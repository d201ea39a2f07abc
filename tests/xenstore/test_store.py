"""The sans-I/O store: transaction isolation as a property, and its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.xenstore.perms import Access, Perm
from orchestrator.xenstore.store import DOM0, Caller, Quotas, Refused, Store

KEYS = [f"/k/{name}" for name in "abcd"]

# A step is (who, action, key, value): the transaction or someone else, reading or writing.
steps = st.lists(
    st.tuples(
        st.sampled_from(["tx", "other"]),
        st.sampled_from(["read", "write"]),
        st.sampled_from(KEYS),
        st.binary(min_size=1, max_size=3),
    ),
    max_size=12,
)


@given(steps)
def test_transactions_see_a_snapshot_and_conflict_exactly_on_touched_nodes(
    plan: list[tuple[str, str, str, bytes]],
) -> None:
    store = Store()
    for key in KEYS:
        store.write(DOM0, key, b"0")
    snapshot = {key: b"0" for key in KEYS}
    tx = store.begin(DOM0, 1)
    own: dict[str, bytes] = {}
    touched: set[str] = set()
    changed_outside: set[str] = set()
    live = dict(snapshot)
    for who, action, key, value in plan:
        if who == "other":
            if action == "write":
                store.write(DOM0, key, value)
                live[key] = value
                changed_outside.add(key)
            else:
                assert store.read(DOM0, key) == live[key]
            continue
        touched.add(key)
        if action == "write":
            store.write(DOM0, key, value, tx)
            own[key] = value
        else:
            assert store.read(DOM0, key, tx) == own.get(key, snapshot[key])
    if touched & changed_outside:
        with pytest.raises(Refused) as info:
            store.commit(tx)
        assert info.value.errno_name == "EAGAIN"
        assert {k: store.read(DOM0, k) for k in KEYS} == live
    else:
        changes = store.commit(tx)
        assert {k: store.read(DOM0, k) for k in KEYS} == {**live, **own}
        assert {c.path for c in changes} == set(own)


def test_creating_siblings_in_two_transactions_conflicts() -> None:
    # Both change the parent's list of children, as in C xenstored.
    store = Store()
    store.mkdir(DOM0, "/p")
    first, second = store.begin(DOM0, 1), store.begin(DOM0, 2)
    store.write(DOM0, "/p/a", b"1", first)
    store.write(DOM0, "/p/b", b"1", second)
    store.commit(first)
    with pytest.raises(Refused):
        store.commit(second)
    assert store.directory(DOM0, "/p") == b"a\0"


def test_a_transaction_left_open_gives_up_its_snapshot() -> None:
    store = Store(snapshot_max_nodes=5)
    store.write(DOM0, "/quiet", b"0")
    forgotten = store.begin(DOM0, 1)
    assert store.read(DOM0, "/quiet", forgotten) == b"0"
    short = store.begin(DOM0, 2)
    for i in range(10):
        store.write(DOM0, f"/busy/{i}", b"1")  # unrelated to either transaction
    assert forgotten.doomed
    assert not forgotten.preimage  # its memory is given back
    with pytest.raises(Refused):
        store.commit(forgotten)
    fresh = store.begin(DOM0, 3)
    store.write(DOM0, "/quiet", b"1", fresh)
    store.commit(fresh)
    assert store.read(DOM0, "/quiet") == b"1"
    assert short.doomed  # it was open through the same ten writes


def test_transaction_node_quota_for_guests() -> None:
    store = Store(quotas=Quotas(nodes_per_transaction=3))
    store.mkdir(DOM0, "/local/domain/5")
    store.set_perms(DOM0, "/local/domain/5", (Perm(Access.NONE, 5),))
    for i in range(4):
        store.write(DOM0, f"/local/domain/5/k{i}", b"")  # inherit n5: the guest's
    privileged_tx = store.begin(DOM0, 1)
    for i in range(4):
        store.read(DOM0, f"/local/domain/5/k{i}", privileged_tx)  # dom0 is exempt
    guest = Caller(5)
    guest_tx = store.begin(guest, 2)
    for i in range(3):
        store.read(guest, f"k{i}", guest_tx)
    with pytest.raises(Refused) as info:
        store.read(guest, "k3", guest_tx)
    assert info.value.errno_name == "ENOSPC"
