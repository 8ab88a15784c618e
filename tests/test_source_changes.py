"""The source changes between passes: deletions, a renamed folder, a vanished folder, a reset UIDVALIDITY."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from imapclient import IMAPClient

from migrator.lab.corpus import CorpusSpec, mailbox_snapshot
from migrator.lab.dovecot import CONDSTORE_ONLY_CAPABILITIES
from tests.faultproxy import FaultProxy
from tests.imap_fixtures import Lab, expected_target_folder, running_lab


def change_source(lab: Lab) -> int:
    """Delete two INBOX messages, rename a folder, delete another, reset one folder's UIDVALIDITY."""
    user = lab.pairs[0][0]
    with IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
        client.login(user.name, user.password)
        client.select_folder("INBOX")
        victims = sorted(client.search("ALL"))[:2]
        client.delete_messages(victims)
        client.expunge()
        client.rename_folder("Projects.2026.Q3", "Projects.Q3 2026")
        client.delete_folder("Привет мир")
    lab.source.set_uidvalidity(user.name, "Projects", 1234567)
    return len(victims)


def test_deletions_renames_and_a_uidvalidity_reset_lose_and_duplicate_nothing(lab: Lab) -> None:
    lab.prepare()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    source_user, target_user = lab.pairs[0]
    before = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    deleted = change_source(lab)

    stopped = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta", expect=1)
    assert "safety stop" in stopped.stderr and "--rematch-folder 'Projects'" in stopped.stderr
    after_stop = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    assert after_stop == before, "nothing may change on the target: no re-copy, no deletion without the flag"

    lab.migrator("run", "plans/wave1.yaml", "--stage", "delta", "--rematch-folder", "Projects", "--sync-deletes")
    source = mailbox_snapshot(lab.source.host, lab.source.port, source_user.name, source_user.password)
    target = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    for folder, messages in source.items():
        mapped = "Projects/2026/Q3" if folder == "Projects.Q3 2026" else expected_target_folder(folder)
        assert Counter(target[mapped]) == Counter(messages), f"{folder} -> {mapped}"
    assert "Projects/Q3 2026" not in target or not target["Projects/Q3 2026"], "renamed folder copied twice"
    assert target["Привет мир"] == before["Привет мир"], "copies of a vanished source folder are kept"
    assert len(target["INBOX"]) == len(before["INBOX"]) - deleted
    again = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta", "--sync-deletes")
    assert "copied 0 messages" in again.stdout and "0 deletions" in again.stdout
    lab.migrator("verify", "plans/wave1.yaml", "--deep")
    with_events = json.loads(lab.migrator("status", "--json").stdout)
    assert all(job["state"] == "done" for job in with_events["jobs"] if job["stage"] == "delta")


def test_deletions_are_kept_on_the_target_without_sync_deletes(lab: Lab) -> None:
    lab.prepare()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    user, target_user = lab.pairs[0]
    with IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
        client.login(user.name, user.password)
        client.select_folder("Sent")
        client.delete_messages([min(client.search("ALL"))])
        client.expunge()
    target = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    count = len(target["Sent Items"])
    result = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta")
    assert "0 deletions" in result.stdout
    after = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    assert len(after["Sent Items"]) == count


def test_a_source_of_condstore_alone_costs_a_delta_pass_only_what_changed(dovecot: None, lab_root: Path) -> None:
    """A source that offers CONDSTORE but not QRESYNC (Gmail's kind) tells what changed since a cursor but
    not what was expunged. An unchanged folder costs a delta pass no command (its HIGHESTMODSEQ, UIDNEXT
    and message count came with the LIST); a folder with new or re-flagged mail costs one UID FETCH
    CHANGEDSINCE; only a folder holding fewer messages than that implies is searched for the UIDs still
    there. The copy stays exact, deletions included (--sync-deletes). Counted on the wire (source behind a
    proxy); before this, every folder of every mailbox was listed whole in every pass."""
    with running_lab(lab_root, CorpusSpec(messages_per_mailbox=40, large_attachments=1),
                     source_options={"capabilities": CONDSTORE_ONLY_CAPABILITIES}) as lab, \
            FaultProxy((lab.source.host, lab.source.port)) as proxy:
        lab.prepare()
        lab.write_config(source_port=proxy.port)
        lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")

        def delta(*options: str) -> tuple[str, dict[str, list[object]]]:
            proxy.wait_idle()
            proxy.reset_counters()
            result = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta", *options)
            proxy.wait_idle()
            return result.stdout, proxy.stats().marks.commands

        quiet, sent = delta()
        assert "copied 0 messages" in quiet
        assert not {"EXAMINE", "SELECT", "UID FETCH", "SEARCH", "UID SEARCH", "STATUS"} & sent.keys(), sent.keys()

        user = lab.pairs[0][0]
        with IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
            client.login(user.name, user.password)
            client.append("Projects", b"From: a@b.example\r\nSubject: late\r\n\r\nafter prestage\r\n")
            client.select_folder("Sent")
            client.add_flags([min(client.search("ALL"))], [b"\\Flagged"])
            client.select_folder("INBOX")
            victims = sorted(client.search("ALL"))[:2]
            client.delete_messages(victims)
            client.expunge()
            client.append("INBOX", b"From: c@d.example\r\nSubject: new\r\n\r\nin place of two\r\n")
        changed, sent = delta("--sync-deletes")
        assert "copied 2 messages" in changed and "2 deletions" in changed
        # Projects, Sent and INBOX are each opened to ask what changed (UID FETCH CHANGEDSINCE), and Projects
        # and INBOX read their new message (opened again where another folder was asked in between, while
        # the target's session opened); no other folder is opened, and INBOX alone is searched.
        counts = {command: len(offsets) for command, offsets in sent.items()}
        assert 3 <= counts["EXAMINE"] <= 5 and counts["UID FETCH"] == 5, counts
        assert len(sent["UID SEARCH"]) == 1, "INBOX alone lost messages"
        lab.assert_exact_copy()
        again, _sent = delta("--sync-deletes")
        assert "copied 0 messages" in again and "0 deletions" in again
        lab.migrator("verify", "plans/wave1.yaml", "--deep")
