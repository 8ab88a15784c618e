"""End to end through the real command against two real Dovecot servers."""

from __future__ import annotations

import json
import sqlite3
import subprocess

from migrator.lab.corpus import mailbox_snapshot
from tests.faultproxy import FaultProxy
from tests.imap_fixtures import Lab, store_dump


def test_prestage_copies_everything_exactly_once_and_a_rerun_copies_nothing(lab: Lab) -> None:
    lab.prepare()
    first = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    assert "2 mailboxes done, 0 failed" in first.stdout
    lab.assert_exact_copy()
    verify = lab.migrator("verify", "plans/wave1.yaml", "--deep", "--json")
    report = json.loads(verify.stdout)
    assert report["ok"] is True
    folders = [f for m in report["mailboxes"] for f in m["folders"]]
    assert sum(f["verified"] for f in folders) == sum(f["source_messages"] for f in folders) > 100
    second = subprocess.run(lab.command("-v", "run", "plans/wave1.yaml", "--stage", "prestage"), cwd=lab.project,
                            capture_output=True, text=True, check=True)
    assert "copied 0 messages" in second.stdout
    lab.assert_exact_copy()
    assert_no_secrets(lab, first.stdout + first.stderr + second.stdout + second.stderr + verify.stdout)


def assert_no_secrets(lab: Lab, output: str) -> None:
    """Passwords from mailboxes.csv appear nowhere: not in the state store, plans or anything printed."""
    passwords = [user.password for pair in lab.pairs for user in pair]
    stored = b"".join(path.read_bytes() for path in lab.project.rglob("*")
                      if path.is_file() and path.name != "mailboxes.csv")
    for password in passwords:
        assert password.encode() not in stored and password not in output


def test_delta_copies_new_mail_and_flag_changes(lab: Lab) -> None:
    from imapclient import IMAPClient

    lab.prepare()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    user = lab.pairs[0][0]
    with IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
        client.login(user.name, user.password)
        client.append("INBOX", b"From: a@b.example\r\nSubject: late\r\n\r\narrived after prestage\r\n", (b"\\Flagged",))
        client.select_folder("Projects")
        first_uid = min(client.search("ALL"))
        client.set_flags([first_uid], [b"\\Seen", b"$Forwarded", b"Urgent"])
    delta = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta")
    assert "copied 1 messages" in delta.stdout and "1 flag updates" in delta.stdout
    lab.assert_exact_copy()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "final")  # final verifies on its own
    status = json.loads(lab.migrator("status", "--json").stdout)
    assert {j["stage"] for j in status["jobs"]} == {"prestage", "delta", "final"}
    assert all(j["state"] == "done" for j in status["jobs"])


def test_a_delta_records_the_new_mail_of_several_folders_in_one_commit(lab: Lab) -> None:
    """New mail that fits one batch, in several folders, is recorded in one transaction (FolderStage):
    the intent rows of one commit share its timestamp. Before, each folder cost a commit of its own."""
    from imapclient import IMAPClient

    lab.prepare()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    user = lab.pairs[0][0]
    folders = ("INBOX", "Sent", "Projects", "Références")
    with IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
        client.login(user.name, user.password)
        for folder in folders:
            client.append(folder, f"From: a@b.example\r\nSubject: late in {folder}\r\n\r\nnew\r\n".encode())
    delta = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta")
    assert f"copied {len(folders)} messages" in delta.stdout
    lab.assert_exact_copy()
    with sqlite3.connect(lab.project / "migrator.db") as conn:
        rows = conn.execute("SELECT source_folder, state, created_at FROM ledger WHERE checkpoint_id IN "
                            "(SELECT id FROM checkpoint WHERE stage = 'delta')").fetchall()
    assert sorted(folder for folder, _state, _at in rows) == sorted(folders)
    assert {state for _folder, state, _at in rows} == {"done"} and len({at for *_rest, at in rows}) == 1


