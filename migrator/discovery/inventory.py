"""Inventory of source mailboxes: folders, counts, sizes, date ranges and statistics, and dependencies.

Everything is read before anything is written, so a failure part-way (a wrong password, an unreachable
server) leaves the state store exactly as it was. Re-running discovery updates the rows and records in
the event log what changed since the last time (mailboxes added or gone, messages and bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine

from migrator.config import Config, Dependency
from migrator.connectors.base import Endpoint, open_mailbox
from migrator.discovery.stats import FolderStats, folder_stats
from migrator.model import CutoverSettings, FolderInfo, MailboxEntry
from migrator.store import inventory, work
from migrator.store.db import translate_db_errors
from migrator.store.records import FolderDetail

# A note on a mailbox, logged with its id by the discovery that found it (the report shows those of each
# mailbox's latest discovery); the text says what to do at cutover.
NOTE = "discover-note"
AUTO_REPLY_NOTE = "automatic replies are on; they keep answering from the source until cutover"


@dataclass(frozen=True)
class Discovered:
    entry: MailboxEntry
    folders: tuple[FolderInfo, ...]
    stats: dict[str, FolderStats] = field(default_factory=dict)
    settings: CutoverSettings = field(default_factory=CutoverSettings)

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.folders)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.folders)


def _naive_utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None and value.tzinfo else value


def _read_mailbox(source: Endpoint, entry: MailboxEntry) -> Discovered:
    with open_mailbox(source, entry.source_access(), write=False) as mailbox:
        listed = mailbox.list_folders(sizes=False)
        stats = {f.path: folder_stats(mailbox.list_messages(f)) for f in listed if f.selectable}
        settings = mailbox.cutover_settings()
    folders = tuple(replace(f, messages=stats[f.path].messages, size=stats[f.path].size) if f.path in stats else f
                    for f in listed)
    return Discovered(entry, folders, stats, settings)


def discover(config: Config, engine: Engine, source: Endpoint, entries: Sequence[MailboxEntry],
             dependencies: Sequence[Dependency] = (),
             on_mailbox: Callable[[Discovered], None] = lambda _d: None) -> list[Discovered]:
    """Read every mailbox from the source, then save it all; raises EndpointError before saving."""
    probe = source.probe(on_behalf_of=entries[0].source_access().user if entries else None)
    found = []
    for entry in entries:
        item = _read_mailbox(source, entry)
        on_mailbox(item)
        found.append(item)
    with translate_db_errors(), engine.begin() as conn:
        _log_changes(conn, found)
        inventory.save_endpoint(conn, "source", config.source.kind, probe.address, sorted(probe.capabilities))
        ids = {}
        for item in found:
            details = {path: FolderDetail(_naive_utc(s.oldest), _naive_utc(s.newest), s.to_json())
                       for path, s in item.stats.items()}
            ids[item.entry.source] = inventory.save_mailbox(conn, item.entry, item.folders, details)
        groups = [("group", item.entry.source, item.entry.group) for item in found if item.entry.group]
        inventory.save_dependencies(conn, groups, "mailboxes.csv")
        if dependencies:
            inventory.save_dependencies(conn, [(d.kind, d.source, d.target) for d in dependencies], "file")
        inventory.save_dependencies(conn, [("forward", item.entry.source, target) for item in found
                                           for target in item.settings.forwards_to], "source")
        for item in found:
            if item.settings.auto_reply:
                work.log_event(conn, NOTE, f"{item.entry.source}: {AUTO_REPLY_NOTE}", ids[item.entry.source])
        work.log_event(conn, "discover", f"{len(found)} mailboxes, {sum(d.messages for d in found)} messages, "
                                         f"{sum(d.size for d in found)} bytes")
    return found


def _log_changes(conn: Connection, found: Sequence[Discovered]) -> None:
    before = {m.source: m for m in inventory.list_mailboxes(conn)}
    now = {item.entry.source for item in found}
    for item in found:
        old = before.get(item.entry.source)
        if old is None:
            if before:
                work.log_event(conn, "discover-change", f"{item.entry.source}: new mailbox")
        elif (old.messages, old.size, old.folders) != (item.messages, item.size, len(item.folders)):
            work.log_event(conn, "discover-change",
                           f"{item.entry.source}: {item.messages - old.messages:+} messages, "
                           f"{item.size - old.size:+} bytes, {len(item.folders) - old.folders:+} folders",
                           old.id)
    for source in sorted(set(before) - now):
        work.log_event(conn, "discover-change", f"{source}: no longer in the mailbox list (rows kept)",
                       before[source].id)
