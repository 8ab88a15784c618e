"""Copying one folder's batches to the target: intents, APPEND, done rows; intent before effect.

Where the target names the id each APPEND got (UIDPLUS, Graph), one APPEND is in flight on a target
session (its AppendLane) in a thread of its own while this thread commits the next batch's intents
together with the done rows acknowledged so far (the journal keeps done rows for the pass's next commit,
whichever folder's: one transaction per batch, and per folder of one batch): the ledger's commits then
cost none of the target's time, and the target's APPEND path is what limits a pass. A folder's last
APPEND outlives its folder: the next folder is listed, fetched and its intents committed meanwhile. At a
crash the open intents are the batch being appended, the next, and those acknowledged since the pass's
last commit (at most one a folder), which the next pass settles like any. Where the target does not
name ids, copies are found by their tags right after each APPEND on the same session, so nothing
overlaps.

Every batch's intents carry the watermark read before the pass's first APPEND to the folder: the mark is
an opaque lower bound ("messages appended after it can be told apart"), read as the pass finds its target
folders, so that no folder waits for the session to read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from migrator.connectors.base import Mailbox
from migrator.engine.checkpoint import Interrupted, Journal
from migrator.errors import FolderFailed, ItemFailed
from migrator.model import CopyTag, FolderInfo, RawMessage
from migrator.store.records import PendingCopy

if TYPE_CHECKING:
    from migrator.engine.worker import RunContext

AppendResults = Sequence[str | ItemFailed | None]
DoneRows = Callable[[Mapping[int, str], int], None]  # done rows (ledger id -> target id) and their bytes


@dataclass(frozen=True)
class _Batch:
    messages: Sequence[RawMessage]  # the sendable ones, in order
    ledger_ids: Mapping[str, int]  # source id -> intent row


Record = Callable[[Mailbox, "AppendResults | ItemFailed"], None]


@dataclass
class _Sent:
    """The APPEND in flight on a lane, and how its outcome is recorded. Once the folder that sent it has
    nothing more to send (AppendLane.leave), `then` is the folder's own end (its cursor), run after the
    outcome is recorded, and `failed` takes the folder's failure instead of whoever is using the lane."""

    future: Future[AppendResults]
    record: Record
    owner: object
    then: Callable[[], None] | None = None
    failed: Callable[[FolderFailed], None] | None = None


class AppendLane:
    """A target session's APPENDs across the folders of a pass, one in flight at a time (in a thread of its
    own where the target names ids). A pass of many folders of one batch each (most mailboxes: a few
    hundred messages a folder) left the target idle while each next folder was listed, fetched and its
    intents committed, about a fifth of the pass on a target that fsyncs; the lane keeps the APPEND in
    flight through that. Every other use of the session (a search, a flag change, a deletion) takes it
    through `idle`, which waits for the APPEND in flight and records it first. Use as a context manager
    around the pass's use of the session: leaving it normally (or on a stop request) records what is in
    flight; on an error, it waits for the APPEND to end and leaves its intents open for the next pass."""

    def __init__(self, dst: Mailbox) -> None:
        self._dst = dst
        self.capabilities = dst.capabilities()
        self.pipelined = self.capabilities.append_returns_ids
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="append") if self.pipelined else None
        self._sent: _Sent | None = None

    def __enter__(self) -> AppendLane:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if kind is None or issubclass(kind, Interrupted):
                self.idle()
        finally:
            self.abandon(None)
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def idle(self) -> Mailbox:
        """The session, with nothing in flight: the APPEND in flight is waited for and recorded first."""
        sent, self._sent = self._sent, None
        if sent is not None:
            self._record(sent, _outcome(sent.future))
        return self._dst

    def send(self, append: Callable[[Mailbox], AppendResults], record: Record, owner: object) -> None:
        """Start `append` once the APPEND in flight has ended; that one's outcome is recorded while the new
        one runs, unless recording needs the session (ids to search for, a refused batch to retry)."""
        if self._pool is None:
            raise RuntimeError("a target that does not name ids appends on `idle()`, not through `send`")
        finished, self._sent = self._sent, None
        outcome = _outcome(finished.future) if finished is not None else None
        if finished is not None and outcome is not None and not _clean(outcome):
            self._record(finished, outcome)  # may search the target or retry: before the session is busy again
            finished = None
        self._sent = _Sent(self._pool.submit(append, self._dst), record, owner)
        if finished is not None and outcome is not None:
            self._record(finished, outcome)

    def leave(self, owner: object, then: Callable[[], None], failed: Callable[[FolderFailed], None]) -> None:
        """`owner` (a folder's copier) sends nothing more: `then` runs once its last APPEND is recorded (now,
        if none is in flight), and a failure recording it goes to `failed`, not to the folder using the
        lane by then."""
        if self._sent is not None and self._sent.owner is owner:
            self._sent.then, self._sent.failed = then, failed
        else:
            then()

    def abandon(self, owner: object | None) -> None:
        """After an error: wait for the APPEND in flight (of `owner`, or any) to end, and leave its intents
        open (settled by the next pass) rather than record an outcome read after a failure."""
        sent = self._sent
        if sent is not None and (owner is None or sent.owner is owner):
            self._sent = None
            futures.wait([sent.future])

    def _record(self, sent: _Sent, outcome: AppendResults | ItemFailed | FolderFailed) -> None:
        try:
            if isinstance(outcome, FolderFailed):
                raise outcome
            sent.record(self._dst, outcome)
        except FolderFailed as exc:
            if sent.failed is None:  # its folder is still sending: the failure is raised to it
                raise
            sent.failed(exc)
            return
        if sent.then is not None:
            sent.then()


