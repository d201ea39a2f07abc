"""Topic names: percent-encoding of host and VM names, parsing back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.telemetry.topics import (
    MAX_NAME_BYTES,
    HostTopics,
    InvalidName,
    InvalidTopic,
    TopicKind,
    decode_segment,
    encode_segment,
    fleet_wildcards,
    parse_topic,
    validate_prefix,
)

# Any text, including surrogate escapes of undecodable bytes (how xenstore
# bytes that are not UTF-8 arrive in Python with errors="surrogateescape").
names = st.text(
    alphabet=st.characters(codec=None, exclude_categories=["Cs"]) | st.sampled_from(
        ["/", "+", "#", "%", "\0", "\x7f", "\u0085", "\ufdd0", "\uffff", "\udc80", "\udcff"]
    ),
    min_size=1,
    max_size=60,
)


def _is_legal_topic_level(level: str) -> bool:
    # MQTT 5 §1.5.4 / §4.7: no separators or wildcards inside a level, no
    # NUL, and brokers (Mosquitto) refuse control characters and non-characters.
    try:
        level.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(
        c in "/+#" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F
        or 0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFF) >= 0xFFFE
        for c in level
    )


@given(names)
def test_round_trip_and_legal(name: str) -> None:
    encoded = encode_segment(name)
    assert _is_legal_topic_level(encoded)
    assert decode_segment(encoded) == name


@given(names, names)
def test_distinct_names_never_share_a_level(a: str, b: str) -> None:
    if a != b:
        assert encode_segment(a) != encode_segment(b)


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("web-01", "web-01"),
        ("a/b", "a%2Fb"),
        ("a+b#c", "a%2Bb%23c"),
        ("100%", "100%25"),
        ("nul\0", "nul%00"),
        ("crème", "crème"),
        ("bad\udcff", "bad%FF"),
        ("$sys", "$sys"),
    ],
    ids=["plain", "slash", "wildcards", "percent", "nul", "unicode-kept", "raw-byte", "dollar"],
)
def test_examples(name: str, encoded: str) -> None:
    assert encode_segment(name) == encoded


@pytest.mark.parametrize(
    "name",
    ["", "x" * (MAX_NAME_BYTES + 1), "é" * 128, "lone\ud800"],
    ids=["empty", "too-long", "too-many-bytes", "lone-surrogate"],
)
def test_rejected_names(name: str) -> None:
    with pytest.raises(InvalidName):
        encode_segment(name)


@pytest.mark.parametrize("segment", ["", "a%", "a%2", "a%zz", "a/b", "a+", "#"])
def test_bad_segments(segment: str) -> None:
    with pytest.raises(InvalidName):
        decode_segment(segment)


@pytest.mark.parametrize("prefix", ["", "$SYS", "a//b", "a/+", "a/#", "a%b", "a\0", "/a", "a/"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_prefix(prefix)


@given(names, names, st.sampled_from(["ballast", "site-a/ballast"]))
def test_every_topic_parses_back(host: str, vm: str, prefix: str) -> None:
    t = HostTopics(prefix, host)
    assert parse_topic(prefix, t.status).kind is TopicKind.STATUS
    assert parse_topic(prefix, t.events).kind is TopicKind.EVENTS
    assert parse_topic(prefix, t.policy_set).kind is TopicKind.POLICY_SET
    assert parse_topic(prefix, t.policy_unset).kind is TopicKind.POLICY_UNSET
    ref = parse_topic(prefix, t.vm_state(vm))
    assert (ref.host, ref.kind, ref.vm) == (host, TopicKind.VM_STATE, vm)
    reply = parse_topic(prefix, t.reply("r-1"))
    assert (reply.host, reply.kind, reply.reply_id) == (host, TopicKind.POLICY_REPLY, "r-1")
    assert parse_topic(prefix, t.reply(None)).reply_id is None


def test_wildcards_match_topics() -> None:
    status, state = fleet_wildcards("ballast")
    assert (status, state) == ("ballast/+/status", "ballast/+/vm/+/state")


@pytest.mark.parametrize(
    "topic",
    [
        "other/h/status",
        "ballast/h",
        "ballast/h/vm/x",
        "ballast/h/vm/x/state/extra",
        "ballast/%zz/status",
    ],
)
def test_foreign_topics(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        parse_topic("ballast", topic)
