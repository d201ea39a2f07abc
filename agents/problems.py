"""Say each problem once, and say when it went away.

A guest with an odd kernel, a refused write or a dead xenstore would otherwise
log the same line every second. ``ProblemLog`` remembers which problems are
active, per scope (the memory source, xenstore writes, directives...), logs a
problem when it first appears and a short note when it clears.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from agents.source import Problem

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING}


class ProblemLog:
    """Active problems by scope; logs transitions only."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: dict[str, dict[str, Problem]] = {}

    def update(self, scope: str, problems: Iterable[Problem]) -> None:
        """Replace the problems of ``scope`` with ``problems``, logging changes."""
        before = self._active.get(scope, {})
        # A problem already reported keeps the wording it was reported with.
        now = {p.key: before.get(p.key, p) for p in problems}
        for key, problem in now.items():
            if key not in before:
                self._log.log(_LEVELS[problem.severity], "%s", problem.message)
        for key, problem in before.items():
            if key not in now and problem.severity == "warning":
                self._log.info("resolved: %s", problem.message)
        self._active[scope] = now

    def raise_(self, scope: str, problem: Problem) -> None:
        """Add one problem to ``scope`` (logged if new), keeping the others."""
        current = dict(self._active.get(scope, {}))
        current[problem.key] = problem
        self.update(scope, current.values())

    def clear(self, scope: str, key: str | None = None) -> None:
        """Drop one problem of ``scope``, or all of them."""
        current = self._active.get(scope, {})
        remaining = [] if key is None else [p for k, p in current.items() if k != key]
        self.update(scope, remaining)

    def active(self, scope: str) -> tuple[str, ...]:
        """Keys of the problems active in ``scope``."""
        return tuple(self._active.get(scope, {}))
