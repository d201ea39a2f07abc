"""A simulated hypervisor: the allocations of a host that has no Xen.

The simulator and the tests run the real controller against Ballast's own
xenstore server; this class stands in for what ``xl`` would report. Each
domain's allocation moves towards its balloon target at a finite rate when
:meth:`SimulatedHypervisor.advance` is called (the simulated balloon driver),
and the host's free memory is what the domains and dom0 leave.

:func:`lay_out_domain` writes what libxl writes into xenstore when it builds
a domain (name, ``vm`` path, ``memory/static-max``, ``memory/target``), so
the controller sees a simulated domain exactly as it would a real one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from orchestrator.errors import TransientError, UsageError
from orchestrator.hypervisor import DomainMemory, HostMemory
from orchestrator.xenstore.client import XenstoreOps

# Qubes' qmemman assumes a balloon moves about 100 MB/s; the default rate here.
DEFAULT_BALLOON_RATE_KB_S = 100 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class _Domain:
    memory: DomainMemory
    target_kb: int
    rate_kb_s: float
    cooperative: bool


class SimulatedHypervisor:
    """:class:`~orchestrator.hypervisor.Hypervisor` of a simulated host."""

    def __init__(self, *, total_kb: int, dom0_kb: int) -> None:
        if not 0 <= dom0_kb <= total_kb:
            raise UsageError("dom0 memory must be between 0 and the host's total")
        self.total_kb = total_kb
        self.dom0_kb = dom0_kb
        self._domains: dict[int, _Domain] = {}
        self._failures = 0
        self.calls = 0

    # ------------------------------------------------------------------ model

    def add_domain(
        self,
        *,
        domid: int,
        name: str,
        uuid: str,
        actual_kb: int,
        max_kb: int,
        rate_kb_s: float = DEFAULT_BALLOON_RATE_KB_S,
    ) -> None:
        """A domain starts with ``actual_kb`` allocated and that as its target."""
        if domid in self._domains or domid == 0:
            raise UsageError(f"domain {domid} already exists")
        if actual_kb > self.free_kb():
            raise UsageError(f"not enough free memory to build domain {domid}")
        self._domains[domid] = _Domain(
            memory=DomainMemory(domid=domid, name=name, uuid=uuid, actual_kb=actual_kb,
                                max_kb=max_kb, target_kb=actual_kb, kind="pv"),
            target_kb=actual_kb,
            rate_kb_s=rate_kb_s,
            cooperative=True,
        )

    def remove_domain(self, domid: int) -> None:
        """The domain is destroyed; its memory returns to the host."""
        self._domains.pop(domid, None)

    def set_target(self, domid: int, target_kb: int) -> None:
        """What the domain's balloon driver read from ``memory/target``."""
        dom = self._domains[domid]
        self._domains[domid] = replace(dom, target_kb=target_kb)

    def set_actual(self, domid: int, actual_kb: int) -> None:
        """Force a domain's allocation (a guest that does what it likes)."""
        dom = self._domains[domid]
        self._domains[domid] = replace(dom, memory=replace(dom.memory, actual_kb=actual_kb))

    def set_cooperative(self, domid: int, cooperative: bool) -> None:
        """An uncooperative domain's balloon ignores its target."""
        dom = self._domains[domid]
        self._domains[domid] = replace(dom, cooperative=cooperative)

    def set_paused(self, domid: int, paused: bool) -> None:
        """Pause or unpause a domain."""
        dom = self._domains[domid]
        self._domains[domid] = replace(dom, memory=replace(dom.memory, paused=paused))

    def fail_next(self, calls: int) -> None:
        """Make the next ``calls`` queries fail as a wedged toolstack would."""
        self._failures = calls

    def free_kb(self) -> int:
        """Host memory not held by dom0 or any domain."""
        used = self.dom0_kb + sum(d.memory.actual_kb for d in self._domains.values())
        return self.total_kb - used

    def actual_kb(self, domid: int) -> int:
        """A domain's allocation now."""
        return self._domains[domid].memory.actual_kb

    def advance(self, dt_s: float) -> None:
        """Move every balloon towards its target for ``dt_s`` seconds.

        Shrinks go first, so their memory is free for grows in the same step;
        a grow never takes more than the host has free (Xen's populate_physmap
        fails when the host is out of memory, and the driver retries later).
        """
        order = sorted(
            self._domains.items(),
            key=lambda item: item[1].target_kb - item[1].memory.actual_kb,
        )
        for domid, dom in order:
            if not dom.cooperative or dom.memory.paused:
                continue
            gap = dom.target_kb - dom.memory.actual_kb
            step = int(min(abs(gap), dom.rate_kb_s * dt_s))
            if gap > 0:
                step = max(min(step, self.free_kb()), 0)
                new = dom.memory.actual_kb + step
            else:
                new = dom.memory.actual_kb - step
            new = min(new, dom.memory.max_kb or new)
            self._domains[domid] = replace(dom, memory=replace(dom.memory, actual_kb=new))

    # ------------------------------------------------------------ Hypervisor

    def _query(self) -> None:
        self.calls += 1
        if self._failures > 0:
            self._failures -= 1
            raise TransientError("simulated hypervisor: toolstack not answering")

    async def host_memory(self) -> HostMemory:
        self._query()
        return HostMemory(total_kb=self.total_kb, free_kb=self.free_kb())

    async def domains(self) -> Mapping[int, DomainMemory]:
        self._query()
        result = {
            0: DomainMemory(domid=0, name="Domain-0", uuid=None, actual_kb=self.dom0_kb)
        }
        for domid, dom in self._domains.items():
            result[domid] = dom.memory
        return result


async def lay_out_domain(
    xs: XenstoreOps,
    *,
    domid: int,
    name: str,
    uuid: str,
    static_max_kb: int,
    target_kb: int,
) -> None:
    """Write the keys libxl writes for a new domain (xs must be privileged)."""
    base = f"/local/domain/{domid}"
    await xs.write(f"{base}/name", name)
    await xs.write(f"{base}/vm", f"/vm/{uuid}")
    await xs.write(f"{base}/memory/static-max", str(static_max_kb))
    await xs.write(f"{base}/memory/target", str(target_kb))
    await xs.write(f"/vm/{uuid}/name", name)
