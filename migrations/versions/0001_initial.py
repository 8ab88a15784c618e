"""Initial state store: inventory, plans, jobs, checkpoints, per-message ledger, event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoint",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "mailbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_address", sa.String(320), nullable=False, unique=True),
        sa.Column("target_address", sa.String(320), nullable=False),
        sa.Column("source_login", sa.String(320)),
        sa.Column("target_login", sa.String(320)),
        sa.Column("group_name", sa.String(255)),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("messages", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("discovered_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "folder",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mailbox_id", sa.Integer, sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("separator", sa.String(4)),
        sa.Column("role", sa.String(16)),
        sa.Column("uidvalidity", sa.String(64)),
        sa.Column("messages", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("discovered_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("mailbox_id", "path"),
    )
    op.create_table(
        "plan",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(80), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("accepted_edits", sa.Integer, nullable=False),
        sa.Column("registered_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", "fingerprint"),
    )
    op.create_table(
        "batch",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("plan_name", sa.String(255), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("window", sa.String(255)),
        sa.UniqueConstraint("plan_name", "code"),
    )
    op.create_table(
        "job",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("batch.id", ondelete="CASCADE"), nullable=False),
        sa.Column("mailbox_id", sa.Integer, sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("plan_id", sa.Integer, sa.ForeignKey("plan.id")),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_expires_at", sa.DateTime),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error_kind", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("batch_id", "mailbox_id", "stage"),
    )
    op.create_table(
        "checkpoint",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("job.id", ondelete="CASCADE"), nullable=False),
        sa.Column("mailbox_id", sa.Integer, sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("outcome", sa.String(16)),
        sa.Column("copied", sa.Integer, nullable=False),
        sa.Column("copied_bytes", sa.BigInteger, nullable=False),
        sa.Column("flag_updates", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
    )
    op.create_table(
        "target_folder",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mailbox_id", sa.Integer, sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("uidvalidity", sa.String(64)),
        sa.Column("created_by_us", sa.Integer, nullable=False),
        sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoint.id")),
        sa.UniqueConstraint("mailbox_id", "path"),
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mailbox_id", sa.Integer, sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source_folder", sa.String(1024), nullable=False),
        sa.Column("source_key", sa.String(64), nullable=False),
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("flags", sa.Text, nullable=False),
        sa.Column("internal_date", sa.String(40), nullable=False),
        sa.Column("target_folder", sa.String(1024), nullable=False),
        sa.Column("target_key", sa.String(64)),
        sa.Column("watermark", sa.String(64)),
        sa.Column("target_id", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoint.id")),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("done_at", sa.DateTime),
        sa.UniqueConstraint("mailbox_id", "source_folder", "source_key", "source_id"),
    )
    op.create_index("ix_ledger_target", "ledger", ["mailbox_id", "target_folder", "state"])
    op.create_table(
        "event",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("mailbox_id", sa.Integer),
        sa.Column("job_id", sa.Integer),
        sa.Column("message", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("event")
    op.drop_index("ix_ledger_target", table_name="ledger")
    for name in ("ledger", "target_folder", "checkpoint", "job", "batch", "plan", "folder", "mailbox", "endpoint"):
        op.drop_table(name)
