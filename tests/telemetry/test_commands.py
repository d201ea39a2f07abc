"""Policy command decoding, reply encoding and reply routing (sans-I/O)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.control.policy import PolicyChange
from orchestrator.telemetry.commands import (
    MAX_FIELDS,
    ApplyResult,
    ClientIdentity,
    CommandError,
    CommandReply,
    CommandRequest,
    ErrorKind,
    PolicySet,
    PolicyUnset,
    as_policy_change,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    reply_topic,
)
from orchestrator.telemetry.topics import HostTopics

field_names = st.from_regex(r"\A[a-z][a-z0-9_]{0,47}\Z")
vm_names = st.text(
    alphabet=st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"),
    min_size=1,
    max_size=60,
)


policy_values = (
    st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=200)
)


@st.composite
def policy_sets(draw: st.DrawFn) -> PolicySet:
    names = draw(st.sets(field_names, min_size=1, max_size=8))
    changes = tuple(sorted((n, draw(policy_values)) for n in names))
    return PolicySet(draw(vm_names), changes)


policy_unsets = st.builds(
    lambda vm, names: PolicyUnset(vm, tuple(sorted(names))),
    vm_names,
    st.sets(field_names, min_size=1, max_size=MAX_FIELDS),
)
request_ids = st.none() | st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z")
clients = st.none() | st.text(
    alphabet=st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"),
    min_size=1, max_size=128,
)


@given(policy_sets() | policy_unsets, request_ids, clients)
def test_command_round_trip(
    command: PolicySet | PolicyUnset, rid: str | None, client: str | None
) -> None:
    raw = encode_command(command, request_id=rid, client=client)
    request = decode_command(raw, unset=isinstance(command, PolicyUnset))
    assert request == CommandRequest(command, ClientIdentity(client), rid)


def _cmd(**doc: object) -> bytes:
    return json.dumps(doc).encode()


SET_OK = {"vm": "web-1", "set": {"min_kb": 524288}, "id": "r1"}


@pytest.mark.parametrize(
    ("raw", "unset", "needle"),
    [
        (b"{not json", False, "not valid JSON"),
        (b"\xff\xfe", False, "not valid JSON"),
        (b'"web-1"', False, "JSON object"),
        (_cmd(set={"min_kb": 1}), False, "'vm' is missing"),
        (_cmd(vm="", set={"min_kb": 1}), False, "may not be empty"),
        (_cmd(vm=7, set={"min_kb": 1}), False, "'vm' must be a string"),
        (_cmd(vm="a\nb", set={"min_kb": 1}), False, "control character"),
        (_cmd(vm="x" * 256, set={"min_kb": 1}), False, "over 255"),
        (_cmd(vm="w"), False, "'set' is missing"),
        (_cmd(vm="w", set=[]), False, "must be an object"),
        (_cmd(vm="w", set={}), False, "names no policy field"),
        (_cmd(vm="w", set={"weight": None}), False, "not null"),
        (_cmd(vm="w", set={"weight": [1]}), False, "not an array"),
        (_cmd(vm="w", set={"Weight": 1}), False, "not a field name"),
        (_cmd(vm="w", set={f"f{i}": 1 for i in range(MAX_FIELDS + 1)}), False, "over"),
        (_cmd(vm="w", set={"mode": "x" * 201}), False, "longer than"),
        (_cmd(vm="w", set={"min_kb": 1}, extra=1), False, "unknown field"),
        (_cmd(vm="w", unset=["min_kb"]), False, "policy/unset topic"),
        (_cmd(vm="w", set={"min_kb": 1}), True, "policy/set topic"),
        (_cmd(vm="w", unset="min_kb"), True, "array of names"),
        (_cmd(vm="w", unset=[]), True, "names no policy field"),
        (_cmd(vm="w", unset=["a", "a"]), True, "twice"),
        (_cmd(vm="w", unset=[3]), True, "must be strings"),
        (_cmd(vm="w", set={"min_kb": 1}, id="has space"), False, "'id'"),
        (_cmd(vm="w", set={"min_kb": 1}, client=5), False, "'client'"),
        (_cmd(vm="w", set={"min_kb": 1}, v=2), False, "version"),
        (b'{"vm":"w","vm":"x","set":{"a":1}}', False, "duplicate"),
        (b'{"vm":"w","set":{"a":Infinity}}', False, "non-finite"),
        (json.dumps({**SET_OK, "client": "x" * 5000}).encode(), False, "limit"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_commands(raw: bytes, unset: bool, needle: str) -> None:
    with pytest.raises(CommandError, match=needle):
        decode_command(raw, unset=unset)


def test_error_keeps_request_id_and_vm_when_readable() -> None:
    with pytest.raises(CommandError) as info:
        decode_command(_cmd(vm="web-1", set={"min_kb": {"x": 1}}, id="r-9"), unset=False)
    assert (info.value.request_id, info.value.vm) == ("r-9", "web-1")


def test_values_are_left_to_the_policy_model() -> None:
    # "512M" is what an operator types; the policy model parses it, not the decoder.
    request = decode_command(_cmd(vm="w", set={"min_kb": "512M", "swap_shrink": "on"}), unset=False)
    assert request.command == PolicySet("w", (("min_kb", "512M"), ("swap_shrink", "on")))
    change = as_policy_change(request.command, vm_id="uuid-1")
    assert change == PolicyChange(vm="uuid-1", set={"min_kb": "512M", "swap_shrink": "on"})
    assert as_policy_change(PolicyUnset("w", ("max_kb",)), vm_id="u") == PolicyChange(
        vm="u", unset=("max_kb",)
    )


def test_identity() -> None:
    request = decode_command(_cmd(vm="w", unset=["min_kb"], client="ops@desk"), unset=True)
    assert request.client.audit_name == "ops@desk"
    anonymous = decode_command(_cmd(vm="w", unset=["min_kb"]), unset=True)
    assert anonymous.client.audit_name == "unidentified"


replies = st.one_of(
    st.builds(
        CommandReply,
        ok=st.just(True),
        request_id=request_ids,
        vm=st.none() | vm_names,
        policy=st.dictionaries(
            field_names, st.none() | st.booleans() | st.integers() | st.text(max_size=50)
        ),
        version=st.none() | st.integers(min_value=0, max_value=1 << 40),
    ),
    st.builds(
        lambda kind, msg, rid, vm: CommandReply.failure(kind, msg, request_id=rid, vm=vm),
        st.sampled_from(ErrorKind),
        st.text(min_size=1, max_size=100).filter(str.strip),
        request_ids,
        st.none() | vm_names,
    ),
)


@given(replies)
def test_reply_round_trip(reply: CommandReply) -> None:
    assert decode_reply(encode_reply(reply)) == reply


def test_success_reply_carries_policy() -> None:
    request = decode_command(json.dumps(SET_OK).encode(), unset=False)
    reply = CommandReply.success(request, ApplyResult(policy={"min_kb": 524288}, version=3))
    doc = json.loads(encode_reply(reply))
    assert doc == {
        "v": 1, "ok": True, "id": "r1", "vm": "web-1", "policy": {"min_kb": 524288}, "version": 3
    }


TOPICS = HostTopics("ballast", "h1")


@pytest.mark.parametrize(
    ("response_topic", "rid", "expected"),
    [
        ("ops/replies/7", "r1", "ops/replies/7"),
        (None, "r1", "ballast/h1/policy/reply/r1"),
        (None, None, "ballast/h1/policy/reply"),
        ("", "r1", "ballast/h1/policy/reply/r1"),
        ("ops/+/x", "r1", "ballast/h1/policy/reply/r1"),
        ("ops/#", None, "ballast/h1/policy/reply"),
        ("$SYS/x", "r1", "ballast/h1/policy/reply/r1"),
        ("ballast/h1/policy/set", "r1", "ballast/h1/policy/reply/r1"),
        ("ballast/h1/policy/unset", None, "ballast/h1/policy/reply"),
    ],
    ids=[
        "response-topic", "fallback-id", "fallback-bare", "empty", "plus-wildcard",
        "hash-wildcard", "system-topic", "own-set-topic", "own-unset-topic",
    ],
)
def test_reply_routing(response_topic: str | None, rid: str | None, expected: str) -> None:
    assert reply_topic(TOPICS, response_topic, rid) == expected
