"""Plans, batches, jobs with leases, checkpoints and the append-only event log.

Leases are claimed with a compare-and-set UPDATE (`WHERE lease_owner IS NOT DISTINCT FROM old`), which
behaves the same on SQLite and PostgreSQL: of two workers racing for a job exactly one update matches.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, insert, select, update

from migrator.errors import LeaseLost
from migrator.store.records import JobRecord, Lease, utcnow
from migrator.store.schema import batch, checkpoint, event, job, mailbox, plan

JOB_PENDING, JOB_RUNNING, JOB_DONE, JOB_FAILED = "pending", "running", "done", "failed"


def worker_identity() -> str:
    """host:pid:random — lets a restarted worker on the same host reclaim jobs of a dead process at once."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead_local_process(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid_text) != os.getpid() and _is_zombie(int(pid_text))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class PlanBatch:
    code: str
    window: str | None
    mailbox_ids: Sequence[int]


def register_plan(conn: Connection, name: str, fingerprint: str, path: str, accepted_edits: bool) -> int:
    """The plan version about to run; returns its id (one row per distinct fingerprint)."""
    found = conn.execute(select(plan.c.id).where(plan.c.name == name, plan.c.fingerprint == fingerprint)).scalar()
    if found is not None:
        return int(found)
    result = conn.execute(insert(plan).values(name=name, fingerprint=fingerprint, path=path,
                                              accepted_edits=int(accepted_edits), registered_at=utcnow()))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def prepare_jobs(conn: Connection, plan_name: str, plan_id: int, stage: str, batches: Sequence[PlanBatch]) -> None:
    """Make one job per (batch, mailbox, stage), and queue finished ones again: every run is a new pass."""
    now = utcnow()
    for item in batches:
        batch_id = conn.execute(select(batch.c.id).where(batch.c.plan_name == plan_name,
                                                         batch.c.code == item.code)).scalar()
        if batch_id is None:
            batch_id = conn.execute(insert(batch).values(plan_name=plan_name, code=item.code,
                                                         window=item.window)).inserted_primary_key[0]  # type: ignore[index]
        existing = set(conn.execute(select(job.c.mailbox_id).where(job.c.batch_id == batch_id,
                                                                   job.c.stage == stage)).scalars())
        for mailbox_id in item.mailbox_ids:
            if mailbox_id not in existing:
                conn.execute(insert(job).values(batch_id=batch_id, mailbox_id=mailbox_id, stage=stage,
                                                state=JOB_PENDING, plan_id=plan_id, attempts=0, updated_at=now))
        conn.execute(update(job).where(job.c.batch_id == batch_id, job.c.stage == stage,
                                       job.c.state.in_([JOB_DONE, JOB_FAILED]),
                                       job.c.mailbox_id.in_(list(item.mailbox_ids)))
                     .values(state=JOB_PENDING, plan_id=plan_id, error=None, error_kind=None, updated_at=now))


def _job_query(plan_name: str, stage: str, codes: Sequence[str]) -> Select[Any]:
    return (select(job, batch.c.code).join(batch, batch.c.id == job.c.batch_id)
            .where(batch.c.plan_name == plan_name, job.c.stage == stage, batch.c.code.in_(list(codes))))


def claim_job(conn: Connection, owner: str, plan_name: str, stage: str, codes: Sequence[str], ttl: int,
              is_dead: Callable[[str], bool] = owner_is_dead_local_process) -> JobRecord | None:
    """Lease the next runnable job: pending, or running under an expired lease or a dead local worker. Batches
    in order, and within one the largest mailboxes (by the inventory) first: a batch then ends on its small
    ones instead of waiting for one large mailbox started last (longest job first keeps a batch's length
    within 4/3 of the best order's)."""
    now = utcnow()
    candidates = conn.execute(_job_query(plan_name, stage, codes).join(mailbox, mailbox.c.id == job.c.mailbox_id)
                              .where(job.c.state.in_([JOB_PENDING, JOB_RUNNING]))
                              .order_by(batch.c.code, mailbox.c.size.desc(), job.c.id))
    for row in candidates:
        if row.state == JOB_RUNNING and row.lease_owner and not (
                (row.lease_expires_at and row.lease_expires_at < now) or is_dead(row.lease_owner)):
            continue
        previous = row.lease_owner
        claimed = conn.execute(
            update(job).where(job.c.id == row.id, job.c.state.in_([JOB_PENDING, JOB_RUNNING]),
                              job.c.lease_owner.is_(None) if previous is None else job.c.lease_owner == previous)
            .values(state=JOB_RUNNING, lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl),
                    attempts=row.attempts + 1, updated_at=now)).rowcount
        if claimed:
            return JobRecord(row.id, row.code, row.mailbox_id, row.stage, JOB_RUNNING, row.attempts + 1)
    return None


