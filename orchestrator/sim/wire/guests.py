"""The simulated host under a wire-level run: allocations, guests' memory, balloon drivers.

:class:`SimHost` is the physical machine. It holds the
:class:`~orchestrator.hypervisor.simulated.SimulatedHypervisor` (what Xen
says each domain holds) and one guest memory model per VM
(:mod:`orchestrator.sim.model`, unchanged), and moves them together in
steps of one virtual second, the bench harness's step, whenever anybody
looks: an agent sampling, the controller querying the hypervisor, a
balloon driver taking a new target. So every observer sees the host as it
is at its own virtual moment, and nothing runs while nobody looks.

Each step follows what a host does. A guest whose target is below its
allocation gives memory back first, as far as its model says it can (the
balloon stops where nothing more can be reclaimed); the hypervisor then
moves every allocation at the balloon rate, and a growing guest gets only
what the host has free (Xen's populate_physmap fails on an empty host); the
growing guests' models then see the allocation the hypervisor gave them.

Around it, the guest side of each VM: :class:`ModelSource` is the agent's
``MemorySource`` (the model rendered as a sample, exactly the figures of
report schema v1), :class:`ModelShrinkActuator` carries out swap-shrink
directives in the model, and :func:`balloon_driver` is the guest kernel's
balloon driver: it watches ``memory/target`` over the guest's own
connection and hands every new value to the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agents.change import ReportPolicy
from agents.schema import Directive, DirectiveAck
from agents.settings import AgentSettings, Connection
from agents.source import OPTIONAL_FIELDS, REQUIRED_FIELDS, MemorySample
from orchestrator.hypervisor import DomainMemory, HostMemory
from orchestrator.hypervisor.simulated import SimulatedHypervisor
from orchestrator.sim.harness import initial_allocations
from orchestrator.sim.metrics import Accumulator, RunMetrics
from orchestrator.sim.model import GuestState, ModelParams, apply_directive, boot, report, step
from orchestrator.sim.scenario import Scenario, VmSpec
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.errors import NoEntryError, XenstoreError

log = logging.getLogger("ballast.sim")

# The step of the guest models, virtual seconds: the bench harness's, so a
# wire-level run and a fast run of the same scenario follow the same physics.
STEP_S: Final = 1.0
# A swap-shrink directive still unfinished after this long is reported
# ``partial``, as the agent's selfballoon actuator does (docs/agent.md).
SHRINK_GIVE_UP_S: Final = 600.0
# A shrink that pulled nothing back for this long has no room: ``partial``.
SHRINK_STALL_S: Final = 30.0
# The agent's defaults in virtual seconds (docs/agent.md): a heartbeat every
# 30 s, at most one report per second on changes.
AGENT_HEARTBEAT_S: Final = 30.0
AGENT_MIN_INTERVAL_S: Final = 1.0
# Wall seconds: how long one xenstore request may take. A real I/O timeout,
# not simulated time, so never scaled.
XENSTORE_TIMEOUT_S: Final = 5.0
_UUID_NAMESPACE: Final = uuidlib.UUID("6f0d3c7e-2b0e-4a63-9a51-6d1f3b8f2c10")


def vm_uuid(host_name: str, scenario: str, vm: str) -> str:
    """A stable uuid for one VM of one scenario on one host: reruns continue its history."""
    return str(uuidlib.uuid5(_UUID_NAMESPACE, f"{host_name}/{scenario}/{vm}"))


def agent_settings(socket: Path, *, speed: float, interval_s: float) -> AgentSettings:
    """The real agent's settings with its intervals in virtual time: the agent
    keeps time on the event loop's (wall) clock, so each interval is given
    divided by ``speed``. ``interval_s``: sampling interval, virtual seconds."""
    return AgentSettings(
        connection=Connection(kind="socket", path=str(socket)),
        sample_interval_s=interval_s / speed,
        policy=ReportPolicy(
            heartbeat_s=AGENT_HEARTBEAT_S / speed, min_interval_s=AGENT_MIN_INTERVAL_S / speed
        ),
        shrink="none",  # the simulated actuator is handed to the agent directly
        xenstore_timeout_s=XENSTORE_TIMEOUT_S,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SimDomain:
    """One VM of the scenario as a domain of the simulated host."""

    domid: int
    name: str
    uuid: str
    static_max_kb: int
    start_kb: int
    """Allocation (and ``memory/target``) the domain is built with."""


def plan_domains(
    scenario: Scenario, *, host_name: str, params: ModelParams
) -> tuple[SimDomain, ...]:
    """The domains a scenario's host is built with: domids from 1 in scenario
    order (as libxl numbers them), stable uuids, the toolstack's start sizes."""
    configs = [vm.guest_config(params) for vm in scenario.vms]
    start = initial_allocations(scenario, configs)
    return tuple(
        SimDomain(
            domid=i + 1,
            name=vm.name,
            uuid=vm_uuid(host_name, scenario.name, vm.name),
            static_max_kb=vm.static_max_kb,
            start_kb=alloc,
        )
        for i, (vm, alloc) in enumerate(zip(scenario.vms, start, strict=True))
    )


