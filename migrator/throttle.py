"""One pacer per endpoint: token buckets for messages and bytes, and a hold on the server's own throttling
signals, shared by every worker on that endpoint.

Clock and sleep are injected so the limits are tested with a fake clock, never with wall-clock asserts.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field

from tenacity import RetryCallState

from migrator.config import ThrottleConfig
from migrator.errors import Throttled

BACKOFF_FIRST = 2.0  # seconds, after a throttling signal that suggests no time of its own
BACKOFF_CAP = 300.0
BACKOFF_CALM = 600.0  # seconds without a signal after which the next one starts the ladder again


@dataclass
class _Bucket:
    rate: float
    capacity: float
    tokens: float
    stamp: float

    def wait_time(self, amount: float, now: float) -> float:
        """Take `amount` tokens (going into debt if needed) and say how long to wait to repay the debt."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)


@dataclass
class ServerBackoff:
    """A hold on one endpoint after the server says to slow down (IMAP `[THROTTLED]`/`[UNAVAILABLE]`, a refused
    connection, Office 365's "Suggested Backoff Time: N milliseconds"): every task on the endpoint waits it
    out, not just the one that was told, since the server counts all of them. Adaptive: the server's own
    figure where it gives one, else 2 s doubling with each signal up to 5 minutes (with up to 20 % jitter so
    that workers do not return in step), back to the first rung after 10 calm minutes."""

    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _until: float = 0.0
    _streak: int = 0
    _last_signal: float | None = None

    def signal(self, suggested: float | None) -> float:
        """The server throttled a task: hold the endpoint; returns how long the hold lasts from now."""
        with self._lock:
            now = self.clock()
            if self._last_signal is not None and now - self._last_signal > BACKOFF_CALM:
                self._streak = 0
            self._last_signal = now
            self._streak += 1
            ladder = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self._streak - 1)) * (1 + 0.2 * self.rng.random())
            delay = suggested if suggested is not None and suggested > 0 else ladder
            self._until = max(self._until, now + delay)
            return self._until - now

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - self.clock())

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
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def __post_init__(self, backoff: ServerBackoff | None) -> None:
        now = self.clock()
        self.hold = backoff or ServerBackoff(self.clock)
        for name, rate in (("messages", self.config.messages_per_second), ("bytes", self.config.bytes_per_second)):
            if rate:
                # one second of burst: enough to fill a batch, small enough to keep any window honest
                self._buckets[name] = _Bucket(float(rate), float(rate), float(rate), now)

    def acquire(self, messages: int, size: int) -> float:
        """Block until the endpoint's hold is over and `messages` and `size` bytes may be sent; returns the
        seconds waited."""
        held = self.hold.remaining()
        if held > 0:
            self.sleep(held)
        with self._lock:
            now = self.clock()
            delay = max((bucket.wait_time(messages if name == "messages" else size, now)
                         for name, bucket in self._buckets.items()), default=0.0)
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
