"""The per-message ledger: an intent row committed before every target write, a done row after it.

States: `intent` (a write may or may not have reached the target), `done` (copied; target_id known),
`failed` (refused by the target for a reason that retrying cannot fix, e.g. too large), `removed` (the
source message is gone: deleted, or lost to a UIDVALIDITY change; the row stays as history). Rolled-back
copies are deleted from the ledger after their target message is deleted, so a later run copies them anew. Every write
re-checks the job lease in the same transaction, so a worker that lost its job cannot record anything.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Column, Connection, Row, bindparam, delete, func, insert, select, update

from migrator.errors import StateError
from migrator.store.records import Lease, LedgerEntry, PendingCopy, TargetFolderRecord, utcnow
from migrator.store.schema import ledger, source_cursor, target_folder
from migrator.store.work import renew_lease

INTENT, DONE, FAILED, REMOVED = "intent", "done", "failed", "removed"
_IDS_PER_QUERY = 500  # bound parameters per IN list (SQLite's limit was 999 before 3.32)


def encode_flags(flags: Iterable[str]) -> str:
    """Space-separated, as IMAP writes them; a JSON list where a flag holds whitespace (an Exchange
    category such as "Red category"). An IMAP flag cannot start with a quote, so the two never mix up."""
    return _encoded(flags if isinstance(flags, frozenset) else frozenset(flags))


@lru_cache(maxsize=4096)
def _encoded(flags: frozenset[str]) -> str:
    """Cached: every intent row is encoded, and a mailbox has few distinct flag sets."""
    ordered = sorted(flags)
    return json.dumps(ordered, ensure_ascii=False) if any(len(f.split()) != 1 for f in ordered) else " ".join(ordered)


@lru_cache(maxsize=4096)
def decode_flags(text: str) -> frozenset[str]:
    """Cached: a mailbox has few distinct flag sets, and a pass decodes one per ledger row."""
    return frozenset(json.loads(text) if text.startswith('["') else text.split())


def _entry(row: Row[Any]) -> LedgerEntry:
    # attribute access: Row._mapping builds a mapping view per row, a measurable cost over a mailbox's rows
    return LedgerEntry(row.id, row.source_folder, row.source_key, row.source_id, row.digest, row.size,
                       decode_flags(row.flags), row.internal_date, row.target_folder, row.target_key,
                       row.watermark, row.target_id, row.state, row.reason, row.checkpoint_id)


def folder_entries(conn: Connection, mailbox_id: int, source_folder: str,
                   source_ids: Collection[str] | None = None) -> list[LedgerEntry]:
    """The folder's rows in id order; with `source_ids`, only the rows of those source messages (any key)."""
    where = (ledger.c.mailbox_id == mailbox_id, ledger.c.source_folder == source_folder)
    if source_ids is None:
        return [_entry(row) for row in conn.execute(select(ledger).where(*where).order_by(ledger.c.id))]
    wanted = sorted(source_ids)
    entries = [_entry(row) for start in range(0, len(wanted), _IDS_PER_QUERY)
               for row in conn.execute(select(ledger).where(
                   *where, ledger.c.source_id.in_(wanted[start:start + _IDS_PER_QUERY])))]
    return sorted(entries, key=lambda entry: entry.id)


def mailbox_entries(conn: Connection, mailbox_id: int) -> list[LedgerEntry]:
    rows = conn.execute(select(ledger).where(ledger.c.mailbox_id == mailbox_id).order_by(ledger.c.id))
    return [_entry(row) for row in rows]


def folder_states(conn: Connection, mailbox_id: int) -> dict[str, dict[tuple[str, str], int]]:
    """Per source folder with ledger rows, how many rows it has in each (source_key, state): what a pass
    must know before reading any row (open intents to settle, a UIDVALIDITY the rows do not share, messages
    refused earlier), in one query over the mailbox instead of every row."""
    rows = conn.execute(select(ledger.c.source_folder, ledger.c.source_key, ledger.c.state, func.count())
                        .where(ledger.c.mailbox_id == mailbox_id)
                        .group_by(ledger.c.source_folder, ledger.c.source_key, ledger.c.state))
    states: dict[str, dict[tuple[str, str], int]] = {}
    for folder, key, state, count in rows:
        states.setdefault(folder, {})[(key, state)] = int(count)
    return states


def claimed_target_ids(conn: Connection, mailbox_id: int, target_path: str, target_key: str | None) -> set[str]:
    """Target ids the ledger already accounts for in that folder: never the copy of another intent."""
    rows = conn.execute(select(ledger.c.target_id).where(
        ledger.c.mailbox_id == mailbox_id, ledger.c.target_folder == target_path, ledger.c.target_key == target_key,
        ledger.c.target_id.is_not(None)))
    return {value for value in rows.scalars() if value is not None}


