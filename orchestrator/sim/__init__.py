"""Simulated fleets: a guest memory model, scenarios, and a virtual-time benchmark.

``model`` is a pure step function for one guest's memory (allocation, page
cache, swap, PSI, OOM) that produces every figure of report schema v1;
``scenario`` loads the stable TOML + CSV scenario format and the built-in
library; ``harness`` runs controllers (``baselines``, ``oracle`` and the
Ballast control law through ``ballast_adapter``) against the model in
virtual time, and ``metrics`` scores them. Nothing here does I/O except the
scenario loader and the report writers in ``bench``.
"""
