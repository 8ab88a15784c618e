"""The journal of one mailbox pass: every ledger write of a job goes through here, in its own transaction,
or, for records of effects that a lost record only makes the next pass redo or settle (done rows, flags,
cursors, target folders' keys), kept for the pass's next transaction: a commit is an fsync that every
worker takes in turn.

It is the one place for three cross-cutting concerns: the job lease (re-checked by every write), the
stop request (SIGTERM/SIGINT: checked between batches, never inside one), and the crash hook that the
interrupt-at-every-step tests use (`MIGRATOR_TEST_CRASH_AT=k` kills the process right after the k-th
step, a step being a ledger commit or a target write that returned; read only when `MIGRATOR_TEST_MODE=1`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from sqlalchemy import Connection, Engine

from migrator.errors import MigratorError
from migrator.store import ledger, work
from migrator.store.db import translate_db_errors
from migrator.store.records import Lease, PendingCopy, TargetFolderRecord

T = TypeVar("T")


class Interrupted(MigratorError):
    """A stop was requested; the job is released at a clean point and resumes on the next run."""

    exit_code = 130


class CrashHook:
    """Counts steps across the process and kills it at the configured one (test mode only).

    `MIGRATOR_TEST_STEPS_FILE` names a file that always holds the number of steps taken so far, so a
    test sweep learns how many steps a scenario has before crashing at each of them.
    """

    def __init__(self) -> None:
        test_mode = os.environ.get("MIGRATOR_TEST_MODE") == "1"
        target = os.environ.get("MIGRATOR_TEST_CRASH_AT") if test_mode else None
        self.target = int(target) if target else None
        self.steps_file = os.environ.get("MIGRATOR_TEST_STEPS_FILE") if test_mode else None
        self.steps = 0
        self._lock = threading.Lock()

    def step(self) -> None:
        with self._lock:
            self.steps += 1
            if self.steps_file:
                with open(self.steps_file, "w", encoding="ascii") as out:
                    out.write(str(self.steps))
            if self.target is not None and self.steps >= self.target:
                os.kill(os.getpid(), signal.SIGKILL)


class Journal:
    def __init__(self, engine: Engine, lease: Lease, mailbox_id: int, checkpoint_id: int,
                 stop: threading.Event, crash: CrashHook) -> None:
        self.engine = engine
        self.lease = lease
        self.mailbox_id = mailbox_id
        self.checkpoint_id = checkpoint_id
        self.stop = stop
        self.crash = crash
        self._throttled = 0.0  # seconds waited for throttling, not yet in the checkpoint row
        self._pending_lock = threading.Lock()
        self._cursors: dict[str, tuple[str, str, str]] = {}  # folder -> (key, cursor, basis), not yet written
        self._folders: dict[str, TargetFolderRecord] = {}  # target folders' keys, not yet written
        self._done: dict[int, str] = {}  # done rows (ledger id -> target id), not yet written
        self._done_size = 0
        self._flags: dict[int, frozenset[str]] = {}  # flags set on copies (ledger id -> flags), not yet written

    def throttled(self, seconds: float) -> None:
        """Seconds this pass waited for a server's throttling (any thread): kept with the next done rows."""
        with self._pending_lock:
            self._throttled += seconds

    def take_throttled(self) -> float:
        """The waits not yet recorded, for the write that records them (and closes the checkpoint)."""
        with self._pending_lock:
            seconds, self._throttled = self._throttled, 0.0
        return seconds

    def _commit(self, action: Callable[[Connection], T]) -> T:
        with translate_db_errors(), self.engine.begin() as conn:
            self.write_pending(conn)
            result = action(conn)
        self.crash.step()
        return result

    def effect_done(self) -> None:
        """A target write returned: the moment between effect and record that crash tests must hit too."""
        self.crash.step()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("stop requested: in-flight work is recorded; re-run the same command to resume")

    def intents(self, copies: Sequence[PendingCopy]) -> list[int]:
        """Intent rows for `copies` (with the kept done rows, cursors and folders: write_pending)."""
        return self._commit(lambda conn: ledger.record_intents(conn, self.lease, self.mailbox_id,
                                                                self.checkpoint_id, copies))

    def done(self, target_ids: Mapping[int, str], size: int) -> None:
        self._commit(lambda conn: self._record_done(conn, target_ids, size))

    def done_later(self, target_ids: Mapping[int, str], size: int) -> None:
        """Keep done rows of copies whose ids the target named, for the next commit of this pass (any folder's
        next intents, or the pass's last write). A batch, and a folder of one batch, then costs one commit
        (one fsync on SQLite, taken in turn by every worker) instead of two: a delta pass's folders each
        hold a batch. Safe: a crash before that commit leaves open intents, which the next pass settles by
        searching the target, as for an APPEND in flight."""
        with self._pending_lock:
            self._done.update(target_ids)
            self._done_size += size

    def flush(self) -> None:
        """Write what is kept (done rows, flags, cursors, folders) now, where a read must find it in the ledger."""
        with self._pending_lock:
            kept = bool(self._done or self._flags or self._cursors or self._folders)
        if kept:
            self._commit(lambda conn: None)

    def _record_done(self, conn: Connection, target_ids: Mapping[int, str], size: int) -> None:
        ledger.record_done(conn, self.lease, target_ids)
        work.add_to_checkpoint(conn, self.checkpoint_id, copied=len(target_ids), copied_bytes=size,
                               throttled_seconds=self.take_throttled())

    def settled(self, target_ids: Mapping[int, str], dropped: Sequence[int], copied: int, size: int) -> None:
        def write(conn: Connection) -> None:
            ledger.record_done(conn, self.lease, target_ids)
            ledger.drop_intents(conn, self.lease, dropped)
            work.add_to_checkpoint(conn, self.checkpoint_id, copied=copied, copied_bytes=size)
        self._commit(write)

    def failed(self, ledger_id: int, reason: str, message: str) -> None:
        def write(conn: Connection) -> None:
            ledger.record_failed(conn, self.lease, ledger_id, reason)
            work.add_to_checkpoint(conn, self.checkpoint_id, failed=1)
            work.log_event(conn, "item-failed", message, self.mailbox_id, self.lease.job_id)
        self._commit(write)

    def flags_later(self, flags: Mapping[int, frozenset[str]]) -> None:
        """Keep the flags just set on copies (by ledger id) for the next commit of this pass, as done rows are:
        in a delta pass most folders change only flags, and each would cost a commit. Safe: a crash before
        that commit leaves the ledger with the old flags, so the next pass sets the same flags again."""
        with self._pending_lock:
            self._flags.update(flags)

    def removed(self, ledger_ids: Sequence[int], reason: str) -> None:
        self._commit(lambda c: ledger.mark_removed(c, self.lease, ledger_ids, reason))

    def rekeyed(self, new_ids: Mapping[int, tuple[str, str]], orphans: Sequence[int]) -> None:
        def write(conn: Connection) -> None:
            ledger.rekey(conn, self.lease, new_ids)
            ledger.mark_removed(conn, self.lease, orphans, "gone from the source after its UIDVALIDITY changed")
        self._commit(write)

    def renamed(self, old: str, new: str) -> None:
        def write(conn: Connection) -> None:
            ledger.rename_source_folder(conn, self.lease, self.mailbox_id, old, new)
            work.log_event(conn, "folder-renamed", f"source folder {old!r} is now {new!r}: copies stay where they are",
                           self.mailbox_id, self.lease.job_id)
        self._commit(write)

    def cursor(self, folder: str, folder_key: str, cursor: str, basis: str) -> None:
        """Keep a folder's change cursor: every change up to it has been acted on and recorded. Written with
        the next commit of this pass (or as the pass ends) rather than in a transaction of its own: a delta
        pass touches many folders with a few changes each, and a cursor lost to a crash only means the
        next pass reads those changes again."""
        with self._pending_lock:
            self._cursors[folder] = (folder_key, cursor, basis)

    def target_folder_seen(self, record: TargetFolderRecord) -> None:
        """A target folder's UIDVALIDITY as the pass found it or made it, written with the next commit as
        cursors are: the intents of any APPEND into the folder come with or after it, and one lost to a
        crash is learnt again by the next pass (a row without UIDVALIDITY accepts the folder's)."""
        with self._pending_lock:
            self._folders[record.path] = record

    def write_pending(self, conn: Connection) -> None:
        """The kept done rows, flags, cursors and target folders not yet written, in the caller's transaction.
        Done rows and flags first: a cursor says every change up to it is recorded."""
        with self._pending_lock:
            cursors, self._cursors = self._cursors, {}
            folders, self._folders = self._folders, {}
            done, self._done = self._done, {}
            done_size, self._done_size = self._done_size, 0
            flags, self._flags = self._flags, {}
        if done:
            self._record_done(conn, done, done_size)
        if flags:
            ledger.record_flags(conn, self.lease, flags)
            work.add_to_checkpoint(conn, self.checkpoint_id, flag_updates=len(flags))
        for folder, (folder_key, cursor, basis) in cursors.items():
            ledger.keep_cursor(conn, self.lease, self.mailbox_id, folder, folder_key, cursor, basis)
        for record in folders.values():
            ledger.remember_target_folder(conn, self.lease, self.mailbox_id, record)

    def forget(self, ledger_ids: Sequence[int]) -> None:
        self._commit(lambda c: ledger.forget(c, self.lease, ledger_ids))

    def forget_target_folder(self, path: str) -> None:
        self._commit(lambda c: ledger.forget_target_folder(c, self.lease, self.mailbox_id, path))

    def target_folders(self, records: Sequence[TargetFolderRecord]) -> None:
        """Target folders about to be created, as ours, in one transaction before the first CREATE (intent
        before effect): a mailbox's new folders cost one commit, not one each."""
        def write(conn: Connection) -> None:
            for record in records:
                ledger.remember_target_folder(conn, self.lease, self.mailbox_id, record)
        self._commit(write)

    def event(self, kind: str, message: str) -> None:
        self._commit(lambda c: work.log_event(c, kind, message, self.mailbox_id, self.lease.job_id))
