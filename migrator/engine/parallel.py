"""The folders of one mailbox on several session pairs at once, when the run has connections to spare.

A migration's long pole is its largest mailbox: with one session pair a 50 GB mailbox copies at the speed
of one APPEND stream while the other workers have long finished. Folders are independent (each has its own
ledger rows, cursor and target folder), so with spare connections the largest folders go first, each on
whichever session pair is free. The run's connections (the fewer of the endpoints' max_connections) are
shared by the mailboxes in flight, each up to its fair share (SessionBudget): while every worker has a
mailbox each keeps to one pair, and as the queue runs dry the last mailboxes of a run (a night's largest,
typically) take up, at their next folder, the connections the finished ones gave back. Extra sessions are
a bonus: one the server refuses (its per-user connection limit, e.g. Dovecot's mail_max_userip_connections)
leaves the work to the others, and the mailbox asks for no more. A failure that ends the pass (a lost
connection, a stop request) stops every session pair after its current folder and is raised once all have
stopped, so no session is closed under a running command.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TypeVar

from migrator.connectors.base import Mailbox
from migrator.errors import EndpointError, FolderFailed, Transient
from migrator.model import FolderInfo

# Session pairs one mailbox may use: a user's connections are limited per server (Dovecot's
# mail_max_userip_connections defaults to 10, shared with the user's own mail clients during a migration).
MAX_SESSIONS_PER_MAILBOX = 4

Job = TypeVar("Job")
SessionPair = tuple[Mailbox, Mailbox]
OnPair = Callable[[SessionPair], AbstractContextManager[Callable[[Job], None]]]


class SessionBudget:
    """The session pairs one process of a run may hold at once (its share of the endpoints' max_connections),
    shared by the mailbox passes in flight. Each pass holds its first pair (`mailbox`) and takes another
    (`take`, then `give` once it is closed) only while pairs are free and it holds fewer than its fair share,
    the pairs over the passes in flight: while every worker has a mailbox each keeps to its own, and as the
    queue runs dry the last ones take up what the finished ones gave back."""

    def __init__(self, pairs: int = 1) -> None:
        self._pairs = pairs
        self._in_use = 0
        self._passes = 0
        self._lock = threading.Lock()

    @contextmanager
    def mailbox(self) -> Iterator[None]:
        with self._lock:
            self._passes += 1
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._passes -= 1
                self._in_use -= 1

    def take(self, held: int) -> bool:
        """One more pair for a pass that holds `held`, if the run has one free and the pass its share."""
        with self._lock:
            fair_share = -(-self._pairs // max(1, self._passes))
            if self._in_use >= self._pairs or held >= fair_share:
                return False
            self._in_use += 1
            return True

    def give(self) -> None:
        with self._lock:
            self._in_use -= 1


def run_folders(jobs: Sequence[Job], cap: int, budget: SessionBudget, first: SessionPair,
                open_pair: Callable[[ExitStack], SessionPair], on_pair: OnPair[Job],
                folder_failed: Callable[[FolderFailed], None], close_pair: Callable[[SessionPair], None]) -> None:
    """Sync every job (in the given order, largest first) on `first` and on up to `cap - 1` more session
    pairs made by `open_pair`, each taken from `budget` when a job is waiting that no pair has started (at
    the start and as each job starts); a FolderFailed goes to `folder_failed` and the others go on. A pair
    syncs its jobs inside `on_pair(pair)`, which gives the function that syncs one (and ends what the pair
    still has in flight before the pair is closed)."""
    queue: deque[Job] = deque(jobs)
    lock = threading.Lock()
    failures: list[BaseException] = []
    helpers: list[threading.Thread] = []
    refused = threading.Event()  # the server allows this user no more sessions: ask no more

    def grow() -> None:
        """With `lock` held: another pair for the jobs no pair has started, if the budget has one."""
        while (queue and not failures and not refused.is_set() and len(helpers) + 1 < cap
               and budget.take(len(helpers) + 1)):
            helper = threading.Thread(target=extra, name="folders", daemon=True)
            helpers.append(helper)
            helper.start()

    def drain(pair: SessionPair) -> None:
        with on_pair(pair) as sync:
            while not failures:
                with lock:
                    if not queue:
                        return
                    job = queue.popleft()
                    grow()
                try:
                    sync(job)
                except FolderFailed as exc:
                    folder_failed(exc)

    def extra() -> None:
        try:
            with ExitStack() as stack:
                try:
                    pair = open_pair(stack)
                except (Transient, EndpointError):
                    refused.set()  # the others do the work
                    return
                try:
                    drain(pair)
                finally:
                    close_pair(pair)
        except BaseException as exc:  # handed to the pass's own thread, which raises the first one
            failures.append(exc)
        finally:
            budget.give()

    try:
        with lock:
            grow()
        drain(first)
    except BaseException as exc:
        failures.append(exc)
    finally:
        joined = 0
        while True:  # helpers start only while jobs wait, so none starts after the first pair's drain ends
            with lock:
                if joined == len(helpers):
                    break
                helper = helpers[joined]
            helper.join()
            joined += 1
    if failures:
        raise failures[0]


def opener(open_source: Callable[[], AbstractContextManager[Mailbox]],
           open_target: Callable[[], AbstractContextManager[Mailbox]]) -> Callable[[ExitStack], SessionPair]:
    """Opens an extra session pair, logging in to both servers at once (the target on a thread of its own):
    a pair costs one login's round trips, not two one after the other."""
    def open_pair(stack: ExitStack) -> SessionPair:
        target = BackgroundSession(stack, open_target, listing=False)
        target.start()
        source = stack.enter_context(open_source())
        return source, target.get()[0]
    return open_pair


class BackgroundSession:
    """A session that connects, logs in and lists its folders on a thread of its own (from `start`) while
    the caller's thread asks the other server: a login is several round trips (TCP, TLS, greeting, LOGIN,
    CAPABILITY), the folder list one more, and on a WAN or a hosted tenant a mailbox's two logins one after
    the other are a large part of what a delta pass costs it. The session is closed when `stack` unwinds,
    after its thread has ended, whatever happened on either thread; `get` raises what opening it raised.
    Without `listing` its folders are not listed (`get` gives none): an extra pair's folders are known."""

    def __init__(self, stack: ExitStack, open_session: Callable[[], AbstractContextManager[Mailbox]], *,
                 listing: bool = True) -> None:
        self._open_session = open_session
        self._listing = listing
        self._opened = ExitStack()
        self._outcome: Future[tuple[Mailbox, list[FolderInfo]]] = Future()
        self._thread: threading.Thread | None = None
        stack.callback(self._close)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._open, name="opening", daemon=True)
            self._thread.start()

    def _open(self) -> None:
        try:
            session = self._opened.enter_context(self._open_session())
            self._outcome.set_result((session, session.list_folders(sizes=False) if self._listing else []))
        except BaseException as exc:  # handed to the caller's thread by get()
            self._outcome.set_exception(exc)

    def opening(self) -> bool:
        """Started and not done yet."""
        return self._thread is not None and self._thread.is_alive()

    def get(self) -> tuple[Mailbox, list[FolderInfo]]:
        """The session and its folders, once opened."""
        self.start()
        return self._outcome.result()

    def _close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self._opened.close()
