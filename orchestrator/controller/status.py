"""The live status document: what ``ballast status`` shows, kept in the store.

Each cycle the controller offers one document (host figures and one entry
per VM) to the store's writer, which keeps only the newest. ``ballast
status`` reads it back, so it works while the controller runs and after it
stopped, from any process that can open the history database. Validation of
policy changes also reads the VMs' static-max and the host's capacity here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from orchestrator import __version__
from orchestrator.control import VmFacts
from orchestrator.controller.loop import CycleResult
from orchestrator.store.writer import StoreWriter

STATUS_VERSION = 1


def status_document(result: CycleResult, host_name: str) -> dict[str, Any]:
    """The status of one cycle as plain JSON-ready data."""
    plan = result.plan
    observations = {obs.domid: obs for obs in result.snapshot.vms}
    vms = []
    for vm in plan.vms:
        obs = observations.get(vm.domid)
        report = obs.report if obs is not None else None
        vms.append({
            "name": vm.name,
            "uuid": vm.uuid,
            "domid": vm.domid,
            "target_kb": vm.target_kb,
            "actual_kb": obs.actual_kb if obs is not None else vm.actual_kb,
            "demand_kb": vm.demand_kb,
            "min_kb": vm.min_kb,
            "max_kb": vm.max_kb,
            "static_max_kb": obs.static_max_kb if obs is not None else vm.max_kb,
            "available_kb": report.mem_available_kb if report is not None else None,
            "swap_used_kb": report.swap_used_kb if report is not None else None,
            "psi_some": report.psi_some_avg10 if report is not None else None,
            "state": vm.state.value,
            "reason": vm.reason.value,
            "reason_text": vm.reason.text,
            "estimator": vm.estimator.value if vm.estimator is not None else None,
            "report_age_s": obs.report_age_s if obs is not None else None,
            "policy_version": result.policy.versions.get(vm.uuid, 0),
        })
    host = plan.host
    policy = result.policy.policy.host
    return {
        "v": STATUS_VERSION,
        "host": {
            "name": host_name,
            "total_kb": host.total_kb,
            "free_kb": host.free_kb,
            "budget_kb": host.budget_kb,
            "sum_targets_kb": host.sum_targets_kb,
            "sum_wanted_kb": host.sum_wanted_kb,
            "sum_min_kb": host.sum_min_kb,
            "dom0_reserve_kb": policy.dom0_reserve_kb,
            "free_margin_kb": policy.free_margin_kb,
            "short": host.short,
            "overcommitted": host.overcommitted,
            "paused": host.paused,
            "interval_s": policy.interval_s,
            "cycle_s": result.duration_s,
            "controller_pid": os.getpid(),
            "version": __version__,
        },
        "vms": vms,
    }


def vm_facts(document: Mapping[str, Any]) -> dict[str, VmFacts]:
    """The VM facts validation needs, by uuid, from a status document."""
    facts = {}
    for vm in document.get("vms", []):
        try:
            facts[str(vm["uuid"])] = VmFacts(name=str(vm["name"]),
                                             static_max_kb=int(vm["static_max_kb"]))
        except (KeyError, TypeError, ValueError):
            continue
    return facts


class StatusSink:
    """A cycle sink offering the live status to the store's writer."""

    def __init__(self, writer: StoreWriter, host_name: str) -> None:
        self._writer = writer
        self._host_name = host_name

    def cycle(self, result: CycleResult) -> None:
        self._writer.record_status(status_document(result, self._host_name), result.wall_time)
