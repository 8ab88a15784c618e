"""engine/copier.py's AppendLane: a folder's last APPEND outlives the folder, and its outcome is still
recorded, in order and against the right folder. Its rules, on a stand-in target session (the end-to-end,
kill and crash suites run every copy through lanes on real Dovecot servers)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import cast

import pytest

from migrator.connectors.base import Mailbox
from migrator.engine.checkpoint import Interrupted
from migrator.engine.copier import AppendLane
from migrator.errors import FolderFailed, ItemFailed, Transient
from migrator.model import Capabilities

Outcome = Sequence[str | ItemFailed | None] | ItemFailed


class Target:
    """What a lane asks of its session: its capabilities. APPENDs are the callables handed to `send`."""

    def __init__(self, names_ids: bool = True) -> None:
        self.names_ids = names_ids

    def capabilities(self) -> Capabilities:
        return Capabilities(append_returns_ids=self.names_ids, bulk_append=True)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)

    def append(self, name: str, result: Outcome | Exception, gate: threading.Event | None = None
               ) -> Callable[[Mailbox], Sequence[str | ItemFailed | None]]:
        """An APPEND that logs its start and end, waits for `gate` if given, and returns or raises `result`."""
        def run(_dst: Mailbox) -> Sequence[str | ItemFailed | None]:
            self.add(f"{name} appending")
            if gate is not None:
                assert gate.wait(10)
            self.add(f"{name} appended")
            if isinstance(result, Exception):
                raise result
            return result
        return run

    def record(self, name: str) -> Callable[[Mailbox, Outcome], None]:
        return lambda _dst, outcome: self.add(f"{name} recorded {outcome!r}")


def lane(names_ids: bool = True) -> AppendLane:
    return AppendLane(cast(Mailbox, Target(names_ids)))


def test_a_folders_last_append_outlives_it_and_its_end_waits_for_its_outcome() -> None:
    log, gate, a, b = Log(), threading.Event(), object(), object()
    with lane() as appends:
        appends.send(log.append("A", ["1"], gate), log.record("A"), a)
        appends.leave(a, lambda: log.add("A ends"), lambda exc: log.add(f"A failed {exc}"))
        log.add("B listed, fetched, intents committed")  # while A's APPEND is in flight
        gate.set()
        appends.send(log.append("B", ["2"]), log.record("B"), b)
        appends.leave(b, lambda: log.add("B ends"), lambda exc: log.add(f"B failed {exc}"))
    assert log.lines.index("B listed, fetched, intents committed") < log.lines.index("A appended")
    assert log.lines.index("A appended") < log.lines.index("B appending"), "one APPEND at a time"
    assert log.lines.index("A recorded ['1']") < log.lines.index("A ends")
    assert log.lines[-2:] == ["B recorded ['2']", "B ends"], "leaving the lane records what is in flight"


def test_a_failure_of_a_finished_folders_append_is_that_folders_not_the_next_ones() -> None:
    log, failures, a, b = Log(), [], object(), object()
    with lane() as appends:
        appends.send(log.append("A", FolderFailed("target folder 'A' is gone")), log.record("A"), a)
        appends.leave(a, lambda: log.add("A ends"), failures.append)
        appends.send(log.append("B", ["7"]), log.record("B"), b)  # does not raise: B goes on
        appends.idle()
    assert [str(f) for f in failures] == ["target folder 'A' is gone"]
    assert "A ends" not in log.lines and "B recorded ['7']" in log.lines


def test_a_failure_of_a_folder_still_sending_is_raised_to_it() -> None:
    log, a = Log(), object()
    with lane() as appends, pytest.raises(FolderFailed):
        appends.send(log.append("A1", FolderFailed("target folder 'A' is gone")), log.record("A1"), a)
        appends.send(log.append("A2", ["2"]), log.record("A2"), a)
    assert "A2 appending" not in log.lines, "nothing more is sent into a folder that failed"


def test_an_outcome_that_needs_the_session_is_recorded_before_the_next_append() -> None:
    """Ids the target did not name are searched for, a refused batch retried: on the session, so first."""
    log, a, b = Log(), object(), object()
    with lane() as appends:
        appends.send(log.append("A", [None]), log.record("A"), a)
        appends.leave(a, lambda: log.add("A ends"), lambda exc: None)
        appends.send(log.append("B", ["2"]), log.record("B"), b)
    assert log.lines.index("A recorded [None]") < log.lines.index("B appending")
    log2 = Log()
    with lane() as appends:
        appends.send(log2.append("A", ItemFailed("refused", "refused")), log2.record("A"), a)
        appends.send(log2.append("B", ["2"]), log2.record("B"), a)
    assert log2.lines.index("A recorded ItemFailed('refused')") < log2.lines.index("B appending")


def test_idle_gives_the_session_with_nothing_in_flight() -> None:
    log, gate, a = Log(), threading.Event(), object()
    with lane() as appends:
        appends.send(log.append("A", ["1"], gate), log.record("A"), a)
        threading.Timer(0.05, gate.set).start()
        session = appends.idle()
        assert log.lines[-1] == "A recorded ['1']" and isinstance(session, Target)


def test_an_error_waits_for_the_append_in_flight_and_leaves_its_intents_open() -> None:
    log, gate, a = Log(), threading.Event(), object()
    threading.Timer(0.05, gate.set).start()
    with pytest.raises(Transient), lane() as appends:
        appends.send(log.append("A", ["1"], gate), log.record("A"), a)
        appends.leave(a, lambda: log.add("A ends"), lambda exc: None)
        raise Transient("source connection lost")
    assert log.lines == ["A appending", "A appended"], "ended before the session closes, not recorded"


def test_a_stop_request_records_what_is_in_flight() -> None:
    log, a = Log(), object()
    with pytest.raises(Interrupted), lane() as appends:
        appends.send(log.append("A", ["1"]), log.record("A"), a)
        appends.leave(a, lambda: log.add("A ends"), lambda exc: None)
        raise Interrupted("stop requested")
    assert log.lines[-2:] == ["A recorded ['1']", "A ends"]


def test_a_folder_with_nothing_in_flight_ends_at_once() -> None:
    log, a, b = Log(), object(), object()
    with lane() as appends:
        appends.send(log.append("A", ["1"]), log.record("A"), a)
        appends.leave(b, lambda: log.add("B ends"), lambda exc: None)  # B sent nothing
        assert log.lines[-1] == "B ends"
        appends.leave(a, lambda: log.add("A ends"), lambda exc: None)


def test_a_target_that_names_no_ids_gets_no_thread() -> None:
    """Copies to such a target are searched for right after their APPEND, on the caller's thread: its lane
    starts no thread and takes no APPEND to run on one."""
    threads = threading.active_count()
    appends = lane(names_ids=False)
    assert not appends.pipelined
    with appends, pytest.raises(RuntimeError, match="does not name ids"):
        appends.idle()
        appends.send(Log().append("A", [None]), Log().record("A"), object())
    assert threading.active_count() == threads