def test_a_delta_pass_lists_once_a_session_and_asks_only_changed_folders_more(lab: Lab) -> None:
    """With LIST-STATUS (RFC 5819) every folder's STATUS comes with the LIST: an unchanged folder costs a
    delta pass no command of its own, and the first APPEND's watermark is the STATUS the list read; a changed
    folder costs one command to learn what changed (QRESYNC); a pass with one folder to copy opens one
    session pair, and one with nothing to copy no target session at all. Counted on the wire (both servers behind
    proxies)."""
    from imapclient import IMAPClient

    with FaultProxy((lab.source.host, lab.source.port)) as source, \
            FaultProxy((lab.target.host, lab.target.port)) as target:
        lab.prepare()
        lab.write_config(source_port=source.port, target_port=target.port)
        lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
        user = lab.pairs[0][0]
        with IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
            client.login(user.name, user.password)
            client.append("Projects", b"From: a@b.example\r\nSubject: late\r\n\r\nafter prestage\r\n")
        for proxy in (source, target):
            proxy.wait_idle()
            proxy.reset_counters()
        delta = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta")
        assert "copied 1 messages" in delta.stdout
        for proxy in (source, target):
            proxy.wait_idle()
        sent = {side: proxy.stats().marks.commands for side, proxy in (("source", source), ("target", target))}
    lab.assert_exact_copy()
    # One session pair per mailbox: the lab's runs may open two, but only where two folders or more may
    # have new mail; and a mailbox with nothing new (the second) costs the target nothing. The preflight
    # neither logs in (no admin login here) nor lists.
    sessions = len(lab.pairs)
    assert len(sent["source"]["LOGIN"]) == len(sent["source"]["LIST"]) == sessions
    assert len(sent["target"]["LOGIN"]) == len(sent["target"]["LIST"]) == 1
    assert "STATUS" not in sent["source"] and "STATUS" not in sent["target"]
    # Sessions that read the source enable QRESYNC (RFC 7162); the target's do not. The one changed folder
    # is opened on the source and asked what changed since the cursor in one command (UID FETCH CHANGEDSINCE
    # VANISHED, no SEARCH), then its new message read; nothing else is.
    assert len(sent["source"]["ENABLE"]) == sessions and "ENABLE" not in sent["target"]
    assert len(sent["source"]["EXAMINE"]) == 1 and "SEARCH" not in sent["source"]
    assert len(sent["source"]["UID FETCH"]) == 2 and len(sent["target"]["APPEND"]) == 1


def test_verify_reports_a_message_deleted_from_the_target(lab: Lab) -> None:
    from imapclient import IMAPClient

    lab.prepare()
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    target_user = lab.pairs[0][1]
    with IMAPClient(lab.target.host, lab.target.port, ssl=False) as client:
        client.login(target_user.name, target_user.password)
        client.select_folder("Projects/2026")
        victim = min(client.search("ALL"))
        client.delete_messages([victim])
        client.expunge()
    result = lab.migrator("verify", "plans/wave1.yaml", "--json", expect=1)
    report = json.loads(result.stdout)
    assert report["ok"] is False
    missing = [f for m in report["mailboxes"] for f in m["folders"] if f["missing"]]
    assert [f["source_folder"] for f in missing] == ["Projects.2026"]
    # the next pass does not re-copy it blindly: the ledger says it was copied; verify is what flags it
    snapshot = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    assert "Projects/2026" in snapshot


def test_dry_run_says_what_would_be_copied_and_writes_nothing(lab: Lab) -> None:
    lab.prepare()
    before = store_dump(lab.project)
    target_user = lab.pairs[0][1]
    target_before = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    result = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--dry-run")
    would = int(result.stdout.rsplit("would copy ", 1)[1].split()[0])
    with sqlite3.connect(lab.project / "migrator.db") as conn:
        assert would == conn.execute("SELECT SUM(messages) FROM mailbox").fetchone()[0]
    assert "'Projects.2026' -> 'Projects/2026' (new folder)" in result.stdout
    assert store_dump(lab.project) == before
    assert mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password) == target_before
    lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    after = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta", "--dry-run")
    assert "would copy 0 messages" in after.stdout
