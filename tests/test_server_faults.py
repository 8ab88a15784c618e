"""Faults the target server raises itself: quota full, too many connections; and stop signals."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from migrator.lab.corpus import CorpusSpec
from tests.imap_fixtures import Lab, running_lab

SMALL = CorpusSpec(messages_per_mailbox=20, large_attachments=0, include_cpython_samples=False)


def restart_target(lab: Lab, **settings: object) -> None:
    lab.target.stop()
    for name, value in settings.items():
        setattr(lab.target, name, value)
    lab.target._write_config()
    lab.target.start()


def mailbox_sizes(lab: Lab) -> dict[str, int]:
    with sqlite3.connect(lab.project / "migrator.db") as conn:
        return dict(conn.execute("SELECT source_address, size FROM mailbox").fetchall())


def events(lab: Lab, kind: str) -> list[str]:
    with sqlite3.connect(lab.project / "migrator.db") as conn:
        return [row[0] for row in conn.execute("SELECT message FROM event WHERE kind = ?", (kind,))]


def test_quota_full_blocks_that_mailbox_only_and_a_later_run_finishes(lab: Lab) -> None:
    lab.prepare()
    sizes = mailbox_sizes(lab)
    small, large = sorted(sizes, key=sizes.__getitem__)
    assert sizes[large] > sizes[small] * 1.05, sizes
    restart_target(lab, quota=f"{(sizes[small] + sizes[large]) // 2 // 1024}K")
    # Connections enough for several session pairs per mailbox: the one that does not fit must still copy on
    # one (two sessions appending at once can both pass Dovecot's per-transaction quota check).
    lab.write_config("[throttle.source]\nmax_connections = 8\n[throttle.target]\nmax_connections = 8\n")
    check = lab.migrator("check", "--all", expect=1).stdout
    assert "fits" in check and "DOES NOT FIT: raise the target quota" in check
    result = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=1)
    assert "quota full" in result.stderr
    jobs = {j["mailbox"]: j for j in json.loads(lab.migrator("status", "--json", expect=0).stdout)["jobs"]}
    assert jobs[large]["state"] == "failed" and jobs[large]["error_kind"] == "quota"
    assert jobs[small]["state"] == "done"
    assert any("one session pair" in message for message in events(lab, "quota-near"))
    lab.assert_no_duplicates()
    restart_target(lab, quota="1G")
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    lab.assert_exact_copy()


@pytest.fixture
def limited_lab(dovecot: None, lab_root: Path) -> Iterator[Lab]:
    with running_lab(lab_root, SMALL, max_userip_connections=1) as lab:
        yield lab


def test_connection_limit_means_back_off_not_failure(limited_lab: Lab) -> None:
    lab = limited_lab
    lab.prepare()
    target_user = lab.pairs[0][1]
    hog = IMAPClient(lab.target.host, lab.target.port, ssl=False)
    hog.login(target_user.name, target_user.password)
    release = threading.Timer(3.0, hog.logout)
    release.start()
    try:
        lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "1")
    finally:
        release.join()
    assert any("refuses more connections" in message for message in events(lab, "throttled"))
    lab.assert_exact_copy()
    jobs = json.loads(lab.migrator("status", "--json").stdout)["jobs"]
    assert all(j["state"] == "done" and j["failed_items"] == 0 for j in jobs)
    waited = {j["mailbox"]: j["throttled_seconds"] for j in jobs}
    assert waited[lab.pairs[0][0].name + "@old.example"] >= 1.0, waited  # the hold, counted as waiting
    assert "waited for the servers' throttling" in lab.migrator("status").stdout


@pytest.fixture
def slow_lab(dovecot: None, lab_root: Path) -> Iterator[Lab]:
    spec = CorpusSpec(messages_per_mailbox=60, large_attachments=0, include_cpython_samples=False)
    # slow enough that a loaded CI machine cannot finish a run between two polls of start_run
    with running_lab(lab_root, spec, config_extra="[throttle.target]\nmessages_per_second = 80\n") as lab:
        yield lab


def done_rows(lab: Lab) -> int:
    with sqlite3.connect(lab.project / "migrator.db", timeout=30) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM ledger WHERE state = 'done'").fetchone()[0])


def start_run(lab: Lab) -> subprocess.Popen[str]:
    """A run that is past its preflight and copying (so the signal meets migrator, not Python's start-up)."""
    before = done_rows(lab)
    process = subprocess.Popen(lab.command("run", "plans/wave1.yaml", "--stage", "prestage"), cwd=lab.project,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while done_rows(lab) == before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be interrupted"
    return process


def test_first_sigterm_stops_cleanly_second_stops_at_once_and_both_resume(slow_lab: Lab) -> None:
    lab = slow_lab
    lab.prepare()
    process = start_run(lab)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted: re-run the same command to resume" in err
    jobs = json.loads(lab.migrator("status", "--json", expect=None).stdout)["jobs"]
    assert {j["state"] for j in jobs} <= {"pending", "done"}, "an interrupted job is released, not left running"
    lab.assert_no_duplicates()

    process = start_run(lab)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    second = time.monotonic()
    process.communicate(timeout=30)
    assert time.monotonic() - second < 5, "a second signal must end the run at once"
    # 143 from our handler; -15 when the first stop had already reached interpreter shutdown, where Python
    # restores the default handler; 130 if the run was already done stopping cleanly
    assert process.returncode in (128 + signal.SIGTERM, -signal.SIGTERM, 130)
    lab.assert_no_duplicates()

    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    lab.assert_exact_copy()


def test_a_stop_ends_a_long_pacing_wait(dovecot: None, lab_root: Path) -> None:
    """At 0.05 messages/s every message waits 20 s for the target's pacer. A stop must end that wait, not
    sit it out: the pacers sleep on the run's stop event."""
    with running_lab(lab_root, SMALL, config_extra="[throttle.target]\nmessages_per_second = 0.05\n") as lab:
        lab.prepare()
        process = subprocess.Popen(lab.command("run", "plans/wave1.yaml", "--stage", "prestage"), cwd=lab.project,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # past start-up and preflight: the copier is waiting for the pacer
        assert process.poll() is None, process.communicate()
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
        assert time.monotonic() - stopped < 10, "the run sat out the pacer's wait"
        assert process.returncode == 130, err
        lab.assert_no_duplicates()
        status = json.loads(lab.migrator("status", "--json", expect=None).stdout)
        assert {job["state"] for job in status["jobs"]} <= {"pending", "done"}
