"""The small error taxonomy every Ballast module raises from.

Edges translate foreign exceptions (socket errors, pyxs errors, SQLAlchemy
errors) into these, carrying the context an operator needs (domid, path,
errno). ``TransientError`` means "skip this VM or this cycle and try again";
``FatalError`` means "stop"; ``UsageError`` is bad operator input, shown as
one clear line by the CLI.
"""

from __future__ import annotations


class BallastError(Exception):
    """Base of every error Ballast raises on purpose."""


class UsageError(BallastError):
    """Bad input from an operator (CLI flag, config value, MQTT command)."""


class TransientError(BallastError):
    """A failure that may go away: retry later, skip this VM this cycle."""


class FatalError(BallastError):
    """A failure the process cannot continue after."""
