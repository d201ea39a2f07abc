"""Virtual time for the wire-level simulator: ``speed`` virtual seconds per wall second.

Every part of a wire-level run keeps time in virtual seconds, so the
controller's pacing, report ages and the agents' intervals mean what they
mean on a real host; only the waits between them are shortened by ``speed``.
The clock is tied to the wall clock (``time.monotonic``), not to progress:
if the machine cannot keep up, the parts do not slow the clock down, their
work simply lands farther apart in virtual time (the run's statistics show
by how much).

History needs wall-clock timestamps: virtual time ``t`` is recorded at
``epoch + t``, where ``epoch`` is chosen by the caller (the moment the run
started, or a moment in the past so that a simulated day lies wholly behind
the present when the run ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from orchestrator.errors import UsageError

# Slowest and fastest speeds accepted: below 1 % of real time nothing
# happens; above 100,000x a single virtual second lasts 10 µs, less than one
# turn of the event loop.
MIN_SPEED = 0.01
MAX_SPEED = 100_000.0


class VirtualClock:
    """``speed`` times the wall clock, from zero at :meth:`start`."""

    def __init__(
        self,
        *,
        speed: float,
        epoch: datetime,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``epoch``: the wall-clock time (aware) at which virtual time 0 is recorded."""
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise UsageError(
                f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, not {speed:g}"
            )
        if epoch.tzinfo is None:
            raise UsageError("the epoch of virtual time must carry a time zone")
        self.speed = speed
        self.epoch = epoch
        self._monotonic = monotonic
        self._origin = monotonic()

    def start(self, origin_s: float | None = None) -> None:
        """Virtual time 0 is now, or at ``origin_s`` on the monotonic clock.

        ``time.monotonic`` reads the system-wide CLOCK_MONOTONIC on Linux, so
        processes given the same origin share one virtual clock.
        """
        self._origin = self._monotonic() if origin_s is None else origin_s

    @property
    def origin_s(self) -> float:
        """The monotonic time at which virtual time is 0."""
        return self._origin

    def now_s(self) -> float:
        """Virtual seconds since :meth:`start`."""
        return (self._monotonic() - self._origin) * self.speed

    def wall_elapsed_s(self) -> float:
        """Wall seconds since :meth:`start`."""
        return self._monotonic() - self._origin

    def wall_s(self, virtual_s: float) -> float:
        """How many wall seconds ``virtual_s`` virtual seconds last."""
        return virtual_s / self.speed

    def wall_time(self) -> datetime:
        """The wall-clock time recorded for the present virtual moment."""
        return self.epoch + timedelta(seconds=self.now_s())

    def recorded_at(self, virtual_s: float) -> datetime:
        """The wall-clock time recorded for virtual time ``virtual_s``."""
        return self.epoch + timedelta(seconds=virtual_s)
