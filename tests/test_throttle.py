"""The pacer's token buckets, measured on a fake clock: never wall-clock asserts."""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from imapclient.exceptions import IMAPClientError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from migrator.config import ThrottleConfig
from migrator.connectors.imap import classify_failure
from migrator.engine.diff import chunk_refs
from migrator.engine.worker import CHUNK_BYTES, CHUNK_MESSAGES
from migrator.errors import Throttled
from migrator.model import MessageRef
from migrator.throttle import BACKOFF_CALM, Pacer, ServerBackoff, SharedCells, WindowBudget

WINDOW = 30.0


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.start = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def elapsed(self) -> float:
        return self.now - self.start


def deliver(pacer: Pacer, time: FakeTime, size: int, work: float = 0.0) -> tuple[int, int]:
    """Send messages of `size` bytes until the window closes; `work` is the time each send itself takes."""
    messages = sent_bytes = 0
    while True:
        pacer.acquire(1, size)
        if time.elapsed > WINDOW:
            return messages, sent_bytes
        messages += 1
        sent_bytes += size
        time.now += work


def within(value: float, expected: float, tolerance: float = 0.10) -> bool:
    return abs(value - expected) <= tolerance * expected


@pytest.mark.parametrize("work", [0.0, 0.001, 0.02])
def test_messages_per_second(work: float) -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(messages_per_second=20), clock=time.clock, sleep=time.sleep)
    messages, _ = deliver(pacer, time, size=1000, work=work)
    assert within(messages, 20 * WINDOW), messages
    assert time.sleeps, "a limit that never sleeps is no limit"


@pytest.mark.parametrize("size", [10_000, 50_000, 400_000])
def test_bytes_per_second(size: int) -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(bytes_per_second=1_000_000), clock=time.clock, sleep=time.sleep)
    _, sent = deliver(pacer, time, size=size)
    assert within(sent, 1_000_000 * WINDOW), sent


def test_message_larger_than_the_bucket_still_goes_and_is_repaid() -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(bytes_per_second=1_000_000), clock=time.clock, sleep=time.sleep)
    _, sent = deliver(pacer, time, size=3_000_000)
    assert sent > 0 and within(sent, 1_000_000 * WINDOW, 0.15), sent


def test_the_slower_limit_wins() -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(messages_per_second=100, bytes_per_second=500_000), clock=time.clock,
                  sleep=time.sleep)
    messages, sent = deliver(pacer, time, size=50_000)  # bytes allow 10 messages/s, far below 100
    assert within(sent, 500_000 * WINDOW), sent
    assert within(messages, 10 * WINDOW), messages


def test_batches_are_paced_by_their_size() -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(messages_per_second=20), clock=time.clock, sleep=time.sleep)
    messages = 0
    while True:
        pacer.acquire(10, 10 * 1000)
        if time.elapsed > WINDOW:
            break
        messages += 10
    assert within(messages, 20 * WINDOW), messages


@pytest.mark.parametrize(("config", "size"), [(ThrottleConfig(messages_per_second=20), 1000),
                                              (ThrottleConfig(messages_per_second=2.5), 1000),
                                              (ThrottleConfig(bytes_per_second=1_000_000), 30_000),
                                              (ThrottleConfig(bytes_per_second=100_000), 400_000)])
