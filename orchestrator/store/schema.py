"""The history database's tables, as SQLAlchemy Core metadata.

This is the model Alembic's autogenerate compares the migrations against (a
test keeps them in step). Times are integer milliseconds since the Unix epoch
(`t_ms`): compact, exact and identical on SQLite and PostgreSQL. Sizes are
KiB integers. Documents (policies, settings, event details, audit values) are
JSON text, opaque to the store.

Raw samples are clustered by time first, then VM (`slot = t_ms // SLOT_MS`,
10-second slots): every batch appends to the end of the b-tree instead of
rewriting the newest page of every VM, so disk writes per sample stay small
however many VMs there are, and retention deletes from the front; a VM's raw
history is one primary-key seek per slot. Rollups, written in runs of many
buckets, are clustered by VM, so a VM's day or month is one contiguous range.
On SQLite both are WITHOUT ROWID tables: the primary key is the table.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

from orchestrator.store.records import ALL_FIGURES, Figure

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Width of a raw-sample slot, ms. Small enough that one controller cycle's
# samples (every VM, taken within a second or so) land in one or two slots,
# so a batch writes a few consecutive pages; large enough that reading an
# hour of one VM is 360 seeks.
SLOT_MS = 10_000


def _figure_type(fig: Figure) -> TypeEngine[Any]:
    return BigInteger() if fig.is_kb else Float()


hosts = Table(
    "hosts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("created_ms", BigInteger, nullable=False),
)

domains = Table(
    "domains",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("name", String(255), nullable=False),
    Column("domid", Integer, nullable=False),
    Column("host_id", Integer, ForeignKey("hosts.id"), nullable=False),
    Column("first_seen_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("last_sample_ms", BigInteger, nullable=True),
    Index("ix_domains_host_id_name", "host_id", "name"),
)

samples = Table(
    "samples",
    metadata,
    Column("slot", Integer, primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id"), primary_key=True),
    Column("t_ms", BigInteger, primary_key=True),
    Column("target_kb", BigInteger, nullable=False),
    Column("actual_kb", BigInteger, nullable=False),
    *(Column(fig.column, _figure_type(fig), nullable=True) for fig in ALL_FIGURES[2:]),
    Column("state", String(16), nullable=False),
    sqlite_with_rowid=False,
)

rollups = Table(
    "rollups",
    metadata,
    Column("res_s", SmallInteger, primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id"), primary_key=True),
    Column("t_ms", BigInteger, primary_key=True),
    Column("n", Integer, nullable=False),
    *(
        Column(f"{fig.column}_{agg}", _figure_type(fig), nullable=True)
        for fig in ALL_FIGURES
        for agg in ("min", "max", "mean", "last")
    ),
    sqlite_with_rowid=False,
)

rollup_marks = Table(
    "rollup_marks",
    metadata,
    Column("res_s", SmallInteger, primary_key=True),
    Column("through_ms", BigInteger, nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id"), nullable=False),
    Column("t_ms", BigInteger, nullable=False),
    Column("old_target_kb", BigInteger, nullable=False),
    Column("new_target_kb", BigInteger, nullable=False),
    Column("swap_target_kb", BigInteger, nullable=True),
    Column("reason", String(64), nullable=False),
    Column("policy_version", Integer, nullable=True),
    Index("ix_decisions_domain_id_t_ms", "domain_id", "t_ms"),
    Index("ix_decisions_t_ms", "t_ms"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id"), nullable=False),
    Column("domain_id", Integer, ForeignKey("domains.id"), nullable=True),
    Column("t_ms", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("details", Text, nullable=False),
    Index("ix_events_t_ms", "t_ms"),
    Index("ix_events_domain_id_t_ms", "domain_id", "t_ms"),
)

policies = Table(
    "policies",
    metadata,
    Column("domain_id", Integer, ForeignKey("domains.id"), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("document", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

host_settings = Table(
    "host_settings",
    metadata,
    Column("host_id", Integer, ForeignKey("hosts.id"), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("document", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

host_status = Table(
    "host_status",
    metadata,
    Column("host_id", Integer, ForeignKey("hosts.id"), primary_key=True),
    Column("t_ms", BigInteger, nullable=False),
    Column("document", Text, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("t_ms", BigInteger, nullable=False),
    Column("host_id", Integer, ForeignKey("hosts.id"), nullable=False),
    Column("subject", String(16), nullable=False),
    Column("domain_id", Integer, ForeignKey("domains.id"), nullable=True),
    Column("who", String(255), nullable=False),
    Column("source", String(16), nullable=False),
    Column("old", Text, nullable=True),
    Column("new", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_audit_t_ms", "t_ms"),
    Index("ix_audit_domain_id_t_ms", "domain_id", "t_ms"),
)
