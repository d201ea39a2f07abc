"""Ballast's control law: every memory decision as pure, typed functions.

``decide(snapshot, policy, state) -> Plan`` is the whole interface: no I/O,
no clock, no logging, no randomness. The controller, the simulator and the
benchmarks build a :class:`Snapshot`, call :func:`decide`, apply the
:class:`Plan` and pass ``plan.state`` to the next call. The policy model
(:mod:`.policy`) is shared with the CLI and MQTT; the kernel laws are ported
exactly in :mod:`.kernel`. See docs/control.md.
"""

from orchestrator.control.law import decide, host_budget_kb, host_capacity_kb
from orchestrator.control.plan import (
    REASON_TEXT,
    HostPlan,
    Plan,
    Reason,
    ReservationPlan,
    VmPlan,
    VmState,
)
from orchestrator.control.policy import (
    DEFAULT_ESTIMATOR,
    EffectiveVmPolicy,
    Estimator,
    HostPolicy,
    Mode,
    Policy,
    PolicyChange,
    PolicyContext,
    PolicyError,
    VmDefaults,
    VmFacts,
    VmPolicy,
    apply_change,
    resolve,
    validate,
)
from orchestrator.control.snapshot import Reservation, Snapshot, SnapshotError, VmObservation
from orchestrator.control.state import ControlState, Signals, VmMemory

__all__ = [
    "DEFAULT_ESTIMATOR",
    "REASON_TEXT",
    "ControlState",
    "EffectiveVmPolicy",
    "Estimator",
    "HostPlan",
    "HostPolicy",
    "Mode",
    "Plan",
    "Policy",
    "PolicyChange",
    "PolicyContext",
    "PolicyError",
    "Reason",
    "Reservation",
    "ReservationPlan",
    "Signals",
    "Snapshot",
    "SnapshotError",
    "VmDefaults",
    "VmFacts",
    "VmMemory",
    "VmObservation",
    "VmPlan",
    "VmPolicy",
    "VmState",
    "apply_change",
    "decide",
    "host_budget_kb",
    "host_capacity_kb",
    "resolve",
    "validate",
]
