"""One host's MQTT presence: retained status and VM states, events, policy commands.

The controller holds a :class:`Telemetry` for its whole run::

    async with Telemetry(settings, apply=apply_policy_command) as telemetry:
        ...
        telemetry.publish_status(status)            # never awaits the broker
        telemetry.publish_vm_state("web-1", state)
        telemetry.clear_vm("gone-vm")

Every ``publish_*`` call encodes the message, remembers the latest retained
value per topic, appends to a bounded queue and returns; a retained value
equal to the one already remembered is not sent again, so a level-triggered
controller may publish every VM every cycle and only changes go out. One task keeps a
connection: it connects with exponential backoff, subscribes to the command
topics, republishes every remembered retained value (status, VM states,
pending clears) after each (re)connect, then sends the queue. When the queue
is full a message is dropped and counted (:attr:`Telemetry.stats`); a dropped
retained value is sent again from memory once the queue has drained, so the
broker converges on the latest state. The last will marks the host offline
if the process dies; a clean exit publishes the same offline status itself.

Commands are decoded by :mod:`orchestrator.telemetry.commands`; what passes
goes to the injected ``apply`` callback, and every command gets a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import aiomqtt

from orchestrator import __version__
from orchestrator.errors import BallastError, TransientError, UsageError
from orchestrator.telemetry import _mqtt
from orchestrator.telemetry.commands import (
    ApplyResult,
    ClientIdentity,
    CommandError,
    CommandReply,
    ErrorKind,
    PolicyCommand,
    decode_command,
    encode_reply,
    reply_topic,
)
from orchestrator.telemetry.messages import (
    EventMsg,
    HostOfflineMsg,
    HostStatusMsg,
    VmStateMsg,
    encode_event,
    encode_status,
    encode_vm_state,
)
from orchestrator.telemetry.settings import TelemetrySettings
from orchestrator.telemetry.topics import HostTopics, InvalidName

log = logging.getLogger("ballast.telemetry")

ApplyCallback = Callable[[PolicyCommand, ClientIdentity], Awaitable[ApplyResult]]
"""Carry out a decoded policy command; raise UsageError for an invalid change,
TransientError for "try again later". Wired by the controller to the policy
validator and the store (audit source ``mqtt``, ``who`` = identity.audit_name)."""

# Publishes awaiting their acknowledgement at once; a multiple of what one
# cycle of a large host (1,000 VMs) produces per round trip.
_PUBLISH_WINDOW: Final = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryStats:
    """Counters for metrics and ``ballast status``; all since the Telemetry started."""

    connected: bool
    """True while a broker connection is up (and the command topics subscribed)."""
    queued: int
    """Messages waiting to be sent now."""
    published: int
    """Messages the broker accepted (QoS 1) or that were written out (QoS 0)."""
    dropped: int
    """Messages given up: queue full, or lost with a failed connection."""
    republished: int
    """Retained values sent again after a reconnect or a drop."""
    connects: int
    """Successful connections (the first one included)."""
    commands: int
    """Commands received (valid or not)."""
    commands_rejected: int
    """Commands answered with an error."""
    unchanged: int
    """Retained values not sent because they equal what was last published."""
    unpublishable: int
    """Calls refused because a host or VM name cannot be a topic level."""
    last_error: str | None
    """Why the last connection attempt or connection failed, if one did."""


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    retain: bool


class _GracefulStop(Exception):
    """Raised inside a session once the goodbye is out, to leave it cleanly."""


class Telemetry:
    """Async context manager owning one host's MQTT connection (see the module docstring)."""

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        apply: ApplyCallback | None = None,
        clock: Callable[[], float] = time.time,
        version: str = __version__,
    ) -> None:
        self._settings = settings
        self._topics = HostTopics(settings.topic_prefix, settings.host_name)
        self._apply = apply
        self._clock = clock
        self._version = version
        self._queue: deque[_Outgoing] = deque()
        # Latest retained payload per topic; b"" is a clear not yet sent.
        self._retained: dict[str, bytes] = {}
        # Retained topics whose latest value was dropped from a full queue.
        self._dirty: set[str] = set()
        # Per VM name: its topic, and the last state handed over.
        self._vm_topics: dict[str, str] = {}
        self._vm_states: dict[str, VmStateMsg] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connected = False
        self._published = 0
        self._dropped = 0
        self._republished = 0
        self._connects = 0
        self._commands = 0
        self._commands_rejected = 0
        self._unpublishable = 0
        self._unchanged = 0
        self._bad_names: set[str] = set()
        self._last_error: str | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None
        self._context: ssl.SSLContext | None = None

    # ---- lifecycle -------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._exit_stack is not None:
            raise RuntimeError("a Telemetry can be entered once")
        broker = self._settings.broker
        # Load TLS files now: a bad path stops the controller at start-up
        # with a clear message instead of failing every reconnect.
        self._context = _mqtt.tls_context(broker.tls) if broker.tls is not None else None
        stack = contextlib.AsyncExitStack()
        group = await stack.enter_async_context(asyncio.TaskGroup())
        self._task = group.create_task(self._run(), name="ballast-mqtt-connection")
        self._exit_stack = stack
        log.info("telemetry for %s via %s", self._settings.host_name, broker.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._exit_stack is not None and self._task is not None
        self._stopping.set()
        self._wake.set()
        # The session flushes, says goodbye and disconnects; a broker that does
        # not answer gets cut off after shutdown_timeout_s (the will then fires).
        await asyncio.wait({self._task}, timeout=self._settings.shutdown_timeout_s + 1.0)
        self._task.cancel()
        # The caller's own exception is not handed to the task group: it would
        # come back wrapped in an ExceptionGroup. It propagates unchanged.
        await self._exit_stack.__aexit__(None, None, None)

    # ---- the controller's API (never awaits) --------------------------------

    @property
    def topics(self) -> HostTopics:
        """This host's topics."""
        return self._topics

    @property
    def stats(self) -> TelemetryStats:
        """A snapshot of the counters."""
        return TelemetryStats(
            connected=self._connected,
            queued=len(self._queue),
            published=self._published,
            dropped=self._dropped,
            republished=self._republished,
            connects=self._connects,
            commands=self._commands,
            commands_rejected=self._commands_rejected,
            unchanged=self._unchanged,
            unpublishable=self._unpublishable,
            last_error=self._last_error,
        )

    def publish_status(self, status: HostStatusMsg) -> None:
        """Publish the host status (retained)."""
        self._put_retained(self._topics.status, encode_status(status))

    def publish_vm_state(self, name: str, state: VmStateMsg) -> None:
        """Publish one VM's state (retained); an unchanged state costs a comparison."""
        topic = self._vm_topic(name)
        if topic is None:
            return
        if self._vm_states.get(name) == state and topic not in self._dirty:
            self._unchanged += 1
            return
        self._vm_states[name] = state
        self._put_retained(topic, encode_vm_state(state))

    def clear_vm(self, name: str) -> None:
        """Remove a VM's retained state (the VM went away)."""
        topic = self._vm_topic(name)
        if topic is not None:
            self._vm_states.pop(name, None)
            self._vm_topics.pop(name, None)
            self._put_retained(topic, b"")

    def publish_event(self, event: EventMsg) -> None:
        """Publish an event (not retained; lost if dropped)."""
        self._enqueue(_Outgoing(self._topics.events, encode_event(event), retain=False))

    def _vm_topic(self, name: str) -> str | None:
        topic = self._vm_topics.get(name)
        if topic is not None:
            return topic
        try:
            topic = self._vm_topics[name] = self._topics.vm_state(name)
        except InvalidName as exc:
            # Documented in docs/mqtt.md: such a VM is controlled but not
            # published; say so once per name rather than every cycle.
            self._unpublishable += 1
            if name not in self._bad_names and len(self._bad_names) < 1000:
                self._bad_names.add(name)
                log.warning("VM %r is not published over MQTT: %s", name, exc)
            return None
        return topic

    def _put_retained(self, topic: str, payload: bytes) -> None:
        if self._retained.get(topic) == payload and topic not in self._dirty:
            # Level-triggered callers repeat unchanged states every cycle; the
            # broker already holds this one (or will get it on a resync).
            self._unchanged += 1
            return
        self._retained[topic] = payload
        if not self._enqueue(_Outgoing(topic, payload, retain=True)):
            self._dirty.add(topic)

    def _enqueue(self, item: _Outgoing) -> bool:
        if len(self._queue) >= self._settings.queue_size or self._stopping.is_set():
            self._dropped += 1
            return False
        self._queue.append(item)
        self._wake.set()
        return True

    # ---- the connection task -----------------------------------------------

    async def _run(self) -> None:
        delay_s = self._settings.reconnect_min_s
        failures = 0
        while not self._stopping.is_set():
            connects_before = self._connects
            graceful = False
            try:
                graceful = await self._session()
            except* (aiomqtt.MqttError, OSError) as group:
                error = group.exceptions[0]
                self._last_error = f"{type(error).__name__}: {error}"
                if failures == 0:
                    log.warning(
                        "MQTT broker %s: %s; retrying with backoff",
                        self._settings.broker.url,
                        self._last_error,
                    )
            if graceful:
                return
            if self._connects > connects_before:
                delay_s, failures = self._settings.reconnect_min_s, 0
            failures += 1
            # Jitter within [delay/2, delay]: hosts that lost the same broker
            # do not all come back in the same instant.
            pause_s = delay_s * (0.5 + random.random() / 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause_s)
            delay_s = min(delay_s * 2, self._settings.reconnect_max_s)

    async def _session(self) -> bool:
        """One connection's life: connect, resync, send and listen until it breaks.

        Returns True after a clean goodbye; raises MqttError/OSError otherwise.
        """
        broker = self._settings.broker
        offline = encode_status(HostOfflineMsg(version=self._version))
        will = aiomqtt.Will(self._topics.status, offline, qos=1, retain=True)
        client = _mqtt.make_client(
            broker, client_id=self._settings.client_id, context=self._context, will=will
        )
        graceful = False
        async with client:
            try:
                if self._apply is not None:
                    await client.subscribe(
                        [
                            _mqtt.subscription(self._topics.policy_set, broker, retained=False),
                            _mqtt.subscription(self._topics.policy_unset, broker, retained=False),
                        ]  # type: ignore[arg-type]
                    )
                # Connected means subscribed too: commands sent from now on arrive.
                self._connected = True
                self._connects += 1
                self._last_error = None
                if self._connects > 1:
                    log.info("MQTT broker %s: connected again", broker.url)
                self._resync()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send_loop(client, group), name="ballast-mqtt-send")
                    group.create_task(self._receive_loop(client), name="ballast-mqtt-receive")
            except* _GracefulStop:
                graceful = True
            finally:
                self._connected = False
        return graceful

    def _resync(self) -> None:
        """Put every remembered retained value first in the queue, events after."""
        events = [item for item in self._queue if not item.retain]
        self._queue.clear()
        self._dirty.clear()
        status = self._topics.status
        ordered = sorted(self._retained.items(), key=lambda kv: kv[0] != status)
        for topic, payload in ordered:
            self._queue.append(_Outgoing(topic, payload, retain=True))
        if self._connects > 1:
            self._republished += len(ordered)
        self._queue.extend(events)
        self._wake.set()

    async def _send_loop(self, client: aiomqtt.Client, group: asyncio.TaskGroup) -> None:
        window = asyncio.Semaphore(_PUBLISH_WINDOW)
        while True:
            if self._stopping.is_set():
                await self._goodbye(client, window)
                raise _GracefulStop
            if not self._queue and self._dirty:
                for topic in sorted(self._dirty):
                    if topic in self._retained:
                        self._queue.append(_Outgoing(topic, self._retained[topic], retain=True))
                        self._republished += 1
                self._dirty.clear()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue.popleft()
            await window.acquire()
            task = group.create_task(self._publish(client, item), name="ballast-mqtt-publish")
            task.add_done_callback(lambda _task: window.release())

    async def _publish(self, client: aiomqtt.Client, item: _Outgoing) -> None:
        try:
            await client.publish(
                item.topic, item.payload, qos=self._settings.qos, retain=item.retain
            )
        except (aiomqtt.MqttError, asyncio.CancelledError) as exc:
            # The connection is failing (or the session ends with this still in
            # flight); the next session republishes retained values from memory.
            self._dropped += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._published += 1
        if item.retain and not item.payload and self._retained.get(item.topic) == b"":
            del self._retained[item.topic]

    async def _goodbye(self, client: aiomqtt.Client, window: asyncio.Semaphore) -> None:
        """Flush what is queued (within half the shutdown time), then publish offline."""
        loop = asyncio.get_running_loop()
        half_s = self._settings.shutdown_timeout_s / 2
        deadline = loop.time() + half_s
        pending: list[asyncio.Task[None]] = []
        while self._queue and loop.time() < deadline:
            item = self._queue.popleft()
            pending.append(
                asyncio.create_task(self._publish(client, item), name="ballast-mqtt-flush")
            )
            if len(pending) >= _PUBLISH_WINDOW:
                await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
                pending = [task for task in pending if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
        self._dropped += len(self._queue)
        self._queue.clear()
        goodbye = encode_status(HostOfflineMsg(version=self._version, updated=self._clock()))
        try:
            await client.publish(self._topics.status, goodbye, qos=1, retain=True, timeout=half_s)
        except aiomqtt.MqttError as exc:
            log.warning("could not publish the offline status: %s", exc)

    # ---- commands ------------------------------------------------------------

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        # Iterating also notices a lost connection (raises MqttError).
        async for message in client.messages:
            topic = message.topic.value
            if topic == self._topics.policy_set:
                await self._command(client, message, unset=False)
            elif topic == self._topics.policy_unset:
                await self._command(client, message, unset=True)

    async def _command(
        self, client: aiomqtt.Client, message: aiomqtt.Message, *, unset: bool
    ) -> None:
        if message.retain:
            # A retained command is replayed on every subscribe; applying it
            # again each reconnect would surprise everyone. MQTT 5 hosts ask
            # the broker not to send these at all.
            log.warning("ignored a retained command on %s", message.topic.value)
            return
        self._commands += 1
        payload = message.payload if isinstance(message.payload, bytes) else b""
        response_topic, correlation = _mqtt.response_info(message)
        reply = await self._answer(payload, unset=unset)
        if not reply.ok:
            self._commands_rejected += 1
        topic = reply_topic(self._topics, response_topic, reply.request_id)
        props = _mqtt.publish_properties(self._settings.broker, correlation=correlation)
        try:
            await client.publish(topic, encode_reply(reply), qos=1, properties=props)
        except aiomqtt.MqttError as exc:
            log.warning("could not send the reply to a policy command on %s: %s", topic, exc)

    async def _answer(self, payload: bytes, *, unset: bool) -> CommandReply:
        try:
            request = decode_command(
                payload, unset=unset, max_bytes=self._settings.max_command_bytes
            )
        except CommandError as exc:
            return CommandReply.failure(
                ErrorKind.BAD_REQUEST, str(exc), request_id=exc.request_id, vm=exc.vm
            )
        assert self._apply is not None
        vm, rid = request.command.vm, request.request_id
        try:
            result = await self._apply(request.command, request.client)
        except UsageError as exc:
            return CommandReply.failure(ErrorKind.REJECTED, str(exc), request_id=rid, vm=vm)
        except TransientError as exc:
            return CommandReply.failure(ErrorKind.UNAVAILABLE, str(exc), request_id=rid, vm=vm)
        except BallastError as exc:
            log.error("policy command for %r failed: %s", vm, exc)
            return CommandReply.failure(ErrorKind.INTERNAL, str(exc), request_id=rid, vm=vm)
        except Exception:
            log.exception("policy command for %r failed", vm)
            return CommandReply.failure(
                ErrorKind.INTERNAL,
                "internal error on the host; its log has the details",
                request_id=rid,
                vm=vm,
            )
        return CommandReply.success(request, result)
