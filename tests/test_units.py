"""Size and duration parsing: what operators type on the CLI and over MQTT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import UsageError
from orchestrator.units import format_size_kb, parse_duration_s, parse_size_kb


@pytest.mark.parametrize(
    ("text", "kb"),
    [("1024", 1024), ("512M", 512 * 1024), ("4G", 4 * 1024 * 1024), ("1.5g", 1572864),
     ("64k", 64), ("2GiB", 2 * 1024 * 1024), (" 8 M ", 8192)],
)
def test_parse_size(text: str, kb: int) -> None:
    assert parse_size_kb(text) == kb


@pytest.mark.parametrize("text", ["", "M", "-1G", "1X", "1e9", "nan", "inf", "99999T", "1..5G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="size"):
        parse_size_kb(text)


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ("90s", 90), ("6h", 21600),
                                               ("7d", 604800), ("1.5m", 90), ("2w", 1209600)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "5y", "nan", "100000w"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration_s(text)


@given(st.text(max_size=20))
def test_parse_size_never_crashes(text: str) -> None:
    try:
        kb = parse_size_kb(text)
    except UsageError:
        return
    assert 0 <= kb <= 1 << 34


@given(st.integers(min_value=0, max_value=1 << 34))
def test_format_then_parse_is_close(kb: int) -> None:
    again = parse_size_kb(format_size_kb(kb))
    assert abs(again - kb) <= max(1, kb * 0.05)
