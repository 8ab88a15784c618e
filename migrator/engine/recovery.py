"""What to do when the source's history changed under the ledger: folders renamed or gone, UIDVALIDITY reset.

Both are decided from evidence, never guessed: a folder counts as renamed only when it has the vanished
folder's UIDVALIDITY *and* the ledger's UIDs with their sizes; a folder whose UIDVALIDITY changed is a
safety stop until a person asks for a re-match, which pairs ledger rows with source messages by the
SHA-256 of their bytes (each row with at most one message), so nothing is copied twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

from migrator.connectors.base import Mailbox
from migrator.engine.checkpoint import Journal
from migrator.engine.mapping import FolderRoute
from migrator.errors import FolderFailed
from migrator.model import FolderInfo, MessageRef
from migrator.store.ledger import REMOVED
from migrator.store.records import LedgerEntry

SAMPLE = 20


def adopt_renamed_folders(src: Mailbox, journal: Journal, source_paths: Collection[str], routes: Sequence[FolderRoute],
                          history: Mapping[str, Sequence[LedgerEntry]]) -> list[FolderRoute]:
    """Routes with renamed source folders pointed at the target folder their copies are already in."""
    vanished = {path: rows for path, rows in history.items() if path not in source_paths}
    adopted = []
    for route in routes:
        match = None if route.source.path in history else _renamed_from(src, route.source, vanished)
        if match is None:
            adopted.append(route)
            continue
        journal.renamed(match, route.source.path)
        target = vanished.pop(match)[0].target_folder
        adopted.append(FolderRoute(route.source, target, route.role))
    for path, rows in vanished.items():
        kept = sum(1 for row in rows if row.state != REMOVED)
        journal.event("folder-gone", f"source folder {path!r} is gone; its {kept} copies on the target are kept")
    return adopted


def _renamed_from(src: Mailbox, folder: FolderInfo, vanished: Mapping[str, Sequence[LedgerEntry]]) -> str | None:
    candidates = [path for path, rows in vanished.items() if rows and rows[0].source_key == folder.key]
    if len(candidates) != 1:
        return None
    listing = {ref.id: ref.size for ref in src.list_messages(folder)}
    sample = [row for row in vanished[candidates[0]] if row.state != REMOVED][:SAMPLE]
    return candidates[0] if sample and all(listing.get(r.source_id) == r.size for r in sample) else None


def check_source_key(src: Mailbox, journal: Journal, folder: FolderInfo, entries: Sequence[LedgerEntry],
                     rematch: bool) -> bool:
    """True if the ledger had to be re-matched. Raises FolderFailed (a safety stop) when the folder's
    UIDVALIDITY changed and no re-match was asked for."""
    keys = {entry.source_key for entry in entries if entry.state != REMOVED}
    if not keys or keys == {folder.key}:
        return False
    if not rematch:
        raise FolderFailed(
            f"safety stop: source folder {folder.path!r} has UIDVALIDITY {folder.key}, the ledger has "
            f"{', '.join(sorted(keys))}: its message ids changed, so nothing was copied from it; if the folder was "
            f"rebuilt with the same mail, re-run with --rematch-folder {folder.path!r} to pair its messages with "
            f"the earlier copies by content (nothing is copied twice)")
    _rematch(src, journal, folder, [e for e in entries if e.state != REMOVED and e.source_key != folder.key])
    return True


def _rematch(src: Mailbox, journal: Journal, folder: FolderInfo, stale: Sequence[LedgerEntry]) -> None:
    listing = src.list_messages(folder)
    by_digest: dict[str, list[MessageRef]] = {}
    for start in range(0, len(listing), 100):
        for message in src.fetch(folder, listing[start:start + 100]):
            by_digest.setdefault(hashlib.sha256(message.body).hexdigest(), []).append(message.ref)
    new_ids: dict[int, tuple[str, str]] = {}
    orphans = []
    for entry in sorted(stale, key=lambda e: e.id):
        pool = by_digest.get(entry.digest)
        if pool:
            new_ids[entry.id] = (folder.key or "", pool.pop(0).id)
        else:
            orphans.append(entry.id)
    journal.rekeyed(new_ids, orphans)
    journal.event("rematched", f"{folder.path!r}: {len(new_ids)} earlier copies re-matched by content, "
                               f"{len(orphans)} no longer on the source")