class _LiveHypervisor:
    """The controller's :class:`~orchestrator.hypervisor.Hypervisor`: the
    simulated hypervisor, brought up to the present before each answer."""

    def __init__(self, host: SimHost) -> None:
        self._host = host

    async def host_memory(self) -> HostMemory:
        self._host.advance()
        return await self._host.hv.host_memory()

    async def domains(self) -> Mapping[int, DomainMemory]:
        self._host.advance()
        return await self._host.hv.domains()


class SimHost:
    """The physical host of a wire-level run, in virtual time."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        clock: Callable[[], float],
        host_name: str,
        params: ModelParams | None = None,
    ) -> None:
        """``clock``: virtual seconds since the start of the run."""
        self.scenario = scenario
        self.params = params or ModelParams()
        self._clock = clock
        configs = [vm.guest_config(self.params) for vm in scenario.vms]
        self.hv = SimulatedHypervisor(total_kb=scenario.memory_kb, dom0_kb=scenario.dom0_reserve_kb)
        self.domains = plan_domains(scenario, host_name=host_name, params=self.params)
        start = [dom.start_kb for dom in self.domains]
        for dom in self.domains:
            self.hv.add_domain(
                domid=dom.domid, name=dom.name, uuid=dom.uuid, actual_kb=dom.start_kb,
                max_kb=dom.static_max_kb, rate_kb_s=self.params.balloon_rate_kb_s,
            )
        self.states: list[GuestState] = [
            boot(c, a) for c, a in zip(configs, start, strict=True)
        ]
        self.targets_kb: list[int] = list(start)
        """The balloon target each guest's driver last read, KiB."""
        self._asked_kb: list[int] = list(start)
        """What each driver last asked the hypervisor for, KiB."""
        self._index = {dom.domid: i for i, dom in enumerate(self.domains)}
        self._score = Accumulator(scenario, configs)
        self.t_s = 0.0
        """Virtual time the host has been moved to, seconds."""
        self.hypervisor = _LiveHypervisor(self)
        """What the controller asks (host and domain memory, always current)."""

    def spec(self, domid: int) -> VmSpec:
        """The scenario's description of a domain."""
        return self.scenario.vms[self._index[domid]]

    def state(self, domid: int) -> GuestState:
        """A guest's memory now."""
        self.advance()
        return self.states[self._index[domid]]

    # ------------------------------------------------------------------ time

    def advance(self) -> None:
        """Move the host to the present, one virtual second at a time."""
        now = self._clock()
        while self.t_s + STEP_S <= now:
            self._step(STEP_S)

    def _step(self, dt_s: float) -> None:
        hv = self.hv
        states = self.states
        prev = [s.alloc_kb for s in states]
        asked = self._asked_kb
        moving = False
        growing: list[int] = []
        # Shrinking guests first: the model says how far each can give, and the
        # driver asks the hypervisor to take exactly that.
        for i, dom in enumerate(self.domains):
            target = self.targets_kb[i]
            if target < prev[i]:
                states[i] = state = step(states[i], target, dt_s)
                want = state.alloc_kb
            else:
                want = target
                growing.append(i)
            if want != asked[i]:
                hv.set_target(dom.domid, want)
                asked[i] = want
            moving = moving or want != prev[i]
        # The hypervisor moves the allocations at the balloon rate; growth is
        # bounded by what the host has free after the shrinks.
        if moving:
            hv.advance(dt_s)
        for i in growing:
            states[i] = step(states[i], hv.actual_kb(self.domains[i].domid), dt_s)
        self.t_s += dt_s
        self._score.add(
            t_s=self.t_s,
            dt_s=dt_s,
            allocs_kb=[s.alloc_kb for s in states],
            prev_allocs_kb=prev,
            needs_kb=[s.need_kb for s in states],
            psi_some_avg10=[s.pressure.some_avg10 for s in states],
            targets_kb=self.targets_kb,
        )

    # --------------------------------------------------------------- guests

    def set_target(self, domid: int, target_kb: int) -> None:
        """The guest's balloon driver read a new ``memory/target``."""
        self.advance()  # what happened until now happened under the old target
        i = self._index[domid]
        self.targets_kb[i] = max(0, min(target_kb, self.domains[i].static_max_kb))

    def shrink_swap(self, domid: int, *, seq: int, swap_target_kb: int | None) -> None:
        """The guest's agent starts a swap-shrink directive."""
        self.advance()
        i = self._index[domid]
        self.states[i] = apply_directive(self.states[i], seq=seq, swap_target_kb=swap_target_kb)

    def sample(self, domid: int) -> MemorySample:
        """What the guest's kernel would show its agent now."""
        i = self._index[domid]
        state = self.state(domid)
        rendered = report(state)
        # Every figure of the report schema the model renders, whatever the
        # schema holds (agents.source keeps the two lists equal to Report's).
        figures = {name: getattr(rendered, name) for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}
        return MemorySample(**figures, balloon_target_kb=self.targets_kb[i])

    # --------------------------------------------------------------- scores

    def metrics(self) -> RunMetrics:
        """The run scored as ``ballast bench control`` scores a fast run, so far."""
        self.advance()
        return self._score.finish(
            swapins=sum(s.counters.swapin_faults for s in self.states),
            ooms=sum(s.counters.ooms for s in self.states),
        )

    def need_kb(self) -> Sequence[int]:
        """Every guest's need now (the allocation its demand runs in without faults)."""
        self.advance()
        return [s.need_kb for s in self.states]