def _outcome(future: Future[AppendResults]) -> AppendResults | ItemFailed | FolderFailed:
    """An APPEND's outcome: its results, the ItemFailed of a refused bulk APPEND, or the FolderFailed that
    ends its folder (raised where that folder's failure belongs: AppendLane._record); others raise."""
    try:
        return future.result()
    except (ItemFailed, FolderFailed) as exc:
        return exc


class FolderCopier:
    """One folder's batches on a lane: `copy` each, then `finish` (use as a context manager: an error
    inside waits for the folder's APPEND in flight and leaves it to the next pass to settle)."""

    def __init__(self, ctx: RunContext, journal: Journal, lane: AppendLane, folder: FolderInfo,
                 target: FolderInfo, watermark: str | None) -> None:
        self.ctx, self.journal, self.lane, self.folder, self.target = ctx, journal, lane, folder, target
        self._limit = lane.capabilities.max_message_size
        self._watermark = watermark

    def __enter__(self) -> FolderCopier:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None:
            self.lane.abandon(self)

    def copy(self, messages: Sequence[RawMessage]) -> None:
        """Record the batch's intents, then hand it to the target (after the APPEND in flight, if any)."""
        if self.journal.stop.is_set():
            self.lane.idle()  # what is in flight is recorded before the stop is honoured
        self.journal.check_stop()
        self.send(messages, self.journal.intents(self.intents(messages)))

    def intents(self, messages: Sequence[RawMessage]) -> list[PendingCopy]:
        """The intent rows of a batch, for the caller to commit (alone: `copy`; with other folders' batches:
        FolderStage.flush)."""
        return [_pending(self.folder, self.target, m, self._watermark) for m in messages]

    def send(self, messages: Sequence[RawMessage], ids: Sequence[int]) -> None:
        """Hand a batch whose intents are committed (ledger `ids`, in order) to the target."""
        batch = self.accepted(messages, ids)
        if not batch.messages:
            return
        self.pace(batch)
        if not self.lane.pipelined:
            _append(self.ctx, self.journal, self.lane.idle(), self.folder, self.target, batch.messages,
                    batch.ledger_ids)
            return
        target = self.target
        self.lane.send(lambda dst: dst.append(target, batch.messages),
                       lambda dst, results: self.record(dst, results, batch), self)

    def finish(self, then: Callable[[], None], failed: Callable[[FolderFailed], None]) -> None:
        """Nothing more to send: `then` (the folder's end) runs once its last APPEND is recorded, which the
        next folder need not wait for."""
        self.lane.leave(self, then, failed)

    def accepted(self, messages: Sequence[RawMessage], ids: Sequence[int]) -> _Batch:
        """The batch to send: messages over the target's size limit are refused (recorded as failed) instead."""
        limit = self._limit
        ledger_ids = dict(zip([m.ref.id for m in messages], ids, strict=True))
        for message in messages:
            if limit is not None and len(message.body) > limit:
                _refuse(self.ctx, self.journal, ledger_ids[message.ref.id], self.folder, message,
                        ItemFailed(f"{len(message.body)} bytes is over the target's limit of {limit}", "too-large"))
        return _Batch([m for m in messages if limit is None or len(m.body) <= limit], ledger_ids)

    def pace(self, batch: _Batch) -> None:
        waited = self.ctx.target_pacer.acquire(len(batch.messages), sum(len(m.body) for m in batch.messages))
        count_wait(self.ctx, self.journal, waited)

    def record(self, dst: Mailbox, results: AppendResults | ItemFailed, batch: _Batch) -> None:
        """A clean APPEND's done rows (every copy's id known) go with the pass's next commit (Journal.done_later)."""
        _recorded(self.ctx, self.journal, dst, self.folder, self.target, batch.messages, batch.ledger_ids,
                  results, self._watermark, self.journal.done_later if _clean(results) else self.journal.done)


