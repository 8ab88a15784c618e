"""One pacer per endpoint: token buckets for messages and bytes, shared by every worker on that endpoint.

Clock and sleep are injected so the limits are tested with a fake clock, never with wall-clock asserts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from migrator.config import ThrottleConfig


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
class Pacer:
    config: ThrottleConfig
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = self.clock()
        for name, rate in (("messages", self.config.messages_per_second), ("bytes", self.config.bytes_per_second)):
            if rate:
                # one second of burst: enough to fill a batch, small enough to keep any window honest
                self._buckets[name] = _Bucket(float(rate), float(rate), float(rate), now)

    def acquire(self, messages: int, size: int) -> float:
        """Block until `messages` and `size` bytes may be sent; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            delay = max((bucket.wait_time(messages if name == "messages" else size, now)
                         for name, bucket in self._buckets.items()), default=0.0)
        if delay > 0:
            self.sleep(delay)
        return delay


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
