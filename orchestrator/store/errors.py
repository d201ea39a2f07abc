"""Errors the history store raises, placed in Ballast's taxonomy.

SQLAlchemy's exceptions never leave the store: a locked or unreachable
database becomes `StoreUnavailable` (transient: try again later), a schema
the code does not match becomes `SchemaMismatch` (fatal, with the command
that fixes it), an unknown VM name becomes `UnknownDomain` (operator input).
"""

from __future__ import annotations

from orchestrator.errors import FatalError, TransientError, UsageError


class RecordError(FatalError, ValueError):
    """A record was built with values the store cannot hold (a caller bug)."""


class SchemaMismatch(FatalError):
    """The database is missing, unmigrated, older or newer than this code."""


class StoreUnavailable(TransientError):
    """The database is locked, full or unreachable right now."""


class UnknownDomain(UsageError):
    """No VM in the history matches what the operator typed."""
