"""Hostile mail: whatever a source server holds is copied byte for byte, or recorded as a failed item with a reason.

The messages are APPENDed straight into the source through imapclient's raw command path (imaplib's own
APPEND would rewrite bare LF and CR to CRLF), so the source keeps exactly what a careless MTA or a
legacy import put there: bare LF line ends, NUL bytes, 8-bit and malformed headers, no Message-ID or a
shared one, a 2,000-character header line, an empty message (Dovecot refuses it), a ~30 MB message,
60 levels of nested multipart and the same message twice in one folder.

"Byte-identical" means as the source serves it: Dovecot normalises line ends to CRLF and serves a NUL as
0x80, and the copy must be exactly those bytes (the snapshots compare SHA-256 of BODY[] on both sides).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.imapclient import _literal

from migrator.lab.corpus import CorpusSpec
from tests.imap_fixtures import Lab, expected_target_folder, running_lab

HOSTILE = "Hostile"  # a source folder of alice's; the target folder of the same name
BIG_NAME = "big-30mb"
SMALL_CORPUS = CorpusSpec(messages_per_mailbox=10, large_attachments=0, include_cpython_samples=False)


@dataclass(frozen=True)
class Hostile:
    name: str
    raw: bytes
    flags: tuple[str, ...] = ()
    date: datetime = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("ascii")


def _nested_mime(depth: int) -> bytes:
    """`depth` levels of multipart/mixed, each with a text part beside the next level down."""
    inner = _crlf("Content-Type: text/plain; charset=us-ascii\n\nthe bottom of the well\n")
    for level in range(depth, 0, -1):
        boundary = f"b{level:03d}"
        inner = (_crlf(f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\n--{boundary}\n"
                       f"Content-Type: text/plain\n\nlevel {level}\n--{boundary}\n") + inner
                 + _crlf(f"\n--{boundary}--\n"))
    return _crlf("From: deep@old.example\nSubject: 60 levels of multipart\nMIME-Version: 1.0\n") + inner


def _big_message() -> bytes:
    """~30 MB: a random (incompressible) attachment, base64 in 76-character CRLF lines."""
    payload = base64.encodebytes(random.Random(30).randbytes(22_500_000)).replace(b"\n", b"\r\n")
    assert len(payload) > 30_000_000
    return _crlf("From: big@old.example\nSubject: thirty megabytes\nMessage-ID: <big@old.example>\nMIME-Version: 1.0\n"
                 "Content-Type: multipart/mixed; boundary=\"xx\"\n\n--xx\nContent-Type: text/plain\n\nsee attached\n"
                 "--xx\nContent-Type: application/octet-stream; name=\"blob.bin\"\n"
                 "Content-Transfer-Encoding: base64\n\n") + payload + _crlf("--xx--\n")


def hostile_messages() -> list[Hostile]:
    shared_id = "Message-ID: <same@old.example>\n"
    duplicate = _crlf("From: twin@old.example\nSubject: twice in one folder\nMessage-ID: <twin@old.example>\n\n"
                      "identical bytes, identical flags, identical date\n")
    return [
        Hostile("bare-lf", b"From: lf@old.example\nSubject: bare LF line ends\n\nline one\nline two\n", ("\\Seen",)),
        Hostile("mixed-line-ends", b"From: mixed@old.example\r\nSubject: mixed\n\r\nCRLF\r\nLF\nbare CR\rend\r\n"),
        Hostile("nul-bytes", b"From: nul@old.example\r\nSubject: NUL bytes\r\n\r\nbefore\x00after\x00\x00\r\nend\r\n",
                ("\\Flagged",)),
        Hostile("latin1-headers", b"From: Ren\xe9 M\xfcller <rene@old.example>\r\nSubject: Caf\xe9 cr\xe8me \xff\r\n"
                                  b"\r\nbody in latin-1: \xe0 bient\xf4t\r\n", ("\\Seen", "$Forwarded")),
        Hostile("invalid-utf8", b"From: bad@old.example\r\nSubject: \xc3\x28 \xa0\xa1 \xf0\x28\x8c\xbc\r\n"
                                b"X-Bytes: \x80\x81\xfe\r\n\r\n\xed\xa0\x80 surrogate\r\n"),
        Hostile("malformed-headers", _crlf(" continuation before any header\nFrom old@old.example  Mon Jan  1\n"
                                           "no colon in this header line\nSubject : space before the colon\n"
                                           ": empty name\nSubject: =?utf-8?q?unterminated_encoded_word\n"
                                           "Content-Type: multipart/mixed; boundary=\n"
                                           "Date: not a date at all\nFrom: two@old.example\nFrom: froms@old.example\n"
                                           "\nbody\n"), ("Work",)),
        Hostile("headers-only", _crlf("From: headers@old.example\nSubject: no blank line and no body")),
        Hostile("no-header", _crlf("\njust a body, no header at all\n")),
        Hostile("no-message-id", _crlf("From: anon@old.example\nSubject: no Message-ID\n\nwho am I\n"), ("\\Seen",)),
        Hostile("shared-id-1", _crlf(f"From: a@old.example\nSubject: first\n{shared_id}\none\n")),
        Hostile("shared-id-2", _crlf(f"From: b@old.example\nSubject: second\n{shared_id}\ntwo, different\n"),
                ("\\Answered",)),
        Hostile("long-header", _crlf(f"From: long@old.example\nSubject: {'x' * 1991}\nX-Long: {'y' * 1992}\n\nok\n")),
        Hostile("empty", b""),
        Hostile(BIG_NAME, _big_message(), ("\\Seen",), datetime(2020, 2, 2, 2, 2, 2, tzinfo=UTC)),
        Hostile("nested-60", _nested_mime(60)),
        Hostile("duplicate-a", duplicate, ("\\Seen",), datetime(2022, 1, 1, tzinfo=UTC)),
        Hostile("duplicate-b", duplicate, ("\\Seen",), datetime(2022, 1, 1, tzinfo=UTC)),
    ]


def raw_append(client: Any, folder: str, message: Hostile) -> tuple[str, bytes]:
    """APPEND the exact bytes as a literal (as migrator's connector does); returns (status, response text)."""
    args = [client._normalise_folder(folder), f"({' '.join(message.flags)})".encode(),
            f'"{datetime_to_INTERNALDATE(message.date)}"'.encode(), _literal(message.raw)]
    typ, data = client._raw_command(b"APPEND", args, uid=False)
    return typ, b" ".join(d for d in data if isinstance(d, bytes))


def load_hostile(lab: Lab) -> dict[str, str]:
    """Put the hostile set into alice's source folder; returns {name: sha256 as the source serves it}."""
    user = lab.pairs[0][0]
    served: dict[str, str] = {}
    with IMAPClient(lab.source.host, lab.source.port, ssl=False, timeout=120) as client:
        client.login(user.name, user.password)
        client.create_folder(HOSTILE)
        for message in hostile_messages():
            typ, text = raw_append(client, HOSTILE, message)
            if not message.raw:  # Dovecot refuses a 0-byte message; then there is nothing to migrate
                assert typ == "NO" and b"zero byte" in text, (typ, text)
                continue
            assert typ == "OK", (message.name, typ, text)
            appended = re.search(rb"\[APPENDUID \d+ (\d+)\]", text)
            assert appended, text
            uid = int(appended.group(1))
            client.select_folder(HOSTILE, readonly=True)
            body = client.fetch([uid], [b"BODY.PEEK[]"])[uid][b"BODY[]"]
            client.unselect_folder()
            served[message.name] = hashlib.sha256(body).hexdigest()
    return served


def folder_hashes(host: str, port: int, user: str, password: str, folder: str) -> Counter[str]:
    with IMAPClient(host, port, ssl=False, timeout=120) as client:
        client.login(user, password)
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        return Counter(hashlib.sha256(item[b"BODY[]"]).hexdigest()
                       for start in range(0, len(uids), 20)
                       for item in client.fetch(uids[start:start + 20], [b"BODY.PEEK[]"]).values())


def assert_no_crash(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "internal error" not in output, output


def status_jobs(lab: Lab) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = json.loads(lab.migrator("status", "--json").stdout)["jobs"]
    return jobs


def failed_item_events(lab: Lab) -> list[str]:
    with closing(sqlite3.connect(lab.project / "migrator.db")) as conn:
        return [row[0] for row in conn.execute("SELECT message FROM event WHERE kind = 'item-failed' ORDER BY id")]


def assert_copied_or_failed(lab: Lab, run: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """Every source message is on the target exactly once with the same bytes, flags and date, or it is a failed
    item with a reason (counted by `status --json`, named by `verify --json`, exit 1); nothing else is there.
    Returns {source folder: verify's lines for the messages that were not copied}."""
    assert_no_crash(run)
    lab.assert_no_duplicates()
    not_copied: dict[str, int] = {}
    for source, target in lab.snapshots():
        for folder, messages in source.items():
            missing = Counter(messages) - Counter(target.get(expected_target_folder(folder), []))
            if missing:
                not_copied[folder] = sum(missing.values())
        expected = {expected_target_folder(f) for f in source}
        assert not {f for f, m in target.items() if f not in expected and m}, "messages in unexpected folders"
    failed = sum(job["failed_items"] for job in status_jobs(lab))
    assert failed == sum(not_copied.values()), (failed, not_copied)
    assert run.returncode == (1 if failed else 0), run
    verify = lab.migrator("verify", "plans/wave1.yaml", "--deep", "--json", expect=1 if failed else 0)
    report = json.loads(verify.stdout)
    reasons: dict[str, list[str]] = {}
    for mailbox in report["mailboxes"]:
        assert mailbox["error"] is None, mailbox
        for folder in mailbox["folders"]:
            assert folder["differs"] == [], folder
            assert folder["verified"] + folder["failed_items"] == folder["source_messages"], folder
            assert len(folder["missing"]) == folder["failed_items"], folder  # only failed items may be missing
            if folder["missing"]:
                reasons[folder["source_folder"]] = folder["missing"]
    assert {f: len(lines) for f, lines in reasons.items()} == not_copied
    assert all(line.endswith(")") and "not copied (" in line for lines in reasons.values() for line in lines)
    return reasons


@pytest.fixture
def hostile_lab(dovecot: None, lab_root: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Lab, dict[str, str]]]:
    target_options: dict[str, object] = getattr(request, "param", {})
    with running_lab(lab_root, SMALL_CORPUS, **target_options) as lab:
        yield lab, load_hostile(lab)


def test_hostile_messages_are_copied_exactly(hostile_lab: tuple[Lab, dict[str, str]]) -> None:
    lab, served = hostile_lab
    source = lab.pairs[0][0]
    assert folder_hashes(lab.source.host, lab.source.port, source.name, source.password, HOSTILE) == Counter(
        served.values())
    assert set(served) == {m.name for m in hostile_messages()} - {"empty"}
    assert served["duplicate-a"] == served["duplicate-b"] and served["shared-id-1"] != served["shared-id-2"]
    lab.prepare()
    run = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=None)
    # The target is the same Dovecot as the source with no limits: everything the source holds must arrive.
    assert assert_copied_or_failed(lab, run) == {}
    assert run.returncode == 0 and "2 mailboxes done, 0 failed" in run.stdout and "0 items failed" in run.stdout
    lab.assert_exact_copy()
    assert all(job["state"] == "done" for job in status_jobs(lab))
    target = lab.pairs[0][1]
    assert folder_hashes(lab.target.host, lab.target.port, target.name, target.password, HOSTILE) == Counter(
        served.values())
    again = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
    assert "copied 0 messages" in again.stdout
    lab.assert_exact_copy()


@pytest.mark.parametrize("hostile_lab", [{"max_mail_size": "1M"}], indirect=True, ids=["target-max-mail-size-1M"])
def test_too_large_message_is_a_failed_item_and_not_retried(hostile_lab: tuple[Lab, dict[str, str]]) -> None:
    lab, served = hostile_lab
    lab.prepare()
    run = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=1)
    reasons = assert_copied_or_failed(lab, run)
    assert "1 items failed" in run.stdout and "2 mailboxes done, 0 failed" in run.stdout
    assert list(reasons) == [HOSTILE] and len(reasons[HOSTILE]) == 1 and "(too-large)" in reasons[HOSTILE][0]
    events = failed_item_events(lab)
    assert len(events) == 1 and HOSTILE in events[0] and "too large" in events[0]
    target = lab.pairs[0][1]
    everything_else = Counter(served.values())
    everything_else[served[BIG_NAME]] -= 1
    assert folder_hashes(lab.target.host, lab.target.port, target.name, target.password, HOSTILE) == +everything_else
    jobs = status_jobs(lab)
    assert [(job["mailbox"], job["state"], job["failed_items"]) for job in jobs] == [
        ("alice@old.example", "done", 1), ("bob@old.example", "done", 0)]  # a failed item does not fail the job
    lab.migrator("status", expect=1)  # but status says something needs attention

    second = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=None)
    assert_no_crash(second)
    assert "copied 0 messages" in second.stdout and "0 items failed, 1 failed in earlier passes" in second.stdout
    assert failed_item_events(lab) == events  # not tried again: no new intent, no new refusal
    with closing(sqlite3.connect(lab.project / "migrator.db")) as conn:
        assert conn.execute("SELECT count(*) FROM ledger WHERE state = 'failed'").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM ledger WHERE state = 'intent'").fetchone() == (0,)
    assert [job["failed_items"] for job in status_jobs(lab)] == [1, 0]
    assert assert_copied_or_failed(lab, second) == reasons
    # new mail in the folder: the pass reads only what changed there, and still counts the refused message
    source = lab.pairs[0][0]
    with IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
        client.login(source.name, source.password)
        client.append(HOSTILE, b"From: a@b.example\r\nSubject: late\r\n\r\nafter the refusal\r\n")
    third = lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=None)
    assert "copied 1 messages" in third.stdout and "0 items failed, 1 failed in earlier passes" in third.stdout
