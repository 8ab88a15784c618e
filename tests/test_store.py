"""The state store on SQLite and PostgreSQL: migrations, inventory, job leases, the per-message ledger."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, inspect, select, update

from migrator.errors import LeaseLost, StateError
from migrator.model import FolderInfo, MailboxEntry, Role
from migrator.store import inventory, ledger
from migrator.store.db import (
    create_store_engine,
    downgrade,
    migrations_dir,
    open_store,
    schema_status,
    translate_db_errors,
    upgrade,
)
from migrator.store.records import JobRecord, Lease, PendingCopy, TargetFolderRecord, utcnow
from migrator.store.schema import job, mailbox, metadata
from migrator.store.schema import ledger as ledger_table
from migrator.store.work import (
    JOB_DONE,
    JOB_PENDING,
    JOB_RUNNING,
    PlanBatch,
    add_to_checkpoint,
    claim_job,
    close_checkpoint,
    finish_job,
    job_statuses,
    open_checkpoint,
    prepare_jobs,
    register_plan,
    release_job,
    renew_lease,
)

PLAN, STAGE, TTL = "wave1", "prestage", 300


def alive(_owner: str) -> bool:
    return False


# --- schema -------------------------------------------------------------------------------------------------


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_downgrade_upgrade(store: Engine) -> None:
    current, head = schema_status(store)
    assert current == head and head
    assert {"mailbox", "folder", "job", "ledger", "checkpoint", "event"} <= table_names(store)
    downgrade(store, "base")
    assert table_names(store) - {"alembic_version"} == set()
    assert schema_status(store)[0] is None
    upgrade(store)
    assert schema_status(store) == (head, head)
    assert table_names(store) - {"alembic_version"} == set(metadata.tables)
    upgrade(store)  # idempotent
    assert schema_status(store) == (head, head)


def test_schema_status_reads_what_alembic_reads(store: Engine) -> None:
    """schema_status reads the revisions without alembic (start-up time); alembic must agree."""
    with store.connect() as conn:
        assert schema_status(store) == (MigrationContext.configure(conn).get_current_revision(),
                                        ScriptDirectory(str(migrations_dir())).get_current_head())


def test_alembic_tables_match_schema_metadata(store: Engine) -> None:
    with store.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
        conn.rollback()
    assert differences == []


def test_open_store_on_empty_database_tells_to_upgrade(store_url: str) -> None:
    with pytest.raises(StateError, match="run `migrator db upgrade`") as info:
        open_store(store_url)
    assert "no schema" in str(info.value)
    engine = create_store_engine(store_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    opened = open_store(store_url)
    try:
        current, head = schema_status(opened)
        assert current == head
    finally:
        opened.dispose()


def test_open_store_on_older_schema_tells_to_upgrade(store: Engine) -> None:
    downgrade(store, "base")
    with pytest.raises(StateError, match="migrator db upgrade"):
        open_store(store.url.render_as_string(hide_password=False))


# --- inventory ----------------------------------------------------------------------------------------------

FOLDERS = [FolderInfo("INBOX", ".", Role.INBOX, "11", 3, 300), FolderInfo("Sent", ".", Role.SENT, "12", 2, 200)]


def test_save_mailbox_insert_then_update(store: Engine) -> None:
    entry = MailboxEntry("alice@old.example", "alice@new.example", source_login="alice", group="sales", priority=2)
    with store.begin() as conn:
        first = inventory.save_mailbox(conn, entry, FOLDERS)
    with store.begin() as conn:
        (record,) = inventory.list_mailboxes(conn)
        assert (record.id, record.source, record.target, record.source_login, record.group, record.priority) == (
            first, "alice@old.example", "alice@new.example", "alice", "sales", 2)
        assert (record.messages, record.size, record.folders) == (5, 500, 2)
        folders = inventory.source_folders(conn, first)
        assert [(f.path, f.role, f.key, f.messages, f.size) for f in folders] == [
            ("INBOX", Role.INBOX, "11", 3, 300), ("Sent", Role.SENT, "12", 2, 200)]
    changed = MailboxEntry("alice@old.example", "alice@other.example", group=None, priority=0)
    new_folders = [FolderInfo("INBOX", ".", Role.INBOX, "99", 10, 1000), FolderInfo("Projects", ".", None, "13", 1, 5)]
    with store.begin() as conn:
        second = inventory.save_mailbox(conn, changed, new_folders)
        inventory.save_mailbox(conn, changed, new_folders)  # re-discovery is idempotent
    assert second == first
    with store.begin() as conn:
        (record,) = inventory.list_mailboxes(conn)
        assert (record.target, record.source_login, record.group, record.priority) == (
            "alice@other.example", None, None, 0)
        assert (record.messages, record.size, record.folders) == (11, 1005, 2)
        assert [(f.path, f.key) for f in inventory.source_folders(conn, first)] == [("INBOX", "99"), ("Projects", "13")]
        assert set(inventory.mailboxes_by_source(conn, ["alice@old.example", "nobody@old.example"])) == {
            "alice@old.example"}


# --- plans, jobs, leases ------------------------------------------------------------------------------------


def make_jobs(store: Engine, count: int, codes: tuple[str, ...] = ("B01",)) -> list[int]:
    """`count` mailboxes, split round-robin over `codes`, each with a pending prestage job."""
    with store.begin() as conn:
        ids = [inventory.save_mailbox(conn, MailboxEntry(f"u{i:02d}@old.example", f"u{i:02d}@new.example"), FOLDERS)
               for i in range(count)]
        plan_id = register_plan(conn, PLAN, "sha256:abc", "plans/wave1.yaml", False)
        assert register_plan(conn, PLAN, "sha256:abc", "plans/wave1.yaml", False) == plan_id
        batches = [PlanBatch(code, None, ids[n::len(codes)]) for n, code in enumerate(codes)]
        prepare_jobs(conn, PLAN, plan_id, STAGE, batches)
        prepare_jobs(conn, PLAN, plan_id, STAGE, batches)  # no duplicates
    return ids


def claim(store: Engine, owner: str, codes: tuple[str, ...] = ("B01",), **kwargs: object) -> JobRecord | None:
    with store.begin() as conn:
        return claim_job(conn, owner, PLAN, STAGE, list(codes), TTL, **kwargs)  # type: ignore[arg-type]


def test_prepare_jobs_makes_one_pending_job_per_mailbox(store: Engine) -> None:
    ids = make_jobs(store, 4, ("B01", "B02"))
    with store.connect() as conn:
        statuses = job_statuses(conn, PLAN)
    assert sorted((s.batch, s.mailbox_id) for s in statuses) == sorted(
        [("B01", ids[0]), ("B01", ids[2]), ("B02", ids[1]), ("B02", ids[3])])
    assert {s.state for s in statuses} == {JOB_PENDING}


def test_claim_follows_batch_order_and_owners_never_share(store: Engine) -> None:
    make_jobs(store, 3, ("B02", "B01"))
    first = claim(store, "worker-a", ("B01", "B02"), is_dead=alive)
    second = claim(store, "worker-b", ("B01", "B02"), is_dead=alive)
    third = claim(store, "worker-a", ("B01", "B02"), is_dead=alive)
    assert first is not None and second is not None and third is not None
    assert [first.batch_code, second.batch_code, third.batch_code] == ["B01", "B02", "B02"]
    assert len({first.id, second.id, third.id}) == 3
    assert first.state == JOB_RUNNING and first.attempts == 1
    assert claim(store, "worker-b", ("B01", "B02"), is_dead=alive) is None


def test_within_a_batch_the_largest_mailboxes_are_claimed_first(store: Engine) -> None:
    ids = make_jobs(store, 4, ("B01", "B02"))
    sizes = {ids[0]: 10, ids[1]: 5_000, ids[2]: 9_000, ids[3]: 7}
    with store.begin() as conn:
        for mailbox_id, size in sizes.items():
            conn.execute(update(mailbox).where(mailbox.c.id == mailbox_id).values(size=size))
    claimed = [claim(store, f"worker-{n}", ("B01", "B02"), is_dead=alive) for n in range(4)]
    assert [(c.batch_code, c.mailbox_id) for c in claimed if c] == [
        ("B01", ids[2]), ("B01", ids[0]), ("B02", ids[1]), ("B02", ids[3])]


def test_racing_owners_never_get_the_same_job(store: Engine) -> None:
    make_jobs(store, 4)
    owners = [f"racer-{n}" for n in range(8)]
    barrier = threading.Barrier(len(owners))
    results: dict[str, JobRecord | None] = {}
    errors: list[BaseException] = []

    def race(owner: str) -> None:
        try:
            barrier.wait(timeout=30)
            results[owner] = claim(store, owner, is_dead=alive)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    won = [r.id for r in results.values() if r is not None]
    assert len(won) == 4 and len(set(won)) == 4, results
    assert sum(r is None for r in results.values()) == 4
    with store.connect() as conn:
        owners_in_db = dict(conn.execute(select(job.c.id, job.c.lease_owner)).all())
    for owner, record in results.items():
        if record is not None:
            assert owners_in_db[record.id] == owner


def test_live_lease_is_not_claimable_expired_one_is(store: Engine) -> None:
    make_jobs(store, 1)
    held = claim(store, "worker-a", is_dead=alive)
    assert held is not None
    assert claim(store, "worker-b", is_dead=alive) is None
    with store.begin() as conn:  # time passes: the lease runs out
        conn.execute(update(job).where(job.c.id == held.id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    taken = claim(store, "worker-b", is_dead=alive)
    assert taken is not None and taken.id == held.id and taken.attempts == 2
    with pytest.raises(LeaseLost), store.begin() as conn:
        renew_lease(conn, Lease(held.id, "worker-a", TTL))
    with store.begin() as conn:
        renew_lease(conn, Lease(held.id, "worker-b", TTL))


def test_dead_local_worker_job_is_reclaimed_at_once(store: Engine) -> None:
    make_jobs(store, 1)
    held = claim(store, "worker-a", is_dead=alive)
    assert held is not None
    asked: list[str] = []

    def dead(owner: str) -> bool:
        asked.append(owner)
        return owner == "worker-a"

    taken = claim(store, "worker-b", is_dead=dead)
    assert taken is not None and taken.id == held.id
    assert asked == ["worker-a"]
    with store.connect() as conn:
        assert conn.execute(select(job.c.lease_owner).where(job.c.id == held.id)).scalar() == "worker-b"


def test_renew_lease_by_non_owner_raises(store: Engine) -> None:
    make_jobs(store, 1)
    held = claim(store, "worker-a", is_dead=alive)
    assert held is not None
    with pytest.raises(LeaseLost, match=str(held.id)), store.begin() as conn:
        renew_lease(conn, Lease(held.id, "intruder", TTL))
    with store.begin() as conn:
        renew_lease(conn, Lease(held.id, "worker-a", TTL))


def test_finish_and_release(store: Engine) -> None:
    make_jobs(store, 2)
    a = claim(store, "worker-a", is_dead=alive)
    b = claim(store, "worker-b", is_dead=alive)
    assert a is not None and b is not None
    with store.begin() as conn:
        finish_job(conn, Lease(a.id, "worker-a", TTL), JOB_DONE)
        release_job(conn, Lease(b.id, "worker-b", TTL))
    with store.begin() as conn, pytest.raises(LeaseLost):
        renew_lease(conn, Lease(a.id, "worker-a", TTL))
    again = claim(store, "worker-c", is_dead=alive)
    assert again is not None and again.id == b.id, "a released job is claimable at once; a done one is not"
    assert claim(store, "worker-c", is_dead=alive) is None


# --- ledger -------------------------------------------------------------------------------------------------


def pending(source_id: str, *, digest: str = "d" * 64, target_folder: str = "INBOX") -> PendingCopy:
    return PendingCopy("INBOX", "11", source_id, digest, 100, frozenset({"\\Seen"}), "2025-01-01T00:00:00+00:00",
                       target_folder, "77", "1000")


def leased_mailbox(store: Engine) -> tuple[Lease, int, int]:
    (mailbox_id,) = make_jobs(store, 1)
    held = claim(store, "worker-a", is_dead=alive)
    assert held is not None
    lease = Lease(held.id, "worker-a", TTL)
    with store.begin() as conn:
        checkpoint_id = open_checkpoint(conn, lease, mailbox_id, STAGE)
    return lease, mailbox_id, checkpoint_id


def ledger_rows(store: Engine) -> int:
    with store.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ledger_table)).scalar_one())


def test_intent_then_done(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        ids = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("1"), pending("2")])
    assert len(ids) == 2 and ids[0] < ids[1]
    with store.connect() as conn:
        entries = ledger.folder_entries(conn, mailbox_id, "INBOX")
    assert [(e.id, e.source_id, e.state, e.target_id) for e in entries] == [
        (ids[0], "1", ledger.INTENT, None), (ids[1], "2", ledger.INTENT, None)]
    assert entries[0].flags == frozenset({"\\Seen"}) and entries[0].watermark == "1000"
    assert entries[0].target_folder == "INBOX" and entries[0].target_key == "77" and entries[0].size == 100
    with store.begin() as conn:
        ledger.record_done(conn, lease, {ids[0]: "1001", ids[1]: "1002"})
    with store.connect() as conn:
        entries = ledger.folder_entries(conn, mailbox_id, "INBOX")
        assert [(e.state, e.target_id) for e in entries] == [(ledger.DONE, "1001"), (ledger.DONE, "1002")]
        assert ledger.folder_entries(conn, mailbox_id, "Sent") == []
        assert [e.id for e in ledger.mailbox_entries(conn, mailbox_id)] == ids


def test_intents_of_many_statements_get_their_own_ids_and_times(store: Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """120 intents of two folders, every source id in both, go as three multi-row statements; each id is its
    copy's, in the order given, and the written times are stored as SQLAlchemy stores a DateTime everywhere
    else (on SQLite a fixed text form, microseconds always written)."""
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    copies = [replace(pending(str(n // 2)), source_folder="Sent" if n % 2 else "INBOX") for n in range(120, 0, -1)]
    stamp = datetime(2026, 11, 29, 5, 0, 0)  # no microseconds: the text form must still carry them
    monkeypatch.setattr(ledger, "utcnow", lambda: stamp)
    with store.begin() as conn:
        ids = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, copies)
        ledger.record_done(conn, lease, {ids[0]: "t0", ids[-1]: "t1"})
    with store.connect() as conn:
        rows = {row.id: row for row in conn.execute(select(ledger_table))}
        if store.dialect.name == "sqlite":
            stored = {text for (text,) in conn.exec_driver_sql("SELECT created_at FROM ledger")}
            assert stored == {"2026-11-29 05:00:00.000000"}
    assert len(set(ids)) == 120
    assert [(rows[i].source_folder, rows[i].source_id) for i in ids] == [(c.source_folder, c.source_id) for c in copies]
    assert [rows[i].target_id for i in (ids[0], ids[1], ids[-1])] == ["t0", None, "t1"]
    assert {row.created_at for row in rows.values()} == {stamp}
    assert rows[ids[0]].done_at == stamp and rows[ids[1]].done_at is None


def test_same_source_message_cannot_be_recorded_twice(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("1")])
    with pytest.raises(StateError), translate_db_errors(), store.begin() as conn:
        ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("1")])
    assert ledger_rows(store) == 1


def test_lost_lease_writes_nothing(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        (kept,) = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("1")])
    with store.begin() as conn:  # another worker takes the job over
        conn.execute(update(job).where(job.c.id == lease.job_id).values(lease_owner="worker-b"))
    with pytest.raises(LeaseLost), store.begin() as conn:
        ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("2"), pending("3")])
    assert ledger_rows(store) == 1
    writes: list[Callable[[Connection], None]] = [
        lambda c: ledger.record_done(c, lease, {kept: "1001"}),
        lambda c: ledger.record_failed(c, lease, kept, "too large"),
        lambda c: ledger.drop_intents(c, lease, [kept]),
        lambda c: ledger.record_flags(c, lease, {kept: frozenset()}),
        lambda c: ledger.remember_target_folder(c, lease, mailbox_id, TargetFolderRecord("New", "9", True, None)),
    ]
    for write in writes:
        with pytest.raises(LeaseLost), store.begin() as conn:
            write(conn)
    with store.connect() as conn:
        (entry,) = ledger.folder_entries(conn, mailbox_id, "INBOX")
    assert (entry.state, entry.target_id, entry.reason, entry.flags) == (
        ledger.INTENT, None, None, frozenset({"\\Seen"}))
    with store.connect() as conn:
        assert ledger.target_folders(conn, mailbox_id) == {}


def test_drop_intents_deletes_only_intent_rows(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        done, failed, open_ = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id,
                                                    [pending("1"), pending("2"), pending("3")])
        ledger.record_done(conn, lease, {done: "1001"})
        ledger.record_failed(conn, lease, failed, "message too large for the target")
    with store.begin() as conn:
        ledger.drop_intents(conn, lease, [done, failed, open_])
    with store.connect() as conn:
        entries = ledger.folder_entries(conn, mailbox_id, "INBOX")
    assert [(e.id, e.state) for e in entries] == [(done, ledger.DONE), (failed, ledger.FAILED)]
    assert entries[1].reason == "message too large for the target" and entries[1].target_id is None


def test_record_flags(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        (entry_id,) = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("1")])
        ledger.record_done(conn, lease, {entry_id: "1001"})
        ledger.record_flags(conn, lease, {entry_id: frozenset({"\\Flagged", "\\Seen"})})
    with store.connect() as conn:
        (entry,) = ledger.folder_entries(conn, mailbox_id, "INBOX")
    assert entry.flags == frozenset({"\\Flagged", "\\Seen"})


def test_flags_with_spaces_round_trip(store: Engine) -> None:
    """Exchange categories may hold spaces; IMAP-only rows keep their old space-separated form."""
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    categories = frozenset({"\\Seen", "Red category", "Project X", "$Forwarded"})
    with store.begin() as conn:
        (entry_id,) = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("1")])
        ledger.record_flags(conn, lease, {entry_id: categories})
    with store.connect() as conn:
        (entry,) = ledger.folder_entries(conn, mailbox_id, "INBOX")
    assert entry.flags == categories
    assert ledger.encode_flags({"\\Seen", "$Junk"}) == "$Junk \\Seen"


def test_cursor_is_kept_per_folder_key_and_basis_and_dropped_by_rollback(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        ledger.keep_cursor(conn, lease, mailbox_id, "INBOX", "11", "https://graph/delta?token=1", "b1")
        ledger.keep_cursor(conn, lease, mailbox_id, "INBOX", "11", "https://graph/delta?token=2", "b1")
        (entry_id,) = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [pending("1")])
    with store.connect() as conn:
        assert ledger.read_cursors(conn, mailbox_id, "b1") == {("INBOX", "11"): "https://graph/delta?token=2"}
        assert ("INBOX", "12") not in ledger.read_cursors(conn, mailbox_id, "b1"), "folder recreated"
        assert ledger.read_cursors(conn, mailbox_id, "b2") == {}, "other filters"
    with store.begin() as conn:
        ledger.forget(conn, lease, [entry_id])
    with store.connect() as conn:
        assert ledger.read_cursors(conn, mailbox_id, "b1") == {}, "rolled back: list again"


def test_claimed_target_ids(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        a, b, c, d = ledger.record_intents(conn, lease, mailbox_id, checkpoint_id, [
            pending("1"), pending("2"), pending("3"), pending("4", target_folder="Archive")])
        ledger.record_done(conn, lease, {a: "1001", b: "1002", d: "1003"})
        ledger.record_failed(conn, lease, c, "refused")
    with store.connect() as conn:
        assert ledger.claimed_target_ids(conn, mailbox_id, "INBOX", "77") == {"1001", "1002"}
        assert ledger.claimed_target_ids(conn, mailbox_id, "Archive", "77") == {"1003"}
        assert ledger.claimed_target_ids(conn, mailbox_id, "INBOX", "78") == set(), "another UIDVALIDITY"
        assert ledger.claimed_target_ids(conn, mailbox_id, "INBOX", None) == set()


def test_job_statuses_sum_checkpoints(store: Engine) -> None:
    lease, mailbox_id, first = leased_mailbox(store)
    with store.begin() as conn:
        add_to_checkpoint(conn, first, copied=3, copied_bytes=300)
        add_to_checkpoint(conn, first, copied=2, copied_bytes=200, failed=1)
        close_checkpoint(conn, first, "done")
        second = open_checkpoint(conn, lease, mailbox_id, STAGE)
        add_to_checkpoint(conn, second, copied=4, copied_bytes=4_000_000_000, flag_updates=7)
        finish_job(conn, lease, JOB_DONE)
    with store.connect() as conn:
        (status,) = job_statuses(conn, PLAN)
        assert job_statuses(conn, "another-plan") == []
        assert len(job_statuses(conn)) == 1
    assert (status.plan, status.batch, status.stage, status.mailbox_id, status.state, status.attempts) == (
        PLAN, "B01", STAGE, mailbox_id, JOB_DONE, 1)
    assert (status.copied, status.copied_bytes, status.failed) == (9, 4_000_000_500, 1)


def test_job_statuses_without_checkpoints_are_zero(store: Engine) -> None:
    make_jobs(store, 2)
    with store.connect() as conn:
        statuses = job_statuses(conn)
    assert [(s.copied, s.copied_bytes, s.failed, s.state) for s in statuses] == [(0, 0, 0, JOB_PENDING)] * 2


def test_prepare_jobs_requeues_finished_jobs(store: Engine) -> None:
    ids = make_jobs(store, 1)
    held = claim(store, "worker-a", is_dead=alive)
    assert held is not None
    with store.begin() as conn:
        finish_job(conn, Lease(held.id, "worker-a", TTL), JOB_DONE)
    assert claim(store, "worker-a", is_dead=alive) is None
    with store.begin() as conn:
        plan_id = register_plan(conn, PLAN, "sha256:edited", "plans/wave1.yaml", True)
        prepare_jobs(conn, PLAN, plan_id, STAGE, [PlanBatch("B01", None, ids)])
    again = claim(store, "worker-a", is_dead=alive)
    assert again is not None and again.id == held.id and again.attempts == 2


def test_remember_target_folder_insert_then_update(store: Engine) -> None:
    lease, mailbox_id, checkpoint_id = leased_mailbox(store)
    with store.begin() as conn:
        ledger.remember_target_folder(conn, lease, mailbox_id, TargetFolderRecord("Sent Items", "5", False, None))
        ledger.remember_target_folder(conn, lease, mailbox_id,
                                      TargetFolderRecord("Projects/2026", "8", True, checkpoint_id))
    with store.begin() as conn:  # UIDVALIDITY changed; who created it does not
        ledger.remember_target_folder(conn, lease, mailbox_id, TargetFolderRecord("Projects/2026", "9", False, None))
    with store.connect() as conn:
        assert ledger.target_folders(conn, mailbox_id) == {
            "Sent Items": TargetFolderRecord("Sent Items", "5", False, None),
            "Projects/2026": TargetFolderRecord("Projects/2026", "9", True, checkpoint_id),
        }


def test_sqlite_writers_of_threads_and_forked_processes_queue_on_the_gate(tmp_path: Path) -> None:
    """With a busy timeout of 1 ms, any writer that met another's transaction through SQLite's busy handler
    would fail with "database is locked": writers in threads and in a forked process all get their turn."""
    engine = create_store_engine(f"sqlite:///{tmp_path / 'gate.db'}", busy_timeout_ms=1)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE written (writer TEXT, n INTEGER)")
    engine.dispose()
    errors: list[BaseException] = []

    def write(writer: str) -> None:
        try:
            for n in range(60):
                with engine.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO written VALUES (?, ?)", (writer, n))
        except BaseException as exc:  # reported below, with the writer
            errors.append(exc)

    pid = os.fork()
    if pid == 0:
        engine.dispose(close=False)
        write("process")
        os._exit(1 if errors else 0)
    threads = [threading.Thread(target=write, args=(f"thread {i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the forked writer failed"
    assert not errors, errors
    with engine.connect() as conn:
        rows = dict(conn.exec_driver_sql("SELECT writer, count(*) FROM written GROUP BY writer").all())
    assert rows == {"process": 60, "thread 0": 60, "thread 1": 60, "thread 2": 60}
