"""The running agent: sample, report over xenstore, act on directives.

One ``Agent`` owns its state across xenstore connections. Each connection is a
session of two named tasks: the reporter samples the ``MemorySource`` every
``sample_interval_s`` and writes what :func:`agents.core.plan_writes` says; the
directive task watches ``~/data/ballast/directive`` and hands new directives to
the actuator, which runs in its own task outside the session so a xenstore
hiccup never interrupts a swapoff. When xenstore goes away the agent retries
with capped, jittered exponential backoff; ``stop`` ends everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from agents.actuators import ShrinkActuator
from agents.core import AgentState, plan_writes
from agents.problems import ProblemLog
from agents.schema import Directive, DirectiveAck, InvalidDocument, decode_directive, decode_report
from agents.settings import AgentSettings
from agents.source import MemorySource, Problem
from orchestrator.errors import TransientError
from orchestrator.xenstore.errors import (
    AccessDeniedError,
    NoEntryError,
    XenstoreConnectionError,
    XenstoreError,
    XenstoreTimeoutError,
)

if TYPE_CHECKING:
    from orchestrator.xenstore.client import WatchStream

log = logging.getLogger("ballast.agent")


class AgentStore(Protocol):
    """The part of the xenstore client the agent uses."""

    async def read(self, path: str) -> bytes:
        """Value of ``path``; ``NoEntryError`` if absent."""
        ...

    async def write(self, path: str, value: bytes) -> None:
        """Set ``path`` to ``value``."""
        ...

    def watch(self, path: str) -> WatchStream:
        """Changes at or below ``path``; the first event comes at once and again
        after the client reconnected by itself."""
        ...


Connect = Callable[[], AbstractAsyncContextManager[AgentStore]]


def _connection_lost(exc: BaseException) -> bool:
    """Whether an error means the connection is gone (vs. one refused request)."""
    if isinstance(exc, XenstoreConnectionError | XenstoreTimeoutError | ConnectionError):
        return True
    return isinstance(exc, OSError | TransientError) and not isinstance(exc, XenstoreError)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


class Agent:
    """The guest agent. Create, then ``await agent.run(stop)``."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        source: MemorySource,
        actuator: ShrinkActuator,
        connect: Connect,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``clock``: seconds, monotonic (default: the event loop's clock);
        ``rng``: for backoff jitter."""
        self.settings = settings
        self.state = AgentState()
        self.problems = ProblemLog(log)
        self._source = source
        self.actuator = actuator
        self._connect = connect
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._resumed = False
        self._wrote = False
        self._acting: asyncio.Task[None] | None = None
        self._pending: Directive | None = None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # --- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; reconnect with backoff when xenstore fails."""
        failures = 0
        try:
            while not stop.is_set():
                self._wrote = False
                session = asyncio.create_task(self._session(), name="agent-session")
                stopping = asyncio.create_task(stop.wait(), name="agent-stop")
                await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not session.done():
                    session.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await session
                    break
                stopping.cancel()
                error = session.exception()
                if error is None:  # the session ends only on stop or failure
                    continue
                if not all(_connection_lost(leaf) for leaf in _leaves(error)):
                    raise error
                failures = 0 if self._wrote else failures + 1
                self.problems.raise_("xenstore", Problem(
                    key="unavailable", message=f"xenstore unavailable: {_leaves(error)[0]}"))
                delay = self._backoff_s(failures)
                log.debug("reconnecting in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await self._stop_acting()

    def _backoff_s(self, failures: int) -> float:
        base = self.settings.backoff_initial_s * 2.0 ** min(failures, 30)
        # +-20 % jitter: a thousand guests must not reconnect in lockstep.
        return min(base, self.settings.backoff_max_s) * self._rng.uniform(0.8, 1.2)

    async def _stop_acting(self) -> None:
        self._pending = None
        task = self._acting
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _session(self) -> None:
        async with self._connect() as store:
            self.state = self.state.reconnected()
            if not self._resumed:
                await self._resume(store)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._report_loop(store), name="agent-report")
                group.create_task(self._directive_loop(store), name="agent-directive")

    async def _resume(self, store: AgentStore) -> None:
        """Carry on from the report a previous run left (sequence, last outcome)."""
        self._resumed = True
        try:
            previous = decode_report(await store.read(self.settings.report_key))
        except (NoEntryError, InvalidDocument):
            return
        except AccessDeniedError as exc:
            self._refused(self.settings.report_key, exc)
            return
        uptime_s = self._source.sample().uptime_s
        self.state = self.state.resumed(previous, uptime_s=uptime_s)
        log.info("continuing after report %d", previous.seq)

    # --- reporting -----------------------------------------------------------------

    async def _report_loop(self, store: AgentStore) -> None:
        # PyxsClient reconnects by itself under a session; what it wrote before
        # may be gone (a restarted xenstored), so count its connections.
        connects = getattr(store, "connects", 0)
        interval_s = self.settings.sample_interval_s
        next_s = self._now()
        while True:
            now_connects = getattr(store, "connects", 0)
            if now_connects != connects:
                connects = now_connects
                self.state = self.state.reconnected()
            # Ticks keep a fixed cadence and are timed by their scheduled time, so
            # a heartbeat of n intervals is exactly n ticks whatever the jitter.
            await self.tick(store, now_s=min(next_s, self._now()))  # early when woken
            next_s += interval_s
            now_s = self._now()
            if next_s < now_s:
                next_s = now_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), next_s - now_s)
            self._wake.clear()

    async def tick(self, store: AgentStore, *, now_s: float | None = None) -> None:
        """Sample once and write what is due (``now_s``: the tick's time)."""
        sample = self._source.sample()
        self.problems.update("source", sample.problems)
        if now_s is None:
            now_s = self._now()
        plan = plan_writes(self.state, sample, now_s=now_s, policy=self.settings.policy)
        if plan.unreportable is not None:
            self.problems.raise_("report", Problem(key="unreportable", message=plan.unreportable))
        else:
            self.problems.clear("report")
        writes: list[tuple[str, bytes]] = []
        if plan.meminfo is not None:
            for name, key in (("total", self.settings.meminfo_total_key),
                              ("free", self.settings.meminfo_free_key)):
                if name in plan.meminfo:
                    writes.append((key, str(plan.meminfo[name]).encode()))
        # The report last: when the controller wakes on it, meminfo_* agree.
        if plan.report is not None:
            writes.append((self.settings.report_key, plan.report_bytes))
            log.debug("report %d: %s", plan.report.seq, plan.reason)
        for key, value in writes:
            try:
                await store.write(key, value)
            except XenstoreError as exc:
                if _connection_lost(exc):
                    raise
                self._refused(key, exc)
                self.state = self.state.refused(now_s=now_s, policy=self.settings.policy)
                return
            self.problems.clear("xenstore", f"refused:{key}")
        if writes:
            self._wrote = True
            self.problems.clear("xenstore", "unavailable")
        self.state = self.state.after_writes(plan, now_s=now_s)

    def _refused(self, key: str, exc: XenstoreError) -> None:
        self.problems.raise_("xenstore", Problem(key=f"refused:{key}",
                                                 message=f"xenstore refused: {exc}"))

    # --- directives ----------------------------------------------------------------

    async def _directive_loop(self, store: AgentStore) -> None:
        async with store.watch(self.settings.directive_key) as changes:
            async for _path in changes:
                await self._check_directive(store)

    async def _check_directive(self, store: AgentStore) -> None:
        key = self.settings.directive_key
        try:
            raw = await store.read(key)
        except NoEntryError:
            return
        except AccessDeniedError as exc:
            self._refused(key, exc)
            return
        try:
            directive = decode_directive(raw)
        except InvalidDocument as exc:
            self.problems.raise_("directive", Problem(key="invalid",
                                                      message=f"ignoring directive: {exc}"))
            return
        self.problems.clear("directive")
        if not self.state.is_new_directive(directive.seq):
            return
        self.state = self.state.taking_up(directive.seq)
        if self._acting is not None and not self._acting.done():
            self._pending = directive  # the newest waits; older pending ones are dropped
            return
        self._start(directive)

    def _start(self, directive: Directive) -> None:
        self._acting = asyncio.create_task(self._act(directive),
                                           name=f"agent-shrink-{directive.seq}")

    async def _act(self, directive: Directive) -> None:
        log.info("directive %d: swap target %s KiB (%s)", directive.seq,
                 directive.swap_target_kb, self.actuator.name)
        try:
            ack = await self.actuator.apply(directive)
        except Exception as exc:  # an actuator bug must not kill the agent
            log.exception("swap-shrink actuator failed")
            ack = DirectiveAck(seq=directive.seq, outcome="refused",
                               detail=f"actuator failed: {exc}"[:200])
        log.info("directive %d: %s %s", ack.seq, ack.outcome, ack.detail)
        self.state = self.state.with_ack(ack)
        self._wake.set()
        pending, self._pending = self._pending, None
        if pending is not None:
            self._start(pending)
