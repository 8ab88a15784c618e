"""Fetch the next batch from the source while the current one is appended to the target.

The target's APPEND path is the bottleneck (TESTING.md), so the source's round trips are hidden behind
it. One thread per folder pass owns the source session while it runs (imapclient sessions are not
shared between threads); the queue holds one batch, so at most three batches are in memory: one being
fetched, one waiting, one being appended. Errors in the fetching thread are raised in the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from migrator.connectors.base import Mailbox
from migrator.model import FolderInfo, MessageRef, RawMessage

_DONE = object()


class Prefetcher:
    def __init__(self, src: Mailbox, folder: FolderInfo, chunks: Sequence[Sequence[MessageRef]],
                 before_fetch: Callable[[Sequence[MessageRef]], None], native: str | None = None) -> None:
        self._src, self._folder, self._chunks, self._before_fetch = src, folder, chunks, before_fetch
        self._native = native
        self._queue: queue.Queue[object] = queue.Queue(maxsize=1)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)

    def _put(self, item: object) -> bool:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                if self._cancel.is_set():
                    return
                self._before_fetch(chunk)
                batch = list(self._src.fetch(self._folder, chunk, native=self._native))
                for message in batch:
                    _ = message.digest  # hashed here, while the caller appends the previous batch
                if not self._put(batch):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the caller, who decides; nothing is swallowed
            self._put(exc)

    def __enter__(self) -> Iterator[list[RawMessage]]:
        self._thread.start()
        return self._batches()

    def _batches(self) -> Iterator[list[RawMessage]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._cancel.set()
        self._thread.join()
