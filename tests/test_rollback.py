"""Rollback removes exactly what migrator created in a batch, and nothing that was on the target before."""

from __future__ import annotations

import itertools
import json

from imapclient import IMAPClient

from migrator.lab.corpus import mailbox_snapshot
from tests.imap_fixtures import Lab

FOREIGN = b"From: someone@new.example\r\nSubject: was here before\r\n\r\nnot ours\r\n"


def seed_target(lab: Lab) -> dict[str, list[tuple[str, frozenset[str], object]]]:
    """Pre-existing target mail: a foreign message, and an exact copy of a source message in INBOX."""
    (source_user, target_user) = lab.pairs[0]
    with IMAPClient(lab.source.host, lab.source.port, ssl=False) as src:
        src.login(source_user.name, source_user.password)
        src.select_folder("INBOX", readonly=True)
        uid = min(src.search("ALL"))
        item = src.fetch([uid], ["BODY.PEEK[]", "INTERNALDATE"])[uid]
    with IMAPClient(lab.target.host, lab.target.port, ssl=False) as dst:
        dst.login(target_user.name, target_user.password)
        dst.append("INBOX", FOREIGN)
        dst.append("INBOX", item[b"BODY[]"], (), item[b"INTERNALDATE"])
        dst.create_folder("Projects")  # exists before us: rollback must keep it
        dst.append("Projects", FOREIGN)
    return mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)


def target_state(lab: Lab, index: int = 0) -> dict[str, list[tuple[str, frozenset[str], object]]]:
    user = lab.pairs[index][1]
    return mailbox_snapshot(lab.target.host, lab.target.port, user.name, user.password)


def test_rollback_restores_the_target_exactly_and_a_rerun_copies_again(lab: Lab) -> None:
    lab.prepare()
    before = seed_target(lab)
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    other_before = target_state(lab, 1)
    preview = json.loads(lab.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--dry-run",
                                      "--json").stdout)
    (mailbox,) = preview["mailboxes"]
    assert sum(mailbox["messages"].values()) > 100 and "Projects" not in mailbox["folders"]
    lab.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", expect=2)  # no --yes
    lab.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--yes")
    assert target_state(lab) == before, "rollback must leave exactly what was there before"
    assert target_state(lab, 1) == other_before, "another batch's mailbox is untouched"
    lab.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--yes")  # idempotent
    assert target_state(lab) == before
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    after = target_state(lab)
    assert after["INBOX"].count(before["INBOX"][0]) >= 1 and len(after["INBOX"]) > len(before["INBOX"])


def test_rollback_after_a_checkpoint_keeps_earlier_passes(lab: Lab) -> None:
    lab.prepare()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    prestage = target_state(lab)
    status = json.loads(lab.migrator("status", "--json").stdout)
    checkpoint = max(c["id"] for c in status["checkpoints"])
    user = lab.pairs[0][0]
    with IMAPClient(lab.source.host, lab.source.port, ssl=False) as src:
        src.login(user.name, user.password)
        src.append("INBOX", b"From: late@old.example\r\nSubject: delta\r\n\r\nafter prestage\r\n")
    lab.migrator("run", "plans/wave1.yaml", "--stage", "delta")
    assert len(target_state(lab)["INBOX"]) == len(prestage["INBOX"]) + 1
    lab.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--checkpoint", str(checkpoint), "--yes")
    assert target_state(lab) == prestage


def test_rollback_survives_crashes_at_every_kind_of_step(lab: Lab) -> None:
    lab.prepare()
    before = seed_target(lab)
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    lab.env["MIGRATOR_TEST_MODE"] = "1"
    kills = 0
    for k in itertools.islice(itertools.cycle([2, 1, 3, 4]), 200):
        lab.env["MIGRATOR_TEST_CRASH_AT"] = str(k)
        result = lab.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--yes", expect=None)
        if result.returncode == 0:
            break
        assert result.returncode == -9, result.stderr
        kills += 1
    assert kills >= 5
    assert target_state(lab) == before
