"""``ballast sim``: a simulated Xen host on the wire, in virtual time.

The fast benchmark (:mod:`orchestrator.sim.harness`) runs control laws
against the guest model with no sockets; this package runs the same model
under the real parts instead: the project's xenstore server, the real agent
per guest over its own domain socket, balloon drivers, and the real
controller with its history store. See docs/simulation.md, "Wire level".
"""

from orchestrator.sim.wire.clock import VirtualClock
from orchestrator.sim.wire.guests import ModelShrinkActuator, ModelSource, SimHost
from orchestrator.sim.wire.run import SimResult, SimRun, SimSettings, SimStats, run_sim

__all__ = [
    "ModelShrinkActuator",
    "ModelSource",
    "SimHost",
    "SimResult",
    "SimRun",
    "SimSettings",
    "SimStats",
    "VirtualClock",
    "run_sim",
]
