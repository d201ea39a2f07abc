"""Cluster samples and rollups by time, then VM; remember each VM's newest sample.

Samples were keyed (domain, time): every batch rewrote the newest b-tree page
of every VM, about 6 KiB of disk writes per 70-byte sample with one batch per
controller cycle. Keyed (10-second slot, domain, time) and rollups (resolution,
bucket, domain), batches append and retention deletes from the front.
`domains.last_sample_ms` lets the fleet view find each VM's newest sample
with one seek.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

SLOT_MS = 10_000  # orchestrator.store.schema.SLOT_MS as of this revision

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
_SAMPLE_COLUMNS = [c for c, _ in _FIGURES] + ["state"]
_ROLLUP_COLUMNS = ["n"] + [f"{c}_{a}" for c, _ in _FIGURES for a in ("min", "max", "mean", "last")]


def _type(is_kb: bool) -> sa.types.TypeEngine[int] | sa.types.TypeEngine[float]:
    return sa.BigInteger() if is_kb else sa.Float()


def _sample_columns() -> list[sa.Column[Any]]:
    return [
        *(
            sa.Column(column, _type(is_kb), nullable=column not in ("target_kb", "actual_kb"))
            for column, is_kb in _FIGURES
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
    ]


def _rollup_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("n", sa.Integer(), nullable=False),
        *(
            sa.Column(f"{column}_{agg}", _type(is_kb), nullable=True)
            for column, is_kb in _FIGURES
            for agg in ("min", "max", "mean", "last")
        ),
    ]


def _set_aside(table: str) -> None:
    """Rename `table` to `<table>_old`; on PostgreSQL also its primary key,
    whose index name must stay free for the new table."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT pk_{table} TO pk_{table}_old")
    op.rename_table(table, f"{table}_old")


def upgrade() -> None:
    """Rebuild samples and rollups with time-first keys; add last_sample_ms."""
    _set_aside("samples")
    op.create_table(
        "samples",
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        *_sample_columns(),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_samples_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("slot", "domain_id", "t_ms", name=op.f("pk_samples")),
        sqlite_with_rowid=False,
    )
    columns = ", ".join(_SAMPLE_COLUMNS)
    op.execute(
        f"INSERT INTO samples (slot, domain_id, t_ms, {columns}) "
        f"SELECT t_ms / {SLOT_MS}, domain_id, t_ms, {columns} FROM samples_old"
    )
    op.drop_table("samples_old")

    _set_aside("rollups")
    op.create_table(
        "rollups",
        sa.Column("res_s", sa.SmallInteger(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        *_rollup_columns(),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_rollups_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("res_s", "t_ms", "domain_id", name=op.f("pk_rollups")),
        sqlite_with_rowid=False,
    )
    columns = ", ".join(["res_s", "t_ms", "domain_id", *_ROLLUP_COLUMNS])
    op.execute(f"INSERT INTO rollups ({columns}) SELECT {columns} FROM rollups_old")
    op.drop_table("rollups_old")

    with op.batch_alter_table("domains") as batch:
        batch.add_column(sa.Column("last_sample_ms", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE domains SET last_sample_ms = "
        "(SELECT max(t_ms) FROM samples WHERE samples.domain_id = domains.id)"
    )


def downgrade() -> None:
    """Back to domain-first keys (revision 0002's layout)."""
    with op.batch_alter_table("domains") as batch:
        batch.drop_column("last_sample_ms")

    _set_aside("rollups")
    op.create_table(
        "rollups",
        sa.Column("res_s", sa.SmallInteger(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        *_rollup_columns(),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_rollups_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("res_s", "domain_id", "t_ms", name=op.f("pk_rollups")),
        sqlite_with_rowid=False,
    )
    columns = ", ".join(["res_s", "domain_id", "t_ms", *_ROLLUP_COLUMNS])
    op.execute(f"INSERT INTO rollups ({columns}) SELECT {columns} FROM rollups_old")
    op.drop_table("rollups_old")

    _set_aside("samples")
    op.create_table(
        "samples",
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.BigInteger(), nullable=False),
        *_sample_columns(),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domains.id"], name=op.f("fk_samples_domain_id_domains")
        ),
        sa.PrimaryKeyConstraint("domain_id", "t_ms", name=op.f("pk_samples")),
        sqlite_with_rowid=False,
    )
    columns = ", ".join(["domain_id", "t_ms", *_SAMPLE_COLUMNS])
    op.execute(f"INSERT INTO samples ({columns}) SELECT {columns} FROM samples_old")
    op.drop_table("samples_old")
