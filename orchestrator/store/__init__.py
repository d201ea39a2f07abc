"""Ballast's history store: the only code that imports SQLAlchemy.

The controller and the CLI are thin shells over this library:

- `open_store(db)` opens a database (path or URL) after checking its schema;
- `Store` answers history, decision, event, fleet and audit queries and keeps
  per-VM policies and host settings (atomic, versioned, audited);
- `StoreWriter` takes samples, decisions and events from the control loop
  without blocking it and commits them in batches;
- `migrate` runs the Alembic migrations behind `ballast db`.

See docs/store.md for the schema, retention and the measured figures.
"""

from orchestrator.store.errors import RecordError, SchemaMismatch, StoreUnavailable, UnknownDomain
from orchestrator.store.records import (
    ALL_FIGURES,
    AuditEntry,
    AuditSource,
    AuditSubject,
    Decision,
    DomainRef,
    Event,
    EventKind,
    Figure,
    FigureSeries,
    FigureValue,
    FleetRow,
    HistoryPoint,
    HostSettings,
    PolicyRecord,
    Resolution,
    Sample,
    Series,
    VmState,
)
from orchestrator.store.store import (
    MaintenanceReport,
    Retention,
    Store,
    StoreConfig,
    WriteResult,
    open_store,
)
from orchestrator.store.timeparse import parse_time
from orchestrator.store.writer import CommitReport, StoreWriter, WriterConfig, WriterStats

__all__ = [
    "ALL_FIGURES",
    "AuditEntry",
    "AuditSource",
    "AuditSubject",
    "CommitReport",
    "Decision",
    "DomainRef",
    "Event",
    "EventKind",
    "Figure",
    "FigureSeries",
    "FigureValue",
    "FleetRow",
    "HistoryPoint",
    "HostSettings",
    "MaintenanceReport",
    "PolicyRecord",
    "RecordError",
    "Resolution",
    "Retention",
    "Sample",
    "SchemaMismatch",
    "Series",
    "Store",
    "StoreConfig",
    "StoreUnavailable",
    "StoreWriter",
    "UnknownDomain",
    "VmState",
    "WriteResult",
    "WriterConfig",
    "WriterStats",
    "open_store",
    "parse_time",
]
