"""A lock that the threads of this process and of every process forked from it respect alike.

A threading lock orders the threads of one process; a POSIX record lock (fcntl) on a file the processes
share orders the processes, and dies with its holder, so a worker killed while holding it (kill -9, the
OOM killer) cannot freeze the others. The file is anonymous (deleted at once) and may carry shared state
too: throttle.SharedCells maps it into memory.
"""

from __future__ import annotations

import fcntl
import tempfile
import threading
from types import TracebackType


class SharedLock:
    def __init__(self, size: int = 0) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the lock lives
        if size:
            self.file.truncate(size)
        self._threads = threading.Lock()

    def acquire(self, timeout: float = -1) -> bool:
        """Wait for the lock (at most `timeout` seconds for the other threads of this process; another
        process's hold ends with its transaction or its death); False if the wait timed out."""
        if not self._threads.acquire(timeout=timeout):
            return False
        try:
            fcntl.lockf(self.file.fileno(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return True

    def release(self) -> None:
        fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> SharedLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