# Built once: every ledger write renews the lease, and building the statement cost more than running it.
_RENEW = (update(job).where(job.c.id == bindparam("job_id"), job.c.lease_owner == bindparam("owner"),
                            job.c.state == JOB_RUNNING).values(lease_expires_at=bindparam("expires")))


def renew_lease(conn: Connection, lease: Lease) -> None:
    """Extend the lease inside the caller's transaction; raises LeaseLost if another worker holds the job."""
    renewed = conn.execute(_RENEW, {"job_id": lease.job_id, "owner": lease.owner,
                                    "expires": utcnow() + timedelta(seconds=lease.ttl_seconds)}).rowcount
    if not renewed:
        raise LeaseLost(f"job {lease.job_id} is no longer leased to this worker; another worker took it over")


def finish_job(conn: Connection, lease: Lease, state: str, error_kind: str | None = None,
               error: str | None = None) -> None:
    renew_lease(conn, lease)
    conn.execute(update(job).where(job.c.id == lease.job_id)
                 .values(state=state, error_kind=error_kind, error=error, lease_owner=None,
                         lease_expires_at=None, updated_at=utcnow()))


def release_job(conn: Connection, lease: Lease) -> None:
    """Give a job back unfinished (interrupted run): the next run picks it up at once."""
    conn.execute(update(job).where(job.c.id == lease.job_id, job.c.lease_owner == lease.owner)
                 .values(state=JOB_PENDING, lease_owner=None, lease_expires_at=None, updated_at=utcnow()))


def batch_checkpoints(conn: Connection, plan_name: str, code: str, after: int | None = None) -> set[int]:
    """Checkpoints of every pass of every job in a batch (after checkpoint `after`, if given)."""
    query = (select(checkpoint.c.id).join(job, job.c.id == checkpoint.c.job_id)
             .join(batch, batch.c.id == job.c.batch_id).where(batch.c.plan_name == plan_name, batch.c.code == code))
    if after is not None:
        query = query.where(checkpoint.c.id > after)
    return set(conn.execute(query).scalars())


def busy_jobs(conn: Connection, plan_name: str, codes: Sequence[str]) -> list[tuple[str, int]]:
    """(stage, mailbox id) of jobs in those batches that a live worker holds right now."""
    now = utcnow()
    rows = conn.execute(select(job.c.stage, job.c.mailbox_id, job.c.lease_owner, job.c.lease_expires_at)
                        .join(batch, batch.c.id == job.c.batch_id)
                        .where(batch.c.plan_name == plan_name, batch.c.code.in_(list(codes)),
                               job.c.state == JOB_RUNNING))
    return [(r.stage, r.mailbox_id) for r in rows
            if r.lease_owner and r.lease_expires_at and r.lease_expires_at > now
            and not owner_is_dead_local_process(r.lease_owner)]


def open_checkpoint(conn: Connection, lease: Lease, mailbox_id: int, stage: str) -> int:
    renew_lease(conn, lease)
    result = conn.execute(insert(checkpoint).values(job_id=lease.job_id, mailbox_id=mailbox_id, stage=stage,
                                                    started_at=utcnow(), copied=0, copied_bytes=0,
                                                    flag_updates=0, failed=0))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


# Built once, as _RENEW: a pass adds to its checkpoint with every batch it records.
_ADD = (update(checkpoint).where(checkpoint.c.id == bindparam("checkpoint_id")).values(
    {counter: checkpoint.c[counter] + bindparam(counter) for counter in
     ("copied", "copied_bytes", "flag_updates", "failed", "throttled_seconds")}))


def add_to_checkpoint(conn: Connection, checkpoint_id: int, *, copied: int = 0, copied_bytes: int = 0,
                      flag_updates: int = 0, failed: int = 0, throttled_seconds: float = 0.0) -> None:
    conn.execute(_ADD, {"checkpoint_id": checkpoint_id, "copied": copied, "copied_bytes": copied_bytes,
                        "flag_updates": flag_updates, "failed": failed, "throttled_seconds": throttled_seconds})


