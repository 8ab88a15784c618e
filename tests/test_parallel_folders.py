"""engine/parallel.py: a mailbox's folders across session pairs; its rules, without servers (the end-to-end
suites run every two-mailbox lab with two session pairs per mailbox)."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import cast

import pytest

from migrator.engine.parallel import SessionPair, run_folders, session_pairs
from migrator.errors import FolderFailed, Throttled, Transient


class Pairs:
    """Session pairs as opaque tokens; `refuse` makes the next opens fail like a server's connection limit."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.opened: list[SessionPair] = []
        self.closed: list[SessionPair] = []
        self.lock = threading.Lock()

    def open(self, _stack: ExitStack) -> SessionPair:
        with self.lock:
            if self.refuse:
                self.refuse -= 1
                raise Throttled("too many connections", 0.0, "target")
            pair = cast(SessionPair, (object(), object()))
            self.opened.append(pair)
            return pair

    def close(self, pair: SessionPair) -> None:
        self.closed.append(pair)


FIRST = cast(SessionPair, ("first-source", "first-target"))


def test_every_folder_once_across_pairs() -> None:
    pairs, done, users = Pairs(), [], set()
    barrier = threading.Barrier(3, timeout=10)

    def sync(pair: SessionPair, job: int) -> None:
        if job < 3:
            barrier.wait()  # the three largest run at the same time, on three different pairs
        done.append(job)
        users.add(id(pair[0]))

    run_folders(list(range(10)), 3, FIRST, pairs.open, sync, lambda exc: None, pairs.close)
    assert sorted(done) == list(range(10))
    assert len(users) == 3 and len(pairs.opened) == 2 and set(pairs.closed) == set(pairs.opened)


def test_a_refused_extra_session_leaves_the_work_to_the_others() -> None:
    pairs, done = Pairs(refuse=5), []
    run_folders(list(range(6)), 4, FIRST, pairs.open, lambda pair, job: done.append((pair, job)),
                lambda exc: None, pairs.close)
    assert sorted(job for _pair, job in done) == list(range(6))
    assert {pair for pair, _job in done} == {FIRST}


def test_a_failed_folder_does_not_stop_the_others() -> None:
    failed: list[str] = []

    def sync(_pair: SessionPair, job: int) -> None:
        if job == 2:
            raise FolderFailed("folder 2: UIDVALIDITY changed")

    run_folders(list(range(5)), 2, FIRST, Pairs().open, sync, lambda exc: failed.append(str(exc)), lambda p: None)
    assert failed == ["folder 2: UIDVALIDITY changed"]


@pytest.mark.parametrize("where", ["first", "extra"])
def test_a_failure_that_ends_the_pass_stops_every_pair_and_is_raised(where: str) -> None:
    started: list[int] = []
    lock = threading.Lock()

    def sync(pair: SessionPair, job: int) -> None:
        with lock:
            started.append(job)
        if (pair is FIRST) == (where == "first") and job >= 2:
            raise Transient("connection lost")
        threading.Event().wait(0.01)

    with pytest.raises(Transient):
        run_folders(list(range(200)), 2, FIRST, Pairs().open, sync, lambda exc: None, lambda p: None)
    assert len(started) < 200, "the other pair stops after its current folder"


def test_session_pairs_share_the_connections() -> None:
    assert session_pairs(4, 4, 4) == 1
    assert session_pairs(4, 1, 4) == 4
    assert session_pairs(20, 2, 4) == 4
    assert session_pairs(4, 3, 4) == 1
    assert session_pairs(1, 8, 4) == 1