@dataclass(frozen=True)
class StagedFolder:
    folder: FolderInfo
    target: FolderInfo
    watermark: str | None  # the target folder's, read as the pass found it (see the module docstring)
    messages: Sequence[RawMessage]
    then: Callable[[], None]  # the folder's pass once its copies are recorded (it keeps the folder's cursor)


class FolderStage:
    """Folders whose new mail fits one batch, copied together: their intents in one commit, then an APPEND
    per folder, written together where the target names ids (Mailbox.append_folders). A delta pass finds a
    few new messages in many folders, and a commit each (an fsync that every worker takes in turn) cost
    more than their APPENDs; to a distant target, so did a round trip each. Holds at most one batch's
    messages and bytes; what is staged and not yet flushed is neither recorded nor sent, so a crash or a
    stop loses nothing."""

    def __init__(self, ctx: RunContext, journal: Journal, bounds: tuple[int, int],
                 folder_failed: Callable[[FolderFailed], None]) -> None:
        self.ctx, self.journal, self.folder_failed = ctx, journal, folder_failed
        self._max_messages, self._max_bytes = bounds
        self._staged: list[StagedFolder] = []
        self._messages = self._bytes = 0

    def room(self, messages: int, size: int) -> bool:
        return self._messages + messages <= self._max_messages and self._bytes + size <= self._max_bytes

    def add(self, staged: StagedFolder) -> None:
        self._staged.append(staged)
        self._messages += len(staged.messages)
        self._bytes += sum(len(m.body) for m in staged.messages)

    def flush(self, lane: AppendLane) -> None:
        """Copy what is staged on `lane`; a FolderFailed goes to `folder_failed` and the other folders go on."""
        staged, self._staged = self._staged, []
        self._messages = self._bytes = 0
        self.journal.check_stop()
        if not staged:
            return
        copiers = [FolderCopier(self.ctx, self.journal, lane, entry.folder, entry.target, entry.watermark)
                   for entry in staged]
        rows = [copier.intents(entry.messages) for copier, entry in zip(copiers, staged, strict=True)]
        ids = iter(self.journal.intents([row for folder_rows in rows for row in folder_rows]))
        owned = [[next(ids) for _row in folder_rows] for folder_rows in rows]
        if lane.pipelined and len(staged) > 1:
            self._append_together(lane, copiers, staged, owned)
            return
        for copier, entry, own in zip(copiers, staged, owned, strict=True):
            try:
                with copier:
                    copier.send(entry.messages, own)
                    copier.finish(entry.then, self.folder_failed)
            except FolderFailed as exc:
                self.folder_failed(exc)

    def _append_together(self, lane: AppendLane, copiers: Sequence[FolderCopier], staged: Sequence[StagedFolder],
                         owned: Sequence[Sequence[int]]) -> None:
        """The staged folders' APPENDs as one exchange (Mailbox.append_folders: one round trip for all, where
        one each cost a round trip to a distant target), each folder's outcome recorded as its own APPEND's
        would be, and its end (`then`) run once it is."""
        batches = [copier.accepted(entry.messages, own) for copier, entry, own in zip(copiers, staged, owned,
                                                                                        strict=True)]
        sending = [(copier, batch) for copier, batch in zip(copiers, batches, strict=True) if batch.messages]
        for copier, batch in sending:
            copier.pace(batch)
        dst = lane.idle()
        outcomes = iter(dst.append_folders([(copier.target, batch.messages) for copier, batch in sending]))
        for copier, entry, batch in zip(copiers, staged, batches, strict=True):
            try:
                if batch.messages:
                    outcome = next(outcomes)
                    if isinstance(outcome, FolderFailed):
                        raise outcome
                    copier.record(dst, outcome, batch)
            except FolderFailed as exc:
                self.folder_failed(exc)
                continue
            entry.then()


def count_wait(ctx: RunContext, journal: Journal, seconds: float) -> None:
    """Time spent waiting for throttling (ours or the server's): counted for the run and the pass, never a
    failure."""
    if seconds > 0:
        ctx.progress.add(throttled=seconds)
        journal.throttled(seconds)


