"""Change cursors per source folder (Graph delta links), so a delta pass reads only what changed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_cursor",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mailbox_id", sa.Integer, sa.ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("folder", sa.String(1024), nullable=False),
        sa.Column("folder_key", sa.String(64), nullable=False),
        sa.Column("cursor", sa.Text, nullable=False),
        sa.Column("basis", sa.String(64), nullable=False),
        sa.UniqueConstraint("mailbox_id", "folder"),
    )


def downgrade() -> None:
    op.drop_table("source_cursor")
