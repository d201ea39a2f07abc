"""Guards against guests that do not follow their target.

squeezed declares a domain *inactive* when it has made no progress towards
its target for 5 s, and flags it *uncooperative* (``memory/uncooperative``)
when it stays inactive for more than 20 s. A plain "time since the last
progress" timer can be dodged by moving a few pages every 19 s, so Ballast
keeps a leaky-bucket score instead: while a shrink is outstanding the score
grows by the elapsed seconds and is paid back by movement at the minimum
balloon rate (1 MiB of movement pays one second); once the guest sits at its
target the score drains by the elapsed time. Moving a little every 19 s pays
back almost nothing, so the score still reaches 20 s.

An uncooperative VM keeps the memory it holds but is granted no more; the
latch clears when the score falls back under the inactive threshold, i.e.
when it moves again (or has sat at its target for a while).
Only shrinks are scored: a guest that fails to grow harms nobody, and the
cause may be the host rather than the guest.
"""

from __future__ import annotations

import math
from typing import Final

# squeezed: a domain making no progress for 5 s is inactive
# (assume_balloon_driver_stuck_after), and flagged uncooperative after 20 s.
INACTIVE_AFTER_S: Final = 5.0
UNCOOPERATIVE_AFTER_S: Final = 20.0
# Ballast: the slowest movement that still counts as progress. Real balloon
# drivers move hundreds of MiB/s; a stuck one moves nothing.
MIN_PROGRESS_KB_S: Final = 1024.0
# Ballast: the score never exceeds this, so a guest that moves again recovers
# within one interval of real movement instead of paying back hours.
SCORE_CAP_S: Final = UNCOOPERATIVE_AFTER_S + INACTIVE_AFTER_S
# Ballast: a guest within 1 MiB of its target is at its target. squeezed uses
# one page; Ballast allows a little accounting noise in memory-offset.
TARGET_TOLERANCE_KB: Final = 1024
# A cycle that comes late (controller busy or paused) is counted as at most
# this many intervals, so the guest is not blamed for time nobody watched.
MAX_INTERVALS_PER_CYCLE: Final = 2.0


def track(
    score_s: float,
    uncooperative: bool,
    last_actual_kb: int,
    actual_kb: int,
    target_kb: int,
    elapsed_s: float,
    interval_s: float,
) -> tuple[float, bool]:
    """Update the score from one observation of allocation and target (KiB).

    Returns the new score (seconds, 0..SCORE_CAP_S) and the latched
    uncooperative flag. ``elapsed_s`` is the time since the last observation.
    """
    dt = elapsed_s if math.isfinite(elapsed_s) and elapsed_s > 0 else 0.0
    dt = min(dt, MAX_INTERVALS_PER_CYCLE * interval_s)
    moved_kb = max(last_actual_kb - actual_kb, 0)
    credit = moved_kb / MIN_PROGRESS_KB_S
    if actual_kb - target_kb > TARGET_TOLERANCE_KB:
        score = score_s + dt - credit
    else:
        score = score_s - dt - credit
    score = min(max(score, 0.0), SCORE_CAP_S)
    if score >= UNCOOPERATIVE_AFTER_S:
        flag = True
    elif score < INACTIVE_AFTER_S:
        flag = False
    else:
        flag = uncooperative
    return score, flag