def record_intents(conn: Connection, lease: Lease, mailbox_id: int, checkpoint_id: int,
                   copies: Sequence[PendingCopy]) -> list[int]:
    """Write intent rows (one transaction with the lease check); returns their ids in order.

    The two statements a copied message costs (this INSERT and record_done's UPDATE) are the ledger's hot
    path: sent as driver SQL, they cost half the CPU that SQLAlchemy's per-row parameter processing did
    (scripts/bench_ledger.py compares them with the bare driver writing the same rows).
    The INSERT is one multi-row statement per 50 rows whose RETURNING names each row's
    source message, so ids are matched to copies by the row's unique key, not by an order neither
    database promises."""
    renew_lease(conn, lease)
    if not copies:
        return []
    stamp = _driver_value(conn, ledger.c.created_at, utcnow())
    ids: dict[tuple[str, str, str], int] = {}
    for start in range(0, len(copies), _ROWS_PER_INSERT):
        part = copies[start:start + _ROWS_PER_INSERT]
        values = [value for copy in part for value in (
            mailbox_id, copy.source_folder, copy.source_key, copy.source_id, copy.digest, copy.size,
            encode_flags(copy.flags), copy.internal_date, copy.target_folder, copy.target_key, copy.watermark,
            INTENT, checkpoint_id, stamp)]
        inserted = conn.exec_driver_sql(_insert_intents_sql(_placeholder(conn), len(part)), tuple(values))
        ids.update(((folder, key, source_id), int(row_id)) for row_id, folder, key, source_id in inserted)
    return [ids[(copy.source_folder, copy.source_key, copy.source_id)] for copy in copies]


def record_done(conn: Connection, lease: Lease, target_ids: Mapping[int, str]) -> None:
    """Mark intents done with the target id each copy got (driver SQL: see record_intents)."""
    renew_lease(conn, lease)
    if target_ids:
        stamp = _driver_value(conn, ledger.c.done_at, utcnow())
        mark = _placeholder(conn)
        conn.exec_driver_sql(
            f"UPDATE ledger SET state = {mark}, target_id = {mark}, done_at = {mark} WHERE id = {mark}",
            [(DONE, target_id, stamp, ledger_id) for ledger_id, target_id in target_ids.items()])


_INTENT_COLUMNS = ("mailbox_id", "source_folder", "source_key", "source_id", "digest", "size", "flags",
                   "internal_date", "target_folder", "target_key", "watermark", "state", "checkpoint_id",
                   "created_at")
# psycopg parses a statement of many parameters anew each time it is sent, at a cost that grows with its
# length: on PostgreSQL 50 rows a statement took a sixth less CPU than 500; SQLite does not mind either way.
_ROWS_PER_INSERT = 50


@lru_cache(maxsize=32)
def _insert_intents_sql(mark: str, rows: int) -> str:
    row = "(" + ", ".join([mark] * len(_INTENT_COLUMNS)) + ")"
    return (f"INSERT INTO ledger ({', '.join(_INTENT_COLUMNS)}) VALUES {', '.join([row] * rows)} "
            f"RETURNING id, source_folder, source_key, source_id")


def _placeholder(conn: Connection) -> str:
    """The driver's positional marker: sqlite3 takes qmark, psycopg format (its pyformat accepts %s)."""
    style = conn.dialect.paramstyle
    if style == "qmark":
        return "?"
    if style in ("format", "pyformat"):
        return "%s"
    raise StateError(f"state store driver {conn.dialect.driver} uses paramstyle {style!r}, not supported")


def _driver_value(conn: Connection, column: Column[Any], value: datetime) -> Any:
    """A DateTime as SQLAlchemy would hand it to the driver (SQLite stores a fixed text form), so rows
    written as driver SQL read back exactly like every other row."""
    process = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return process(value) if process else value


def record_failed(conn: Connection, lease: Lease, ledger_id: int, reason: str) -> None:
    renew_lease(conn, lease)
    conn.execute(update(ledger).where(ledger.c.id == ledger_id).values(state=FAILED, reason=reason, done_at=utcnow()))


def drop_intents(conn: Connection, lease: Lease, ledger_ids: Sequence[int]) -> None:
    """Forget intents whose write provably never reached the target, so they are copied again."""
    renew_lease(conn, lease)
    if ledger_ids:
        conn.execute(delete(ledger).where(ledger.c.id.in_(list(ledger_ids)), ledger.c.state == INTENT))


def record_flags(conn: Connection, lease: Lease, flags: Mapping[int, frozenset[str]]) -> None:
    renew_lease(conn, lease)
    if flags:
        conn.execute(update(ledger).where(ledger.c.id == bindparam("ledger_id")).values(flags=bindparam("f")),
                     [{"ledger_id": key, "f": encode_flags(value)} for key, value in flags.items()])


