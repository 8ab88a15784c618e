"""One pacer per endpoint: token buckets for messages and bytes, shared by every worker on that endpoint.

Clock and sleep are injected so the limits are tested with a fake clock, never with wall-clock asserts.
"""

from __future__ import annotations

import threading
import time
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
