"""One mailbox pass: route folders, settle open intents, copy what the ledger lacks, bring flags up to date.

Intent before effect: for every batch the intent rows are committed before the APPEND and the done rows
after it. A crash anywhere leaves at most one batch of open intents, which the next pass settles by
searching the target for their tags before anything is sent again. Transient failures reconnect and
re-run the pass (which settles first), so a write is never retried blind.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from migrator.accounting import Progress
from migrator.config import Config, FilterConfig
from migrator.connectors.base import Endpoint, EnsureOutcome, Mailbox, open_mailbox
from migrator.engine import diff
from migrator.engine.checkpoint import CrashHook, Journal
from migrator.engine.copier import AppendLane, FolderCopier, FolderStage, StagedFolder, count_wait
from migrator.engine.mapping import FolderRoute, copied_folders, route_folders
from migrator.engine.parallel import (
    MAX_SESSIONS_PER_MAILBOX,
    BackgroundSession,
    SessionBudget,
    SessionPair,
    opener,
    run_folders,
)
from migrator.engine.prefetch import Prefetcher
from migrator.engine.recovery import adopt_renamed_folders, check_source_key
from migrator.errors import FolderFailed, Throttled, Transient
from migrator.model import Capabilities, CopyTag, FolderChanges, FolderInfo, Login, MailboxEntry, MessageRef
from migrator.store import ledger
from migrator.store.db import reading
from migrator.store.records import LedgerEntry, MailboxRecord, TargetFolderRecord
from migrator.throttle import Pacer

# A batch's bounds. A stop waits for the batch in flight: where the target takes a batch in one command
# (MULTIAPPEND), 1,000 small messages are a fraction of a second and halve the per-batch costs (commit,
# round trips) against 200; where it stores each message with a request of its own, 200 keep that wait short.
# A session pair holds up to four batches (being fetched, queued, waiting for the APPEND in flight, in
# flight), all the time on a target that fsyncs: 8 pairs of large mail peaked at 243 MB RSS with 8 MB, at
# 196 MB with 4 MB, and at 155 MB once freed batches were no longer kept per thread (migrator/memory.py).
CHUNK_MESSAGES = 1000
CHUNK_MESSAGES_ONE_BY_ONE = 200
CHUNK_BYTES = 4 * 2**20
MAX_ATTEMPTS = 5
# New messages a mailbox must have (by the guess of _new_mail_guess) for its pass to open more session
# pairs than one: below that, one pair copies them in about the time two more logins take.
PARALLEL_FOLDERS_FROM = 200
# Free quota a pass needs, as a multiple of the size its new mail is guessed at, to copy on several session
# pairs (_quota_has_room): the guess uses the mailbox's average message size, not the new messages' own.
QUOTA_MARGIN = 1.25


@dataclass(frozen=True)
class RunContext:
    config: Config
    engine: Engine
    source: Endpoint
    target: Endpoint
    source_pacer: Pacer
    target_pacer: Pacer
    progress: Progress
    stop: threading.Event
    crash: CrashHook
    credentials: Mapping[str, MailboxEntry]
    options: PassOptions = field(default_factory=lambda: PassOptions())
    sessions: SessionBudget = field(default_factory=SessionBudget)  # extra session pairs (engine/parallel.py)


@dataclass(frozen=True)
class PassOptions:
    """What a person asked of this run beyond copying (propagate deletions, re-match reset folders), and how
    many session pairs the whole run may hold at once (the fewer of the endpoints' max_connections)."""

    sync_deletes: bool = False
    rematch_folders: frozenset[str] = frozenset()
    connections: int = 1


MailboxPass = Callable[["RunContext", MailboxRecord, Journal], list[str]]


def logins_for(credentials: Mapping[str, MailboxEntry], record: MailboxRecord) -> tuple[Login, Login]:
    """Per-user passwords from mailboxes.csv when given for this run, else admin logins on behalf of users."""
    entry = credentials.get(record.source) or MailboxEntry(record.source, record.target, record.source_login,
                                                           None, record.target_login)
    return entry.source_access(), entry.target_access()


def run_mailbox_pass(ctx: RunContext, record: MailboxRecord, journal: Journal) -> list[str]:
    """Copy one mailbox; returns folder-level problems (the pass went on past them). Raises MailboxFailed.

    A transient failure (a lost connection, a server that throttles) re-runs the pass on new sessions,
    which settles what the broken one left open: a write is never retried blind."""
    source_login, target_login = logins_for(ctx.credentials, record)

    def open_source() -> AbstractContextManager[Mailbox]:
        return open_mailbox(ctx.source, source_login, write=False)

    def open_target() -> AbstractContextManager[Mailbox]:
        return open_mailbox(ctx.target, target_login, write=True)

    retrying = Retrying(retry=retry_if_exception_type(Transient), stop=stop_after_attempt(MAX_ATTEMPTS),
                        wait=lambda state: _retry_wait(ctx, journal, state), reraise=True,
                        sleep=lambda seconds: _sleep_unless_stopped(ctx.stop, seconds))
    for attempt in retrying:
        with attempt:
            journal.check_stop()
            count_wait(ctx, journal, ctx.source_pacer.acquire(0, 0) + ctx.target_pacer.acquire(0, 0))
            journal.flush()  # what a failed attempt kept (done rows, flags) is in the ledger this attempt reads
            with reading(ctx.engine) as conn:
                known = _Known.read(conn, record, ctx.config.filters)
            with ExitStack() as sessions:
                target = BackgroundSession(sessions, open_target)
                if not known.cursors:  # its first pass, or a source without QRESYNC: the target is needed
                    target.start()  # both servers' logins at once
                src = sessions.enter_context(open_source())
                try:
                    return _copy_mailbox(ctx, record, journal, src, known, target, opener(open_source, open_target))
                finally:
                    _count_server_waits(ctx, journal, src)
    raise AssertionError("unreachable: tenacity re-raises the last failure")


def _retry_wait(ctx: RunContext, journal: Journal, state: RetryCallState) -> float:
    """Before the next attempt: a throttling server holds every task on its endpoint (the pacer's shared
    back-off); other transient failures wait 1, 2, 4 ... seconds, this pass alone."""
    error = state.outcome.exception() if state.outcome is not None else None
    if isinstance(error, Throttled):
        pacer = ctx.target_pacer if error.endpoint == "target" else ctx.source_pacer
        delay = pacer.hold.tenacity_wait(state)
        journal.event("throttled", f"{error}; every worker on the {error.endpoint or 'source'} waits {delay:.1f} s")
        count_wait(ctx, journal, delay)
        return delay
    journal.event("retry", f"attempt {state.attempt_number} of {MAX_ATTEMPTS}: {error}")
    return float(min(30.0, 0.5 * 2**state.attempt_number))


def _count_server_waits(ctx: RunContext, journal: Journal, *sessions: Mailbox) -> None:
    """Waits the connectors spent inside requests (Graph's 429s and budgets): throttled, not failed."""
    waited = sum(session.throttled_seconds() for session in sessions)
    if waited > 0:
        count_wait(ctx, journal, waited)
        journal.event("throttled", f"waited {waited:.1f} s for the servers' throttling")


def _sleep_unless_stopped(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)


def _copy_mailbox(ctx: RunContext, record: MailboxRecord, journal: Journal, src: Mailbox, known: _Known,
                  target: BackgroundSession, open_pair: Callable[[ExitStack], SessionPair]) -> list[str]:
    """The source is asked first, the target only where there is something to do: in a delta pass most
    mailboxes have nothing new, and a session on the target (a login, a folder list; tokens, TLS and
    throttled requests for a hosted one) then costs the cutover window for nothing. Once a folder shows a
    change, the target's session opens (`target`, unless opened already) while the source is asked about
    the other folders."""
    source_folders = src.list_folders(sizes=False)
    if _source_unchanged(ctx, journal, src, source_folders, known):
        return []
    target.start()
    _ask_changes(src, source_folders, known, ctx.config.filters.exclude_folders, while_=target.opening)
    dst, target_folders = target.get()
    try:
        return _copy_folders(ctx, record, journal, src, dst, source_folders, target_folders, known, open_pair)
    finally:
        _count_server_waits(ctx, journal, dst)


def _source_unchanged(ctx: RunContext, journal: Journal, src: Mailbox, source_folders: Sequence[FolderInfo],
                      known: _Known) -> bool:
    """True when no folder the pass copies changed since the cursor the last pass kept, none has rows to
    settle or check, and none is new or gone: the pass is then done, and the target is never asked. The
    source is asked folder by folder up to the first that needs more; what it said is kept in `known`
    for the pass (each folder's changes are asked once)."""
    paths = {folder.path for folder in source_folders}
    routed = copied_folders(source_folders, ctx.config.filters.exclude_folders)
    if ctx.options.rematch_folders or not known.states.keys() <= paths:
        return False
    for folder in routed:
        changes = _ask(src, folder, known)
        if changes is None or not changes.unchanged():
            return False
    for folder in routed:
        _record_unchanged(ctx, journal, folder, known, known.asked.pop(folder.path))
    return True


def _ask_changes(src: Mailbox, source_folders: Sequence[FolderInfo], known: _Known, exclude: Sequence[str], *,
                 while_: Callable[[], bool]) -> None:
    """What changed in folders not asked yet, asked while `while_` holds (the target's session opens). The
    rest are asked by their syncs, while the target takes the APPENDs before theirs."""
    for folder in copied_folders(source_folders, exclude):
        if not while_():
            return
        if folder.path not in known.asked:
            _ask(src, folder, known)


def _ask(src: Mailbox, folder: FolderInfo, known: _Known) -> FolderChanges | None:
    """What changed in `folder` since the cursor the last pass kept, kept in `known` for its sync to take;
    None where it cannot be asked ahead: no cursor, rows to settle or check first, no QRESYNC, or a source
    that failed to answer (the folder's sync asks again and reports it where it reports every failure)."""
    kept = known.cursors.get((folder.path, folder.key or ""))
    if kept is None or _needs_rows(folder, known.states.get(folder.path, {})):
        return None
    try:
        changes = src.changes(folder, kept)
    except FolderFailed:
        return None
    if changes is not None:
        known.asked[folder.path] = changes
    return changes


def _copy_folders(ctx: RunContext, record: MailboxRecord, journal: Journal, src: Mailbox, dst: Mailbox,
                  source_folders: Sequence[FolderInfo], target_folders: Sequence[FolderInfo], known: _Known,
                  open_pair: Callable[[ExitStack], SessionPair]) -> list[str]:
    """`open_pair` opens an extra session pair for the mailbox's folders (engine/parallel.py)."""
    separator = next((f.separator for f in target_folders if f.separator), None)
    routes = route_folders(source_folders, target_folders, separator, ctx.config.mapping.folders,
                           ctx.config.filters.exclude_folders)
    source_paths = {f.path for f in source_folders}
    with reading(ctx.engine) as conn:
        known_targets = ledger.target_folders(conn, record.id)
        # adopt_renamed_folders reads the rows of folders the source no longer shows (rename candidates);
        # of the others it needs only to know that the ledger has them. Their rows are read per folder
        # below, and only where the pass needs them.
        history: dict[str, Sequence[LedgerEntry]] = {path: () if path in source_paths else
                                                     ledger.folder_entries(conn, record.id, path)
                                                     for path in known.states}
    routes = adopt_renamed_folders(src, journal, source_paths, routes, history)
    if not known.states.keys() <= source_paths:  # folders vanished: a renamed one's rows now carry its new name
        with reading(ctx.engine) as conn:
            known = _Known.read(conn, record, ctx.config.filters, known.asked)
    existing = {f.path for f in target_folders}
    native = _native_format(journal, src, dst)
    problems: list[str] = []

    def folder_failed(exc: FolderFailed) -> None:
        journal.event("folder-failed", str(exc))
        problems.append(str(exc))

    # That we create a folder is recorded before its CREATE (intent before effect: a lost reply or a crash
    # must not make our folder look like the customer's), for all of the mailbox's new folders at once.
    planned = {path: TargetFolderRecord(path, None, True, journal.checkpoint_id)
               for path in dict.fromkeys(route.target_path for route in routes)
               if path not in known_targets and path not in existing}
    if planned:
        journal.target_folders(list(planned.values()))
    known_targets = {**known_targets, **planned}
    journal.check_stop()
    jobs: list[FolderJob] = []
    ensured = dst.ensure_folders([(route.target_path, route.role) for route in routes])  # together: one exchange
    for route, outcome in zip(routes, ensured, strict=True):
        try:
            target = _target_folder(route, outcome, known_targets, journal)
            jobs.append(FolderJob(route, target, dst.watermark(target)))  # before the pass's first APPEND to it
        except FolderFailed as exc:
            folder_failed(exc)

    # Extra session pairs are opened only where two folders or more may have mail to copy, and more of it
    # than one pair copies in the time the others take to log in: a delta pass that finds little must not
    # log in to both servers again and again, taking connections from the user's own mail clients under
    # the same per-user limit. On one pair, folders with little new mail are copied together (FolderStage).
    guesses = [_new_mail_guess(job.route, known) for job in jobs]
    parallel = (sum(1 for guess in guesses if guess) > 1 and sum(guesses) >= PARALLEL_FOLDERS_FROM
                and _quota_has_room(journal, record, dst, sum(guesses)))
    stage = None if parallel else FolderStage(ctx, journal, batch_bounds(ctx.source_pacer, ctx.target_pacer,
                                                                         dst.capabilities()), folder_failed)
    mailbox = _FolderPass(ctx, record, journal, known, native, stage, folder_failed)

    @contextmanager
    def on_pair(pair: SessionPair) -> Iterator[Callable[[list[FolderJob]], None]]:
        with AppendLane(pair[1]) as lane:
            yield lambda group: mailbox.sync_group(pair[0], lane, group)
            if stage is not None:  # one pair only
                stage.flush(lane)

    run_folders(folder_groups(jobs, largest_first=parallel), MAX_SESSIONS_PER_MAILBOX if parallel else 1,
                ctx.sessions, (src, dst), open_pair, on_pair, folder_failed,
                lambda pair: _count_server_waits(ctx, journal, *pair))
    return problems


@dataclass(frozen=True)
class FolderJob:
    """A source folder to copy, its target folder and that folder's watermark (see engine/copier.py)."""

    route: FolderRoute
    target: FolderInfo
    watermark: str | None


@dataclass(frozen=True)
class _FolderPass:
    """What every folder of a mailbox's pass shares, whichever session pair copies it."""

    ctx: RunContext
    record: MailboxRecord
    journal: Journal
    known: _Known
    native: str | None
    stage: FolderStage | None
    folder_failed: Callable[[FolderFailed], None]

    def sync_group(self, src: Mailbox, lane: AppendLane, group: Sequence[FolderJob]) -> None:
        for job in group:
            self.journal.check_stop()
            try:
                _sync_folder(self, src, lane, job)
            except FolderFailed as exc:  # the group's other folders go on
                self.folder_failed(exc)


def _quota_has_room(journal: Journal, record: MailboxRecord, dst: Mailbox, new_messages: int) -> bool:
    """Whether the target's quota leaves room for the pass's new mail with QUOTA_MARGIN to spare (or it has
    none). A server checks its quota per APPEND against what is committed, so two sessions of one user
    appending at once both pass the check and the mailbox ends above its quota, where the user's new mail
    is refused after cutover. A mailbox near its quota is copied on one session pair: its last APPEND is
    refused ("quota full", the job fails and says so) instead."""
    quota = dst.quota()
    if quota is None:
        return True
    used, limit = quota
    expected = new_messages * record.size // max(1, record.messages)  # at the inventory's average size
    if limit - used >= expected * QUOTA_MARGIN:
        return True
    journal.event("quota-near", f"one session pair: the target quota has {max(0, limit - used)} bytes free "
                                f"for about {expected} bytes of new mail")
    return False


def _new_mail_guess(route: FolderRoute, known: _Known) -> int:
    """How many more messages the source counts in the folder than the ledger holds copied or refused under
    its UIDVALIDITY. A guess (a deletion and an arrival cancel out) that decides only how many session pairs
    the pass opens, never what it copies."""
    folder, key = route.source, route.source.key or ""
    states = known.states.get(folder.path, {})
    return max(0, folder.messages - states.get((key, ledger.DONE), 0) - states.get((key, ledger.FAILED), 0))


def folder_groups(jobs: Sequence[FolderJob], *, largest_first: bool) -> list[list[FolderJob]]:
    """The work items of a mailbox's session pairs. Source folders that share a target folder (a mapping
    that merges them) form one item, copied one after the other on one pair: settling one's open intents
    must not meet copies the other just made there and has not recorded yet. With several pairs the
    largest items go first: they set the pass's length."""
    groups: dict[str, list[FolderJob]] = {}
    for job in jobs:
        groups.setdefault(job.target.path, []).append(job)
    ordered = list(groups.values())
    if largest_first:
        ordered.sort(key=lambda group: -sum(job.route.source.messages for job in group))
    return ordered


def _native_format(journal: Journal, src: Mailbox, dst: Mailbox) -> str | None:
    """A format both endpoints offer besides MIME (a full-fidelity copy), or None. Each pass negotiates
    anew: copies of either kind carry their own tag, so a later pass in the other mode settles and skips
    them alike. The source is asked first: asking may cost requests, and the most common migration, IMAP
    into Exchange, then asks Exchange nothing."""
    offered = src.capabilities().native_formats
    if not offered:
        return None
    shared = sorted(offered & dst.capabilities().native_formats)
    journal.event("copy-mode", f"native format {shared[0]}: full-fidelity copies" if shared else
                  f"MIME: the target takes none of the source's native formats ({', '.join(sorted(offered))})")
    return shared[0] if shared else None


def _target_folder(route: FolderRoute, ensured: EnsureOutcome, known: Mapping[str, TargetFolderRecord],
                   journal: Journal) -> FolderInfo:
    """The target folder of a route as ensure_folders gave it (`known` already says so for a folder about to
    be created), its UIDVALIDITY checked against the one the ledger knows and kept."""
    if isinstance(ensured, FolderFailed):
        raise ensured
    record = known.get(route.target_path)
    folder, created = ensured
    if record is not None and record.uidvalidity not in (None, folder.key):
        raise FolderFailed(f"safety stop: target folder {folder.path!r} was recreated (UIDVALIDITY {folder.key}, "
                           f"was {record.uidvalidity}); the ledger's target ids there are void: nothing copied into it")
    if record is None or record.uidvalidity != folder.key:
        ours = created or bool(record and record.created_by_us)
        journal.target_folder_seen(TargetFolderRecord(folder.path, folder.key, ours, journal.checkpoint_id))
    return folder


def _entries(ctx: RunContext, record: MailboxRecord, folder: FolderInfo) -> list[LedgerEntry]:
    with reading(ctx.engine) as conn:
        return ledger.folder_entries(conn, record.id, folder.path)


@dataclass(frozen=True)
class _Known:
    """What the ledger held for a mailbox as its pass began, read in two queries rather than per folder:
    per source folder with rows, how many it has in each (source key, state); and the change cursors kept
    under the pass's filters (`basis`), by (folder, folder key). Only this pass writes either. Also what the
    source already said had changed in a folder since its cursor (`asked`, _source_unchanged), taken by
    the folder's sync."""

    states: Mapping[str, Mapping[tuple[str, str], int]]
    cursors: Mapping[tuple[str, str], str]
    basis: str
    asked: dict[str, FolderChanges]

    @staticmethod
    def read(conn: Connection, record: MailboxRecord, filters: FilterConfig,
             asked: dict[str, FolderChanges] | None = None) -> _Known:
        basis = _listing_basis(filters)
        return _Known(ledger.folder_states(conn, record.id), ledger.read_cursors(conn, record.id, basis), basis,
                      {} if asked is None else asked)


def _sync_folder(fp: _FolderPass, src: Mailbox, lane: AppendLane, job: FolderJob) -> None:
    """`native` is the format both ends share, if any (messages the source cannot export so still come as
    MIME). A folder with no open intent and no row of another UIDVALIDITY needs no row to settle or check;
    if the source then says nothing changed since the cursor the last pass kept, the ledger already holds
    everything that pass acted on and none of its rows is read. New mail that fits one batch goes to
    the pass's stage, where it has one (copied with other folders' by its flush). The target's session
    is taken through `lane` (AppendLane.idle) for anything but APPENDs."""
    ctx, record, journal, known, native, stage = fp.ctx, fp.record, fp.journal, fp.known, fp.native, fp.stage
    folder, target = job.route.source, job.target
    states = known.states.get(folder.path, {})
    entries: list[LedgerEntry] | None = None
    if _needs_rows(folder, states):
        entries = _entries(ctx, record, folder)
        intents = [entry for entry in entries if entry.state == ledger.INTENT]
        if intents:
            settle_intents(ctx, record, journal, lane.idle(), target, intents)
            entries = _entries(ctx, record, folder)
        if check_source_key(src, journal, folder, entries, folder.path in ctx.options.rematch_folders):
            entries = _entries(ctx, record, folder)
    key, basis = folder.key or "", known.basis
    kept = known.cursors.get((folder.path, key))
    changes = known.asked.pop(folder.path) if folder.path in known.asked else src.changes(folder, kept)
    if entries is None and changes is not None and changes.unchanged():
        _record_unchanged(ctx, journal, folder, known, changes)
        return
    cursor: str | None
    if entries is None and changes is not None and not changes.complete and changes.present is None:
        listing, cursor = changes.changed, changes.cursor
        entries, failed_unchanged = _changed_only(ctx, record, folder, changes, states)
    else:
        if entries is None:
            entries = _entries(ctx, record, folder)
        listing, cursor = _source_listing(src, folder, entries, changes)
        failed_unchanged = 0
    actions = diff.plan_folder(listing, entries, ctx.config.filters)
    ctx.progress.add(still_failed=actions.failed_before + failed_unchanged)
    if actions.gone:
        _source_deletions(ctx, journal, lane, folder, target, actions.gone)
    if actions.flag_updates:
        lane.idle().set_flags(target, {tid: flags for tid, flags in actions.flag_updates.values()})
        journal.flags_later({lid: flags for lid, (_tid, flags) in actions.flag_updates.items()})
        ctx.progress.add(flag_updates=len(actions.flag_updates))

    def keep_cursor() -> None:
        # Every change up to the cursor is acted on: the next pass starts there. Not while source deletions
        # wait for --sync-deletes: the next pass must see them again.
        if cursor is not None and cursor != kept and not (actions.gone and not ctx.options.sync_deletes):
            journal.cursor(folder.path, key, cursor, basis)

    chunks = diff.chunk_refs(actions.copy, *batch_bounds(ctx.source_pacer, ctx.target_pacer, lane.capabilities))
    if stage is not None and len(chunks) == 1:
        if not stage.room(len(chunks[0]), sum(ref.size for ref in chunks[0])):
            stage.flush(lane)
        _pace_source(ctx, journal, chunks[0])
        messages = list(src.fetch(folder, chunks[0], native=native))
        stage.add(StagedFolder(folder, target, job.watermark, messages, keep_cursor))
        return
    if stage is not None and chunks:
        stage.flush(lane)  # what was staged goes first: this folder's APPENDs take the target's session
    with Prefetcher(src, folder, chunks, lambda chunk: _pace_source(ctx, journal, chunk), native) as batches, \
            FolderCopier(ctx, journal, lane, folder, target, job.watermark) as copier:
        for messages in batches:
            copier.copy(messages)
        copier.finish(keep_cursor, fp.folder_failed)  # once its last APPEND is recorded


def _needs_rows(folder: FolderInfo, states: Mapping[tuple[str, str], int]) -> bool:
    """The folder has open intents to settle, or rows of another UIDVALIDITY to check (removed ones aside)."""
    return any(state == ledger.INTENT or (key != folder.key and state != ledger.REMOVED) for key, state in states)


def _record_unchanged(ctx: RunContext, journal: Journal, folder: FolderInfo, known: _Known,
                      changes: FolderChanges) -> None:
    """A folder the source says nothing changed in since the kept cursor: its refused messages still count,
    and a cursor that moved on anyway (Graph's) is kept."""
    key = folder.key or ""
    ctx.progress.add(still_failed=known.states.get(folder.path, {}).get((key, ledger.FAILED), 0))
    if changes.cursor != known.cursors.get((folder.path, key)):
        journal.cursor(folder.path, key, changes.cursor, known.basis)


def batch_bounds(source_pacer: Pacer, target_pacer: Pacer, target: Capabilities) -> tuple[int, int]:
    """Messages and bytes a batch may hold: the constants above, cut to what the target takes in one append
    and to what both pacers pass without a burst (Pacer.batch_limits)."""
    count = min(CHUNK_MESSAGES if target.bulk_append else CHUNK_MESSAGES_ONE_BY_ONE,
                target.max_batch_messages or CHUNK_MESSAGES)
    return target_pacer.batch_limits(*source_pacer.batch_limits(count, CHUNK_BYTES))


def _listing_basis(filters: FilterConfig) -> str:
    """What a kept cursor assumes: messages the filters left out are not in the ledger, so a cursor read
    under other filters would never bring them back."""
    return hashlib.sha256(f"{filters.before}|{filters.after}".encode()).hexdigest()[:32]


def _source_listing(src: Mailbox, folder: FolderInfo, entries: Sequence[LedgerEntry],
                    changes: FolderChanges | None) -> tuple[list[MessageRef], str | None]:
    """The folder's messages, and the cursor to keep after acting on them. Where the source said what
    changed since the cursor the last pass kept (`changes`), only that was read and the rest is what the
    ledger knows (copied or refused messages, with the flags they were last given) less what the source
    said is gone (named, or not among the ids it still holds); otherwise the folder is listed."""
    if changes is None:
        return src.list_messages(folder), None
    if changes.complete:
        return changes.changed, changes.cursor
    present = changes.present
    known = {e.source_id: _known_ref(e) for e in entries if e.state in (ledger.DONE, ledger.FAILED)
             and e.source_key == (folder.key or "") and (present is None or e.source_id in present)}
    for gone in changes.removed:
        known.pop(gone, None)
    known.update((ref.id, ref) for ref in changes.changed)
    return list(known.values()), changes.cursor


def _changed_only(ctx: RunContext, record: MailboxRecord, folder: FolderInfo, changes: FolderChanges,
                  states: Mapping[tuple[str, str], int]) -> tuple[list[LedgerEntry], int]:
    """The rows diff.plan_folder needs to act on what changed since the last pass, with the changed
    messages as the listing: those of the changed and of the removed messages (a removed one's copy is
    `gone`). The same actions as _source_listing's listing against every row (whose other messages are the
    ledger's own rows, so they ask for nothing), read at the cost of the change, not of the folder. Also
    how many messages refused earlier are still on the source unchanged, which plan_folder counts only
    when it sees them: a message has one row per folder key, so that is the key's refused rows (`states`,
    read as the pass began; nothing has written this folder's rows since) less those read here. For a
    folder with no open intent and no row of another key but removed ones (diff.plan_folder refuses to
    plan open intents)."""
    key = folder.key or ""
    with reading(ctx.engine) as conn:
        entries = ledger.folder_entries(conn, record.id, folder.path,
                                        {ref.id for ref in changes.changed} | set(changes.removed))
    refused_here = sum(1 for entry in entries if entry.state == ledger.FAILED and entry.source_key == key)
    return entries, states.get((key, ledger.FAILED), 0) - refused_here


def _known_ref(entry: LedgerEntry) -> MessageRef:
    return MessageRef(entry.source_id, entry.size, entry.flags, datetime.fromisoformat(entry.internal_date))


def _source_deletions(ctx: RunContext, journal: Journal, lane: AppendLane, folder: FolderInfo, target: FolderInfo,
                      gone: Mapping[int, LedgerEntry]) -> None:
    """Messages deleted on the source: removed from the target with --sync-deletes, else kept and reported."""
    if not ctx.options.sync_deletes:
        journal.event("source-deleted", f"{folder.path!r}: {len(gone)} messages deleted on the source are kept "
                                        f"on the target (run with --sync-deletes to remove them)")
        return
    mine = {lid: e for lid, e in gone.items() if e.target_folder == target.path and e.target_key == target.key}
    if mine:
        lane.idle().delete(target, [e.target_id for e in mine.values() if e.target_id])
        journal.effect_done()
    journal.removed(list(mine), "deleted on the source; removed from the target (--sync-deletes)")
    ctx.progress.add(deleted=len(mine))


def settle_intents(ctx: RunContext, record: MailboxRecord, journal: Journal, dst: Mailbox, target: FolderInfo,
                   intents: Sequence[LedgerEntry], *, count_as_copied: bool = True) -> None:
    """Find the copies of open intents on the target (done) or learn they never arrived (dropped). Found
    copies count as copied by this pass (a copy whose reply was lost is still a copy)."""
    by_target: dict[str, list[LedgerEntry]] = {}
    for entry in intents:
        by_target.setdefault(entry.target_folder, []).append(entry)
    for path, group in by_target.items():
        folder = target if path == target.path else FolderInfo(path, target.separator, None, group[0].target_key)
        watermarks = [int(e.watermark) for e in group if e.watermark and e.watermark.isdigit()]
        since = str(min(watermarks)) if len(watermarks) == len(group) else None
        found = dst.find_tagged(folder, [CopyTag(e.digest, e.size) for e in group], since)
        journal.flush()  # done rows kept for the next commit claim copies too (another folder merged into this one)
        with reading(ctx.engine) as conn:
            claimed = ledger.claimed_target_ids(conn, record.id, path, folder.key)
        outcome = diff.settle(group, found, claimed)
        size = sum(e.size for e in group if e.id in outcome.done) if count_as_copied else 0
        journal.settled(outcome.done, outcome.dropped, len(outcome.done) if count_as_copied else 0, size)
        ctx.progress.add(messages=len(outcome.done) if count_as_copied else 0, size=size)
        journal.event("settled", f"{path!r}: {len(outcome.done)} open copies found on the target, "
                                 f"{len(outcome.dropped)} never arrived and will be copied")


def _pace_source(ctx: RunContext, journal: Journal, chunk: Sequence[MessageRef]) -> None:
    count_wait(ctx, journal, ctx.source_pacer.acquire(len(chunk), sum(ref.size for ref in chunk)))
