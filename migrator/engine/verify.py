"""Proof of what was copied, folder by folder, from the source and target themselves plus the ledger.

For every source message that passes the filters: is there a done ledger row, does its target id still
exist on the target, with the same flags (those the target can carry) and internal date, the same size
where both sides keep bytes, and with `deep` the same content: the SHA-256 of the exact bytes where both
sides keep them (IMAP), else the content fingerprint (Exchange re-renders MIME on import; see
migrator.fingerprint). Target messages no ledger row accounts for are listed as extra and never counted as
copies: they were there before us, or someone else put them there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from migrator.config import Config
from migrator.connectors.base import Endpoint, Mailbox, open_mailbox
from migrator.engine.diff import passes_filters
from migrator.engine.mapping import route_folders
from migrator.fingerprint import FINGERPRINT_METHOD, fingerprint_fields
from migrator.model import Capabilities, FolderInfo, Login, MessageRef
from migrator.store.ledger import DONE, FAILED
from migrator.store.records import LedgerEntry

BYTES_METHOD = "sha256 of the exact message bytes on both sides"
# Exchange generates a Message-ID and a Date for a message that has none: absent on the source, not compared.
FILLED_IN_BY_TARGET = ("message_id", "date")


@dataclass
class FolderCheck:
    source_folder: str
    target_folder: str
    source_messages: int = 0
    verified: int = 0
    missing: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)
    failed_items: int = 0
    extra: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.differs and not self.failed_items


@dataclass
class MailboxCheck:
    source: str
    target: str
    folders: list[FolderCheck] = field(default_factory=list)
    error: str | None = None
    deep_method: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(f.ok for f in self.folders)


@dataclass(frozen=True)
class _Rules:
    """How copies are compared, from what the two sides keep."""

    target: Capabilities
    exact_bytes: bool

    @property
    def method(self) -> str:
        return BYTES_METHOD if self.exact_bytes else FINGERPRINT_METHOD

    def content(self, body: bytes) -> str | dict[str, Any]:
        return hashlib.sha256(body).hexdigest() if self.exact_bytes else fingerprint_fields(body)

    def same(self, source: str | dict[str, Any] | None, target: str | dict[str, Any] | None) -> bool:
        if not isinstance(source, dict) or not isinstance(target, dict):
            return source is not None and source == target
        return all(target.get(key) == value for key, value in source.items()
                   if not (key in FILLED_IN_BY_TARGET and not value))


def _contents(mailbox: Mailbox, folder: FolderInfo, refs: Sequence[MessageRef],
              rules: _Rules) -> Iterator[tuple[str, str | dict[str, Any]]]:
    for start in range(0, len(refs), 100):
        for message in mailbox.fetch(folder, refs[start:start + 100]):
            yield message.ref.id, rules.content(message.body)


def verify_mailbox(config: Config, source: Endpoint, target: Endpoint, logins: tuple[Login, Login],
                   entries: Sequence[LedgerEntry], deep: bool) -> MailboxCheck:
    """Compare one mailbox; raises EndpointError if either side cannot be opened."""
    check = MailboxCheck(logins[0].address, logins[1].address)
    with open_mailbox(source, logins[0], write=False) as src, open_mailbox(target, logins[1], write=False) as dst:
        target_caps = dst.capabilities()
        rules = _Rules(target_caps, src.capabilities().preserves_bytes and target_caps.preserves_bytes)
        check.deep_method = rules.method if deep else None
        target_folders = {f.path: f for f in dst.list_folders(sizes=False)}
        separator = next((f.separator for f in target_folders.values() if f.separator), None)
        routes = route_folders(src.list_folders(sizes=False), list(target_folders.values()), separator,
                               config.mapping.folders, config.filters.exclude_folders)
        for route in routes:
            folder_entries = [e for e in entries if e.source_folder == route.source.path]
            check.folders.append(_verify_folder(config, src, dst, route.source, route.target_path,
                                                target_folders, folder_entries, rules, deep))
    return check


def _verify_folder(config: Config, src: Mailbox, dst: Mailbox, folder: FolderInfo, target_path: str,
                   target_folders: dict[str, FolderInfo], entries: Sequence[LedgerEntry], rules: _Rules,
                   deep: bool) -> FolderCheck:
    check = FolderCheck(folder.path, target_path)
    listing = [ref for ref in src.list_messages(folder) if passes_filters(ref, config.filters)]
    check.source_messages = len(listing)
    by_source = {e.source_id: e for e in entries if e.source_key == folder.key}
    target_listings: dict[str, dict[str, MessageRef]] = {}
    for path in {e.target_folder for e in by_source.values()} | {target_path}:
        if path in target_folders and target_folders[path].selectable:
            target_listings[path] = {r.id: r for r in dst.list_messages(target_folders[path])}
    pairs: list[tuple[MessageRef, LedgerEntry, MessageRef]] = []
    for ref in listing:
        entry = by_source.get(ref.id)
        if entry is not None and entry.state == FAILED:
            check.failed_items += 1
            check.missing.append(f"UID {ref.id}: not copied ({entry.reason})")
            continue
        copy = target_listings.get(entry.target_folder, {}).get(entry.target_id or "") if entry else None
        if entry is None or entry.state != DONE or copy is None:
            check.missing.append(f"UID {ref.id}")
            continue
        problem = _compare(ref, copy, rules)
        if problem:
            check.differs.append(f"UID {ref.id} -> {entry.target_folder} UID {copy.id}: {problem}")
        else:
            pairs.append((ref, entry, copy))
    content_differs = _deep_compare(src, dst, folder, target_folders, pairs, check, rules) if deep else 0
    check.verified = len(pairs) - content_differs
    ours = {e.target_id for e in entries if e.target_folder == target_path and e.target_id}
    check.extra = len(set(target_listings.get(target_path, {})) - ours)
    return check


def _compare(ref: MessageRef, copy: MessageRef, rules: _Rules) -> str | None:
    if rules.exact_bytes and ref.size != copy.size:
        return f"size {ref.size} != {copy.size}"
    expected = rules.target.storable_flags(ref.flags)
    if expected != copy.flags:
        return f"flags {sorted(expected)} != {sorted(copy.flags)}"
    if ref.internal_date != copy.internal_date:
        return f"internal date {ref.internal_date.isoformat()} != {copy.internal_date.isoformat()}"
    return None


def _deep_compare(src: Mailbox, dst: Mailbox, folder: FolderInfo, target_folders: dict[str, FolderInfo],
                  pairs: Sequence[tuple[MessageRef, LedgerEntry, MessageRef]], check: FolderCheck,
                  rules: _Rules) -> int:
    """Adds content mismatches to `check.differs`; returns how many there were."""
    before = len(check.differs)
    source_hashes = dict(_contents(src, folder, [ref for ref, _e, _c in pairs], rules))
    by_target: dict[str, list[tuple[MessageRef, LedgerEntry, MessageRef]]] = {}
    for pair in pairs:
        by_target.setdefault(pair[1].target_folder, []).append(pair)
    for path, group in by_target.items():
        target_hashes = dict(_contents(dst, target_folders[path], [copy for _r, _e, copy in group], rules))
        for ref, entry, copy in group:
            if not rules.same(source_hashes.get(ref.id), target_hashes.get(copy.id)):
                check.differs.append(f"UID {ref.id} -> {entry.target_folder} UID {copy.id}: content differs")
    return len(check.differs) - before