def test_the_engines_batches_keep_every_window_within_the_limit(config: ThrottleConfig, size: int) -> None:
    """A pass cuts a folder into batches of up to CHUNK_MESSAGES and CHUNK_BYTES, each paced as one. Bound by
    the pacer's batch_limits, no 30 s window (wherever it starts) holds more than the limit allows, plus one
    message that is larger than a second's worth on its own."""
    time = FakeTime()
    pacer = Pacer(config, clock=time.clock, sleep=time.sleep)
    by_count = config.messages_per_second is not None
    rate = config.messages_per_second if by_count else config.bytes_per_second
    assert rate is not None
    refs = [MessageRef(str(uid), size, frozenset(), datetime(2026, 1, 1, tzinfo=UTC)) for uid in range(1, 3001)]
    sent: list[tuple[float, int]] = []  # when, and how much as the limit counts it (messages or bytes)
    for chunk in chunk_refs(refs, *pacer.batch_limits(CHUNK_MESSAGES, CHUNK_BYTES)):
        if time.elapsed > 4 * WINDOW:
            break
        pacer.acquire(len(chunk), len(chunk) * size)
        sent.append((time.now, len(chunk) if by_count else len(chunk) * size))
    slack = 0 if by_count else size  # a message larger than a second's worth travels alone
    for start, _amount in sent:
        window = sum(amount for stamp, amount in sent if start <= stamp < start + WINDOW)
        assert window <= rate * WINDOW * 1.1 + slack, (start, window)
    assert sum(amount for _stamp, amount in sent) >= 3 * WINDOW * rate, "the limit is reached"


def test_batch_limits_without_limits_are_the_callers() -> None:
    assert Pacer(ThrottleConfig()).batch_limits(CHUNK_MESSAGES, CHUNK_BYTES) == (CHUNK_MESSAGES, CHUNK_BYTES)
    assert Pacer(ThrottleConfig(messages_per_second=0.5)).batch_limits(100, 10) == (1, 10)


def test_no_limits_never_sleeps() -> None:
    time = FakeTime()

    def forbidden(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s without any limit")

    pacer = Pacer(ThrottleConfig(), clock=time.clock, sleep=forbidden)
    for _ in range(10_000):
        assert pacer.acquire(50, 10**9) == 0.0


def test_idle_time_does_not_bank_more_than_one_second_of_burst() -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(messages_per_second=20), clock=time.clock, sleep=time.sleep)
    time.now += 3600  # an hour idle
    waited = [pacer.acquire(1, 0) for _ in range(40)]
    assert waited[:20] == [0.0] * 20
    assert all(w > 0 for w in waited[20:])
    assert time.elapsed - 3600 == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize(("amounts", "limit"), [([1] * 3000, 1000), ([7, 300, 1, 90, 450] * 200, 2000)])
def test_window_budget_never_exceeds_the_limit_in_any_window(amounts: list[int], limit: int) -> None:
    """Outlook counts per sliding window: no window of that length ever holds more than the limit, and the
    first window's worth is not slowed."""
    time = FakeTime()
    budget = WindowBudget(limit, 10.0, clock=time.clock, sleep=time.sleep)
    sent: list[tuple[float, int]] = []
    for amount in amounts:
        budget.acquire(amount)
        sent.append((time.now, amount))
    for stamp, _ in sent:
        assert sum(a for t, a in sent if stamp <= t < stamp + 10.0) <= limit
    first_window = [a for t, a in sent if t == time.start]
    assert sum(first_window) > limit - max(amounts), "a window's worth goes at once"
    assert time.elapsed <= (sum(amounts) / (limit - max(amounts) + 1) + 1) * 10.0, "no window is left idle"


def test_window_budget_lets_an_oversize_amount_through_an_empty_window() -> None:
    time = FakeTime()
    budget = WindowBudget(100, 5.0, clock=time.clock, sleep=time.sleep)
    budget.acquire(60)
    budget.acquire(500)
    assert time.elapsed == 5.0


class FixedRandom(random.Random):
    """Jitter at its largest (20 %), so the ladder's figures are exact."""

    def random(self) -> float:
        return 1.0


def test_backoff_climbs_a_ladder_and_starts_again_after_calm() -> None:
    time = FakeTime()
    backoff = ServerBackoff(time.clock, FixedRandom())
    holds = []
    for _ in range(10):
        holds.append(backoff.signal(None))
        time.now += holds[-1]
    assert holds == pytest.approx([2.4, 4.8, 9.6, 19.2, 38.4, 76.8, 153.6, 307.2, 360.0, 360.0])
    time.now += BACKOFF_CALM + 1
    assert backoff.signal(None) == pytest.approx(2.4)


