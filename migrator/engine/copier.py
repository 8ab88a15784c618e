"""Copying one folder's batches to the target: intents, APPEND, done rows; intent before effect.

Where the target names the id each APPEND got (UIDPLUS, Graph), one APPEND is in flight in a thread of its
own while this thread commits the next batch's intents together with the done rows acknowledged so far
(the journal keeps done rows for the pass's next commit, whichever folder's: one transaction per batch,
and per folder of one batch): the ledger's commits then cost none of the target's time, and the target's
APPEND path is what limits a pass. At a crash the open intents are the batch being appended, the next,
and those acknowledged since the pass's last commit (at most one a folder), which the next pass settles
like any. Where it does not, copies are found by their tags right after each APPEND on the same session,
so nothing overlaps.

Every batch's intents carry the watermark read before the pass's first APPEND to the folder: the mark is
an opaque lower bound ("messages appended after it can be told apart"), and the target's session is busy
with the APPEND in flight when the next intents are written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from migrator.connectors.base import Mailbox
from migrator.engine.checkpoint import Journal
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


class FolderCopier:
    """Use as a context manager around one folder's batches; `copy` each, leave the block to finish."""

    def __init__(self, ctx: RunContext, journal: Journal, dst: Mailbox, folder: FolderInfo,
                 target: FolderInfo) -> None:
        self.ctx, self.journal, self.dst, self.folder, self.target = ctx, journal, dst, folder, target
        capabilities = dst.capabilities()
        self._pipelined = capabilities.append_returns_ids
        self._limit = capabilities.max_message_size
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="append") if self._pipelined else None
        self._inflight: tuple[Future[AppendResults], _Batch] | None = None
        self._watermark: str | None = None
        self._watermark_read = False

    def __enter__(self) -> FolderCopier:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if kind is None:
                self._collect()
        finally:
            self._abandon()

    def copy(self, messages: Sequence[RawMessage]) -> None:
        """Record the batch's intents, then hand it to the target (after the APPEND in flight, if any)."""
        if self.journal.stop.is_set():
            self._collect()  # what is in flight is recorded before the stop is honoured
        self.journal.check_stop()
        self.send(messages, self.journal.intents(self.intents(messages)))

    def intents(self, messages: Sequence[RawMessage]) -> list[PendingCopy]:
        """The intent rows of a batch, for the caller to commit (alone: `copy`; with other folders' batches:
        FolderStage.flush). Reads the target folder's watermark before the folder's first APPEND."""
        if not self._watermark_read and any(self._limit is None or len(m.body) <= self._limit for m in messages):
            self._watermark = self.dst.watermark(self.target)  # nothing is in flight before the first APPEND
            self._watermark_read = True
        return [_pending(self.folder, self.target, m, self._watermark) for m in messages]

    def send(self, messages: Sequence[RawMessage], ids: Sequence[int]) -> None:
        """Hand a batch whose intents are committed (ledger `ids`, in order) to the target."""
        batch = self._accepted(messages, ids)
        if not self._pipelined:
            if batch.messages:
                self._pace(batch)
                _append(self.ctx, self.journal, self.dst, self.folder, self.target, batch.messages, batch.ledger_ids)
            return
        finished = self._wait()
        if finished is not None and not _clean(finished[0]):
            self._record(*finished)  # may search the target for copies: before the session is busy again
            finished = None
        if batch.messages:
            self._pace(batch)
            assert self._pool is not None
            self._inflight = (self._pool.submit(self.dst.append, self.target, batch.messages), batch)
        if finished is not None:
            self._record(*finished)

    def _accepted(self, messages: Sequence[RawMessage], ids: Sequence[int]) -> _Batch:
        """The batch to send: messages over the target's size limit are refused (recorded as failed) instead."""
        limit = self._limit
        ledger_ids = dict(zip([m.ref.id for m in messages], ids, strict=True))
        for message in messages:
            if limit is not None and len(message.body) > limit:
                _refuse(self.ctx, self.journal, ledger_ids[message.ref.id], self.folder, message,
                        ItemFailed(f"{len(message.body)} bytes is over the target's limit of {limit}", "too-large"))
        return _Batch([m for m in messages if limit is None or len(m.body) <= limit], ledger_ids)

    def _pace(self, batch: _Batch) -> None:
        waited = self.ctx.target_pacer.acquire(len(batch.messages), sum(len(m.body) for m in batch.messages))
        count_wait(self.ctx, self.journal, waited)

    def _wait(self) -> tuple[AppendResults | ItemFailed, _Batch] | None:
        """The outcome of the APPEND in flight (a refused bulk APPEND as its ItemFailed); other errors raise."""
        if self._inflight is None:
            return None
        future, batch = self._inflight
        self._inflight = None
        try:
            results: AppendResults | ItemFailed = future.result()
        except ItemFailed as exc:
            results = exc
        return results, batch

    def _record(self, results: AppendResults | ItemFailed, batch: _Batch) -> None:
        """A clean APPEND's done rows (every copy's id known) go with the pass's next commit (Journal.done_later)."""
        _recorded(self.ctx, self.journal, self.dst, self.folder, self.target, batch.messages, batch.ledger_ids,
                  results, self._watermark, self.journal.done_later if _clean(results) else self.journal.done)

    def _collect(self) -> None:
        finished = self._wait()
        if finished is not None:
            self._record(*finished)

    def _abandon(self) -> None:
        """Leaving on an error: the APPEND in flight must end before the session closes; its batch keeps its
        open intents, which the next pass settles."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass(frozen=True)
class StagedFolder:
    folder: FolderInfo
    target: FolderInfo
    messages: Sequence[RawMessage]
    then: Callable[[], None]  # the folder's pass once its copies are recorded (it keeps the folder's cursor)


class FolderStage:
    """Folders whose new mail fits one batch, copied together: their intents in one commit, then an APPEND
    per folder. A delta pass finds a few new messages in many folders, and a commit each (an fsync that
    every worker takes in turn) cost more than their APPENDs. Holds at most one batch's messages and bytes;
    what is staged and not yet flushed is neither recorded nor sent, so a crash or a stop loses nothing."""

    def __init__(self, ctx: RunContext, journal: Journal, dst: Mailbox, bounds: tuple[int, int],
                 folder_failed: Callable[[FolderFailed], None]) -> None:
        self.ctx, self.journal, self.dst, self.folder_failed = ctx, journal, dst, folder_failed
        self._max_messages, self._max_bytes = bounds
        self._staged: list[StagedFolder] = []
        self._messages = self._bytes = 0

    def room(self, messages: int, size: int) -> bool:
        return self._messages + messages <= self._max_messages and self._bytes + size <= self._max_bytes

    def add(self, staged: StagedFolder) -> None:
        self._staged.append(staged)
        self._messages += len(staged.messages)
        self._bytes += sum(len(m.body) for m in staged.messages)

    def flush(self) -> None:
        """Copy what is staged; a FolderFailed goes to `folder_failed` and the other folders go on."""
        staged, self._staged = self._staged, []
        self._messages = self._bytes = 0
        self.journal.check_stop()
        ready: list[tuple[FolderCopier, StagedFolder, list[PendingCopy]]] = []
        for entry in staged:
            copier = FolderCopier(self.ctx, self.journal, self.dst, entry.folder, entry.target)
            try:
                ready.append((copier, entry, copier.intents(entry.messages)))  # reads the folder's watermark
            except FolderFailed as exc:
                self.folder_failed(exc)
        if not ready:
            return
        ids = iter(self.journal.intents([row for _copier, _entry, rows in ready for row in rows]))
        for copier, entry, rows in ready:
            own = [next(ids) for _row in rows]
            try:
                with copier:
                    copier.send(entry.messages, own)
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


def _clean(results: AppendResults | ItemFailed) -> bool:
    """Every message stored with a known id: recording it needs no more of the target's session."""
    return not isinstance(results, ItemFailed) and all(isinstance(r, str) for r in results)


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
