"""Servers that work on a limited number of messages per command (RFC 9738 MESSAGELIMIT): a
FETCH or SEARCH over more answers OK for the highest UIDs only, with [MESSAGELIMIT n uid]. Taken for the
whole answer, that OK would hide every older message from the listing, and the copy and verify that read
it would agree that nothing is missing. Real Dovecot behind tests/limitproxy.py plays such a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest

from migrator.connectors.base import open_mailbox
from migrator.connectors.imap import ImapEndpoint
from migrator.errors import ItemFailed
from migrator.lab.dovecot import DovecotServer, LabUser
from migrator.model import Login, Secret
from tests.contract import BODY, message
from tests.imap_fixtures import Lab
from tests.limitproxy import MessageLimitProxy
from tests.test_contract_imap import imap_config

USER = LabUser("carol", "carol-pw")
LOGIN = Login("carol@example.org", USER.name, Secret(USER.password))
LIMIT = 7
MESSAGES = 30


@pytest.fixture
def server(dovecot: None, lab_root: Path) -> Iterator[DovecotServer]:
    """A folder "Big" of 30 messages, put there directly (not through a limit)."""
    with DovecotServer(root=lab_root / "srv", name="limit", layout="target", users=[USER]) as running:
        with open_mailbox(ImapEndpoint(imap_config(running.port)), LOGIN, write=True) as mailbox:
            folder, _ = mailbox.ensure_folder("Big", None)
            mailbox.append(folder, [message(BODY.replace(b"hello", b"message %d" % n)) for n in range(MESSAGES)])
        yield running


def direct(server: DovecotServer) -> dict[int, tuple[frozenset[bytes], bytes]]:
    """Flags and bytes of every message of "Big", read from Dovecot itself."""
    with imapclient.IMAPClient(server.host, server.port, ssl=False) as client:
        client.login(USER.name, USER.password)
        client.select_folder("Big", readonly=True)
        fetched = client.fetch(client.search("ALL"), [b"FLAGS", b"BODY.PEEK[]"])
    return {uid: (frozenset(item[b"FLAGS"]) - {b"\\Recent"}, item[b"BODY[]"]) for uid, item in fetched.items()}


@pytest.mark.parametrize(("advertise", "untagged"), [(True, False), (False, False), (True, True)],
                         ids=["advertised", "unadvertised", "code-in-untagged-no"])
def test_every_message_is_listed_fetched_flagged_and_deleted_through_a_message_limit(
        server: DovecotServer, advertise: bool, untagged: bool) -> None:
    """30 messages behind a limit of 7: listing, sizes, bodies, changes since a cursor (QRESYNC), flags and
    deletions all cover the 30, each command asked again below where the server stopped. Where the limit is
    advertised, flag and delete commands name at most 7 messages each and are never cut short."""
    before = direct(server)
    with MessageLimitProxy((server.host, server.port), LIMIT, advertise=advertise, untagged=untagged) as proxy:
        endpoint = ImapEndpoint(imap_config(proxy.port))
        with open_mailbox(endpoint, LOGIN, write=False) as reader:
            folder = next(f for f in reader.list_folders() if f.path == "Big")
            cursor = reader.changes(folder, None)
            refs = reader.list_messages(folder)
            bodies = {int(m.ref.id): m.body for m in reader.fetch(folder, refs)}
        assert folder.size == sum(len(body) for _flags, body in before.values())
        assert cursor is not None and sorted(int(ref.id) for ref in cursor.changed) == sorted(before)
        assert bodies == {uid: body for uid, (_flags, body) in before.items()}
        with open_mailbox(endpoint, LOGIN, write=True) as writer:
            assert writer.capabilities().max_batch_messages == (LIMIT if advertise else None)
            writer.set_flags(folder, {ref.id: frozenset({"\\Flagged", "Later"}) for ref in refs})
            writer.delete(folder, [ref.id for ref in refs[:20]])
        with open_mailbox(endpoint, LOGIN, write=False) as reader:
            changed = reader.changes(folder, cursor.cursor)
        stopped = dict(proxy.partial)
        sizes = dict(proxy.largest_set)
        assert not proxy.errors
    after = direct(server)
    kept = sorted(before)[20:]
    assert sorted(after) == kept
    assert all(flags == {b"\\Flagged", b"Later"} and body == before[uid][1] for uid, (flags, body) in after.items())
    assert changed is not None and sorted(int(ref.id) for ref in changed.changed) == kept
    assert sorted(int(uid) for uid in changed.removed) == sorted(before)[:20]
    assert stopped["UID SEARCH"] >= MESSAGES // LIMIT and stopped["UID FETCH"] >= 3 * (MESSAGES // LIMIT)
    if advertise:
        assert sizes["UID STORE"] <= LIMIT and sizes["UID EXPUNGE"] <= LIMIT
        assert "UID STORE" not in stopped and "UID EXPUNGE" not in stopped
    else:
        assert stopped["UID STORE"] >= 2 and stopped["UID EXPUNGE"] >= 2


def test_an_append_of_more_than_the_server_takes_is_refused_whole(server: DovecotServer) -> None:
    """An APPEND of more messages than the limit fails as a whole (RFC 9738) and stores nothing: an ItemFailed
    of its own kind, so the engine stores the batch's messages one by one instead of failing the folder."""
    with MessageLimitProxy((server.host, server.port), LIMIT, advertise=False) as proxy, \
            open_mailbox(ImapEndpoint(imap_config(proxy.port)), LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Batches", None)
        with pytest.raises(ItemFailed, match="too many messages at once") as refused:
            mailbox.append(folder, [message(BODY.replace(b"hello", b"%d" % n)) for n in range(LIMIT + 1)])
        assert refused.value.reason == "too-many"
        assert mailbox.list_messages(folder) == []
        ids = mailbox.append(folder, [message(BODY.replace(b"hello", b"%d" % n)) for n in range(LIMIT)])
        assert len(ids) == LIMIT and len(mailbox.list_messages(folder)) == LIMIT


def test_a_migration_between_two_limited_servers_is_exact(lab: Lab) -> None:
    """The real command, source and target each behind a limit of 5: the prestage copies every message, its
    APPENDs hold at most 5 (the target said so), and a delta after flag changes and new mail in a large
    folder brings them all across; verify agrees, and the target matches the source message for message."""
    with MessageLimitProxy((lab.source.host, lab.source.port), 5) as source, \
            MessageLimitProxy((lab.target.host, lab.target.port), 5) as target:
        lab.write_config(source_port=source.port, target_port=target.port)
        lab.write_mailboxes()
        lab.migrator("init", ".")
        lab.migrator("discover", "--mailboxes", "mailboxes.csv")
        lab.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "1")
        lab.migrator("run", "plans/wave1.yaml", "--stage", "prestage")
        lab.assert_exact_copy()
        change_source(lab)
        delta = lab.migrator("run", "plans/wave1.yaml", "--stage", "delta")
        assert "copied 12 messages" in delta.stdout
        lab.assert_exact_copy()
        lab.migrator("verify", "plans/wave1.yaml", "--deep")
        assert target.largest_set["APPEND"] <= 5 and not target.refused
        assert source.partial["UID SEARCH"] and source.partial["UID FETCH"]
        assert not source.errors and not target.errors


def change_source(lab: Lab) -> None:
    """12 new messages in INBOX, and every message of the first user's INBOX flagged."""
    user = lab.pairs[0][0]
    with imapclient.IMAPClient(lab.source.host, lab.source.port, ssl=False) as client:
        client.login(user.name, user.password)
        for n in range(12):
            client.append("INBOX", b"From: a@b.example\r\nSubject: late %d\r\n\r\nnew\r\n" % n)
        client.select_folder("INBOX")
        client.add_flags(client.search("ALL"), [b"\\Flagged"])
