"""Rollback: remove from the target exactly what this tool created in a batch, newest first.

Only ledger rows say what is ours: a target message is deleted only by the id its done row recorded,
in the folder and UIDVALIDITY it recorded, so mail that was on the target before (identical copies
included) is never touched. Open intents are settled first, so a copy whose done row a crash lost is
found and removed too. Each slice is deleted on the target, then its rows are dropped from the ledger:
a crash in between repeats a delete of ids already gone, which is harmless, so rollback resumes and is
idempotent like a copy. Folders we created go last, deepest first, and only when empty.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine

from migrator.connectors.base import Mailbox, open_mailbox
from migrator.engine.checkpoint import Journal
from migrator.engine.worker import MailboxPass, RunContext, logins_for, settle_intents
from migrator.model import FolderInfo
from migrator.store import ledger
from migrator.store.db import translate_db_errors
from migrator.store.records import LedgerEntry, MailboxRecord

SLICE = 200


@dataclass
class RollbackPreview:
    mailbox: str
    messages: dict[str, int] = field(default_factory=dict)
    open_intents: int = 0
    folders: list[str] = field(default_factory=list)


def _in_scope(engine: Engine, record: MailboxRecord, checkpoints: Collection[int]) -> list[LedgerEntry]:
    with translate_db_errors(), engine.connect() as conn:
        entries = ledger.mailbox_entries(conn, record.id)
    return [e for e in entries if e.checkpoint_id in checkpoints and e.state in (ledger.DONE, ledger.INTENT)]


def _our_folders(engine: Engine, record: MailboxRecord, checkpoints: Collection[int]) -> list[str]:
    with translate_db_errors(), engine.connect() as conn:
        folders = ledger.target_folders(conn, record.id)
    created = [f.path for f in folders.values() if f.created_by_us and f.checkpoint_id in checkpoints]
    return sorted(created, key=lambda path: (-len(path), path))


def preview(engine: Engine, record: MailboxRecord, checkpoints: Collection[int]) -> RollbackPreview:
    """What a rollback would remove, from the ledger alone."""
    result = RollbackPreview(record.source)
    for entry in _in_scope(engine, record, checkpoints):
        if entry.state == ledger.INTENT:
            result.open_intents += 1
        else:
            result.messages[entry.target_folder] = result.messages.get(entry.target_folder, 0) + 1
    result.folders = _our_folders(engine, record, checkpoints)
    return result


def rollback_pass(checkpoints: Collection[int]) -> MailboxPass:
    """A mailbox pass (for the scheduler) that rolls back the copies made under `checkpoints`."""

    def run(ctx: RunContext, record: MailboxRecord, journal: Journal) -> list[str]:
        _source, target_login = logins_for(ctx.credentials, record)
        with open_mailbox(ctx.target, target_login, write=True) as dst:
            return _rollback(ctx, record, journal, dst, checkpoints)

    return run


def _rollback(ctx: RunContext, record: MailboxRecord, journal: Journal, dst: Mailbox,
              checkpoints: Collection[int]) -> list[str]:
    problems: list[str] = []
    folders = {f.path: f for f in dst.list_folders(sizes=False)}
    entries = _in_scope(ctx.engine, record, checkpoints)
    for path in sorted({e.target_folder for e in entries}):
        journal.check_stop()
        here = [e for e in entries if e.target_folder == path]
        folder = folders.get(path)
        if folder is None or any(e.target_key != folder.key for e in here):
            problems.append(f"target folder {path!r} is gone or was recreated: its {len(here)} copies are no longer "
                            f"addressable and were left alone")
            continue
        intents = [e for e in here if e.state == ledger.INTENT]
        if intents:
            settle_intents(ctx, record, journal, dst, folder, intents, count_as_copied=False)
            here = [e for e in _in_scope(ctx.engine, record, checkpoints) if e.target_folder == path]
        _delete_newest_first(journal, dst, folder, here)
    for path in _our_folders(ctx.engine, record, checkpoints):
        _remove_if_empty(journal, dst, path, problems)
    return problems


def _slices(entries: list[LedgerEntry]) -> Iterator[list[LedgerEntry]]:
    ordered = sorted(entries, key=lambda e: e.id, reverse=True)
    for start in range(0, len(ordered), SLICE):
        yield ordered[start:start + SLICE]


def _delete_newest_first(journal: Journal, dst: Mailbox, folder: FolderInfo, entries: list[LedgerEntry]) -> None:
    for chunk in _slices([e for e in entries if e.state == ledger.DONE and e.target_id]):
        journal.check_stop()
        dst.delete(folder, [e.target_id for e in chunk if e.target_id])
        journal.effect_done()
        journal.forget([e.id for e in chunk])


def _remove_if_empty(journal: Journal, dst: Mailbox, path: str, problems: list[str]) -> None:
    folders = {f.path: f for f in dst.list_folders(sizes=False)}
    folder = folders.get(path)
    if folder is None:
        journal.forget_target_folder(path)
        return
    children = [p for p in folders if folder.separator and p.startswith(path + folder.separator)]
    if folder.messages or children:
        problems.append(f"target folder {path!r} was created by migrator but is not empty now "
                        f"({folder.messages} messages, {len(children)} subfolders): kept")
        return
    dst.remove_folder(folder)
    journal.effect_done()
    journal.forget_target_folder(path)
