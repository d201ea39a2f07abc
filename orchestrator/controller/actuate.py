"""Apply a plan to xenstore: targets (shrinks first), directives, uncooperative flags.

Only what changed is written. Shrinks are written, and acknowledged by
xenstored, before any grow is sent, so the host is never asked to hand out
memory it has not been promised back. A failure on one domain (it went away,
xenstored hiccuped) skips that domain for this cycle and never stops the
others; the error is returned so the caller can log it once and retry next
cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agents.schema import encode_directive
from orchestrator.control import Plan, VmPlan
from orchestrator.controller.observe import (
    DIRECTIVE_KEY,
    TARGET_KEY,
    UNCOOPERATIVE_KEY,
    DomainView,
    home,
)
from orchestrator.xenstore.client import XenstoreClient
from orchestrator.xenstore.errors import NoEntryError, XenstoreError


@dataclass(slots=True)
class ApplyResult:
    """What one apply did."""

    targets_written: dict[int, int] = field(default_factory=dict)
    """domid -> target written, KiB."""
    directives_written: dict[int, int] = field(default_factory=dict)
    """domid -> directive sequence written."""
    flags_changed: dict[int, bool] = field(default_factory=dict)
    """domid -> uncooperative flag set (True) or cleared (False)."""
    errors: dict[int, XenstoreError] = field(default_factory=dict)
    """domid -> the first error met for it this cycle."""


async def _write_target(
    xs: XenstoreClient, vm: VmPlan, result: ApplyResult
) -> None:
    try:
        await xs.write(f"{home(vm.domid)}/{TARGET_KEY}", str(vm.target_kb))
    except XenstoreError as exc:
        result.errors.setdefault(vm.domid, exc)
    else:
        result.targets_written[vm.domid] = vm.target_kb


async def _write_directive(xs: XenstoreClient, vm: VmPlan, result: ApplyResult) -> None:
    assert vm.directive is not None
    try:
        await xs.write(f"{home(vm.domid)}/{DIRECTIVE_KEY}", encode_directive(vm.directive))
    except XenstoreError as exc:
        result.errors.setdefault(vm.domid, exc)
    else:
        result.directives_written[vm.domid] = vm.directive.seq


async def _write_flag(xs: XenstoreClient, vm: VmPlan, result: ApplyResult) -> None:
    path = f"{home(vm.domid)}/{UNCOOPERATIVE_KEY}"
    try:
        if vm.uncooperative:
            await xs.write(path, "1")
        else:
            with contextlib.suppress(NoEntryError):
                await xs.rm(path)
    except XenstoreError as exc:
        result.errors.setdefault(vm.domid, exc)
    else:
        result.flags_changed[vm.domid] = vm.uncooperative


async def apply_plan(
    xs: XenstoreClient, plan: Plan, views: Mapping[int, DomainView]
) -> ApplyResult:
    """Write what ``plan`` decided; ``views`` tells what xenstore already holds."""
    result = ApplyResult()
    if plan.host.paused:
        return result
    writes: Sequence[VmPlan] = plan.writes()
    shrinks = [vm for vm in writes if vm.delta_kb < 0]
    grows = [vm for vm in writes if vm.delta_kb >= 0]
    # Every shrink is acknowledged before the first grow goes out.
    await asyncio.gather(*(_write_target(xs, vm, result) for vm in shrinks))
    await asyncio.gather(*(_write_target(xs, vm, result) for vm in grows))
    others = []
    for vm in plan.vms:
        view = views.get(vm.domid)
        if vm.directive is not None:
            others.append(_write_directive(xs, vm, result))
        if view is not None and view.uncooperative_flag != vm.uncooperative:
            others.append(_write_flag(xs, vm, result))
    await asyncio.gather(*others)
    return result
