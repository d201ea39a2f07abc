"""Times operators type for history queries: ISO timestamps or "6h ago" forms.

`parse_time("6h", now)` is six hours before `now`; `"now"` is `now`;
anything else must be an ISO 8601 timestamp (`2026-03-01`,
`2026-03-01T12:00`, `2026-03-01T12:00:00+01:00`, `...Z`). A timestamp
without a zone is local time, as with `journalctl --since`. A relative time
needs a unit (`90s`, `15m`, `6h`, `7d`, `2w`): a bare number is refused
because it could as well be meant as an epoch.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from orchestrator.errors import UsageError
from orchestrator.units import parse_duration_s

_RELATIVE_RE = re.compile(r"^\s*-?\s*(\d+(?:\.\d+)?\s*[smhdw])\s*(?:ago)?\s*$", re.IGNORECASE)


def parse_time(text: str, now: datetime) -> datetime:
    """Parse an operator's time into an aware UTC datetime, relative to `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stripped = text.strip()
    if stripped.lower() == "now":
        return now.astimezone(UTC)
    match = _RELATIVE_RE.match(stripped)
    if match is not None:
        return (now - timedelta(seconds=parse_duration_s(match.group(1)))).astimezone(UTC)
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}: use a relative time such as 90s, 6h or 7d, 'now', "
            "or an ISO timestamp such as 2026-03-01T12:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, like journalctl --since
    return moment.astimezone(UTC)


def parse_range(
    since: str | datetime | None,
    until: str | datetime | None,
    now: datetime,
    *,
    default_span_s: float,
) -> tuple[datetime, datetime]:
    """Resolve a (since, until) pair; missing `until` is now, missing `since`
    is `default_span_s` before `until`. Refuses an inverted range."""
    end = _resolve(until, now) if until is not None else now.astimezone(UTC)
    start = _resolve(since, now) if since is not None else end - timedelta(seconds=default_span_s)
    if start > end:
        raise UsageError(
            f"time range is empty: since {start.isoformat()} is after until {end.isoformat()}"
        )
    return start, end


def _resolve(value: str | datetime, now: datetime) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise UsageError(f"time {value!r} has no time zone")
        return value.astimezone(UTC)
    return parse_time(value, now)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime (the store's `t_ms`)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(t_ms: int) -> datetime:
    """The aware UTC datetime of a `t_ms` value."""
    return _EPOCH + timedelta(milliseconds=t_ms)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
