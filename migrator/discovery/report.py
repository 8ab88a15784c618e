"""The discovery report's data (schema `migrator.discovery/2`, docs/report-discovery.md), from the store.

A dry run: it reads the inventory saved by `discover` (and a plan's batches, DNS results, the target's
message size limit when given) and writes nothing anywhere; the renderers in migrator.reports turn it into HTML, JSON
or CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from migrator.config import Config
from migrator.discovery.inventory import AUTO_REPLY_NOTE, NOTE
from migrator.discovery.stats import SIZE_BUCKETS, FolderStats, unsupported_reason
from migrator.store import inventory
from migrator.store.db import translate_db_errors

SCHEMA = "migrator.discovery/2"
TOP = 20


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value is not None else None


def build(config: Config, engine: Engine, rate: tuple[float, int], *, batches: Sequence[dict[str, Any]] = (),
          dns: Sequence[dict[str, Any]] = (), target_limit: int | None = None,
          target_separator: str | None = "/") -> dict[str, Any]:
    """The report document. `rate` (messages/s, bytes/s) sizes each mailbox's estimate; `batches` come
    from a plan in the report's batch shape."""
    with translate_db_errors(), engine.connect() as conn:
        records = inventory.list_mailboxes(conn)
        details = {r.id: inventory.folder_details(conn, r.id) for r in records}
        dependencies = inventory.list_dependencies(conn)
        notes = inventory.mailbox_notes(conn, NOTE)
    years: dict[int, list[int]] = {}
    buckets: dict[str, list[int]] = {label: [0, 0] for label, _limit in SIZE_BUCKETS}
    largest: list[dict[str, Any]] = []
    mailboxes = []
    warnings: list[str] = []
    for record in records:
        row = _mailbox(record, details[record.id], target_limit, target_separator, rate, years, buckets, largest)
        mailboxes.append(row)
        if row["oversize"]:
            warnings.append(f"{record.source}: {row['oversize']} messages are over the target's limit of "
                            f"{target_limit} bytes and will be reported as failed items")
        warnings += [f"{record.source}: folder {u['folder']!r}: {u['reason']}" for u in row["unsupported_folders"]]
    for entry in dns:
        warnings += [f"DNS {entry['domain']}: {f['message']}" for f in entry["findings"] if f["level"] != "ok"]
    return {
        "schema": SCHEMA,
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "source": config.source.describe(), "target": config.target.describe(),
        "target_max_message_size": target_limit,
        "totals": {key: sum(_count(m, key) for m in mailboxes) for key in
                   ("mailboxes", "folders", "messages", "bytes", "oversize", "unsupported_folders", "empty_folders")},
        "mailboxes": mailboxes,
        "years": [{"year": y, "messages": c[0], "bytes": c[1]} for y, c in sorted(years.items())],
        "size_buckets": [{"label": label, "messages": c[0], "bytes": c[1]} for label, c in buckets.items()],
        "largest": sorted(largest, key=lambda i: -i["bytes"])[:TOP],
        "dependencies": [{"kind": k, "source": s, "target": t} for k, s, t in dependencies],
        "auto_replies": [{"mailbox": source, "note": message.removeprefix(f"{source}: ")}
                         for source, message in notes if message.endswith(AUTO_REPLY_NOTE)],
        "batches": list(batches),
        "dns": list(dns),
        "warnings": warnings,
    }


def _count(mailbox: dict[str, Any], key: str) -> int:
    if key == "mailboxes":
        return 1
    value = mailbox[key]
    return len(value) if isinstance(value, list) else int(value)


def _mailbox(record: Any, folders: Sequence[Any], target_limit: int | None, target_separator: str | None,
             rate: tuple[float, int], years: dict[int, list[int]], buckets: dict[str, list[int]],
             largest: list[dict[str, Any]]) -> dict[str, Any]:
    oldest = [d.oldest for _f, d in folders if d.oldest]
    newest = [d.newest for _f, d in folders if d.newest]
    oversize = 0
    top: list[dict[str, Any]] = []
    for folder, detail in folders:
        stats = FolderStats.from_json(detail.stats, folder.messages, folder.size, detail.oldest, detail.newest)
        for year, (count, size) in stats.years.items():
            years.setdefault(year, [0, 0])
            years[year][0] += count
            years[year][1] += size
        for label, (count, size) in stats.buckets.items():
            buckets[label][0] += count
            buckets[label][1] += size
        if target_limit is not None:
            oversize += sum(1 for item in stats.big if item.size > target_limit)
        top += [{"folder": folder.path, "id": i.id, "bytes": i.size, "date": i.date} for i in stats.largest]
    top = sorted(top, key=lambda i: -i["bytes"])[:5]
    largest += [{"mailbox": record.source, **item} for item in top]
    messages, size = record.messages, record.size
    return {
        "source": record.source, "target": record.target, "group": record.group, "priority": record.priority,
        "messages": messages, "bytes": size, "folders": len(folders),
        "oldest": _iso(min(oldest)) if oldest else None, "newest": _iso(max(newest)) if newest else None,
        "oversize": oversize, "largest": top,
        "unsupported_folders": [{"folder": f.path, "reason": reason} for f, _d in folders
                                if (reason := unsupported_reason(f, target_separator))],
        "empty_folders": [f.path for f, _d in folders if f.messages == 0],
        "estimated_seconds": int(max(messages / rate[0], size / rate[1])) + 1,
    }
