"""``static``: every guest at its maximum, the configuration without ballooning."""

from __future__ import annotations

from orchestrator.sim.controllers import Decision, FleetView, RunContext


class Static:
    """Holds every guest at its maximum (``max_mb``, else static-max)."""

    def __init__(self, context: RunContext) -> None:
        del context

    @property
    def interval_s(self) -> float:
        """Static looks once a minute; nothing it sees changes its answer."""
        return 60.0

    def decide(self, view: FleetView) -> Decision:
        """Every guest at its maximum."""
        return Decision(targets_kb={vm.name: vm.max_kb for vm in view.vms})
