"""Per-folder statistics from a message listing (pure): what the discovery report and planner size by.

Only metadata is read (sizes and internal dates), never bodies, so discovery stays a light dry run.
Every message of 1 MB or more is kept by id (typically a few percent of a mailbox), which makes "how many
are over the target's limit" exact for any limit of 1 MB and up (Exchange Online's is 25-150 MB, hosted
IMAP services' 10-50 MB) without storing every size.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrator.model import FolderInfo, MessageRef

BIG_MESSAGE = 1_000_000
TOP = 5
SIZE_BUCKETS: tuple[tuple[str, int], ...] = (
    ("<10 KB", 10_000), ("10-100 KB", 100_000), ("100 KB-1 MB", 1_000_000), ("1-10 MB", 10_000_000),
    ("10-25 MB", 25_000_000), ("25-150 MB", 150_000_000), (">=150 MB", 2**63),
)
MAX_PATH = 255
MAX_DEPTH = 32


@dataclass(frozen=True)
class Item:
    id: str
    size: int
    date: str


@dataclass
class FolderStats:
    messages: int = 0
    size: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    years: dict[int, list[int]] = field(default_factory=dict)
    buckets: dict[str, list[int]] = field(default_factory=dict)
    largest: list[Item] = field(default_factory=list)
    big: list[Item] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"years": {str(k): v for k, v in sorted(self.years.items())}, "buckets": self.buckets,
                "largest": [vars(i) for i in self.largest], "big": [vars(i) for i in self.big]}

    @classmethod
    def from_json(cls, data: dict[str, Any], messages: int, size: int, oldest: datetime | None,
                  newest: datetime | None) -> FolderStats:
        return cls(messages, size, oldest, newest, {int(k): v for k, v in data.get("years", {}).items()},
                   dict(data.get("buckets", {})), [Item(**i) for i in data.get("largest", [])],
                   [Item(**i) for i in data.get("big", [])])


def bucket_of(size: int) -> str:
    return next(label for label, limit in SIZE_BUCKETS if size < limit)


def folder_stats(refs: Sequence[MessageRef]) -> FolderStats:
    stats = FolderStats()
    for ref in refs:
        stats.messages += 1
        stats.size += ref.size
        when = ref.internal_date
        stats.oldest = when if stats.oldest is None or when < stats.oldest else stats.oldest
        stats.newest = when if stats.newest is None or when > stats.newest else stats.newest
        year_counts = stats.years.setdefault(when.year, [0, 0])
        for counts in (year_counts, stats.buckets.setdefault(bucket_of(ref.size), [0, 0])):
            counts[0] += 1
            counts[1] += ref.size
        if ref.size >= BIG_MESSAGE:
            stats.big.append(Item(ref.id, ref.size, when.isoformat()))
    top = heapq.nlargest(TOP, refs, key=lambda r: r.size)
    stats.largest = [Item(r.id, r.size, r.internal_date.isoformat()) for r in top]
    return stats


def unsupported_reason(folder: FolderInfo, target_separator: str | None) -> str | None:
    """Why the target cannot take this folder as it is named, or None. Generic limits that hold for IMAP
    servers and Exchange alike: a path of at most 255 characters, at most 32 levels, no control
    characters; a level containing the target's separator is renamed (the separator becomes "_")."""
    if len(folder.path) > MAX_PATH:
        return f"path is {len(folder.path)} characters (limit {MAX_PATH})"
    if len(folder.parts) > MAX_DEPTH:
        return f"{len(folder.parts)} levels deep (limit {MAX_DEPTH})"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in folder.path):
        return "name contains control characters"
    if target_separator and folder.separator != target_separator and any(target_separator in p for p in folder.parts):
        return f"a level contains the target's separator {target_separator!r}: it will be renamed with '_'"
    return None
