"""The sans-I/O codec: header layout, every message type, incremental decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.xenstore import wire
from orchestrator.xenstore.errors import OversizedPacketError, ProtocolError
from orchestrator.xenstore.perms import Access, Perm
from orchestrator.xenstore.wire import Op, Packet

# The numbering of enum xsd_sockmsg_type in Xen 4.17's xs_wire.h, written out
# from the header (20, XS_RESTRICT, was removed).
XS_WIRE_4_17 = {
    "CONTROL": 0, "DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
    "TRANSACTION_START": 6, "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9,
    "GET_DOMAIN_PATH": 10, "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14,
    "WATCH_EVENT": 15, "ERROR": 16, "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18,
    "SET_TARGET": 19, "RESET_WATCHES": 21, "DIRECTORY_PART": 22,
}  # fmt: skip


def test_op_numbers_match_xs_wire_h() -> None:
    assert {op.name: op.value for op in Op} == XS_WIRE_4_17
    assert Op.DEBUG is Op.CONTROL


def test_op_numbers_agree_with_pyxs() -> None:
    # pyxs was written independently from the same header; it stops at SET_TARGET.
    from pyxs._internal import Op as PyxsOp

    for name, value in PyxsOp._asdict().items():
        if name in ("RESTRICT",):
            continue
        assert Op[name].value == value, name


def test_header_is_four_little_endian_u32() -> None:
    data = wire.encode(Packet(Op.READ, 0x01020304, 7, b"/a\0"))
    assert data[:16] == bytes([2, 0, 0, 0, 4, 3, 2, 1, 7, 0, 0, 0, 3, 0, 0, 0])
    assert data[16:] == b"/a\0"


packets = st.builds(
    Packet,
    op=st.integers(0, 0xFFFFFFFF),
    req_id=st.integers(0, 0xFFFFFFFF),
    tx_id=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=wire.PAYLOAD_MAX),
)


@given(st.lists(packets, max_size=8), st.data())
def test_decoder_reassembles_any_chunking(items: list[Packet], data: st.DataObject) -> None:
    stream = b"".join(wire.encode(p) for p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = wire.Decoder()
    out: list[Packet] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[last:cut]))
        last = cut
    assert out == items
    assert decoder.pending == 0


def test_payload_limit_is_4096() -> None:
    decoder = wire.Decoder()
    ok = wire.encode(Packet(Op.WRITE, 1, 0, b"x" * 4096))
    assert decoder.feed(ok)[0].payload == b"x" * 4096
    with pytest.raises(ProtocolError):
        wire.encode(Packet(Op.WRITE, 1, 0, b"x" * 4097))
    oversized = struct.pack("<IIII", Op.WRITE, 1, 0, 4097)
    with pytest.raises(OversizedPacketError):
        decoder.feed(oversized)
    with pytest.raises(OversizedPacketError):
        decoder.feed(b"")  # the stream cannot be resynchronised


def test_header_fields_out_of_range_are_rejected() -> None:
    with pytest.raises(ProtocolError):
        wire.encode(Packet(Op.READ, 1 << 32, 0, b""))


# --- typed requests --------------------------------------------------------------

path_chars = st.sampled_from("abcXYZ019-_@")
components = st.text(path_chars, min_size=1, max_size=8)
abs_paths = st.lists(components, max_size=5).map(lambda c: "/" + "/".join(c))
tokens = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=20)
domids = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
accesses = st.sampled_from([Access.NONE, Access.READ, Access.WRITE, Access.BOTH])
perms = st.builds(Perm, accesses, domids)

requests = st.one_of(
    st.builds(wire.Control, st.lists(tokens, min_size=1, max_size=3).map(tuple)),
    st.builds(wire.Directory, abs_paths),
    st.builds(wire.DirectoryPart, abs_paths, u32),
    st.builds(wire.Read, abs_paths),
    st.builds(wire.GetPerms, abs_paths),
    st.builds(wire.Watch, abs_paths, tokens),
    st.builds(wire.Unwatch, abs_paths, tokens),
    st.just(wire.TransactionStart()),
    st.builds(wire.TransactionEnd, st.booleans()),
    st.builds(wire.Introduce, domids, u32, u32),
    st.builds(wire.Release, domids),
    st.builds(wire.GetDomainPath, domids),
    st.builds(wire.Write, abs_paths, st.binary(max_size=64)),
    st.builds(wire.Mkdir, abs_paths),
    st.builds(wire.Rm, abs_paths),
    st.builds(wire.SetPerms, abs_paths, st.lists(perms, min_size=1, max_size=4).map(tuple)),
    st.builds(wire.IsDomainIntroduced, domids),
    st.builds(wire.Resume, domids),
    st.builds(wire.SetTarget, domids, domids),
    st.just(wire.ResetWatches()),
)


@given(requests, u32, u32)
def test_requests_round_trip_through_bytes(request: wire.Request, req_id: int, tx_id: int) -> None:
    packet = wire.request_packet(request, req_id=req_id, tx_id=tx_id)
    (decoded,) = wire.Decoder().feed(wire.encode(packet))
    assert (decoded.req_id, decoded.tx_id) == (req_id, tx_id)
    assert wire.decode_request(decoded.op, decoded.payload) == request


def test_every_request_op_has_a_typed_request() -> None:
    seen = {wire.encode_request(r)[0] for r in _one_of_each()}
    assert seen == set(Op) - {Op.WATCH_EVENT, Op.ERROR}


def _one_of_each() -> list[wire.Request]:
    return [
        wire.Control(("print", "x")), wire.Directory("/"), wire.DirectoryPart("/", 0),
        wire.Read("/a"), wire.GetPerms("/a"), wire.Watch("/a", "t"), wire.Unwatch("/a", "t"),
        wire.TransactionStart(), wire.TransactionEnd(True), wire.Introduce(1, 2, 3),
        wire.Release(1), wire.GetDomainPath(1), wire.Write("/a", b"v"), wire.Mkdir("/a"),
        wire.Rm("/a"), wire.SetPerms("/a", (Perm(Access.NONE, 0),)), wire.IsDomainIntroduced(1),
        wire.Resume(1), wire.SetTarget(1, 2), wire.ResetWatches(),
    ]  # fmt: skip


def test_write_value_keeps_nul_bytes_and_may_be_empty() -> None:
    op, payload = wire.encode_request(wire.Write("/a", b"x\0y"))
    assert payload == b"/a\0x\0y"
    assert wire.decode_request(op, payload) == wire.Write("/a", b"x\0y")
    assert wire.decode_request(Op.WRITE, b"/a\0") == wire.Write("/a", b"")


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        pytest.param(Op.READ, b"/a", id="read-no-nul"),
        pytest.param(Op.READ, b"/a\0/b\0", id="read-two-args"),
        pytest.param(Op.READ, b"", id="read-empty"),
        pytest.param(Op.WATCH, b"/a\0", id="watch-no-token"),
        pytest.param(Op.TRANSACTION_END, b"X\0", id="txend-bad-flag"),
        pytest.param(Op.INTRODUCE, b"1\0x\0" + b"2\0", id="introduce-bad-mfn"),
        pytest.param(Op.GET_DOMAIN_PATH, b"70000\0", id="domid-too-big"),
        pytest.param(Op.GET_DOMAIN_PATH, b"-1\0", id="domid-negative"),
        pytest.param(Op.SET_PERMS, b"/a\0", id="setperms-no-perm"),
        pytest.param(Op.SET_PERMS, b"/a\0x5\0", id="setperms-bad-letter"),
        pytest.param(Op.WRITE, b"/a", id="write-no-nul"),
        pytest.param(Op.DIRECTORY_PART, b"/a\0z\0", id="dirpart-bad-offset"),
    ],
)
def test_malformed_payloads_are_einval(op: Op, payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode_request(op, payload)
    assert info.value.errno_name == "EINVAL"


@pytest.mark.parametrize("op", [20, 23, 99, wire.INVALID_OP, Op.WATCH_EVENT, Op.ERROR])
def test_unknown_types_are_enosys(op: int) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode_request(op, b"\0")
    assert info.value.errno_name == "ENOSYS"


# --- replies ---------------------------------------------------------------------

names = st.lists(components, max_size=10)


@given(names)
def test_directory_reply_round_trip(items: list[str]) -> None:
    assert wire.decode_names(wire.encode_names(items)) == items


@given(st.lists(perms, min_size=1, max_size=5).map(tuple))
def test_perms_reply_round_trip(items: tuple[Perm, ...]) -> None:
    assert wire.decode_perms(wire.encode_perms(items)) == items


@given(st.integers(0, 2**64 - 1), names.map(tuple), st.booleans())
def test_directory_chunk_round_trip(gen: int, items: tuple[str, ...], complete: bool) -> None:
    if not items:
        complete = True  # a reply with no names is always the end of the list
    chunk = wire.DirectoryChunk(gen, items, complete)
    assert wire.decode_directory_chunk(wire.encode_directory_chunk(chunk)) == chunk


def test_directory_chunk_layout_matches_libxenstore_expectation() -> None:
    # libxenstore stops asking for more when the concatenated strings end in "\0\0".
    payload = wire.encode_directory_chunk(wire.DirectoryChunk(5, ("a", "b"), True))
    assert payload == b"5\0a\0b\0\0"
    assert wire.encode_directory_chunk(wire.DirectoryChunk(5, (), True)) == b"5\0\0"


@given(abs_paths, tokens)
def test_watch_event_round_trip(path: str, token: str) -> None:
    event = wire.WatchEvent(path, token)
    assert wire.decode_watch_event(wire.encode_watch_event(event)) == event


@pytest.mark.parametrize("name", wire.ERROR_NAMES)
def test_error_round_trip(name: str) -> None:
    assert wire.decode_error(wire.encode_error(name)) == name


def test_unknown_error_name_reads_as_einval() -> None:
    assert wire.decode_error(b"EWHATEVER\0") == "EINVAL"


@given(u32, st.booleans(), abs_paths)
def test_scalar_replies_round_trip(number: int, flag: bool, path: str) -> None:
    assert wire.decode_int(wire.encode_int(number)) == number
    assert wire.decode_bool(wire.encode_bool(flag)) is flag
    assert wire.decode_text(wire.encode_text(path)) == path
