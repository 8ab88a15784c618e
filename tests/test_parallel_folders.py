"""engine/parallel.py: a mailbox's folders across session pairs; its rules, without servers (the end-to-end
suites run every two-mailbox lab with two session pairs per mailbox)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, cast

import pytest

from migrator.connectors.base import Mailbox
from migrator.engine.parallel import BackgroundSession, OnPair, SessionBudget, SessionPair, opener, run_folders
from migrator.errors import FolderFailed, Throttled, Transient
from migrator.model import FolderInfo


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


def each(sync: Callable[[SessionPair, int], None], left: list[SessionPair] | None = None) -> OnPair[int]:
    """run_folders' per-pair context for a plain sync(pair, job); `left` lists the pairs whose context ended."""
    @contextmanager
    def on_pair(pair: SessionPair) -> Iterator[Callable[[int], None]]:
        try:
            yield lambda job: sync(pair, job)
        finally:
            if left is not None:
                left.append(pair)
    return on_pair


def run_alone(jobs: list[int], pairs: int, open_pair: Callable[[ExitStack], SessionPair],
              sync: Callable[[SessionPair, int], None], *args: Any) -> None:
    """run_folders for the only mailbox in flight of a run that may hold `pairs` session pairs."""
    budget = SessionBudget(pairs)
    with budget.mailbox():
        run_folders(jobs, pairs, budget, FIRST, open_pair, each(sync), *args)


def test_every_folder_once_across_pairs() -> None:
    pairs, done, users = Pairs(), [], set()
    barrier = threading.Barrier(3, timeout=10)

    def sync(pair: SessionPair, job: int) -> None:
        if job < 3:
            barrier.wait()  # the three largest run at the same time, on three different pairs
        done.append(job)
        users.add(id(pair[0]))

    run_alone(list(range(10)), 3, pairs.open, sync, lambda exc: None, pairs.close)
    assert sorted(done) == list(range(10))
    assert len(users) == 3 and len(pairs.opened) == 2 and set(pairs.closed) == set(pairs.opened)


def test_each_pair_ends_what_it_has_in_flight_before_it_is_closed() -> None:
    """A pair's context (where a folder's last APPEND may still be in flight) ends before the pair is closed,
    on the first pair as on the extra ones, failing or not."""
    pairs, left = Pairs(), []
    left_before_closed: list[bool] = []
    barrier = threading.Barrier(2, timeout=10)

    def sync(pair: SessionPair, job: int) -> None:
        if job < 2:
            barrier.wait()  # two pairs at once
        if job == 3:
            raise Transient("connection lost")

    def close(pair: SessionPair) -> None:
        left_before_closed.append(pair in left)
        pairs.close(pair)

    budget = SessionBudget(2)
    with budget.mailbox(), pytest.raises(Transient):
        run_folders(list(range(6)), 2, budget, FIRST, pairs.open, each(sync, left), lambda exc: None, close)
    assert sorted(map(id, left)) == sorted(map(id, [FIRST, *pairs.opened]))
    assert pairs.opened and left_before_closed == [True] * len(pairs.opened)


def test_a_refused_extra_session_leaves_the_work_to_the_others() -> None:
    pairs, done = Pairs(refuse=5), []
    run_alone(list(range(6)), 4, pairs.open, lambda pair, job: done.append((pair, job)),
                lambda exc: None, pairs.close)
    assert sorted(job for _pair, job in done) == list(range(6))
    assert {pair for pair, _job in done} == {FIRST}


def test_a_failed_folder_does_not_stop_the_others() -> None:
    failed: list[str] = []

    def sync(_pair: SessionPair, job: int) -> None:
        if job == 2:
            raise FolderFailed("folder 2: UIDVALIDITY changed")

    run_alone(list(range(5)), 2, Pairs().open, sync, lambda exc: failed.append(str(exc)), lambda p: None)
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
        run_alone(list(range(200)), 2, Pairs().open, sync, lambda exc: None, lambda p: None)
    assert len(started) < 200, "the other pair stops after its current folder"


def test_passes_keep_to_their_share_of_the_pairs_and_take_up_what_finished_ones_give_back() -> None:
    budget = SessionBudget(4)
    with budget.mailbox():
        with budget.mailbox():
            assert budget.take(1)
            assert not budget.take(2), "two passes in flight: two pairs each"
        assert budget.take(2) and budget.take(3), "alone, a pass may hold every pair"
        assert not budget.take(4)
        budget.give()
        assert budget.take(3)


