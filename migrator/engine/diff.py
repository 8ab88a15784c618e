"""Pure decisions for one folder: which intents a search settled, what to copy, which flags to change.

No I/O here: the worker gathers listings and ledger rows, these functions say what to do, and the tests
exercise every branch without a server.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from migrator.config import FilterConfig
from migrator.model import CopyTag, MessageRef
from migrator.store.ledger import DONE, FAILED, INTENT
from migrator.store.records import LedgerEntry


@dataclass(frozen=True)
class Settlement:
    done: dict[int, str] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)


def settle(intents: Sequence[LedgerEntry], found: Mapping[CopyTag, Sequence[str]],
           claimed: Collection[str]) -> Settlement:
    """Pair each open intent with a distinct target copy carrying its tag; the rest never arrived.

    `claimed` are target ids the ledger already accounts for: two identical source messages must end
    up as two target messages, so one copy never settles two intents.
    """
    taken = set(claimed)
    result = Settlement()
    for entry in sorted(intents, key=lambda e: e.id):
        floor = int(entry.watermark) if entry.watermark and entry.watermark.isdigit() else None
        candidates = [tid for tid in found.get(CopyTag(entry.digest, entry.size), ())
                      if tid not in taken and (floor is None or not tid.isdigit() or int(tid) >= floor)]
        if candidates:
            result.done[entry.id] = candidates[0]
            taken.add(candidates[0])
        else:
            result.dropped.append(entry.id)
    return result


def passes_filters(ref: MessageRef, filters: FilterConfig) -> bool:
    day: date = ref.internal_date.date()
    if filters.before is not None and day >= filters.before:
        return False
    return not (filters.after is not None and day < filters.after)


@dataclass(frozen=True)
class FolderActions:
    copy: list[MessageRef]
    flag_updates: dict[int, tuple[str, frozenset[str]]]
    already_copied: int
    failed_before: int
    gone: dict[int, LedgerEntry] = field(default_factory=dict)


def plan_folder(listing: Sequence[MessageRef], entries: Sequence[LedgerEntry], filters: FilterConfig) -> FolderActions:
    """What to do in one folder once open intents are settled: copy what the ledger lacks, fix flags, and
    which copies lost their source message (`gone`)."""
    if any(entry.state == INTENT for entry in entries):
        raise ValueError("settle open intents before planning a folder")
    by_source = {entry.source_id: entry for entry in entries}
    copy: list[MessageRef] = []
    flag_updates: dict[int, tuple[str, frozenset[str]]] = {}
    already = failed = 0
    for ref in listing:
        entry = by_source.get(ref.id)
        if entry is None:
            if passes_filters(ref, filters):
                copy.append(ref)
        elif entry.state == DONE:
            already += 1
            if entry.flags != ref.flags and entry.target_id is not None:
                flag_updates[entry.id] = (entry.target_id, ref.flags)
        elif entry.state == FAILED:
            failed += 1
    present = {ref.id for ref in listing}
    gone = {e.id: e for e in entries if e.state == DONE and e.source_id not in present}
    return FolderActions(copy, flag_updates, already, failed, gone)


def chunk_refs(refs: Sequence[MessageRef], max_count: int, max_bytes: int) -> list[list[MessageRef]]:
    """Batches bounded by count and bytes; a message larger than `max_bytes` travels alone."""
    chunks: list[list[MessageRef]] = []
    current: list[MessageRef] = []
    size = 0
    for ref in refs:
        if current and (len(current) >= max_count or size + ref.size > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(ref)
        size += ref.size
    if current:
        chunks.append(current)
    return chunks
