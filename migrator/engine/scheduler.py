"""Runs a plan's batches: registers the plan version, queues one job per mailbox, and lets workers lease them.

Workers are threads, in this process or spread over forked worker processes (engine/processes.py); the
same lease protocol would let workers on other machines share the queue through PostgreSQL. A job that
fails does not stop the batch: it is recorded with its reason, and the run's exit code says that something
needs attention.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from migrator.connectors.base import Endpoint
from migrator.engine.checkpoint import Interrupted, Journal
from migrator.engine.parallel import SessionBudget
from migrator.engine.processes import WorkerOutcome, run_forked, split_workers
from migrator.engine.worker import MailboxPass, RunContext, run_mailbox_pass
from migrator.errors import EndpointError, LeaseLost, MailboxFailed, MigratorError, SafetyStop, StateError, UserError
from migrator.planning.planner import Plan
from migrator.store import inventory, work
from migrator.store.db import translate_db_errors
from migrator.store.records import JobRecord, Lease, MailboxRecord

LEASE_SECONDS = 300


@dataclass
class RunSummary:
    jobs_done: int = 0
    jobs_failed: int = 0
    interrupted: bool = False
    workers_lost: int = 0  # worker processes that died (the OOM killer, kill -9) before reporting
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __getstate__(self) -> dict[str, Any]:  # a worker process sends its summary back; its lock stays
        return {name: value for name, value in vars(self).items() if name != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state, _lock=threading.Lock())

    def add(self, ok: bool, problems: Sequence[str]) -> None:
        with self._lock:
            if ok:
                self.jobs_done += 1
            else:
                self.jobs_failed += 1
            self.problems.extend(problems)


def plan_mailboxes(engine: Engine, plan: Plan, codes: Sequence[str]) -> dict[str, MailboxRecord]:
    """The discovered mailboxes of the selected batches; UserError names any the store does not know."""
    wanted = [m.source for code in codes for m in plan.batch(code).mailboxes]
    with translate_db_errors(), engine.connect() as conn:
        known = inventory.mailboxes_by_source(conn, wanted)
    missing = [source for source in wanted if source not in known]
    if missing:
        raise UserError(f"plan {plan.name}: mailbox {missing[0]} is not in the inventory "
                        f"({len(missing)} missing); run `migrator discover` first")
    return known


def queue_plan(engine: Engine, plan: Plan, path: Path, fingerprint: str, edited: bool, stage: str,
               codes: Sequence[str]) -> None:
    records = plan_mailboxes(engine, plan, codes)
    batches = [work.PlanBatch(code, plan.batch(code).window,
                              [records[m.source].id for m in plan.batch(code).mailboxes]) for code in codes]
    with translate_db_errors(), engine.begin() as conn:
        plan_id = work.register_plan(conn, plan.name, fingerprint, str(path), edited)
        work.prepare_jobs(conn, plan.name, plan_id, stage, batches)
        work.log_event(conn, "run", f"plan {plan.name} ({fingerprint}) stage {stage} batches {', '.join(codes)}")


@dataclass(frozen=True)
class WorkerProcesses:
    """Spread a run's workers over up to `count` processes, each making its own endpoints with `endpoints`."""

    count: int
    endpoints: Callable[[], tuple[Endpoint, Endpoint]]


