"""`run --dry-run`: what a pass would do, from the same routing and diff as a real pass, writing nothing.

Both sides are opened read-only (the guard refuses any write) and the state store is only read.
"""

from __future__ import annotations

from dataclasses import dataclass

from migrator.connectors.base import open_mailbox
from migrator.engine import diff
from migrator.engine.mapping import route_folders
from migrator.engine.worker import RunContext, logins_for
from migrator.store import ledger
from migrator.store.db import translate_db_errors
from migrator.store.records import MailboxRecord


@dataclass(frozen=True)
class FolderPreview:
    source_folder: str
    target_folder: str
    create: bool
    copy: int
    copy_bytes: int
    flag_updates: int
    deleted_on_source: int
    open_intents: int


def preview_mailbox(ctx: RunContext, record: MailboxRecord) -> list[FolderPreview]:
    """One line per routed folder; raises EndpointError if either side cannot be opened."""
    source_login, target_login = logins_for(ctx.credentials, record)
    with translate_db_errors(), ctx.engine.connect() as conn:
        entries = ledger.mailbox_entries(conn, record.id)
    previews = []
    with open_mailbox(ctx.source, source_login, write=False) as src, \
            open_mailbox(ctx.target, target_login, write=False) as dst:
        target_folders = dst.list_folders(sizes=False)
        separator = next((f.separator for f in target_folders if f.separator), None)
        existing = {f.path for f in target_folders}
        for route in route_folders(src.list_folders(sizes=False), target_folders, separator, ctx.config.mapping.folders,
                                   ctx.config.filters.exclude_folders):
            here = [e for e in entries if e.source_folder == route.source.path]
            settled = [e for e in here if e.state != ledger.INTENT]
            actions = diff.plan_folder(src.list_messages(route.source), settled, ctx.config.filters)
            previews.append(FolderPreview(route.source.path, route.target_path, route.target_path not in existing,
                                          len(actions.copy), sum(r.size for r in actions.copy),
                                          len(actions.flag_updates), len(actions.gone), len(here) - len(settled)))
    return previews
