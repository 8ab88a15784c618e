"""One pacer per endpoint: token buckets for messages and bytes, and a hold on the server's own throttling
signals, shared by every worker on that endpoint, threads and forked worker processes alike.

Clock and sleep are injected so the limits are tested with a fake clock, never with wall-clock asserts.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field

from tenacity import RetryCallState

from migrator.config import ThrottleConfig
from migrator.errors import Throttled
from migrator.sharedlock import SharedLock

BACKOFF_FIRST = 2.0  # seconds, after a throttling signal that suggests no time of its own
BACKOFF_CAP = 300.0
BACKOFF_CALM = 600.0  # seconds without a signal after which the next one starts the ladder again


Cells = ctypes.Array[ctypes.c_double]


class SharedCells:
    """A few numbers that every process forked from this one reads and writes (an endpoint's limits count the
    work of all of them), under a SharedLock whose file holds them. Times in the cells are time.monotonic()
    readings, one clock for every process on the host."""

    def __init__(self, *initial: float) -> None:
        size = 8 * max(1, len(initial))  # mmap maps no empty file
        self._lock = SharedLock(size)
        self._map = mmap.mmap(self._lock.file.fileno(), size)  # MAP_SHARED: forks see the same pages
        self._cells = (ctypes.c_double * (size // 8)).from_buffer(self._map)
        for index, value in enumerate(initial):
            self._cells[index] = value

    @contextmanager
    def locked(self) -> Iterator[Cells]:
        with self._lock:
            yield self._cells


@dataclass(frozen=True)
class _Bucket:
    """Refills at `rate` per second up to one second's worth: enough to fill a batch, small enough to keep any
    window honest. Its tokens live in cells[slot], the time they were counted in cells[slot + 1]."""

    rate: float
    slot: int

    def wait_time(self, cells: Cells, amount: float, now: float) -> float:
        """Take `amount` tokens (going into debt if needed) and say how long to wait to repay the debt."""
        tokens = min(self.rate, cells[self.slot] + (now - cells[self.slot + 1]) * self.rate) - amount
        cells[self.slot], cells[self.slot + 1] = tokens, now
        return max(0.0, -tokens / self.rate)


_UNTIL, _STREAK, _LAST_SIGNAL = range(3)


@dataclass
class ServerBackoff:
    """A hold on one endpoint after the server says to slow down (IMAP `[THROTTLED]`/`[UNAVAILABLE]`, a refused
    connection, Office 365's "Suggested Backoff Time: N milliseconds"): every task on the endpoint waits it
    out, not just the one that was told, since the server counts all of them. Adaptive: the server's own
    figure where it gives one, else 2 s doubling with each signal up to 5 minutes (with up to 20 % jitter so
    that workers do not return in step), back to the first rung after 10 calm minutes."""

    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _state: SharedCells = field(default_factory=lambda: SharedCells(0.0, 0.0, math.nan))

    def signal(self, suggested: float | None) -> float:
        """The server throttled a task: hold the endpoint; returns how long the hold lasts from now."""
        with self._state.locked() as cells:
            now = self.clock()
            if not math.isnan(cells[_LAST_SIGNAL]) and now - cells[_LAST_SIGNAL] > BACKOFF_CALM:
                cells[_STREAK] = 0
            cells[_LAST_SIGNAL] = now
            cells[_STREAK] += 1
            ladder = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (cells[_STREAK] - 1)) * (1 + 0.2 * self.rng.random())
            delay = suggested if suggested is not None and suggested > 0 else ladder
            cells[_UNTIL] = max(cells[_UNTIL], now + delay)
            return float(cells[_UNTIL] - now)

    def remaining(self) -> float:
        with self._state.locked() as cells:
            return max(0.0, cells[_UNTIL] - self.clock())

    def tenacity_wait(self, state: RetryCallState) -> float:
        """A tenacity `wait`: the endpoint's hold after a Throttled attempt (the suggested time it carries)."""
        error = state.outcome.exception() if state.outcome is not None else None
        return self.signal(error.retry_after if isinstance(error, Throttled) else None)


@dataclass
class Pacer:
    config: ThrottleConfig
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] = time.sleep  # e.g. a stop event's wait, which ends early
    backoff: InitVar[ServerBackoff | None] = None  # shared with other pacers (tests); else one of its own
    hold: ServerBackoff = field(init=False)
    _buckets: dict[str, _Bucket] = field(init=False)
    _state: SharedCells = field(init=False)

    def __post_init__(self, backoff: ServerBackoff | None) -> None:
        now = self.clock()
        self.hold = backoff or ServerBackoff(self.clock)
        rates = {name: float(rate) for name, rate in (("messages", self.config.messages_per_second),
                                                      ("bytes", self.config.bytes_per_second)) if rate}
        self._buckets = {name: _Bucket(rate, 2 * index) for index, (name, rate) in enumerate(rates.items())}
        self._state = SharedCells(*(value for rate in rates.values() for value in (rate, now)))

    def batch_limits(self, messages: int, size: int) -> tuple[int, int]:
        """The largest batch (count, bytes) within `messages` and `size` that the buckets pass without a burst:
        one second's worth of each configured rate, a bucket's capacity. A larger batch would go in one piece
        after a long wait, so any window shorter than its repayment would see it all (at 20 messages/s, a batch
        of 1,000 is 50 seconds' worth in one go). A message larger than the byte bound still travels alone."""
        if "messages" in self._buckets:
            messages = min(messages, max(1, int(self._buckets["messages"].rate)))
        if "bytes" in self._buckets:
            size = min(size, max(1, int(self._buckets["bytes"].rate)))
        return messages, size

    def acquire(self, messages: int, size: int) -> float:
        """Block until the endpoint's hold is over and `messages` and `size` bytes may be sent; returns the
        seconds waited."""
        held = self.hold.remaining()
        if held > 0:
            self.sleep(held)
        delay = 0.0
        if self._buckets:
            with self._state.locked() as cells:
                now = self.clock()
                delay = max(bucket.wait_time(cells, messages if name == "messages" else size, now)
                            for name, bucket in self._buckets.items())
        if delay > 0:
            self.sleep(delay)
        return held + delay


@dataclass
class WindowBudget:
    """At most `limit` units in any `window` seconds, counted the way a service that publishes "N per window"
    counts (Outlook: 10,000 requests per 10 minutes, 150 MB of uploads per 5 minutes, per app and mailbox):
    a sliding window over what was sent. A token bucket with the window's worth as burst would let twice the
    limit through one window."""

    limit: float
    window: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _spent: deque[tuple[float, float]] = field(default_factory=deque)
    _total: float = 0.0

    def acquire(self, amount: float) -> float:
        """Block until `amount` fits in the window (one larger than the limit waits for an empty window);
        returns the seconds waited."""
        if amount <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            while self._spent and self._spent[0][0] <= now - self.window:
                self._total -= self._spent.popleft()[1]
            start, freed = now, 0.0
            for stamp, spent in self._spent:
                if self._total - freed + amount <= self.limit:
                    break
                freed += spent
                start = stamp + self.window
            start = max(start, self._spent[-1][0] if self._spent else start)
            self._spent.append((start, amount))
            self._total += amount
        if start > now:
            self.sleep(start - now)
        return max(0.0, start - now)