def run_queue(ctx: RunContext, plan: Plan, stage: str, codes: Sequence[str], workers: int,
              mailbox_pass: MailboxPass = run_mailbox_pass, processes: WorkerProcesses | None = None) -> RunSummary:
    """Lease and run jobs with `workers` threads (over `processes`, if given) until none is left; returns what
    happened. `mailbox_pass` does one job's work (a copy pass by default; rollback passes its own) and returns
    folder-level problems. Raises the UserError or StateError that stopped the run."""
    with translate_db_errors(), ctx.engine.connect() as conn:
        records = {r.id: r for r in inventory.list_mailboxes(conn)}

    def work(context: RunContext, threads: int) -> RunSummary:
        pairs = max(threads, context.options.connections * threads // workers)  # this process's share
        return _run_threads(replace(context, sessions=SessionBudget(pairs)), plan, stage, codes, records, threads,
                            mailbox_pass)

    shares = split_workers(workers, processes.count) if processes else [workers]
    if processes is None or len(shares) == 1:
        return work(ctx, workers)
    return _merged(ctx, run_forked(ctx, shares, processes.endpoints, work))


def _run_threads(ctx: RunContext, plan: Plan, stage: str, codes: Sequence[str], records: dict[int, MailboxRecord],
                 threads: int, mailbox_pass: MailboxPass) -> RunSummary:
    summary = RunSummary()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="worker") as pool:
        futures = [pool.submit(_worker_loop, ctx, plan, stage, codes, records, summary, mailbox_pass)
                   for _ in range(threads)]
        for future in futures:
            future.result()
    summary.interrupted = ctx.stop.is_set()
    return summary


def _merged(ctx: RunContext, outcomes: Sequence[WorkerOutcome[RunSummary]]) -> RunSummary:
    summary = RunSummary(interrupted=ctx.stop.is_set())
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
        if outcome.result is not None:
            summary.jobs_done += outcome.result.jobs_done
            summary.jobs_failed += outcome.result.jobs_failed
            summary.interrupted |= outcome.result.interrupted
            summary.problems.extend(outcome.result.problems)
        if outcome.death is not None:
            summary.workers_lost += 1
            summary.problems.append(f"a worker process {outcome.death}; the job it held is taken over by "
                                    f"another worker or resumes on the next run")
    return summary


def _worker_loop(ctx: RunContext, plan: Plan, stage: str, codes: Sequence[str],
                 records: dict[int, MailboxRecord], summary: RunSummary, mailbox_pass: MailboxPass) -> None:
    owner = work.worker_identity()
    while not ctx.stop.is_set():
        with translate_db_errors(), ctx.engine.begin() as conn:  # one commit: the job and its pass's checkpoint
            job = work.claim_job(conn, owner, plan.name, stage, codes, LEASE_SECONDS)
            if job is None:
                return
            lease = Lease(job.id, owner, LEASE_SECONDS)
            checkpoint_id = work.open_checkpoint(conn, lease, job.mailbox_id, stage)
        _run_job(ctx, job, lease, checkpoint_id, records[job.mailbox_id], summary, mailbox_pass)


def _run_job(ctx: RunContext, job: JobRecord, lease: Lease, checkpoint_id: int, record: MailboxRecord,
             summary: RunSummary, mailbox_pass: MailboxPass) -> None:
    journal = Journal(ctx.engine, lease, record.id, checkpoint_id, ctx.stop, ctx.crash)
    state, kind, error, problems = work.JOB_DONE, None, None, []
    try:
        with ctx.sessions.mailbox():
            problems = [f"{record.source}: {p}" for p in mailbox_pass(ctx, record, journal)]
    except Interrupted:
        with translate_db_errors(), ctx.engine.begin() as conn:
            journal.write_pending(conn)
            work.close_checkpoint(conn, checkpoint_id, "interrupted", journal.take_throttled())
            work.release_job(conn, lease)
        return
    except LeaseLost as exc:
        summary.add(False, [f"{record.source}: {exc}"])
        return
    except (UserError, StateError):
        raise  # bad input or an unusable store: the whole run stops; the lease lets the next run resume
    except (MailboxFailed, EndpointError, SafetyStop, MigratorError) as exc:
        state, error = work.JOB_FAILED, str(exc)
        kind = exc.reason if isinstance(exc, MailboxFailed) else type(exc).__name__.lower()
        problems = [f"{record.source}: {exc}"]
    if problems and state == work.JOB_DONE:
        state, kind, error = work.JOB_FAILED, "folders", "; ".join(problems)
    with translate_db_errors(), ctx.engine.begin() as conn:
        journal.write_pending(conn)
        work.close_checkpoint(conn, checkpoint_id, state, journal.take_throttled())
        work.finish_job(conn, lease, state, kind, error)
        if error:
            work.log_event(conn, "job-failed", error, record.id, job.id)
    summary.add(state == work.JOB_DONE, problems)
