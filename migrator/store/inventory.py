"""Inventory rows: endpoints, mailboxes and their source folders, as discovery last saw them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, Select, delete, func, insert, select, update

from migrator.model import FolderInfo, MailboxEntry
from migrator.store.records import FolderDetail, MailboxRecord, utcnow
from migrator.store.schema import dependency, endpoint, event, folder, mailbox


def save_endpoint(conn: Connection, role: str, kind: str, address: str, capabilities: Sequence[str]) -> None:
    values = {"kind": kind, "address": address, "capabilities": " ".join(sorted(capabilities)),
              "updated_at": utcnow()}
    changed = conn.execute(update(endpoint).where(endpoint.c.role == role).values(**values)).rowcount
    if not changed:
        conn.execute(insert(endpoint).values(role=role, **values))


def save_mailbox(conn: Connection, entry: MailboxEntry, folders: Sequence[FolderInfo],
                 details: Mapping[str, FolderDetail] | None = None) -> int:
    """Insert or update one mailbox and replace its folder rows (with `details` per path where known);
    returns the mailbox id."""
    now = utcnow()
    values = {
        "target_address": entry.target, "source_login": entry.source_login, "target_login": entry.target_login,
        "group_name": entry.group, "priority": entry.priority, "discovered_at": now,
        "messages": sum(f.messages for f in folders), "size": sum(f.size for f in folders),
    }
    mailbox_id = conn.execute(select(mailbox.c.id).where(mailbox.c.source_address == entry.source)).scalar()
    if mailbox_id is None:
        result = conn.execute(insert(mailbox).values(source_address=entry.source, **values))
        mailbox_id = result.inserted_primary_key[0]  # type: ignore[index]
    else:
        conn.execute(update(mailbox).where(mailbox.c.id == mailbox_id).values(**values))
    conn.execute(delete(folder).where(folder.c.mailbox_id == mailbox_id))
    if folders:
        extra = details or {}
        conn.execute(insert(folder), [
            {"mailbox_id": mailbox_id, "path": f.path, "separator": f.separator, "role": f.role,
             "uidvalidity": f.key, "messages": f.messages, "size": f.size, "discovered_at": now,
             "oldest": _detail(extra, f.path).oldest, "newest": _detail(extra, f.path).newest,
             "stats": json.dumps(_detail(extra, f.path).stats, sort_keys=True)}
            for f in folders
        ])
    return int(mailbox_id)


def _detail(details: Mapping[str, FolderDetail], path: str) -> FolderDetail:
    return details.get(path) or FolderDetail(None, None, {})


def folder_details(conn: Connection, mailbox_id: int) -> list[tuple[FolderInfo, FolderDetail]]:
    rows = conn.execute(select(folder).where(folder.c.mailbox_id == mailbox_id).order_by(folder.c.path))
    return [(FolderInfo(r.path, r.separator, r.role, r.uidvalidity, r.messages, r.size),
             FolderDetail(r.oldest, r.newest, json.loads(r.stats) if r.stats else {})) for r in rows]


def save_dependencies(conn: Connection, found: Sequence[tuple[str, str, str]], origin: str) -> None:
    """Replace the dependencies that came from `origin` (mailboxes.csv, a file) with `found`."""
    conn.execute(delete(dependency).where(dependency.c.origin == origin))
    now = utcnow()
    unique = sorted(set(found))
    if unique:
        conn.execute(insert(dependency), [{"kind": kind, "source": source, "target": target, "origin": origin,
                                           "discovered_at": now} for kind, source, target in unique])


def list_dependencies(conn: Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute(select(dependency.c.kind, dependency.c.source, dependency.c.target).distinct()
                        .order_by(dependency.c.kind, dependency.c.source, dependency.c.target))
    return [(r.kind, r.source, r.target) for r in rows]


def mailbox_notes(conn: Connection, kind: str) -> list[tuple[str, str]]:
    """(mailbox, message) of the `kind` events logged on each mailbox by its latest discovery (at or after
    its discovered_at: the same transaction), by mailbox then as logged."""
    rows = conn.execute(select(mailbox.c.source_address, event.c.message)
                        .join(mailbox, mailbox.c.id == event.c.mailbox_id)
                        .where(event.c.kind == kind, event.c.at >= mailbox.c.discovered_at)
                        .order_by(mailbox.c.source_address, event.c.id))
    return [(r.source_address, r.message) for r in rows]


def _record(row: Row[Any]) -> MailboxRecord:
    m = row._mapping
    return MailboxRecord(m["id"], m["source_address"], m["target_address"], m["source_login"], m["target_login"],
                         m["group_name"], m["priority"], m["messages"], m["size"], m["folders"])


def _mailbox_query() -> Select[Any]:
    folders = select(func.count()).where(folder.c.mailbox_id == mailbox.c.id).scalar_subquery()
    return select(mailbox, folders.label("folders"))


def list_mailboxes(conn: Connection) -> list[MailboxRecord]:
    rows = conn.execute(_mailbox_query().order_by(mailbox.c.source_address))
    return [_record(row) for row in rows]


def mailboxes_by_source(conn: Connection, addresses: Sequence[str]) -> dict[str, MailboxRecord]:
    rows = conn.execute(_mailbox_query().where(mailbox.c.source_address.in_(list(addresses))))
    return {record.source: record for record in map(_record, rows)}


def source_folders(conn: Connection, mailbox_id: int) -> list[FolderInfo]:
    rows = conn.execute(select(folder).where(folder.c.mailbox_id == mailbox_id).order_by(folder.c.path))
    return [FolderInfo(r.path, r.separator, r.role, r.uidvalidity, r.messages, r.size) for r in rows]
