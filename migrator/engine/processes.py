"""A run's workers spread over forked processes, so that a copy pass can use more than one core.

Why: a pass spends most of its CPU in Python (ledger rows, FETCH parsing, APPEND framing), and one interpreter
runs Python on one core at a time. The processes share what must be shared: the job queue (leases, exactly as
with workers on other machines), the store (each process opens its own connections), the pacers (their state
lives in shared memory, see throttle.SharedCells) and the progress a person sees (relayed to this process).

A worker process dies with the process that started it (PR_SET_PDEATHSIG), so a kill -9 of `migrator run`
never leaves copies running behind it. A worker process that dies alone leaves its job to the others: a dead
local worker's lease is reclaimed at once, by a sibling still claiming or by the next run.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

from migrator.accounting import Progress
from migrator.connectors.base import Endpoint
from migrator.engine.worker import RunContext
from migrator.errors import MigratorError, StateError, UserError

T = TypeVar("T")
PR_SET_PDEATHSIG = 1
STOP_CHECK_SECONDS = 0.5


def split_workers(workers: int, processes: int) -> list[int]:
    """Threads per process: `workers` in all, as evenly as they go."""
    count = max(1, min(workers, processes))
    return [workers // count + (index < workers % count) for index in range(count)]


@dataclass
class WorkerOutcome(Generic[T]):
    """What one worker process came back with: its result, the error that stopped it, or how it died."""

    result: T | None = None
    error: MigratorError | None = None
    death: str | None = None


def run_forked(ctx: RunContext, threads: Sequence[int], endpoints: Callable[[], tuple[Endpoint, Endpoint]],
               work: Callable[[RunContext, int], T]) -> list[WorkerOutcome[T]]:
    """Run `work(ctx, n)` in one forked process per entry of `threads`, each with its own endpoints (made by
    `endpoints`: a connection pool must not cross a fork) and a progress relayed to `ctx.progress`; returns
    their outcomes. A stop request is passed on; an error in one (bad input, an unusable store) stops all."""
    forking = multiprocessing.get_context("fork")
    ctx.engine.dispose()  # no pooled store connection crosses the fork
    parent = os.getpid()
    children: list[tuple[Any, Connection]] = []
    for count in threads:
        reader, writer = forking.Pipe(duplex=False)
        process = forking.Process(target=_child, args=(ctx, count, endpoints, work, writer, parent), daemon=True)
        process.start()
        writer.close()
        children.append((process, reader))
    outcomes: dict[int, WorkerOutcome[T]] = _collect(ctx, children)
    for process, _reader in children:
        process.join()
        outcome = outcomes[process.pid]
        if outcome.result is None and outcome.error is None:
            outcome.death = _death(process.exitcode)
    return list(outcomes.values())


def _collect(ctx: RunContext, children: Sequence[tuple[Any, Connection]]) -> dict[int, WorkerOutcome[T]]:
    outcomes: dict[int, WorkerOutcome[T]] = {process.pid: WorkerOutcome() for process, _reader in children}
    listening = {reader: process.pid for process, reader in children}
    passed_on = False
    while listening:
        if ctx.stop.is_set() and not passed_on:
            passed_on = True
            for process, _reader in children:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
        for reader in wait(list(listening), timeout=STOP_CHECK_SECONDS):
            assert isinstance(reader, Connection)
            try:
                kind, payload = reader.recv()
            except EOFError:  # the process ended (or died): its write end closed
                del listening[reader]
                continue
            outcome = outcomes[listening[reader]]
            if kind == "progress":
                ctx.progress.add_counters(payload)
            elif kind == "result":
                outcome.result = payload
            else:
                outcome.error = payload
                ctx.stop.set()
    return outcomes


def _child(ctx: RunContext, threads: int, endpoints: Callable[[], tuple[Endpoint, Endpoint]],
           work: Callable[[RunContext, int], Any], conn: Connection, parent: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    for signum in (signal.SIGINT, signal.SIGTERM):  # a stop (from the terminal, or passed on): finish the batch
        signal.signal(signum, lambda _signum, _frame: ctx.stop.set())
    ctx.engine.dispose(close=False)
    lock = threading.Lock()

    def send(kind: str, payload: object) -> None:
        with lock:
            conn.send((kind, payload))

    source, target = endpoints()
    progress = Progress(quiet=True, relay=lambda counts: send("progress", counts))
    try:
        send("result", work(replace(ctx, source=source, target=target, progress=progress), threads))
    except (UserError, StateError) as exc:  # the errors that stop a whole run (see scheduler._run_job)
        send("error", exc)
    conn.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode} before reporting"

