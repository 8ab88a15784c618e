"""Counters per run and the progress a person sees: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Counters:
    messages: int = 0
    bytes: int = 0
    flag_updates: int = 0
    failed: int = 0
    still_failed: int = 0
    deleted: int = 0
    throttled_seconds: float = 0.0


@dataclass
class Progress:
    """Thread-safe running totals; prints a line at most every `interval` seconds. A worker process counts
    with a `relay` that hands every addition to the process that started it, which shows one total."""

    total_messages: int = 0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    interval: float = 2.0
    quiet: bool = False
    counters: Counters = field(default_factory=Counters)
    relay: Callable[[Counters], None] | None = None
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: float = field(default_factory=time.monotonic)

    def add(self, *, messages: int = 0, size: int = 0, flag_updates: int = 0, failed: int = 0,
            still_failed: int = 0, deleted: int = 0, throttled: float = 0.0) -> None:
        with self._lock:
            c = self.counters
            c.messages += messages
            c.bytes += size
            c.flag_updates += flag_updates
            c.failed += failed
            c.still_failed += still_failed
            c.deleted += deleted
            c.throttled_seconds += throttled
            if self.relay is not None:
                self.relay(Counters(messages, size, flag_updates, failed, still_failed, deleted, throttled))
            now = time.monotonic()
            if not self.quiet and now - self._last >= self.interval:
                self._last = now
                self.stream.write(self.line() + ("\r" if self.stream.isatty() else "\n"))
                self.stream.flush()

    def add_counters(self, more: Counters) -> None:
        """What a worker process relayed."""
        self.add(messages=more.messages, size=more.bytes, flag_updates=more.flag_updates, failed=more.failed,
                 still_failed=more.still_failed, deleted=more.deleted, throttled=more.throttled_seconds)

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        c = self.counters
        total = f"/{self.total_messages}" if self.total_messages else ""
        return (f"copied {c.messages}{total} messages, {c.bytes / 1e6:.1f} MB, {c.flag_updates} flag updates, "
                f"{c.failed} failed, {c.messages / self.elapsed():.0f} msg/s")

    def finish(self) -> None:
        if not self.quiet and self.stream.isatty():
            self.stream.write("\n")
