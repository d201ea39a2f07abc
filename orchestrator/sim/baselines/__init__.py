"""The peers Ballast is measured against, ported from their published laws.

Each module ports one peer's balloon policy, citing its source and constants,
to the harness's controller interface (``orchestrator.sim.controllers``).
They are baselines: written from the peers' documented behaviour, sharing no
code with Ballast's own control law.
"""
