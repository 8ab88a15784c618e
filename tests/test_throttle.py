"""The pacer's token buckets, measured on a fake clock: never wall-clock asserts."""

from __future__ import annotations

import pytest

from migrator.config import ThrottleConfig
from migrator.throttle import Pacer, WindowBudget

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
