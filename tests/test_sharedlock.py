"""migrator/sharedlock.py across real forked processes: what the kernel's record locks do with threads."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable

from migrator.sharedlock import SharedLock

HOLD = 0.6  # seconds each first holder keeps its lock: the other process's threads are waiting by then


def _threads_then_exit(*targets: Callable[[], None]) -> None:
    """Run `targets` in threads of this (forked) process; exit 0 if all returned, 1 if any raised."""
    failures: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported through the exit status
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    raise SystemExit(1 if failures else 0)


def _hold(lock: SharedLock) -> Callable[[], None]:
    def hold() -> None:
        with lock:
            time.sleep(HOLD)
    return hold


def _take_after(lock: SharedLock, delay: float) -> Callable[[], None]:
    def take() -> None:
        time.sleep(delay)
        with lock:
            pass
    return take


def test_threads_of_two_processes_waiting_across_two_locks_are_no_deadlock() -> None:
    """A thread of A holds the gate while another thread of A waits for the pacer that B holds; a thread
    of B then asks for the gate. The kernel sees processes, not threads: A waits for B, B would wait for A,
    and it refuses B's wait (EDEADLK), although A's holder releases the gate without needing anything."""
    gate, pacer = SharedLock(), SharedLock()
    fork = multiprocessing.get_context("fork")
    a = fork.Process(target=_threads_then_exit, args=(_hold(gate), _take_after(pacer, 0.1)))
    b = fork.Process(target=_threads_then_exit, args=(_hold(pacer), _take_after(gate, 0.3)))
    a.start()
    b.start()
    a.join(timeout=30)
    b.join(timeout=30)
    assert (a.exitcode, b.exitcode) == (0, 0)


def test_the_lock_excludes_threads_and_processes_alike() -> None:
    """Two threads in each of three processes enter 50 times each; whoever is inside marks a counter in
    shared memory, and finding it marked is a failure (the process exits 1)."""
    fork = multiprocessing.get_context("fork")
    lock, inside = SharedLock(), fork.Value("i", 0, lock=False)

    def enter() -> None:
        for _ in range(50):
            with lock:
                if inside.value:
                    raise AssertionError("somebody else is inside")
                inside.value = 1
                time.sleep(0.0005)
                inside.value = 0

    processes = [fork.Process(target=_threads_then_exit, args=(enter, enter)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