def _clean(results: AppendResults | ItemFailed | FolderFailed) -> bool:
    """Every message stored with a known id: recording it needs no more of the target's session."""
    return not isinstance(results, Exception) and all(isinstance(r, str) for r in results)


def _append(ctx: RunContext, journal: Journal, dst: Mailbox, folder: FolderInfo, target: FolderInfo,
            messages: Sequence[RawMessage], ledger_ids: Mapping[str, int]) -> None:
    since = None if dst.capabilities().append_returns_ids else dst.watermark(target)
    try:
        results: AppendResults | ItemFailed = dst.append(target, messages)
    except ItemFailed as exc:
        results = exc
    _recorded(ctx, journal, dst, folder, target, messages, ledger_ids, results, since, journal.done)


def _recorded(ctx: RunContext, journal: Journal, dst: Mailbox, folder: FolderInfo, target: FolderInfo,
              messages: Sequence[RawMessage], ledger_ids: Mapping[str, int], results: AppendResults | ItemFailed,
              since: str | None, record_done: DoneRows) -> None:
    """An APPEND's outcome into the ledger: a refused bulk APPEND (stored nothing) is retried message by
    message; otherwise done rows (to `record_done`), failed items, and a search by tag for ids the target did
    not name."""
    if isinstance(results, ItemFailed):
        _bulk_refused(ctx, journal, dst, folder, target, messages, ledger_ids, results)
        return
    journal.effect_done()
    _appended(ctx, journal, dst, target, folder, messages, ledger_ids, results, since, record_done)


def _bulk_refused(ctx: RunContext, journal: Journal, dst: Mailbox, folder: FolderInfo, target: FolderInfo,
                  messages: Sequence[RawMessage], ledger_ids: Mapping[str, int], exc: ItemFailed) -> None:
    if len(messages) == 1:
        _refuse(ctx, journal, ledger_ids[messages[0].ref.id], folder, messages[0], exc)
        return
    for message in messages:  # a refused bulk append stored nothing (RFC 3502): isolate the culprit
        _append(ctx, journal, dst, folder, target, [message], ledger_ids)


def _appended(ctx: RunContext, journal: Journal, dst: Mailbox, target: FolderInfo, folder: FolderInfo,
              messages: Sequence[RawMessage], ledger_ids: Mapping[str, int], results: AppendResults,
              since: str | None, record_done: DoneRows) -> None:
    """Done rows for what an APPEND stored; the ids it did not name are searched for by tag after `since`."""
    for message, result in zip(messages, results, strict=True):
        if isinstance(result, ItemFailed):  # stored one by one: the others went in
            _refuse(ctx, journal, ledger_ids[message.ref.id], folder, message, result)
    stored = [(m, r) for m, r in zip(messages, results, strict=True) if not isinstance(r, ItemFailed)]
    messages = [m for m, _r in stored]
    uids = [r for _m, r in stored]
    if any(uid is None for uid in uids):
        found = dst.find_tagged(target, [CopyTag(m.digest, len(m.body)) for m in messages], since)
        uids = _match_found(messages, found, uids)
    done = {ledger_ids[m.ref.id]: uid for m, uid in zip(messages, uids, strict=True) if uid is not None}
    size = sum(len(m.body) for m in messages)
    record_done(done, size)
    ctx.progress.add(messages=len(done), size=size)


def _match_found(messages: Sequence[RawMessage], found: Mapping[CopyTag, Sequence[str]],
                 uids: Sequence[str | None]) -> list[str | None]:
    remaining = {tag: list(ids) for tag, ids in found.items()}
    result: list[str | None] = []
    for message, uid in zip(messages, uids, strict=True):
        if uid is None:
            pool = remaining.get(CopyTag(message.digest, len(message.body)), [])
            uid = pool.pop(0) if pool else None
        result.append(uid)
    return result


def _refuse(ctx: RunContext, journal: Journal, ledger_id: int, folder: FolderInfo, message: RawMessage,
            exc: ItemFailed) -> None:
    journal.failed(ledger_id, exc.reason, f"{folder.path!r} UID {message.ref.id}: {exc}")
    ctx.progress.add(failed=1)


def _pending(folder: FolderInfo, target: FolderInfo, message: RawMessage, watermark: str | None) -> PendingCopy:
    return PendingCopy(folder.path, folder.key or "", message.ref.id, message.digest, len(message.body),
                       message.ref.flags, message.ref.internal_date.isoformat(), target.path, target.key, watermark)
