"""When to send a report: on a change that matters, else on a heartbeat.

A thousand idle guests must not flood xenstore, yet a guest that starts to
struggle must be heard at once. The agent samples often and cheaply; this
module decides, from the last report sent and a candidate built from the
newest sample, whether the candidate goes out now. It is a pure function of
its inputs (no clock, no I/O): the caller passes the current time.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.schema import Report
from orchestrator.errors import UsageError


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportPolicy:
    """Thresholds for report-on-change and the heartbeat. Sizes KiB."""

    heartbeat_s: float = 30.0
    """Longest silence, seconds. 1000 idle guests make about 33 writes/s."""
    min_interval_s: float = 1.0
    """Shortest gap between two reports, seconds, except for a first report,
    a reboot or a directive outcome."""
    change_kb: int = 16 * 1024
    """A memory figure moving by at least this much (KiB) is a change ..."""
    change_fraction: float = 0.02
    """... or by at least this fraction of MemTotal, whichever is larger."""
    psi_points: float = 2.0
    """A PSI avg10 moving by at least this many percentage points is a change."""
    stall_us: int = 100_000
    """"some" stall time accumulated since the last report, microseconds."""
    swap_pages: int = 256
    """Pages swapped in or out since the last report (256 x 4 KiB = 1 MiB)."""
    refault_pages: int = 2560
    """Workingset refaults since the last report (2560 x 4 KiB = 10 MiB)."""

    def __post_init__(self) -> None:
        if not self.heartbeat_s > 0:
            raise UsageError("heartbeat must be positive")
        if not 0 <= self.min_interval_s <= self.heartbeat_s:
            raise UsageError("the minimum report interval must be between 0 and the heartbeat")
        if self.change_kb < 0 or not 0 <= self.change_fraction < 1:
            raise UsageError("change thresholds must be non-negative (fraction below 1)")
        if self.psi_points < 0 or self.stall_us < 0 or self.swap_pages < 0:
            raise UsageError("pressure thresholds must be non-negative")
        if self.refault_pages < 0:
            raise UsageError("the refault threshold must be non-negative")


# Memory figures whose movement the controller acts on (DESIGN.md, "Control").
_SIZE_FIELDS = (
    "mem_total_kb",
    "mem_available_kb",
    "committed_as_kb",
    "anon_kb",
    "totalreserve_kb",
    "swap_total_kb",
)


_ROUNDING_S = 1e-6


def _delta(new: int | None, old: int | None) -> int:
    """Growth of a cumulative counter; 0 if unknown or if it went backwards."""
    if new is None or old is None:
        return 0
    return max(new - old, 0)


def _size_change(last: Report, candidate: Report, threshold_kb: float) -> str | None:
    pairs: list[tuple[str, int | None, int | None]] = [
        (name, getattr(last, name), getattr(candidate, name)) for name in _SIZE_FIELDS
    ]
    pairs.append(("swap_used_kb", last.swap_used_kb, candidate.swap_used_kb))
    pairs.append(("frontswap_kb", last.frontswap_kb, candidate.frontswap_kb))
    pairs.append(("balloon_current_kb", last.balloon_current_kb, candidate.balloon_current_kb))
    for name, old, new in pairs:
        if (old is None) != (new is None):
            return f"{name} appeared or vanished"
        if old is not None and new is not None and abs(new - old) >= threshold_kb:
            return f"{name} moved by {new - old:+d} KiB"
    return None


def _pressure_change(last: Report, candidate: Report, policy: ReportPolicy) -> str | None:
    for name in ("psi_some_avg10", "psi_full_avg10"):
        old, new = getattr(last, name), getattr(candidate, name)
        if old is not None and new is not None and abs(new - old) >= policy.psi_points:
            return f"{name} moved from {old:.2f} to {new:.2f}"
    stall = _delta(candidate.psi_some_total_us, last.psi_some_total_us)
    if policy.stall_us and stall >= policy.stall_us:
        return f"memory stalls of {stall} us"
    swapped = _delta(candidate.pswpin, last.pswpin) + _delta(candidate.pswpout, last.pswpout)
    if policy.swap_pages and swapped >= policy.swap_pages:
        return f"{swapped} pages swapped"
    refaults = _delta(candidate.refault_anon, last.refault_anon) + _delta(
        candidate.refault_file, last.refault_file
    )
    if policy.refault_pages and refaults >= policy.refault_pages:
        return f"{refaults} refaults"
    return None


def report_reason(
    *,
    last: Report | None,
    last_sent_s: float | None,
    candidate: Report,
    now_s: float,
    policy: ReportPolicy,
    new_ack: bool = False,
) -> str | None:
    """Why ``candidate`` should be sent now, or ``None`` to stay quiet.

    ``last`` is the last report written and ``last_sent_s`` when; ``new_ack``
    says the candidate carries a directive outcome not yet sent.
    """
    if last is None or last_sent_s is None:
        return "first report"
    if candidate.uptime_s < last.uptime_s:
        return "guest rebooted"
    if new_ack:
        return "directive outcome"
    # Tick times are sums of float intervals: allow for their rounding.
    elapsed_s = now_s - last_sent_s + _ROUNDING_S
    if elapsed_s >= policy.heartbeat_s:
        return "heartbeat"
    if elapsed_s < policy.min_interval_s:
        return None
    threshold_kb = max(policy.change_kb, policy.change_fraction * candidate.mem_total_kb)
    return _size_change(last, candidate, threshold_kb) or _pressure_change(
        last, candidate, policy
    )
