"""Initial schema: hosts, domains, samples, rollups, decisions, events, policies,
host settings and the append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# The figures of a sample as of this revision: (column, is a KiB integer).
_FIGURES = (
    ("target_kb", True),
    ("actual_kb", True),
    ("demand_kb", True),
    ("available_kb", True),
    ("committed_kb", True),
    ("swap_used_kb", True),
    ("psi_some_pct", False),
    ("psi_full_pct", False),
    ("refault_per_s", False),
    ("swapin_per_s", False),
)

_APPEND_ONLY = "the audit log is append-only"


def _type(is_kb: bool) -> sa.types.TypeEngine[int] | sa.types.TypeEngine[float]:
    return sa.BigInteger() if is_kb else sa.Float()


def upgrade() -> None:
    """Create every table of the history store."""
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
    )
    op.create_table(
        "rollup_marks",
        sa.Column("res_s", sa.SmallInteger(), nullable=False),
        sa.Column("through_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("res_s", name=op.f("pk_rollup_marks")),
    )
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("domid", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_domains_host_id_hosts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_domains")),
        sa.UniqueConstraint("uuid", name=op.f("uq_domains_uuid")),
    )
    op.create_index("ix_domains_host_id_name", "domains", ["host_id", "name"])
    op.create_table(
        "host_settings",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_settings_host_id_hosts")
        ),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_host_settings")),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("who", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("old", sa.Text(), nullable=True),
        sa.Column("new", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_audit_domain_id_domains")
        ),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_audit_host_id_hosts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_index("ix_audit_domain_id_t_ms", "audit", ["domain_id", "t_ms"])
    op.create_index("ix_audit_t_ms", "audit", ["t_ms"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        sa.Column("old_target_kb", sa.BigInteger(), nullable=False),
        sa.Column("new_target_kb", sa.BigInteger(), nullable=False),
        sa.Column("swap_target_kb", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_decisions_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
    )
    op.create_index("ix_decisions_domain_id_t_ms", "decisions", ["domain_id", "t_ms"])
    op.create_index("ix_decisions_t_ms", "decisions", ["t_ms"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_events_domain_id_domains")
        ),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_events_host_id_hosts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_domain_id_t_ms", "events", ["domain_id", "t_ms"])
    op.create_index("ix_events_t_ms", "events", ["t_ms"])
    op.create_table(
        "policies",
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_policies_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("domain_id", name=op.f("pk_policies")),
    )
    op.create_table(
        "rollups",
        sa.Column("res_s", sa.SmallInteger(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        *(
            sa.Column(f"{column}_{agg}", _type(is_kb), nullable=True)
            for column, is_kb in _FIGURES
            for agg in ("min", "max", "mean", "last")
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_rollups_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("res_s", "domain_id", "t_ms", name=op.f("pk_rollups")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "samples",
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        *(
            sa.Column(column, _type(is_kb), nullable=column not in ("target_kb", "actual_kb"))
            for column, is_kb in _FIGURES
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_samples_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("domain_id", "t_ms", name=op.f("pk_samples")),
        sqlite_with_rowid=False,
    )
    _create_audit_guard()


def _create_audit_guard() -> None:
    # The audit log refuses UPDATE and DELETE in the database itself, not only
    # in the store's API. Hazard: a later batch migration that recreates the
    # `audit` table on SQLite drops these triggers; recreate them there.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION ballast_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION ballast_audit_append_only()"
        )
        return
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
        )


def downgrade() -> None:
    """Drop every table of the history store (all history is lost)."""
    op.drop_table("samples")
    op.drop_table("rollups")
    op.drop_table("policies")
    op.drop_index("ix_events_t_ms", table_name="events")
    op.drop_index("ix_events_domain_id_t_ms", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_decisions_t_ms", table_name="decisions")
    op.drop_index("ix_decisions_domain_id_t_ms", table_name="decisions")
    op.drop_table("decisions")
    op.drop_index("ix_audit_t_ms", table_name="audit")
    op.drop_index("ix_audit_domain_id_t_ms", table_name="audit")
    op.drop_table("audit")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ballast_audit_append_only()")
    op.drop_table("host_settings")
    op.drop_index("ix_domains_host_id_name", table_name="domains")
    op.drop_table("domains")
    op.drop_table("rollup_marks")
    op.drop_table("hosts")