class ModelSource:
    """The agent's ``MemorySource`` for one simulated guest."""

    def __init__(self, host: SimHost, domid: int) -> None:
        self._host = host
        self._domid = domid

    def sample(self) -> MemorySample:
        """The guest's memory now, every figure known."""
        return self._host.sample(self._domid)


class ModelShrinkActuator:
    """Swap self-shrink in the model: pages come back into RAM at the model's
    swapoff rate, and only into free room (the guard a real actuator checks)."""

    name = "simulated"

    def __init__(self, host: SimHost, domid: int, *, poll_s: float) -> None:
        """``poll_s``: wall seconds between looks at the guest's swap (one virtual second)."""
        self._host = host
        self._domid = domid
        self._poll_s = poll_s

    async def apply(self, directive: Directive) -> DirectiveAck:
        """Shrink until the target is met, no page came back for a while, or time is up."""
        host, domid = self._host, self._domid
        target = directive.swap_target_kb
        host.shrink_swap(domid, seq=directive.seq, swap_target_kb=target)
        if target is None:
            return DirectiveAck(seq=directive.seq, outcome="done", detail="no swap target")
        start_s = host.state(domid).t_s
        best_kb = host.state(domid).swapped_kb
        best_s = start_s
        while True:
            state = host.state(domid)
            if state.swapped_kb <= target:
                return DirectiveAck(seq=directive.seq, outcome="done",
                                    detail=f"swap use {state.swapped_kb} KiB")
            if state.swapped_kb < best_kb:
                best_kb, best_s = state.swapped_kb, state.t_s
            if state.t_s - best_s >= SHRINK_STALL_S or state.t_s - start_s >= SHRINK_GIVE_UP_S:
                return DirectiveAck(seq=directive.seq, outcome="partial",
                                    detail=f"no room: swap use {state.swapped_kb} KiB")
            await asyncio.sleep(self._poll_s)


async def balloon_driver(
    host: SimHost, domid: int, client: PyxsClient, stop: asyncio.Event
) -> None:
    """The guest's balloon driver: follow ``memory/target`` until ``stop``.

    It watches the key over the guest's own connection (a guest may read, not
    write, its ``memory/``); every event re-reads the value, so a burst of
    writes ends at the newest. A value it cannot parse is ignored, as the
    Linux driver ignores it.
    """
    path = f"/local/domain/{domid}/memory/target"

    async def follow() -> None:
        while True:
            try:
                async with client.watch(path) as events:
                    async for _ in events:
                        try:
                            raw = await client.read(path)
                        except NoEntryError:
                            continue
                        try:
                            host.set_target(domid, int(raw))
                        except ValueError:
                            log.warning("domain %d: ignoring memory/target %r", domid, raw[:32])
            except XenstoreError as exc:
                log.warning("domain %d: balloon driver lost xenstore: %s", domid, exc)
                await asyncio.sleep(0.5)

    task = asyncio.create_task(follow(), name=f"balloon-{domid}")
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
