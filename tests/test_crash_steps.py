"""Interrupt at ledger steps (mbsync's method): die right after a commit or right after an APPEND returned.

Each process is killed (SIGKILL, from inside, by the checkpoint crash hook) after k steps; the next one
resumes and is killed again, with k cycling so that every kind of step is hit: folder record, intent,
APPEND returned but not recorded, done, settle. Run against a target with UIDPLUS and MULTIAPPEND and
against one with neither (copies then found only by searching for their content).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.lab.corpus import CorpusSpec
from tests.imap_fixtures import Lab, running_lab
from tests.test_contract_imap import PLAIN_CAPABILITIES

STEP_CYCLE = [3, 2, 4, 5, 1, 6, 7, 3, 8]


@pytest.fixture(params=["uidplus-multiappend", "plain-imap4rev1"])
def small_lab(request: pytest.FixtureRequest, dovecot: None, lab_root: Path) -> Iterator[Lab]:
    options = {"capabilities": PLAIN_CAPABILITIES} if request.param == "plain-imap4rev1" else {}
    spec = CorpusSpec(messages_per_mailbox=14, large_attachments=0, include_cpython_samples=False)
    with running_lab(lab_root, spec, **options) as lab:
        yield lab


def settled_copies(project: Path) -> int:
    with sqlite3.connect(project / "migrator.db") as conn:
        messages = [row[0] for row in conn.execute("SELECT message FROM event WHERE kind = 'settled'")]
    return sum(int(re.search(r": (\d+) open copies found", m).group(1)) for m in messages)  # type: ignore[union-attr]


def test_crash_after_every_kind_of_step_then_resume(small_lab: Lab) -> None:
    small_lab.prepare()
    small_lab.env["MIGRATOR_TEST_MODE"] = "1"
    kills = 0
    for k in itertools.islice(itertools.cycle(STEP_CYCLE), 400):
        small_lab.env["MIGRATOR_TEST_CRASH_AT"] = str(k)
        result = small_lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "1", expect=None)
        if result.returncode == 0:
            break
        assert result.returncode == -9, result.stderr
        kills += 1
        small_lab.assert_no_duplicates()
    else:
        pytest.fail("the run never completed under repeated crashes")
    assert kills > 20
    assert settled_copies(small_lab.project) > 0, "no crash landed between an APPEND and its done row"
    del small_lab.env["MIGRATOR_TEST_CRASH_AT"]
    small_lab.assert_exact_copy()
    small_lab.migrator("verify", "plans/wave1.yaml", "--deep")
    again = small_lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    assert "copied 0 messages" in again.stdout
