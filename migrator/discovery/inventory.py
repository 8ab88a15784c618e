"""Inventory of source mailboxes: folders, counts and sizes, read first and saved in one transaction.

Everything is read before anything is written, so a failure part-way (a wrong password, an unreachable
server) leaves the state store exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from migrator.config import Config
from migrator.connectors.base import Endpoint, open_mailbox
from migrator.model import FolderInfo, MailboxEntry
from migrator.store import inventory, work
from migrator.store.db import translate_db_errors


@dataclass(frozen=True)
class Discovered:
    entry: MailboxEntry
    folders: tuple[FolderInfo, ...]

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.folders)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.folders)


def discover(config: Config, engine: Engine, source: Endpoint, entries: Sequence[MailboxEntry],
             on_mailbox: Callable[[Discovered], None] = lambda _d: None) -> list[Discovered]:
    """Read every mailbox's folders from the source, then save them; raises EndpointError before saving."""
    probe = source.probe(on_behalf_of=entries[0].source_access().user if entries else None)
    found = []
    for entry in entries:
        with open_mailbox(source, entry.source_access(), write=False) as mailbox:
            item = Discovered(entry, tuple(mailbox.list_folders()))
        on_mailbox(item)
        found.append(item)
    with translate_db_errors(), engine.begin() as conn:
        inventory.save_endpoint(conn, "source", config.source.kind, probe.address, sorted(probe.capabilities))
        for item in found:
            inventory.save_mailbox(conn, item.entry, item.folders)
        work.log_event(conn, "discover", f"{len(found)} mailboxes, {sum(d.messages for d in found)} messages, "
                                         f"{sum(d.size for d in found)} bytes")
    return found
