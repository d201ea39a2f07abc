"""What a controller sees and returns in the virtual-time harness.

Every controller compared by ``ballast bench control`` — Ballast's own law,
the peers' laws ported in ``baselines`` and the clairvoyant ``oracle`` — is
called once per its own interval with a :class:`FleetView` (the guests'
schema-v1 reports plus what dom0 knows) and returns a :class:`Decision`:
balloon targets and swap-shrink directives. Controllers may keep state
between calls (the peers do); the harness makes a fresh one for every run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agents.schema import Report
from orchestrator.sim.model import ModelParams
from orchestrator.sim.scenario import Scenario


class VmView:
    """One guest as dom0 sees it at a decision. Sizes KiB. Read-only.

    The report is rendered on first use: most controllers need every guest's
    report, the oracle none, and rendering is the costliest part of a cycle.
    """

    __slots__ = (
        "_render",
        "_report",
        "allocation_kb",
        "max_kb",
        "min_given",
        "min_kb",
        "name",
        "static_max_kb",
        "target_kb",
        "weight",
    )

    def __init__(
        self,
        *,
        name: str,
        render: Callable[[], Report],
        target_kb: int,
        allocation_kb: int,
        static_max_kb: int,
        min_kb: int,
        max_kb: int,
        min_given: bool,
        weight: float,
    ) -> None:
        self.name = name
        """The guest's name."""
        self._render = render
        self._report: Report | None = None
        self.target_kb = target_kb
        """The balloon target currently written."""
        self.allocation_kb = allocation_kb
        """What the domain holds now (Xen's view)."""
        self.static_max_kb = static_max_kb
        self.min_kb = min_kb
        """Policy minimum (0 when the scenario gives none)."""
        self.max_kb = max_kb
        """Policy maximum (static-max when the scenario gives none)."""
        self.min_given = min_given
        """Whether the scenario set a minimum."""
        self.weight = weight

    @property
    def report(self) -> Report:
        """The guest's report, schema v1, as its agent would have written it now."""
        if self._report is None:
            self._report = self._render()
        return self._report


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetView:
    """The whole host at one decision."""

    t_s: float
    """Virtual seconds since the start of the scenario."""
    host_memory_kb: int
    """RAM of the host."""
    budget_kb: int
    """Memory the guests may hold together (host memory minus dom0's reserve)."""
    free_kb: int
    """Budget not held by any guest now."""
    vms: tuple[VmView, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A controller's output for one cycle."""

    targets_kb: Mapping[str, int]
    """New balloon targets, KiB; a guest not listed keeps its target."""
    swap_targets_kb: Mapping[str, int | None] = field(default_factory=dict)
    """Swap-shrink directives: bring swap use down to this many KiB."""


class Controller(Protocol):
    """A memory controller under test."""

    @property
    def interval_s(self) -> float:
        """Seconds between two decisions."""
        ...

    def decide(self, view: FleetView) -> Decision:
        """Targets (and directives) for the fleet as seen now."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """What a controller factory may know about the run it is made for."""

    scenario: Scenario
    params: ModelParams
    dt_s: float
    """The harness's time step, s."""
    start_kb: tuple[int, ...]
    """Every guest's allocation at t=0, in scenario order."""


ControllerFactory = Callable[[RunContext], Controller]
"""Makes a fresh controller for one run of one scenario."""
