"""Parsing and formatting of the sizes and durations operators type.

Sizes are KiB internally, as on the xenstore wire. ``parse_size_kb`` accepts
a plain number (KiB) or a number with a binary suffix K, M, G, T (KiB, MiB,
GiB, TiB); durations accept s, m, h, d, w suffixes.
"""

from __future__ import annotations

import math
import re

from orchestrator.errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_FACTOR_KB = {"": 1, "K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}
# Larger than any host Xen supports (16 TiB); rejects typos such as "40000G".
MAX_SIZE_KB = 1 << 34

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_FACTOR_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Ten years: longer spans are certainly a typo.
MAX_DURATION_S = 10 * 366 * 86400


def parse_size_kb(text: str) -> int:
    """Parse ``"512M"``, ``"4G"``, ``"1048576"`` (KiB) into KiB."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise UsageError(
            f"invalid size {text!r}: use a whole number of KiB or a number with "
            "a K, M, G or T suffix, e.g. 512M or 4G"
        )
    value = float(match.group(1)) * _SIZE_FACTOR_KB[match.group(2).upper()]
    if not math.isfinite(value) or value > MAX_SIZE_KB:
        raise UsageError(f"size {text!r} is larger than any Xen host (16 TiB)")
    return int(value)


def parse_duration_s(text: str) -> float:
    """Parse ``"30"``, ``"90s"``, ``"6h"``, ``"7d"`` into seconds."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise UsageError(
            f"invalid duration {text!r}: use a number with an s, m, h, d or w suffix, e.g. 6h"
        )
    value = float(match.group(1)) * _DURATION_FACTOR_S[match.group(2).lower()]
    if not math.isfinite(value) or value > MAX_DURATION_S:
        raise UsageError(f"duration {text!r} is longer than ten years")
    return value


def format_size_kb(kb: int | float | None) -> str:
    """Render KiB for humans: ``1536 -> "1.5M"``; ``None -> "-"``."""
    if kb is None:
        return "-"
    sign = "-" if kb < 0 else ""
    value = float(abs(kb))
    for suffix in ("K", "M", "G", "T"):
        if value < 1024 or suffix == "T":
            text = f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"
            return f"{sign}{text}{suffix}"
        value /= 1024
    raise AssertionError("unreachable")
