"""Builders shared by the control-law tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agents.schema import Report
from orchestrator.control import (
    Estimator,
    HostPolicy,
    Policy,
    Snapshot,
    VmDefaults,
    VmObservation,
    VmPolicy,
)

KiB = 1
MiB = 1024
GiB = 1024 * 1024


def report(**overrides: Any) -> Report:
    """A plausible idle 4 GiB guest; override any field."""
    values: dict[str, Any] = {
        "seq": 1,
        "uptime_s": 1000.0,
        "mem_total_kb": 4 * GiB - 40 * MiB,
        "mem_free_kb": 2 * GiB,
        "mem_available_kb": 3 * GiB,
        "cached_kb": 1 * GiB,
        "committed_as_kb": 1 * GiB,
        "totalreserve_kb": 8 * MiB,
        "anon_kb": 700 * MiB,
        "swap_total_kb": 1 * GiB,
        "swap_free_kb": 1 * GiB,
        "pswpin": 0,
        "pswpout": 0,
    }
    values.update(overrides)
    return Report(**values)


def vm(domid: int = 1, **overrides: Any) -> VmObservation:
    """A VM observation; the uuid and name follow the domid unless given."""
    values: dict[str, Any] = {
        "domid": domid,
        "uuid": f"00000000-0000-0000-0000-{domid:012d}",
        "name": f"vm{domid}",
        "static_max_kb": 4 * GiB,
        "actual_kb": 4 * GiB,
        "target_kb": 4 * GiB,
    }
    values.update(overrides)
    return VmObservation(**values)


def snapshot(
    *vms: VmObservation, now_s: float = 0.0, free_kb: int = 64 * GiB, **kw: Any
) -> Snapshot:
    """A host with plenty of free memory unless told otherwise."""
    return Snapshot(
        now_s=now_s, host_total_kb=kw.pop("total_kb", 256 * GiB), host_free_kb=free_kb,
        vms=tuple(vms), **kw,
    )


def kernel_exact(**defaults: Any) -> Policy:
    """A policy under which ``decide`` must reproduce the kernel law exactly:
    the committed estimator, no extra step limit, no dead-band, no policy
    minimum, no swap shrinking unless asked."""
    values: dict[str, Any] = {
        "estimator": Estimator.COMMITTED,
        "deadband_kb": 0,
        "max_shrink_kb": 0,
        "max_grow_kb": 0,
        "min_kb": 0,
        "swap_shrink": False,
    }
    values.update(defaults)
    return Policy(host=HostPolicy(free_margin_kb=0, defaults=VmDefaults(**values)))


def with_vm_policy(policy: Policy, uuid: str, **fields: Any) -> Policy:
    """The policy with one VM's overrides set."""
    return policy.with_vm(uuid, replace(policy.vm(uuid), **fields))


__all__ = ["GiB", "KiB", "MiB", "VmPolicy", "kernel_exact", "report", "snapshot", "vm"]
