"""The dom0 controller daemon (``ballast run``).

:mod:`.observe` reads xenstore and the hypervisor into a snapshot,
:mod:`orchestrator.control` decides, :mod:`.actuate` writes the plan,
:mod:`.events` derives what changed, and :mod:`.loop` runs it all as a
level-triggered reconcile loop feeding the sinks (history store, MQTT,
Prometheus).
"""
