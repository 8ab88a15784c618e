"""The state store fails under the run: locked by another process, or the disk it lives on is full.

Either way `migrator run` must stop with one clear line on stderr and a non-zero exit, leave the last
committed state intact (and readable: `migrator status` works), and a later run must finish the job with an
exact copy and no duplicates. SQLite waits [state] busy_timeout (4 s here) for a lock, so each lock test waits for it
once; the disk-full test puts the store on a small tmpfs (TESTING.md: a real "database or disk is full").
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from migrator.lab.corpus import CorpusSpec
from tests.imap_fixtures import Lab, running_lab

SMALL_CORPUS = CorpusSpec(messages_per_mailbox=10, large_attachments=0, include_cpython_samples=False)
BUSY_SECONDS = 4  # [state] busy_timeout in these tests (30 s by default)
PROGRESS_LINE = re.compile(r"^copied \d+(/\d+)? messages, ")


def write_config(lab: Lab, state_url: str, extra: str = "") -> None:
    """migrator.toml as Lab.write_config writes it, with the state store somewhere else."""
    (lab.project / "migrator.toml").write_text(f"""
[state]
url = "{state_url}"
busy_timeout = {BUSY_SECONDS}

[source]
kind = "imap"
host = "127.0.0.1"
port = {lab.source.port}
security = "none"

[target]
kind = "imap"
host = "127.0.0.1"
port = {lab.target.port}
security = "none"
{extra}
""", encoding="utf-8")


def store_dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with closing(sqlite3.connect(db)) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr) for table in tables}


def ledger_states(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM ledger GROUP BY state").fetchall())


def integrity(db: Path) -> str:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The run stopped with a one-line error (progress lines aside), a non-zero exit and no traceback."""
    assert result.returncode not in (0, 130), result
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert lines[0].startswith("migrator: error: state store: "), lines[0]
    return lines[0]


def source_total(lab: Lab) -> int:
    return sum(len(messages) for source, _target in lab.snapshots() for messages in source.values())


@contextmanager
def store_locked(db: Path) -> Iterator[None]:
    """Another process holds a write transaction (BEGIN IMMEDIATE) on the store until the block ends."""
    code = (f"import sqlite3, sys\nconn = sqlite3.connect({str(db)!r}, timeout=60, isolation_level=None)\n"
            "conn.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.readline()\n"
            "conn.execute('ROLLBACK')\n")
    locker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        yield
    finally:
        if locker.stdin is not None:
            locker.stdin.close()  # readline() returns: roll back and exit
        try:
            locker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            locker.kill()
            locker.wait()


@pytest.fixture
def small_lab(dovecot: None, lab_root: Path) -> Iterator[Lab]:
    yield from impatient_lab(lab_root, SMALL_CORPUS)


def impatient_lab(lab_root: Path, spec: CorpusSpec) -> Iterator[Lab]:
    """A lab whose store waits BUSY_SECONDS for a lock, not 30 s."""
    with running_lab(lab_root, spec) as lab:
        lab.busy_timeout = BUSY_SECONDS
        yield lab


def test_locked_store_stops_the_run_with_one_line_and_keeps_the_committed_state(small_lab: Lab) -> None:
    lab = small_lab
    lab.prepare()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--batch", "B01")  # alice: committed state
    db = lab.project / "migrator.db"
    before = store_dump(db)
    assert ledger_states(db).get("done", 0) > 0
    with store_locked(db):
        started = time.monotonic()
        result = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=None,
                              timeout=BUSY_SECONDS + 60)
        waited = time.monotonic() - started
    line = error_line(result)
    assert "database is locked" in line and "another process holds the database" in line
    assert BUSY_SECONDS - 1 <= waited < BUSY_SECONDS + 20  # queued on the busy timeout, then gave up once
    assert store_dump(db) == before
    assert integrity(db) == "ok"
    lab.assert_no_duplicates()
    status = json.loads(lab.migrator("status", "--json").stdout)
    assert {job["mailbox"]: job["state"] for job in status["jobs"]} == {"alice@old.example": "done"}

    again = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    assert "2 mailboxes done, 0 failed" in again.stdout
    lab.assert_exact_copy()
    lab.migrator("verify", "plans/wave1.yaml", "--deep")


