"""Steering: the one place operator changes to policy are validated and stored.

The CLI (``ballast policy``, ``ballast pause``) and MQTT commands both call
these functions, so a change is validated by exactly the same code whichever
way it arrives, and every change is audited with who made it and where from.
The controller reads the same documents back through :class:`StorePolicySource`.

Storage layout (opaque to the store):

* per VM, the VM's overrides as :func:`~orchestrator.control.policy.vm_to_dict`
  gives them (only the fields it sets);
* per host, the settings document ``{"paused": bool, "policy": {...}}`` where
  ``policy`` holds the host fields the operator set, by their change names
  (``free_margin_kb``, ``defaults.weight``...), applied over the base host
  policy that comes from ``ballast.toml``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.control import (
    HostPolicy,
    Policy,
    PolicyChange,
    PolicyContext,
    PolicyError,
    apply_change,
)
from orchestrator.control.policy import (
    HOST_FIELDS,
    coerce_value,
    field_label,
    policy_fields,
    vm_from_dict,
    vm_to_dict,
)
from orchestrator.control.policy import validate as validate_policy
from orchestrator.controller.loop import LoadedPolicy
from orchestrator.controller.status import vm_facts
from orchestrator.errors import TransientError
from orchestrator.store.records import AuditSource, HostSettings, PolicyRecord
from orchestrator.store.store import Store

HOST_POLICY_KEY = "policy"

# xen-selfballoon.c: a guest with less than MB(16) of usable memory is not
# ballooned at all by its own kernel. No target, minimum, maximum or fallback
# below this can be meant for a running guest; refusing it catches sizes given
# without a suffix (KiB) where MiB or GiB were meant ("--max 4096").
MIN_GUEST_KB = 16 * 1024
_MEMORY_FIELDS = ("min_kb", "max_kb", "target_kb", "fallback_kb")


def _plain(value: object) -> object:
    text = getattr(value, "value", None)
    return text if isinstance(text, str) else value


def host_overrides(settings: HostSettings) -> dict[str, Any]:
    """The host policy fields an operator set, from the settings document."""
    doc = settings.document.get(HOST_POLICY_KEY, {})
    return dict(doc) if isinstance(doc, Mapping) else {}


def host_policy(base: HostPolicy, settings: HostSettings) -> HostPolicy:
    """The base host policy (from ballast.toml) with the stored overrides and pause."""
    policy = Policy(host=base)
    overrides = host_overrides(settings)
    if overrides:
        policy = apply_change(policy, PolicyChange(vm=None, set=overrides))
    if settings.paused != policy.host.paused:
        policy = apply_change(policy, PolicyChange(vm=None, set={"paused": settings.paused}))
    return policy.host


def load_policy(store: Store, base: HostPolicy) -> LoadedPolicy:
    """Read the whole policy from the store (blocking: call from a thread)."""
    host = host_policy(base, store.settings())
    records = store.policies()
    vms = {}
    versions = {}
    for uuid, record in records.items():
        if record.document:
            vms[uuid] = vm_from_dict(record.document, where=f"VM {record.domain.name}")
        versions[uuid] = record.version
    return LoadedPolicy(policy=Policy(host=host, vms=vms), versions=versions)


class StorePolicySource:
    """The controller's policy, read from the history store every interval."""

    def __init__(self, store: Store, base: HostPolicy) -> None:
        self._store = store
        self._base = base

    async def load(self) -> LoadedPolicy:
        try:
            return await asyncio.to_thread(load_policy, self._store, self._base)
        except PolicyError as exc:
            raise TransientError(f"stored policy is invalid: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeResult:
    """What a policy change did."""

    vm: str | None
    """The VM's name, or None for the host policy."""
    version: int
    """The policy's version after the change."""
    document: Mapping[str, Any]
    """The stored overrides after the change."""
    changed: bool
    """False when the change left everything as it was."""


def _normalise_fields(names: Sequence[str]) -> tuple[str, ...]:
    return policy_fields(names)


def change_vm_policy(
    store: Store,
    vm: str,
    set_fields: Mapping[str, object],
    unset_fields: Sequence[str] = (),
    *,
    who: str,
    source: AuditSource,
    base: HostPolicy | None = None,
    context: PolicyContext | None = None,
) -> ChangeResult:
    """Set and unset fields of one VM's policy; validate; store atomically with audit.

    ``vm`` is a name, uuid or domid known to the store. Field names may be the
    operator's (``min``) or the model's (``min_kb``); values may be operator
    strings (``"512M"``). Raises :class:`PolicyError` naming what to change;
    nothing is stored then.
    """
    ref = store.resolve_domain(vm)
    set_names = dict(zip(_normalise_fields(list(set_fields)), set_fields.values(), strict=True))
    unset_names = _normalise_fields(unset_fields)
    if not set_names and not unset_names:
        raise PolicyError("nothing to change: give at least one field to set or unset")
    coerced = {name: _plain(coerce_value(name, value)) for name, value in set_names.items()}
    # A size no guest runs in is most likely a missing suffix: say so before
    # any relation to the stored fields (min above max...) hides it.
    _check_guest_sizes(coerced, f"VM {ref.name}")
    before = store.policy(ref)
    host = host_policy(base or HostPolicy(), store.settings())

    def validate(merged: dict[str, Any]) -> Mapping[str, Any]:
        # ``merged`` is the stored document with ``coerced`` laid over it.
        for name in unset_names:
            merged.pop(name, None)
        new_vm = vm_from_dict(merged, where=f"VM {ref.name}")
        validate_policy(Policy(host=host, vms={ref.uuid: new_vm}), context)
        return vm_to_dict(new_vm)

    record: PolicyRecord = store.set_policy(
        ref, coerced, who=who, source=source, validate=validate
    )
    return ChangeResult(
        vm=ref.name, version=record.version, document=record.document,
        changed=record.version != before.version,
    )


def change_host_policy(
    store: Store,
    set_fields: Mapping[str, object],
    unset_fields: Sequence[str] = (),
    *,
    who: str,
    source: AuditSource,
    base: HostPolicy | None = None,
) -> ChangeResult:
    """Set and unset host policy fields (``free_margin_kb``, ``defaults.weight``...)."""
    if not set_fields and not unset_fields:
        raise PolicyError("nothing to change: give at least one field to set or unset")
    settings = store.settings()
    overrides = host_overrides(settings)
    for name, value in set_fields.items():
        overrides[_host_field(name)] = _plain(coerce_value(_host_field(name), value))
    for name in unset_fields:
        overrides.pop(_host_field(name), None)
    if "paused" in overrides:
        raise PolicyError("use `ballast pause` / `ballast resume` to pause or resume control")
    changed = [_host_field(name) for name in set_fields]
    _check_guest_sizes({name.removeprefix("defaults."): overrides[name] for name in changed},
                       "default")
    # Validate the result exactly as the controller will compute it.
    trial = replace(settings, document={**settings.document, HOST_POLICY_KEY: overrides})
    validate_policy(Policy(host=host_policy(base or HostPolicy(), trial)))
    new = store.update_settings({HOST_POLICY_KEY: overrides}, who=who, source=source)
    return ChangeResult(
        vm=None, version=new.version, document=overrides, changed=new.version != settings.version
    )


def _check_guest_sizes(values: Mapping[str, object], where: str) -> None:
    """Refuse memory sizes no guest can run in (see :data:`MIN_GUEST_KB`)."""
    for name in _MEMORY_FIELDS:
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value < MIN_GUEST_KB:
            raise PolicyError(
                f"{where}: {field_label(name)} {value} KiB is below 16 MiB, less than any "
                f"guest runs in; sizes without a suffix are KiB (did you mean {value}M?)"
            )


def _host_field(name: str) -> str:
    """Normalise a host field name: ``free-margin`` -> ``free_margin_kb``,
    ``default weight``/``defaults.weight`` -> ``defaults.weight``."""
    if name.startswith("defaults."):
        return "defaults." + policy_fields([name.removeprefix("defaults.")])[0]
    (field,) = policy_fields([name])
    if field not in HOST_FIELDS:
        # A per-VM field given to the host: it sets the default every VM inherits.
        return f"defaults.{field}"
    return field


def stored_context(store: Store) -> PolicyContext | None:
    """What validation knows of this host's VMs, from the controller's last status."""
    status = store.status()
    if status is None:
        return None
    host = status.document.get("host", {})
    budget = host.get("budget_kb") if isinstance(host, Mapping) else None
    return PolicyContext(
        vms=vm_facts(status.document),
        capacity_kb=budget if isinstance(budget, int) and not isinstance(budget, bool) else None,
    )


def set_paused(store: Store, paused: bool, *, who: str, source: AuditSource) -> HostSettings:
    """Pause (no target is written) or resume control on this host, audited."""
    return store.set_paused(paused, who=who, source=source)