def mark_removed(conn: Connection, lease: Lease, ledger_ids: Sequence[int], reason: str) -> None:
    """The source message is gone; the row stays as history (and never matches a listing again)."""
    renew_lease(conn, lease)
    if ledger_ids:
        conn.execute(update(ledger).where(ledger.c.id.in_(list(ledger_ids)))
                     .values(state=REMOVED, reason=reason, done_at=utcnow()))


def rekey(conn: Connection, lease: Lease, new_ids: Mapping[int, tuple[str, str]]) -> None:
    """Point rows at the source's new (UIDVALIDITY, UID) after a re-match by content."""
    renew_lease(conn, lease)
    if new_ids:
        conn.execute(update(ledger).where(ledger.c.id == bindparam("ledger_id"))
                     .values(source_key=bindparam("key"), source_id=bindparam("sid")),
                     [{"ledger_id": lid, "key": key, "sid": sid} for lid, (key, sid) in new_ids.items()])


def rename_source_folder(conn: Connection, lease: Lease, mailbox_id: int, old: str, new: str) -> None:
    renew_lease(conn, lease)
    conn.execute(delete(source_cursor).where(source_cursor.c.mailbox_id == mailbox_id,
                                             source_cursor.c.folder.in_([old, new])))
    conn.execute(update(ledger).where(ledger.c.mailbox_id == mailbox_id, ledger.c.source_folder == old)
                 .values(source_folder=new))


def forget(conn: Connection, lease: Lease, ledger_ids: Sequence[int]) -> None:
    """Drop rows whose target copies were rolled back, and the cursors of their mailboxes: a delta pass
    must list the folder again to copy those messages anew."""
    renew_lease(conn, lease)
    if ledger_ids:
        mailboxes = conn.execute(select(ledger.c.mailbox_id).distinct().where(ledger.c.id.in_(list(ledger_ids))))
        conn.execute(delete(source_cursor).where(source_cursor.c.mailbox_id.in_([r[0] for r in mailboxes])))
        conn.execute(delete(ledger).where(ledger.c.id.in_(list(ledger_ids))))


def forget_target_folder(conn: Connection, lease: Lease, mailbox_id: int, path: str) -> None:
    renew_lease(conn, lease)
    conn.execute(delete(target_folder).where(target_folder.c.mailbox_id == mailbox_id, target_folder.c.path == path))


def target_folders(conn: Connection, mailbox_id: int) -> dict[str, TargetFolderRecord]:
    rows = conn.execute(select(target_folder).where(target_folder.c.mailbox_id == mailbox_id))
    return {r.path: TargetFolderRecord(r.path, r.uidvalidity, bool(r.created_by_us), r.checkpoint_id) for r in rows}


def remember_target_folder(conn: Connection, lease: Lease, mailbox_id: int, record: TargetFolderRecord) -> None:
    """Note a target folder and whether we created it (rollback removes only ours)."""
    renew_lease(conn, lease)
    values = {"uidvalidity": record.uidvalidity}
    changed = conn.execute(update(target_folder).where(target_folder.c.mailbox_id == mailbox_id,
                                                       target_folder.c.path == record.path).values(**values)).rowcount
    if not changed:
        conn.execute(insert(target_folder).values(mailbox_id=mailbox_id, path=record.path,
                                                  created_by_us=int(record.created_by_us),
                                                  checkpoint_id=record.checkpoint_id, **values))


def read_cursors(conn: Connection, mailbox_id: int, basis: str) -> dict[tuple[str, str], str]:
    """The mailbox's change cursors kept under this basis (the filters), by (folder, folder key): one query
    for a pass, which asks about every folder and, in a delta, often about nothing else."""
    rows = conn.execute(select(source_cursor.c.folder, source_cursor.c.folder_key, source_cursor.c.cursor).where(
        source_cursor.c.mailbox_id == mailbox_id, source_cursor.c.basis == basis))
    return {(folder, folder_key): cursor for folder, folder_key, cursor in rows}


def keep_cursor(conn: Connection, lease: Lease, mailbox_id: int, folder: str, folder_key: str, cursor: str,
                basis: str) -> None:
    """After a pass acted on every change up to `cursor`: the next pass starts there."""
    renew_lease(conn, lease)
    conn.execute(delete(source_cursor).where(source_cursor.c.mailbox_id == mailbox_id,
                                             source_cursor.c.folder == folder))
    conn.execute(insert(source_cursor).values(mailbox_id=mailbox_id, folder=folder, folder_key=folder_key,
                                              cursor=cursor, basis=basis))
