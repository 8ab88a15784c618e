"""Kill -9 at random moments, resume, and prove nothing was lost or duplicated.

The seed is printed (and can be forced with MIGRATOR_KILL_SEED) so that a failure can be replayed.
The target is throttled to stretch the copy over a few seconds, so that kills land in the middle of
batches: between intent and APPEND, during the APPEND literal, before the done row.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from migrator.lab.corpus import CorpusSpec
from tests.imap_fixtures import Lab, running_lab

KILLS = 12


@pytest.fixture
def big_lab(dovecot: None, lab_root: Path) -> Iterator[Lab]:
    with running_lab(lab_root, CorpusSpec(messages_per_mailbox=250, large_attachments=2),
                     config_extra="[throttle.target]\nmessages_per_second = 150\n") as lab:
        yield lab


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(big_lab: Lab) -> None:
    seed = int(os.environ.get("MIGRATOR_KILL_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"kill test seed: {seed} (replay with MIGRATOR_KILL_SEED={seed})")
    rng = random.Random(seed)
    big_lab.prepare()
    kills = 0
    for _ in range(KILLS * 2):
        process = subprocess.Popen(big_lab.command("run", "plans/wave1.yaml", "--stage", "prestage",
                                                  "--workers", "2"),
                                   cwd=big_lab.project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.4, 2.5))
        if process.poll() is not None:
            _out, err = process.communicate()
            assert process.returncode == 0, err.decode()
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        big_lab.assert_no_duplicates()
        if kills == KILLS:
            break
    assert kills >= 10, f"only {kills} kills landed before the copy finished (seed {seed})"
    big_lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2")
    big_lab.assert_exact_copy()
    big_lab.migrator("verify", "plans/wave1.yaml", "--deep")
    again = big_lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    assert "copied 0 messages" in again.stdout
    # The configured 150 messages/s bounds every batch to one second's worth, in folders that hold more.
    batches, folders = batch_and_folder_sizes(big_lab.project / "migrator.db")
    assert max(batches) <= 150 < max(folders), (max(batches), max(folders))


def batch_and_folder_sizes(db: Path) -> tuple[list[int], list[int]]:
    """Intent rows per batch (a batch's rows share their mailbox, folder and creation stamp), rows per folder."""
    with closing(sqlite3.connect(db)) as conn:
        batches = conn.execute("SELECT COUNT(*) FROM ledger GROUP BY mailbox_id, source_folder, created_at").fetchall()
        folders = conn.execute("SELECT COUNT(*) FROM ledger GROUP BY mailbox_id, source_folder").fetchall()
    return [n for (n,) in batches], [n for (n,) in folders]