def test_backoff_takes_the_servers_own_figure() -> None:
    """Office 365: "Request is throttled. Suggested Backoff Time: 214 milliseconds"."""
    time = FakeTime()
    backoff = ServerBackoff(time.clock, FixedRandom())
    error = classify_failure(IMAPClientError("APPEND failed: Request is throttled. Suggested Backoff Time: "
                                             "214 milliseconds"), "target imap://x:143 a@b APPEND", "target")
    assert isinstance(error, Throttled) and error.endpoint == "target"
    assert backoff.signal(error.retry_after) == pytest.approx(0.214)
    unavailable = classify_failure(IMAPClientError("NO [UNAVAILABLE] Try again later"), "ctx", "source")
    assert isinstance(unavailable, Throttled) and unavailable.retry_after == 0 and unavailable.endpoint == "source"


def test_every_task_on_the_endpoint_waits_out_the_hold() -> None:
    time = FakeTime()
    backoff = ServerBackoff(time.clock, FixedRandom())
    told, other = (Pacer(ThrottleConfig(), clock=time.clock, sleep=time.sleep, backoff=backoff) for _ in range(2))
    assert told.acquire(1, 100) == 0.0
    backoff.signal(3.0)
    time.now += 1.0
    assert other.acquire(1, 100) == pytest.approx(2.0), "a task that was not told waits the rest of the hold"
    assert told.acquire(1, 100) == 0.0, "and the hold is over for everyone"


def test_tenacity_retries_a_throttled_call_with_the_shared_hold() -> None:
    time = FakeTime()
    backoff = ServerBackoff(time.clock, FixedRandom())
    answers: list[Exception | str] = [Throttled("busy", 0.0, "target"), Throttled("busy", 7.0, "target"), "done"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    retrying = Retrying(retry=retry_if_exception_type(Throttled), wait=backoff.tenacity_wait, sleep=time.sleep,
                        stop=stop_after_attempt(5), reraise=True)
    assert retrying(call) == "done"
    assert time.sleeps == pytest.approx([2.4, 7.0])


def test_a_stop_ends_a_long_hold() -> None:
    """run gives its pacers the stop event's wait as their sleep: Ctrl-C must not sit out a 5-minute hold."""
    stop = threading.Event()
    pacer = Pacer(ThrottleConfig(), sleep=stop.wait)
    pacer.hold.signal(300.0)
    waiter = threading.Thread(target=pacer.acquire, args=(1, 100))
    waiter.start()
    stop.set()
    waiter.join(timeout=30)
    assert not waiter.is_alive()


def _in_forked_worker(action: Callable[[], object]) -> int:
    """Run `action` in a forked process, as `run` forks its worker processes; returns its wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_forked_worker_processes_draw_on_one_bucket() -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(messages_per_second=20), clock=time.clock, sleep=time.sleep)
    assert _in_forked_worker(lambda: pacer.acquire(20, 0)) == 0  # the other process spends the second's burst
    assert pacer.acquire(10, 0) == pytest.approx(0.5)


def test_a_hold_one_worker_process_was_told_of_holds_them_all() -> None:
    time = FakeTime()
    pacer = Pacer(ThrottleConfig(), clock=time.clock, sleep=time.sleep)
    assert _in_forked_worker(lambda: pacer.hold.signal(30.0)) == 0
    assert pacer.acquire(1, 100) == pytest.approx(30.0)


def test_a_worker_process_killed_holding_the_lock_does_not_freeze_the_others() -> None:
    cells = SharedCells(1.0)

    def die_holding_the_lock() -> None:
        with cells.locked():
            os.kill(os.getpid(), signal.SIGKILL)

    assert os.WIFSIGNALED(_in_forked_worker(die_holding_the_lock))

    def take_the_lock() -> None:
        with cells.locked() as values:
            values[0] += 1

    taker = threading.Thread(target=take_the_lock, daemon=True)
    taker.start()
    taker.join(timeout=10)
    assert not taker.is_alive(), "the lock died with its holder"
