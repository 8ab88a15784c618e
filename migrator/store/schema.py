"""Tables of the state store. Changes go through an Alembic revision in migrations/ (tests compare both)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

endpoint = Table(
    "endpoint", metadata,
    Column("id", Integer, primary_key=True),
    Column("role", String(16), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("address", String(255), nullable=False),
    Column("capabilities", Text, nullable=False, default=""),
    Column("updated_at", DateTime, nullable=False),
)

mailbox = Table(
    "mailbox", metadata,
    Column("id", Integer, primary_key=True),
    Column("source_address", String(320), nullable=False, unique=True),
    Column("target_address", String(320), nullable=False),
    Column("source_login", String(320)),
    Column("target_login", String(320)),
    Column("group_name", String(255)),
    Column("priority", Integer, nullable=False, default=0),
    Column("messages", BigInteger, nullable=False, default=0),
    Column("size", BigInteger, nullable=False, default=0),
    Column("discovered_at", DateTime, nullable=False),
)

folder = Table(
    "folder", metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("separator", String(4)),
    Column("role", String(16)),
    Column("uidvalidity", String(64)),
    Column("messages", BigInteger, nullable=False, default=0),
    Column("size", BigInteger, nullable=False, default=0),
    Column("discovered_at", DateTime, nullable=False),
    Column("oldest", DateTime),
    Column("newest", DateTime),
    Column("stats", Text),
    UniqueConstraint("mailbox_id", "path"),
)

plan = Table(
    "plan", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("fingerprint", String(80), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("accepted_edits", Integer, nullable=False, default=0),
    Column("registered_at", DateTime, nullable=False),
    UniqueConstraint("name", "fingerprint"),
)

batch = Table(
    "batch", metadata,
    Column("id", Integer, primary_key=True),
    Column("plan_name", String(255), nullable=False),
    Column("code", String(32), nullable=False),
    Column("window", String(255)),
    UniqueConstraint("plan_name", "code"),
)

job = Table(
    "job", metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batch.id", ondelete="CASCADE"), nullable=False),
    Column("mailbox_id", Integer, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("plan_id", Integer, ForeignKey("plan.id")),
    Column("lease_owner", String(255)),
    Column("lease_expires_at", DateTime),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error_kind", String(32)),
    Column("error", Text),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("batch_id", "mailbox_id", "stage"),
)

checkpoint = Table(
    "checkpoint", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("job.id", ondelete="CASCADE"), nullable=False),
    Column("mailbox_id", Integer, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("outcome", String(16)),
    Column("copied", Integer, nullable=False, default=0),
    Column("copied_bytes", BigInteger, nullable=False, default=0),
    Column("flag_updates", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("throttled_seconds", Float, nullable=False, default=0.0, server_default="0"),
)

target_folder = Table(
    "target_folder", metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("uidvalidity", String(64)),
    Column("created_by_us", Integer, nullable=False, default=0),
    Column("checkpoint_id", Integer, ForeignKey("checkpoint.id")),
    UniqueConstraint("mailbox_id", "path"),
)

ledger = Table(
    "ledger", metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("source_folder", String(1024), nullable=False),
    Column("source_key", String(64), nullable=False),
    Column("source_id", String(255), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("flags", Text, nullable=False, default=""),
    Column("internal_date", String(40), nullable=False),
    Column("target_folder", String(1024), nullable=False),
    Column("target_key", String(64)),
    Column("watermark", String(64)),
    Column("target_id", String(255)),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("checkpoint_id", Integer, ForeignKey("checkpoint.id")),
    Column("created_at", DateTime, nullable=False),
    Column("done_at", DateTime),
    UniqueConstraint("mailbox_id", "source_folder", "source_key", "source_id"),
)
Index("ix_ledger_target", ledger.c.mailbox_id, ledger.c.target_folder, ledger.c.state)

source_cursor = Table(
    "source_cursor", metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("folder", String(1024), nullable=False),
    Column("folder_key", String(64), nullable=False),
    Column("cursor", Text, nullable=False),
    Column("basis", String(64), nullable=False),
    UniqueConstraint("mailbox_id", "folder"),
)

dependency = Table(
    "dependency", metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("source", String(320), nullable=False),
    Column("target", String(320), nullable=False),
    Column("origin", String(64), nullable=False),
    Column("discovered_at", DateTime, nullable=False),
    UniqueConstraint("kind", "source", "target"),
)

event = Table(
    "event", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("mailbox_id", Integer),
    Column("job_id", Integer),
    Column("message", Text, nullable=False),
)
