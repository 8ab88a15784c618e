"""A lock that the threads of this process and of every process forked from it respect alike.

A threading lock orders the threads of one process; a POSIX record lock (fcntl) on a file the processes
share orders the processes, and dies with its holder, so a worker killed while holding it (kill -9, the
OOM killer) cannot freeze the others. The file is anonymous (deleted at once) and may carry shared state
too: throttle.SharedCells maps it into memory.

Record locks belong to a process, not a thread, and the kernel refuses a wait that would close a cycle
between processes (EDEADLK) without knowing which threads wait: with two such locks (the store's writer
gate and an endpoint's pacer), a thread of worker process A holding the gate, another thread of A waiting
for the pacer that B holds, and a thread of B then asking for the gate, B's request is refused although A
will release the gate without needing anything from B. Seen in a bench run with --processes 2, where it
ended a worker process. No code path holds one of these locks while asking for another, so a refusal is
always such a false cycle, and the wait is asked again.
"""

from __future__ import annotations

import errno
import fcntl
import tempfile
import threading
import time
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
            self._lock_file()
        except BaseException:
            self._threads.release()
            raise
        return True

    def _lock_file(self) -> None:
        pause = 0.001
        while True:
            try:
                fcntl.lockf(self.file.fileno(), fcntl.LOCK_EX)
                return
            except OSError as exc:
                if exc.errno != errno.EDEADLK:
                    raise
            time.sleep(pause)  # the other process's holder is running: it releases soon
            pause = min(2 * pause, 0.05)

    def release(self) -> None:
        fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> SharedLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
