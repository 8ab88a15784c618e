"""Seconds each pass waited for the servers' throttling, so `status` can tell waiting from failing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoint") as table:
        table.add_column(sa.Column("throttled_seconds", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("checkpoint") as table:
        table.drop_column("throttled_seconds")
