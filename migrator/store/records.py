"""Rows as frozen records: what store functions return, so no ORM or Row object leaves the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """Naive UTC: what every DateTime column holds, on SQLite and PostgreSQL alike."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class MailboxRecord:
    id: int
    source: str
    target: str
    source_login: str | None
    target_login: str | None
    group: str | None
    priority: int
    messages: int
    size: int
    folders: int


@dataclass(frozen=True)
class FolderDetail:
    """What discovery learned about a folder beyond counts: its date range and statistics (JSON)."""

    oldest: datetime | None
    newest: datetime | None
    stats: dict[str, Any]


@dataclass(frozen=True)
class JobRecord:
    id: int
    batch_code: str
    mailbox_id: int
    stage: str
    state: str
    attempts: int


@dataclass(frozen=True)
class Lease:
    """Proof that this worker owns a job; every ledger write re-checks it in the same transaction."""

    job_id: int
    owner: str
    ttl_seconds: int


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    source_folder: str
    source_key: str
    source_id: str
    digest: str
    size: int
    flags: frozenset[str]
    internal_date: str
    target_folder: str
    target_key: str | None
    watermark: str | None
    target_id: str | None
    state: str
    reason: str | None
    checkpoint_id: int | None = None


@dataclass(frozen=True)
class PendingCopy:
    """An intent about to be written: which source message goes where, tagged by digest and size."""

    source_folder: str
    source_key: str
    source_id: str
    digest: str
    size: int
    flags: frozenset[str]
    internal_date: str
    target_folder: str
    target_key: str | None
    watermark: str | None


@dataclass(frozen=True)
class TargetFolderRecord:
    path: str
    uidvalidity: str | None
    created_by_us: bool
    checkpoint_id: int | None
