"""Report v1 and directive codecs: round trips and hostile input."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.schema import (
    MAX_DOCUMENT_BYTES,
    MAX_MEMORY_KB,
    Directive,
    DirectiveAck,
    InvalidDocument,
    Report,
    decode_directive,
    decode_report,
    encode_directive,
    encode_report,
)

kb = st.integers(min_value=0, max_value=MAX_MEMORY_KB)
counter = st.integers(min_value=0, max_value=(1 << 63) - 1)
pct = st.floats(min_value=0, max_value=100, allow_nan=False)


@st.composite
def reports(draw: st.DrawFn) -> Report:
    total = draw(st.integers(min_value=1, max_value=MAX_MEMORY_KB))
    swap_total = draw(kb)
    return Report(
        seq=draw(counter),
        uptime_s=draw(st.floats(min_value=0, max_value=1e9, allow_nan=False)),
        mem_total_kb=total,
        mem_free_kb=draw(st.integers(min_value=0, max_value=total)),
        mem_available_kb=draw(st.integers(min_value=0, max_value=total)),
        cached_kb=draw(kb),
        committed_as_kb=draw(kb),
        totalreserve_kb=draw(kb),
        anon_kb=draw(kb),
        swap_total_kb=swap_total,
        swap_free_kb=draw(st.integers(min_value=0, max_value=swap_total)),
        pswpin=draw(counter),
        pswpout=draw(counter),
        frontswap_kb=draw(st.none() | kb),
        psi_some_avg10=draw(st.none() | pct),
        psi_full_avg10=draw(st.none() | pct),
        psi_some_total_us=draw(st.none() | counter),
        refault_anon=draw(st.none() | counter),
        refault_file=draw(st.none() | counter),
        balloon_current_kb=draw(st.none() | kb),
        active_file_kb=draw(st.none() | st.integers(min_value=0, max_value=total)),
        directive_ack=draw(
            st.none()
            | st.builds(
                DirectiveAck,
                seq=counter,
                outcome=st.sampled_from(["done", "partial", "refused", "unsupported"]),
                detail=st.text(max_size=100),
            )
        ),
    )


@given(reports())
def test_report_round_trip(report: Report) -> None:
    raw = encode_report(report)
    assert len(raw) <= MAX_DOCUMENT_BYTES
    assert decode_report(raw) == report


@given(st.builds(Directive, seq=counter, swap_target_kb=st.none() | kb))
def test_directive_round_trip(directive: Directive) -> None:
    assert decode_directive(encode_directive(directive)) == directive


def _valid() -> dict[str, Any]:
    report = Report(
        seq=3, uptime_s=12.5, mem_total_kb=4_000_000, mem_free_kb=100_000,
        mem_available_kb=2_000_000, cached_kb=1_500_000, committed_as_kb=1_000_000,
        totalreserve_kb=30_000, anon_kb=800_000, swap_total_kb=1_000_000,
        swap_free_kb=1_000_000, pswpin=0, pswpout=0,
    )
    doc: dict[str, Any] = json.loads(encode_report(report))
    return doc


def test_unknown_fields_ignored_and_optional_fields_absent() -> None:
    doc = _valid() | {"future_field": [1, 2, 3]}
    report = decode_report(json.dumps(doc).encode())
    assert report.psi_some_avg10 is None and report.frontswap_kb is None
    assert report.active_file_kb is None
    assert report.swap_used_kb == 0


def test_active_file_is_optional_and_compatible() -> None:
    # An agent that does not know the field sends exactly what it sent before...
    assert b"active_file_kb" not in encode_report(decode_report(json.dumps(_valid()).encode()))
    # ...and one that does is read back with it; a decoder that predates it
    # skips it like any unknown field (test above).
    doc = _valid() | {"active_file_kb": 700_000}
    assert decode_report(json.dumps(doc).encode()).active_file_kb == 700_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "version"),
        ({"v": True}, "version"),
        ({"mem_total_kb": -1}, "outside"),
        ({"mem_total_kb": MAX_MEMORY_KB + 1}, "outside"),
        ({"mem_total_kb": 1.5}, "whole number"),
        ({"mem_total_kb": "4000000"}, "must be a number"),
        ({"mem_total_kb": True}, "must be a number"),
        ({"mem_total_kb": None}, "missing"),
        ({"mem_free_kb": 5_000_000}, "larger than mem_total_kb"),
        ({"swap_free_kb": 2_000_000}, "larger than swap_total_kb"),
        ({"active_file_kb": 4_000_001}, "active_file_kb is larger than mem_total_kb"),
        ({"active_file_kb": -1}, "outside"),
        ({"active_file_kb": 2.5}, "whole number"),
        ({"psi_some_avg10": 101.0}, "outside"),
        ({"seq": -5}, "outside"),
        ({"directive_ack": {"seq": 1, "outcome": "exploded"}}, "outcome"),
        ({"directive_ack": [1]}, "object"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_fields_rejected(change: dict[str, Any], message: str) -> None:
    doc = _valid() | change
    with pytest.raises(InvalidDocument, match=message):
        decode_report(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"null", b"[]", b"42", b"\xff\xfe", b"{", b"x" * 4096,
        b'{"v":1,"seq":NaN}', b'{"v":1,"seq":Infinity}',
        b"[" * 3000 + b"]" * 3000, b'{"v":1,"v":1}',
    ],
    ids=["empty", "null", "list", "number", "not-utf8", "truncated", "junk-4k", "nan", "inf",
         "deep", "dup-key"],
)
def test_malformed_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidDocument):
        decode_report(raw)


def test_missing_required_field() -> None:
    doc = _valid()
    del doc["committed_as_kb"]
    with pytest.raises(InvalidDocument, match="committed_as_kb"):
        decode_report(json.dumps(doc).encode())


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    with contextlib.suppress(InvalidDocument):
        decode_report(raw)


json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)


@given(st.dictionaries(st.sampled_from(sorted(_valid())), json_scalars))
def test_random_field_values_decode_or_reject(overrides: dict[str, Any]) -> None:
    doc = _valid() | overrides
    try:
        raw = json.dumps(doc).encode()
    except ValueError:
        return
    try:
        report = decode_report(raw)
    except InvalidDocument:
        return
    assert 0 < report.mem_total_kb <= MAX_MEMORY_KB
    assert report.mem_free_kb <= report.mem_total_kb


def test_report_encoding_is_compact() -> None:
    full = replace(
        decode_report(json.dumps(_valid()).encode()),
        frontswap_kb=MAX_MEMORY_KB, psi_some_avg10=99.99, psi_full_avg10=99.99,
        psi_some_total_us=(1 << 63) - 1, refault_anon=(1 << 63) - 1,
        refault_file=(1 << 63) - 1, balloon_current_kb=MAX_MEMORY_KB,
        active_file_kb=4_000_000,
        directive_ack=DirectiveAck(seq=1, outcome="refused", detail="x" * 200),
    )
    raw = encode_report(full)
    assert b" " not in raw.replace(b"x" * 200, b"")
    assert len(raw) < 1024


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    detail = '[[[[{{{{\\"]'
    doc = _valid() | {"directive_ack": {"seq": 1, "outcome": "refused", "detail": detail}}
    report = decode_report(json.dumps(doc).encode())
    assert report.directive_ack is not None and report.directive_ack.detail == detail
    with pytest.raises(InvalidDocument, match="nests deeper"):
        decode_report(json.dumps(_valid() | {"x": [[[[[1]]]]]}).encode())
