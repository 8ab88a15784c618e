"""Throughput measured by earlier passes, which the planner prefers over configured rates (both backends)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, insert

from migrator.config import ThrottleConfig
from migrator.model import MailboxEntry
from migrator.planning.planner import estimate_rate
from migrator.store import inventory, work
from migrator.store.records import Lease
from migrator.store.schema import checkpoint


def test_measured_throughput_counts_overlapping_passes_once(store: Engine) -> None:
    with store.begin() as conn:
        mailbox_id = inventory.save_mailbox(conn, MailboxEntry("a@old.example", "a@new.example"), [])
        plan_id = work.register_plan(conn, "p", "sha256:x", "plans/p.yaml", False)
        work.prepare_jobs(conn, "p", plan_id, "prestage", [work.PlanBatch("B01", None, [mailbox_id])])
        job = work.claim_job(conn, "me:1:x", "p", "prestage", ["B01"], 60)
        assert job is not None
        assert work.measured_throughput(conn) is None
        t0 = datetime(2026, 11, 28, 10, 0, 0)
        # two passes side by side for 100 s, then one alone for 50 s: 150 s of wall time in all
        for start, seconds, copied in ((0, 100, 400), (0, 100, 400), (100, 50, 300)):
            conn.execute(insert(checkpoint).values(
                job_id=job.id, mailbox_id=mailbox_id, stage="prestage", started_at=t0 + timedelta(seconds=start),
                finished_at=t0 + timedelta(seconds=start + seconds), outcome="done", copied=copied,
                copied_bytes=copied * 1000, flag_updates=0, failed=0))
        work.finish_job(conn, Lease(job.id, "me:1:x", 60), work.JOB_DONE)
        measured = work.measured_throughput(conn)
    assert measured is not None
    assert abs(measured[0] - 1100 / 150) < 1e-6 and abs(measured[1] - 1_100_000 / 150) < 1e-3


def test_estimates_prefer_measured_rates_but_never_exceed_a_configured_limit() -> None:
    assert estimate_rate(ThrottleConfig(), (50.0, 5e6)) == (50.0, 5_000_000, "measured by earlier runs")
    assert estimate_rate(ThrottleConfig(4, 20.0, None), (50.0, 5e6))[:2] == (20.0, 5_000_000)
    assert estimate_rate(ThrottleConfig(4, 20.0, None))[2] == "configured"
    assert estimate_rate(ThrottleConfig())[2] == "default"