def test_store_locked_mid_run_stops_within_one_busy_timeout(dovecot: None, lab_root: Path) -> None:
    slow = "[throttle.target]\nmessages_per_second = 20\n"  # ~9 s of copying: the lock lands mid-run
    with running_lab(lab_root, SMALL_CORPUS, config_extra=slow) as lab:
        lab.busy_timeout = BUSY_SECONDS
        lab.prepare()
        db = lab.project / "migrator.db"
        total = source_total(lab)
        run = subprocess.Popen(lab.command("run", "plans/wave1.yaml", "--stage", "prestage"), cwd=lab.project,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while ledger_states(db).get("done", 0) < 20:
                assert run.poll() is None and time.monotonic() < deadline, "the run ended before the lock"
                time.sleep(0.1)
            with store_locked(db):
                locked_at = time.monotonic()
                try:
                    stdout, stderr = run.communicate(timeout=BUSY_SECONDS + 10)
                except subprocess.TimeoutExpired:
                    run.kill()
                    stdout, stderr = run.communicate()
                stopped_after = time.monotonic() - locked_at
                done_while_locked = ledger_states(db).get("done", 0)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert integrity(db) == "ok"
        assert 20 <= done_while_locked < total
        lab.assert_no_duplicates()
        lab.write_config()  # no throttle for the rest
        again = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
        assert "2 mailboxes done, 0 failed" in again.stdout
        lab.assert_exact_copy()
        # what the bug breaks: the run gives up after one busy timeout, with one line and a non-zero exit
        assert stopped_after < BUSY_SECONDS + 10, f"still running {stopped_after:.0f}s after the store was locked"
        result = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
        assert "database is locked" in error_line(result)


@contextmanager
def tmpfs(path: Path, size_kb: int) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)  # never leave a mount behind
            raise AssertionError(f"{path} was still busy after the test: a store connection was left open")


# Mail enough that the ledger outgrows the headroom mid-copy: since folders whose new mail fits one batch
# share one commit and done rows ride with the next one, 10 messages a mailbox copied within 200 KB of WAL.
DISK_CORPUS = CorpusSpec(messages_per_mailbox=100, large_attachments=0, include_cpython_samples=False)
DISK_HEADROOM_KB = 600  # measured: init+discover+plan leave ~100 KB; this copy stopped at 300-800, finished at 1,100
DISK_HEADROOM_KB_2 = 1800  # two writers: no progress at 1,000, stopped at 1,400-2,200, finished at 3,000


@pytest.fixture
def disk_lab(dovecot: None, lab_root: Path) -> Iterator[Lab]:
    yield from impatient_lab(lab_root, DISK_CORPUS)


@pytest.mark.parametrize(("spread", "headroom_kb"), [(("--workers", "1"), DISK_HEADROOM_KB),
                                                     (("--workers", "2", "--processes", "2"), DISK_HEADROOM_KB_2)],
                         ids=["one-process", "worker-processes"])
def test_disk_full_stops_the_run_cleanly_and_a_rerun_after_freeing_space_finishes(
        disk_lab: Lab, spread: tuple[str, ...], headroom_kb: int) -> None:
    """In worker processes too (two writers: more headroom to get anywhere): the one that meets the full
    disk stops the others, and the run says why."""
    lab = disk_lab
    lab.prepare()
    local = lab.project / "migrator.db"
    assert not local.with_name("migrator.db-wal").exists()  # the last connection checkpointed: one file to move
    total = source_total(lab)
    with tmpfs(lab.project.parent / "state", local.stat().st_size // 1024 + headroom_kb) as mount:
        db = mount / "migrator.db"
        shutil.copy2(local, db)
        local.unlink()
        write_config(lab, f"sqlite:///{db}")
        result = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", *spread, expect=None)
        line = error_line(result)
        assert "database or disk is full" in line and "free disk space" in line
        assert integrity(db) == "ok"
        states = ledger_states(db)
        # It stopped mid-copy: rows were written, not every copy recorded. Done rows wait for a later commit
        # (Journal.done_later, AppendLane), so on a disk this small there may be none yet: the re-run then
        # finds every copy made by its open intent.
        assert states.get("intent", 0) + states.get("done", 0) > 0 and states.get("done", 0) < total, states
        lab.assert_no_duplicates()
        status = lab.migrator("status", "--json")  # the store still opens on the full disk
        jobs = json.loads(status.stdout)["jobs"]
        assert {job["mailbox"] for job in jobs} == {"alice@old.example", "bob@old.example"}
        assert sum(job["copied"] for job in jobs) == states.get("done", 0)

        subprocess.run(["mount", "-o", "remount,size=32m", str(mount)], check=True)
        again = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "1")
        assert "2 mailboxes done, 0 failed" in again.stdout
        lab.assert_exact_copy()
        assert ledger_states(db) == {"done": total}
        lab.migrator("verify", "plans/wave1.yaml", "--deep")
