"""Background writer: the control loop hands records over and never waits.

`record_sample(s)`, `record_decision` and `record_event` only append to
in-memory queues (a lock held for microseconds) and return. One thread
commits them in batches with Core `insert()` and runs rollups and retention
between batches.

Samples wait in a bounded queue: when it is full (the database is locked,
full, unreachable, or merely slower than the fleet) the oldest samples are
dropped and counted, and once a batch commits again a `samples_dropped`
event records how many and over which span. Decisions and events are never
dropped: they stay queued, in order, until they can be written.

Nothing starts in `__init__`; use `with writer:` (threads) or
`async with writer:` (asyncio), or `start()`/`stop()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from orchestrator.errors import TransientError, UsageError
from orchestrator.store.records import Decision, Event, EventKind, Sample
from orchestrator.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterConfig:
    """Settings of a `StoreWriter`."""

    max_queued_samples: int = 100_000
    """Samples kept while the database lags (100 cycles of 1,000 VMs)."""
    batch_max_samples: int = 10_000
    """Most samples committed in one transaction."""
    linger_s: float = 0.2
    """How long the first queued record waits for others to share its batch."""
    maintenance_interval_s: float = 60.0
    """How often rollups and retention run."""
    retry_initial_s: float = 0.1
    """First pause after a failed batch; doubles up to `retry_max_s`."""
    retry_max_s: float = 5.0
    """Longest pause between retries."""
    stop_timeout_s: float = 10.0
    """How long `stop()` keeps trying to write what is queued."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max_samples <= self.max_queued_samples:
            raise UsageError("need 1 <= batch_max_samples <= max_queued_samples")
        for name in ("linger_s", "maintenance_interval_s", "retry_initial_s", "retry_max_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"writer {name} must be positive")
        if self.stop_timeout_s < 0:
            raise UsageError("writer stop_timeout_s must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitReport:
    """One committed batch, handed to the `on_commit` callback."""

    batch: int
    """Sequence number of the batch (1, 2, ...)."""
    samples: tuple[Sample, ...]
    decisions: tuple[Decision, ...]
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStats:
    """Counters of a `StoreWriter` since it was created."""

    queued_samples: int
    """Samples waiting now."""
    queued_durable: int
    """Decisions and events waiting now."""
    samples_written: int
    samples_dropped: int
    """Dropped because the queue was full (database lagging or unavailable)."""
    samples_rejected: int
    """Refused by the store (older than raw retention, or unwritable)."""
    durable_written: int
    batches: int
    failures: int
    """Batches that failed and were retried."""
    last_error: str | None


class StoreWriter:
    """Queues records for a `Store` and commits them from one thread."""

    def __init__(
        self,
        store: Store,
        config: WriterConfig | None = None,
        *,
        on_commit: Callable[[CommitReport], None] | None = None,
    ) -> None:
        self._store = store
        self.config = config or WriterConfig()
        self._on_commit = on_commit
        self._cond = threading.Condition(threading.Lock())
        self._samples: deque[Sample] = deque()
        self._durable: deque[Decision | Event] = deque()
        self._first_queued: float | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._deadline = 0.0
        self._enqueued = 0
        self._done = 0
        # Counters (guarded by _cond).
        self._written = 0
        self._dropped = 0
        self._rejected = 0
        self._durable_written = 0
        self._batches = 0
        self._failures = 0
        self._last_error: str | None = None
        # Drops not yet reported by an event: count, first and last sample time.
        self._gap_count = 0
        self._gap_first: datetime | None = None
        self._gap_last: datetime | None = None
        self._next_maintenance = 0.0
        self._status: tuple[dict[str, Any], datetime] | None = None

    # ------------------------------------------------------------- producers

    def record_sample(self, sample: Sample) -> None:
        """Queue one sample; never blocks (drops the oldest when full)."""
        with self._cond:
            self._push_sample(sample)

    def record_samples(self, samples: Iterable[Sample]) -> None:
        """Queue many samples under one lock; never blocks."""
        with self._cond:
            for sample in samples:
                self._push_sample(sample)

    def record_decision(self, decision: Decision) -> None:
        """Queue a decision; it is kept until written."""
        self._push_durable(decision)

    def record_event(self, event: Event) -> None:
        """Queue an event; it is kept until written."""
        self._push_durable(event)

    def record_status(self, document: Mapping[str, Any], at: datetime) -> None:
        """Offer the host's live status; only the newest one offered is written."""
        with self._cond:
            self._status = (dict(document), at)
            if self._first_queued is None:
                self._first_queued = time.monotonic()
                self._cond.notify()

    def _write_status(self) -> None:
        """Write the newest offered status, if any (writer thread)."""
        with self._cond:
            pending, self._status = self._status, None
        if pending is None:
            return
        try:
            self._store.put_status(*pending)
        except TransientError as exc:
            with self._cond:
                if self._status is None:  # nothing newer arrived: try it again later
                    self._status = pending
                self._last_error = str(exc)
        except Exception:
            log.exception("history writer: status document refused")

    def _push_sample(self, sample: Sample) -> None:
        if not isinstance(sample, Sample):
            raise TypeError(f"expected a Sample, got {type(sample).__name__}")
        if len(self._samples) >= self.config.max_queued_samples:
            self._drop(self._samples.popleft())
        self._samples.append(sample)
        self._enqueued += 1
        self._mark_queued()

    def _push_durable(self, item: Decision | Event) -> None:
        if not isinstance(item, Decision | Event):
            raise TypeError(f"expected a Decision or Event, got {type(item).__name__}")
        with self._cond:
            self._durable.append(item)
            self._enqueued += 1
            self._mark_queued()

    def _mark_queued(self) -> None:
        if self._first_queued is None:
            self._first_queued = time.monotonic()
            self._cond.notify()
        elif len(self._samples) == self.config.batch_max_samples:
            self._cond.notify()

    def _drop(self, sample: Sample) -> None:
        self._dropped += 1
        self._done += 1
        self._gap_count += 1
        if self._gap_first is None or sample.time < self._gap_first:
            self._gap_first = sample.time
        if self._gap_last is None or sample.time > self._gap_last:
            self._gap_last = sample.time

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the writer thread."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("writer already started")
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="ballast-store-writer", daemon=True
            )
            self._thread.start()

    def stop(self) -> WriterStats:
        """Write what is queued (for up to `stop_timeout_s`) and stop the thread."""
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._deadline = time.monotonic() + self.config.stop_timeout_s
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread = None
            lost_durable = len(self._durable)
            lost_samples = len(self._samples)
        if lost_durable or lost_samples:
            log.error(
                "history writer stopped with %d decisions/events and %d samples unwritten: %s",
                lost_durable,
                lost_samples,
                self._last_error,
            )
        return self.stats()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued before the call is written or dropped.

        Returns False on timeout (for tests and orderly shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._enqueued
            if self._first_queued is not None:
                self._first_queued = 0.0  # do not linger
            self._cond.notify_all()
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return False
                self._cond.wait(remaining)
            return True

    async def aflush(self, timeout_s: float = 30.0) -> bool:
        """`flush` for asyncio callers."""
        return await asyncio.to_thread(self.flush, timeout_s)

    def stats(self) -> WriterStats:
        """A snapshot of the counters."""
        with self._cond:
            return WriterStats(
                queued_samples=len(self._samples),
                queued_durable=len(self._durable),
                samples_written=self._written,
                samples_dropped=self._dropped,
                samples_rejected=self._rejected,
                durable_written=self._durable_written,
                batches=self._batches,
                failures=self._failures,
                last_error=self._last_error,
            )

    # ---------------------------------------------------------------- thread

    def _run(self) -> None:
        backoff = self.config.retry_initial_s
        self._next_maintenance = time.monotonic() + self.config.maintenance_interval_s
        while True:
            batch = self._take()
            if batch is None:
                return
            samples, durable = batch
            self._write_status()
            if not samples and not durable:
                self._maybe_maintain()
                continue
            try:
                result = self._store.write(
                    samples,
                    [d for d in durable if isinstance(d, Decision)],
                    [e for e in durable if isinstance(e, Event)],
                )
            except TransientError as exc:
                self._requeue(samples, durable, exc)
                self._sleep(backoff)
                backoff = min(backoff * 2, self.config.retry_max_s)
                continue
            except Exception as exc:  # a bug or a value the database refuses
                log.exception("history writer: batch refused by the database")
                self._write_one_by_one(samples, durable, exc)
                continue
            backoff = self.config.retry_initial_s
            self._committed(samples, durable, result.too_late)
            self._maybe_maintain()

    def _take(self) -> tuple[list[Sample], list[Decision | Event]] | None:
        """Wait for a batch; None when stopped and drained (or out of time)."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._stopping and (
                    (not self._samples and not self._durable) or now >= self._deadline
                ):
                    return None
                ready = self._first_queued is not None and (
                    self._stopping
                    or len(self._samples) >= self.config.batch_max_samples
                    or now - self._first_queued >= self.config.linger_s
                )
                if ready:
                    break
                if now >= self._next_maintenance:
                    return [], []
                waits = [self._next_maintenance - now]
                if self._first_queued is not None:
                    waits.append(self._first_queued + self.config.linger_s - now)
                self._cond.wait(max(0.001, min(waits)))
            count = min(len(self._samples), self.config.batch_max_samples)
            samples = [self._samples.popleft() for _ in range(count)]
            durable = list(self._durable)
            self._durable.clear()
            self._first_queued = time.monotonic() if self._samples else None
            return samples, durable

    def _committed(self, samples: list[Sample], durable: list[Decision | Event], late: int) -> None:
        with self._cond:
            self._batches += 1
            self._written += len(samples) - late
            self._rejected += late
            self._durable_written += len(durable)
            self._done += len(samples) + len(durable)
            batch_no = self._batches
            gap = self._take_gap()
            self._cond.notify_all()
        if gap is not None:
            self._push_durable(gap)
        if self._on_commit is not None:
            self._on_commit(
                CommitReport(
                    batch=batch_no,
                    samples=tuple(samples),
                    decisions=tuple(d for d in durable if isinstance(d, Decision)),
                    events=tuple(e for e in durable if isinstance(e, Event)),
                )
            )

    def _take_gap(self) -> Event | None:
        if self._gap_count == 0:
            return None
        assert self._gap_first is not None and self._gap_last is not None
        event = Event(
            kind=EventKind.SAMPLES_DROPPED,
            time=self._store.now(),
            details={
                "dropped": self._gap_count,
                "first_sample_time": self._gap_first.isoformat(),
                "last_sample_time": self._gap_last.isoformat(),
                "last_error": self._last_error,
            },
        )
        self._gap_count = 0
        self._gap_first = self._gap_last = None
        return event

    def _requeue(
        self, samples: list[Sample], durable: list[Decision | Event], exc: Exception
    ) -> None:
        with self._cond:
            self._failures += 1
            message = str(exc)
            if message != self._last_error:
                log.warning("history writer: %s; retrying, samples may be dropped", message)
            self._last_error = message
            self._durable.extendleft(reversed(durable))
            # The failed batch is older than anything still queued: put it back
            # in front and drop from the front (oldest) what does not fit.
            room = self.config.max_queued_samples - len(self._samples)
            keep = samples[-room:] if room > 0 else []
            for sample in samples[: len(samples) - len(keep)]:
                self._drop(sample)
            self._samples.extendleft(reversed(keep))
            if self._first_queued is None:
                self._first_queued = time.monotonic()
            self._cond.notify_all()

    def _write_one_by_one(
        self, samples: list[Sample], durable: list[Decision | Event], exc: Exception
    ) -> None:
        """Isolate what the database refuses, so one bad record cannot stall the rest."""
        written = rejected = durable_written = 0
        try:
            written = self._store.write(samples).samples if samples else 0
            rejected = len(samples) - written
        except TransientError as again:
            self._requeue(samples, durable, again)
            return
        except Exception:
            log.exception("history writer: dropping %d samples the database refuses", len(samples))
            rejected = len(samples)
        pending = list(durable)
        retry: TransientError | None = None
        while pending:
            item = pending[0]
            try:
                if isinstance(item, Decision):
                    self._store.write(decisions_=[item])
                else:
                    self._store.write(events_=[item])
                durable_written += 1
            except TransientError as again:
                retry = again
                break
            except Exception:
                log.exception("history writer: dropping a record the database refuses: %r", item)
                rejected += 1
            pending.pop(0)
        with self._cond:
            self._last_error = str(exc)
            self._written += written
            self._rejected += rejected
            self._durable_written += durable_written
            self._done += len(samples) + len(durable) - len(pending)
            self._cond.notify_all()
        if retry is not None:
            self._requeue([], pending, retry)

    def _sleep(self, seconds: float) -> None:
        """Pause before a retry (never past the stop deadline)."""
        with self._cond:
            if self._stopping:
                seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
            self._cond.wait(seconds)

    def _maybe_maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.config.maintenance_interval_s
        with self._cond:
            # Buckets from the oldest queued sample on are not complete yet.
            pending = self._samples[0].time if self._samples else None
        try:
            self._store.maintain(pending_since=pending)
        except TransientError as exc:
            log.warning("history maintenance postponed: %s", exc)
        except Exception:
            log.exception("history maintenance failed")