def close_checkpoint(conn: Connection, checkpoint_id: int, outcome: str, throttled_seconds: float = 0.0) -> None:
    conn.execute(update(checkpoint).where(checkpoint.c.id == checkpoint_id).values(
        finished_at=utcnow(), outcome=outcome,
        throttled_seconds=checkpoint.c.throttled_seconds + throttled_seconds))


def log_event(conn: Connection, kind: str, message: str, mailbox_id: int | None = None,
              job_id: int | None = None) -> None:
    conn.execute(insert(event).values(at=utcnow(), kind=kind, message=message, mailbox_id=mailbox_id, job_id=job_id))


@dataclass(frozen=True)
class JobStatus:
    plan: str
    batch: str
    stage: str
    mailbox_id: int
    state: str
    attempts: int
    error_kind: str | None
    error: str | None
    updated_at: datetime
    copied: int
    copied_bytes: int
    failed: int
    throttled_seconds: float = 0.0


def job_statuses(conn: Connection, plan_name: str | None = None) -> list[JobStatus]:
    """Every job with the counts summed over all its checkpoints, for `status` and reports."""
    summed = ("copied", "copied_bytes", "failed", "throttled_seconds")
    sums = [func.coalesce(func.sum(checkpoint.c[name]), 0).label(name) for name in summed]
    totals = select(checkpoint.c.job_id, *sums).group_by(checkpoint.c.job_id).subquery()
    query = (select(job, batch.c.plan_name, batch.c.code, totals.c.copied, totals.c.copied_bytes, totals.c.failed,
                    totals.c.throttled_seconds)
             .join(batch, batch.c.id == job.c.batch_id).outerjoin(totals, totals.c.job_id == job.c.id)
             .order_by(batch.c.plan_name, batch.c.code, job.c.stage, job.c.mailbox_id))
    if plan_name:
        query = query.where(batch.c.plan_name == plan_name)
    return [JobStatus(r.plan_name, r.code, r.stage, r.mailbox_id, r.state, r.attempts, r.error_kind, r.error,
                      r.updated_at, r.copied or 0, r.copied_bytes or 0, r.failed or 0, float(r.throttled_seconds or 0))
            for r in conn.execute(query)]


def checkpoint_rows(conn: Connection, plan_name: str | None = None) -> list[dict[str, Any]]:
    """Every pass's checkpoint, oldest first: what `rollback --checkpoint` takes."""
    query = (select(checkpoint.c.id, checkpoint.c.mailbox_id, checkpoint.c.stage, checkpoint.c.started_at,
                    checkpoint.c.finished_at, checkpoint.c.outcome, checkpoint.c.copied, batch.c.plan_name,
                    batch.c.code.label("batch"))
             .join(job, job.c.id == checkpoint.c.job_id).join(batch, batch.c.id == job.c.batch_id)
             .order_by(checkpoint.c.id))
    if plan_name:
        query = query.where(batch.c.plan_name == plan_name)
    return [dict(row._mapping) for row in conn.execute(query)]


def measured_throughput(conn: Connection, minimum_messages: int = 200) -> tuple[float, float] | None:
    """(messages/s, bytes/s) that finished prestage passes achieved together, over the wall-clock time their
    checkpoints cover (overlapping passes counted once, so parallel workers count as they ran); None until
    at least `minimum_messages` were copied."""
    rows = conn.execute(select(checkpoint.c.started_at, checkpoint.c.finished_at, checkpoint.c.copied,
                               checkpoint.c.copied_bytes)
                        .where(checkpoint.c.finished_at.is_not(None), checkpoint.c.copied > 0,
                               checkpoint.c.stage == "prestage")
                        .order_by(checkpoint.c.started_at)).all()
    messages = sum(r.copied for r in rows)
    if messages < minimum_messages:
        return None
    busy, end = 0.0, None
    for r in rows:
        start = r.started_at if end is None or r.started_at > end else end
        if r.finished_at > start:
            busy += (r.finished_at - start).total_seconds()
        end = r.finished_at if end is None or r.finished_at > end else end
    if busy <= 0:
        return None
    return messages / busy, sum(r.copied_bytes for r in rows) / busy
