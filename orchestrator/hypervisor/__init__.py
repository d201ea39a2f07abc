"""Host and per-domain memory as the hypervisor sees it.

The controller needs two figures xenstore does not hold: how much memory the
host has free, and how much each domain actually has (its allocation, which
lags the balloon target). They come through the small :class:`Hypervisor`
protocol, with one implementation for a real dom0 (``xl``, in
:mod:`orchestrator.hypervisor.xl`) and one in the simulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class HostMemory:
    """Host-wide memory figures, KiB."""

    total_kb: int
    """Physical memory the hypervisor manages."""
    free_kb: int
    """Memory not allocated to any domain (includes what claims reserve)."""
    outstanding_claims_kb: int = 0
    """Memory claimed by domains being built, not yet allocated."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainMemory:
    """One domain's allocation as the hypervisor reports it."""

    domid: int
    name: str
    uuid: str | None
    """Domain UUID, lower case; None where the toolstack did not say."""
    actual_kb: int
    """Pages the domain holds now, KiB (``xl list`` gives whole MiB)."""
    max_kb: int | None = None
    """The domain's configured maximum (``max_memkb``), KiB, where known."""
    target_kb: int | None = None
    """The configured target (``target_memkb``) at creation, KiB, where known."""
    kind: str | None = None
    """Domain type: ``pv``, ``pvh`` or ``hvm``, where known."""
    paused: bool = False
    """The domain is paused and cannot move its balloon."""


class Hypervisor(Protocol):
    """What the controller asks the hypervisor each cycle."""

    async def host_memory(self) -> HostMemory:
        """Current host totals; raises TransientError when unavailable."""
        ...

    async def domains(self) -> Mapping[int, DomainMemory]:
        """Every running domain by domid, dom0 included."""
        ...
