"""The folders of one mailbox on several session pairs at once, when the run has connections to spare.

A migration's long pole is its largest mailbox: with one session pair a 50 GB mailbox copies at the speed
of one APPEND stream while the other workers have long finished. Folders are independent (each has its own
ledger rows, cursor and target folder), so with spare connections the largest folders go first, each on
whichever session pair is free. Extra sessions are a bonus: one the server refuses (its per-user
connection limit, e.g. Dovecot's mail_max_userip_connections) leaves the work to the others. A failure
that ends the pass (a lost connection, a stop request) stops every session pair after its current folder
and is raised once all have stopped, so no session is closed under a running command.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import TypeVar

from migrator.connectors.base import Mailbox
from migrator.errors import EndpointError, FolderFailed, Transient

# Session pairs one mailbox may use: a user's connections are limited per server (Dovecot's
# mail_max_userip_connections defaults to 10, shared with the user's own mail clients during a migration).
MAX_SESSIONS_PER_MAILBOX = 4

Job = TypeVar("Job")
SessionPair = tuple[Mailbox, Mailbox]


def run_folders(jobs: Sequence[Job], pairs: int, first: SessionPair,
                open_pair: Callable[[ExitStack], SessionPair], sync: Callable[[SessionPair, Job], None],
                folder_failed: Callable[[FolderFailed], None], close_pair: Callable[[SessionPair], None]) -> None:
    """`sync` every job (in the given order, largest first) on `first` and up to `pairs - 1` more session
    pairs made by `open_pair`; a FolderFailed goes to `folder_failed` and the others go on."""
    queue: deque[Job] = deque(jobs)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def drain(pair: SessionPair) -> None:
        while not failures:
            with lock:
                if not queue:
                    return
                job = queue.popleft()
            try:
                sync(pair, job)
            except FolderFailed as exc:
                folder_failed(exc)

    def extra() -> None:
        try:
            with ExitStack() as stack:
                try:
                    pair = open_pair(stack)
                except (Transient, EndpointError):
                    return  # the server allows no more sessions now: the others do the work
                try:
                    drain(pair)
                finally:
                    close_pair(pair)
        except BaseException as exc:  # handed to the pass's own thread, which raises the first one
            failures.append(exc)

    helpers = [threading.Thread(target=extra, name="folders", daemon=True)
               for _ in range(min(pairs, len(jobs)) - 1)]
    for helper in helpers:
        helper.start()
    try:
        drain(first)
    except BaseException as exc:
        failures.append(exc)
    finally:
        for helper in helpers:
            helper.join()
    if failures:
        raise failures[0]


def session_pairs(connections: int, mailboxes_at_once: int, cap: int) -> int:
    """Session pairs per mailbox: the connections each server allows this run, shared by the mailboxes in
    flight, at most `cap` per mailbox (servers limit a user's connections) and at least one."""
    return max(1, min(cap, connections // max(1, mailboxes_at_once)))


def opener(open_source: Callable[[], AbstractContextManager[Mailbox]],
           open_target: Callable[[], AbstractContextManager[Mailbox]]) -> Callable[[ExitStack], SessionPair]:
    def open_pair(stack: ExitStack) -> SessionPair:
        return stack.enter_context(open_source()), stack.enter_context(open_target())
    return open_pair
