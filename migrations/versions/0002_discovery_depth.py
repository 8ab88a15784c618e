"""Discovery depth: per-folder date range and statistics, and the dependency table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("folder") as batch:
        batch.add_column(sa.Column("oldest", sa.DateTime))
        batch.add_column(sa.Column("newest", sa.DateTime))
        batch.add_column(sa.Column("stats", sa.Text))
    op.create_table(
        "dependency",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("source", sa.String(320), nullable=False),
        sa.Column("target", sa.String(320), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("discovered_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("kind", "source", "target"),
    )


def downgrade() -> None:
    op.drop_table("dependency")
    with op.batch_alter_table("folder") as batch:
        batch.drop_column("stats")
        batch.drop_column("newest")
        batch.drop_column("oldest")
