"""Benchmark of the ledger's hot path: the intent row and the done row every copied message costs.

Writes N intents and their done rows in transactions of one copy chunk each (as a pass does) through
`ledger.record_intents` / `ledger.record_done`, and, in the same run on the same kind of store, the bare
minimum a driver needs for the same rows (one executemany INSERT, one executemany UPDATE per chunk):
prints CPU seconds of both and their ratio.

    .venv/bin/python scripts/bench_ledger.py                     # SQLite in a temporary directory
    .venv/bin/python scripts/bench_ledger.py --url postgresql+psycopg://postgres@127.0.0.1:5432/DB
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy import Engine, text

from migrator.engine.worker import CHUNK_MESSAGES
from migrator.model import MailboxEntry
from migrator.store import inventory, ledger, work
from migrator.store.db import create_store_engine, upgrade
from migrator.store.records import Lease, PendingCopy, utcnow

OWNER = "bench:1:ledger"


def leased_checkpoint(engine: Engine) -> tuple[Lease, int, int]:
    """A mailbox with a running job of a fresh plan, and an open checkpoint of it."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        mailbox_id = inventory.save_mailbox(conn, MailboxEntry(f"{name}@old.example", f"{name}@new.example"), [])
        plan_id = work.register_plan(conn, name, "sha256:bench", "plans/bench.yaml", False)
        work.prepare_jobs(conn, name, plan_id, "prestage", [work.PlanBatch("B01", None, [mailbox_id])])
        job = work.claim_job(conn, OWNER, name, "prestage", ["B01"], 600)
        assert job is not None
        lease = Lease(job.id, OWNER, 600)
        return lease, mailbox_id, work.open_checkpoint(conn, lease, mailbox_id, "prestage")


def copies(count: int, folder: str) -> list[PendingCopy]:
    return [PendingCopy(folder, "1", str(uid), f"{uid:064x}", 4500, frozenset({"\\Seen"}),
                        "2026-11-28T10:00:00+00:00", folder, "7", None) for uid in range(1, count + 1)]


def through_ledger(engine: Engine, chunks: Sequence[Sequence[PendingCopy]]) -> None:
    lease, mailbox_id, checkpoint_id = leased_checkpoint(engine)
    for chunk in chunks:
        with engine.begin() as conn:
            ids = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, chunk)
        with engine.begin() as conn:
            ledger.record_done(conn, lease, {row_id: str(n) for n, row_id in enumerate(ids)})


def bare_driver(engine: Engine, chunks: Sequence[Sequence[PendingCopy]]) -> None:
    """The same rows with nothing around them: no lease check, no RETURNING, ids known in advance."""
    _lease, mailbox_id, checkpoint_id = leased_checkpoint(engine)
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    stamp = str(utcnow())
    with engine.begin() as conn:
        next_id = int(conn.execute(text("SELECT COALESCE(MAX(id), 0) + 1 FROM ledger")).scalar_one())
    for chunk in chunks:
        ids = range(next_id, next_id + len(chunk))
        next_id += len(chunk)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO ledger (id, mailbox_id, source_folder, source_key, source_id, digest, size, flags, "
                "internal_date, target_folder, target_key, state, checkpoint_id, created_at) VALUES "
                f"({', '.join([mark] * 14)})",
                [(row_id, mailbox_id, c.source_folder, c.source_key, c.source_id, c.digest, c.size, "\\Seen",
                  c.internal_date, c.target_folder, c.target_key, "intent", checkpoint_id, stamp)
                 for row_id, c in zip(ids, chunk, strict=True)])
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE ledger SET state = {mark}, target_id = {mark}, done_at = {mark} "
                                 f"WHERE id = {mark}", [("done", str(row_id), stamp, row_id) for row_id in ids])
    if engine.dialect.name == "postgresql":  # ids given by hand leave the serial behind them: move it on
        with engine.begin() as conn:
            conn.execute(text("SELECT setval(pg_get_serial_sequence('ledger', 'id'), (SELECT MAX(id) FROM ledger))"))


def cpu_seconds(action: Callable[[Engine, Sequence[Sequence[PendingCopy]]], None], engine: Engine,
                chunks: Sequence[Sequence[PendingCopy]]) -> float:
    started = time.process_time()
    action(engine, chunks)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="state store URL (default: SQLite in a temporary directory)")
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{tempfile.mkdtemp(prefix='bench-ledger-')}/store.db"
    engine = create_store_engine(url)
    upgrade(engine)
    rows = copies(args.messages, f"INBOX-{uuid.uuid4().hex[:6]}")
    chunks = [rows[start:start + CHUNK_MESSAGES] for start in range(0, len(rows), CHUNK_MESSAGES)]
    ours = cpu_seconds(through_ledger, engine, chunks)
    rows = copies(args.messages, f"INBOX-{uuid.uuid4().hex[:6]}")
    bare = cpu_seconds(bare_driver, engine, [rows[s:s + CHUNK_MESSAGES] for s in range(0, len(rows), CHUNK_MESSAGES)])
    print(f"{engine.dialect.name}: {args.messages} intents and done rows in chunks of {CHUNK_MESSAGES}")
    print(f"  ledger.record_intents + record_done  {ours:6.2f} s CPU  ({ours / args.messages * 1e6:5.1f} us/message)")
    print(f"  bare driver, same rows               {bare:6.2f} s CPU  ({bare / args.messages * 1e6:5.1f} us/message)")
    print(f"  ledger / bare                        {ours / bare:6.2f}")
    engine.dispose()


if __name__ == "__main__":
    main()
