"""``ballast``: Ballast's own control law, driven by the virtual-time harness.

This is the same pure ``decide(snapshot, policy, state)`` the daemon runs,
with the same :class:`~orchestrator.control.Snapshot` and
:class:`~orchestrator.control.Policy` types; only the observations come from
the model instead of xenstore and the hypervisor. The policy is Ballast's
default, plus what the scenario says about each VM (min, max, weight).
"""

from __future__ import annotations

from typing import Final

from orchestrator.control import (
    ControlState,
    HostPolicy,
    Plan,
    Policy,
    Snapshot,
    VmObservation,
    VmPolicy,
    decide,
)
from orchestrator.control.policy import DEFAULT_WEIGHT
from orchestrator.sim.controllers import Decision, FleetView, RunContext

# A scenario's weight 1.0 is Ballast's default weight (the Xen credit scale).
_WEIGHT_SCALE: Final = DEFAULT_WEIGHT


def policy_for(context: RunContext, host: HostPolicy | None = None) -> Policy:
    """Ballast's default policy with the scenario's per-VM bounds and weights.

    dom0's memory is already outside what the harness reports as free, so the
    policy's ``dom0_reserve_kb`` stays at its default (0).
    """
    vms: dict[str, VmPolicy] = {}
    for vm in context.scenario.vms:
        vms[vm.name] = VmPolicy(
            min_kb=vm.min_kb if vm.min_given else None,
            max_kb=vm.max_kb if vm.max_kb != vm.static_max_kb else None,
            weight=None if vm.weight == 1.0 else max(1, round(vm.weight * _WEIGHT_SCALE)),
        )
    return Policy(host=host or HostPolicy(), vms=vms)


class BallastController:
    """Runs ``orchestrator.control.decide`` every policy interval."""

    def __init__(self, context: RunContext, *, policy: Policy | None = None) -> None:
        self._policy = policy if policy is not None else policy_for(context)
        self._state = ControlState()
        self._domids = {vm.name: i + 1 for i, vm in enumerate(context.scenario.vms)}
        self._directive_seq: dict[str, int] = {}
        self.last_plan: Plan | None = None
        """The plan of the last cycle, for inspection."""

    @property
    def interval_s(self) -> float:
        """The policy's control interval."""
        return self._policy.host.interval_s

    def decide(self, view: FleetView) -> Decision:
        """Build the snapshot the daemon would, decide, return what it would write."""
        snapshot = Snapshot(
            now_s=view.t_s,
            host_total_kb=view.host_memory_kb,
            host_free_kb=max(0, view.free_kb),
            vms=tuple(
                VmObservation(
                    domid=self._domids[vm.name],
                    uuid=vm.name,
                    name=vm.name,
                    static_max_kb=vm.static_max_kb,
                    actual_kb=vm.allocation_kb,
                    target_kb=vm.target_kb,
                    report=vm.report,
                    report_age_s=0.0,
                    directive_seq=self._directive_seq.get(vm.name),
                )
                for vm in view.vms
            ),
        )
        plan = decide(snapshot, self._policy, self._state)
        self._state = plan.state
        self.last_plan = plan
        targets: dict[str, int] = {}
        swaps: dict[str, int | None] = {}
        for vm_plan in plan.vms:
            if vm_plan.write:
                targets[vm_plan.name] = vm_plan.target_kb
            if vm_plan.directive is not None:
                self._directive_seq[vm_plan.name] = vm_plan.directive.seq
                swaps[vm_plan.name] = vm_plan.directive.swap_target_kb
        return Decision(targets_kb=targets, swap_targets_kb=swaps)