def test_more_pairs_than_connections_are_never_taken() -> None:
    budget = SessionBudget(3)
    with budget.mailbox(), budget.mailbox(), budget.mailbox():
        assert not budget.take(1)


def test_a_mailbox_takes_up_pairs_another_mailbox_gave_back_at_its_next_folder() -> None:
    """The run's last mailbox starts on one pair while another still holds the rest, and copies its remaining
    folders on the pairs that one leaves behind."""
    budget, pairs, users = SessionBudget(4), Pairs(), []
    other = budget.mailbox()
    other.__enter__()
    for _ in range(2):
        assert budget.take(1)  # the other mailbox holds three pairs: none is free
    started = threading.Barrier(2, timeout=10)

    def sync(pair: SessionPair, job: int) -> None:
        users.append((job, pair))
        if job == 0:
            budget.give()
            budget.give()
            other.__exit__(None, None, None)  # the other mailbox is done: its three pairs are free
        if job in (1, 2):
            started.wait()  # both run at once: job 2 on a new pair

    with budget.mailbox():
        run_folders(list(range(6)), 4, budget, FIRST, pairs.open, each(sync), lambda exc: None, pairs.close)
    assert [pair for job, pair in users if job == 0] == [FIRST]
    assert sorted(job for job, _pair in users) == list(range(6))
    assert 1 <= len(pairs.opened) <= 3 and set(pairs.closed) == set(pairs.opened)


class Opening:
    """A session's open and close as a context manager, logged; the open waits for `gate` and may fail."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.log: list[str] = []
        self.gate = threading.Event()
        self.fail = fail
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        with self.lock:
            self.log.append(line)

    @contextmanager
    def open(self) -> Iterator[Mailbox]:
        assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.add("logged in")
        try:
            yield cast(Mailbox, self)
        finally:
            self.add("closed")

    def list_folders(self, *, sizes: bool) -> list[FolderInfo]:
        self.add(f"listed on {threading.current_thread().name}")
        return [FolderInfo("INBOX", "/")]


def test_a_background_session_logs_in_while_the_caller_asks_the_other_server() -> None:
    server = Opening()
    with ExitStack() as stack:
        target = BackgroundSession(stack, server.open)
        target.start()
        server.add("source asked")  # the open waits for the gate: this comes first
        server.gate.set()
        session, folders = target.get()
        assert session is server and [f.path for f in folders] == ["INBOX"]
        assert target.get()[0] is session, "opened once"
        assert server.log == ["source asked", "logged in", "listed on opening"]
    assert server.log[-1] == "closed", "closed with the stack"


def test_a_failure_to_open_it_is_raised_by_get_on_the_callers_thread() -> None:
    server = Opening(fail=Transient("target: connection refused"))
    server.gate.set()
    with ExitStack() as stack:
        target = BackgroundSession(stack, server.open)
        target.start()
        with pytest.raises(Transient, match="connection refused"):
            target.get()
    assert server.log == []


def test_a_failure_on_the_callers_side_waits_for_the_open_and_closes_the_session() -> None:
    server = Opening()
    with pytest.raises(Transient, match="source lost"), ExitStack() as stack:
        BackgroundSession(stack, server.open).start()
        threading.Timer(0.05, server.gate.set).start()
        raise Transient("source lost")
    assert server.log[0] == "logged in" and server.log[-1] == "closed", "no session left open"


def test_a_background_session_never_started_is_never_opened_and_get_opens_it() -> None:
    unused, used = Opening(), Opening()
    unused.gate.set()  # nothing holds it back: only not starting keeps it shut
    used.gate.set()
    with ExitStack() as stack:
        BackgroundSession(stack, unused.open)  # a delta whose source shows no change
        assert BackgroundSession(stack, used.open).get()[0] is used
    assert unused.log == [] and used.log[0] == "logged in" and used.log[-1] == "closed"


def test_an_extra_pair_logs_in_to_both_servers_at_once() -> None:
    """The source's login waits here for the target's to have happened: opened one after the other (source
    first), it would wait in vain. The extra target session lists no folders, and both close with the stack."""
    source, target = Opening(), Opening()
    target.gate.set()

    @contextmanager
    def open_target() -> Iterator[Mailbox]:
        with target.open() as session:
            source.gate.set()
            yield session

    with ExitStack() as stack:
        assert opener(source.open, open_target)(stack) == (source, target)
        assert target.log == ["logged in"] and source.log == ["logged in"]
    assert source.log[-1] == target.log[-1] == "closed"
