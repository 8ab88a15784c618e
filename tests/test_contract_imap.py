"""The connector contract against real Dovecot, with and without UIDPLUS, MULTIAPPEND and LITERAL+."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import pytest

from migrator.config import EndpointConfig
from migrator.connectors.base import ReadOnlyMailbox, open_mailbox
from migrator.connectors.imap import LISTING_SLICE, ImapEndpoint, ImapMailbox
from migrator.errors import AuthFailed, FolderFailed, Unreachable
from migrator.lab.dovecot import CONDSTORE_ONLY_CAPABILITIES, DovecotServer, LabUser, free_port
from migrator.model import FolderChanges, FolderInfo, Login, Secret
from tests.contract import *  # noqa: F403
from tests.contract import BODY, Contract, message
from tests.faultproxy import FaultProxy
from tests.limitproxy import MessageLimitProxy

USER = LabUser("carol", "carol-pw")
# Dovecot's own list minus UIDPLUS, MULTIAPPEND and LITERAL+ (each literal then waits for the server's
# go-ahead): a server of the kind many hosted IMAP services are.
PLAIN_CAPABILITIES = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SPECIAL-USE NAMESPACE CHILDREN"


def imap_config(port: int) -> EndpointConfig:
    return EndpointConfig("target", "imap", "127.0.0.1", port, "none", None, None, None, False, 10.0, {})


@pytest.fixture(params=["full", "no-uidplus-no-multiappend-no-literal-plus", "condstore-without-qresync",
                        "message-limit-2"])
def contract(request: pytest.FixtureRequest, dovecot: None, lab_root: Path) -> Iterator[Contract]:
    """Dovecot as it is; without the extensions that save round trips; with CONDSTORE but not QRESYNC; and
    behind a proxy that makes it a server of RFC 9738's MESSAGELIMIT=2 (every FETCH, SEARCH, STORE, UID
    EXPUNGE stops after two messages)."""
    capabilities = {"no-uidplus-no-multiappend-no-literal-plus": PLAIN_CAPABILITIES,
                    "condstore-without-qresync": CONDSTORE_ONLY_CAPABILITIES}.get(request.param)
    with DovecotServer(root=lab_root / "srv", name="contract", layout="target", users=[USER],
                       capabilities=capabilities) as server, ExitStack() as stack:
        port = server.port
        if request.param == "message-limit-2":
            port = stack.enter_context(MessageLimitProxy((server.host, server.port), 2)).port
        endpoint = ImapEndpoint(imap_config(port))
        login = Login("carol@example.org", USER.name, Secret(USER.password))

        def plant(path: str, body: bytes) -> None:
            with open_mailbox(endpoint, login, write=True) as mailbox:
                folder, _ = mailbox.ensure_folder(path, None)
                mailbox.append(folder, [message(body)])

        yield Contract(endpoint, login, Login(login.address, login.user, Secret("nope")),
                       ImapEndpoint(imap_config(free_port())), plant)


def test_wrong_password_says_login_refused(contract: Contract) -> None:
    with pytest.raises(AuthFailed, match="login refused"), open_mailbox(contract.endpoint, contract.bad_login,
                                                                         write=False):
        pass


@pytest.mark.parametrize("capabilities", [None, CONDSTORE_ONLY_CAPABILITIES], ids=["qresync", "condstore-only"])
def test_an_expunge_of_most_of_a_folder_comes_back_as_the_uids_left(dovecot: None, lab_root: Path,
                                                                     capabilities: str | None) -> None:
    """QRESYNC names expunged UIDs (VANISHED), as ranges a server may widen when it no longer knows every
    expunge since the cursor: past a folder's worth, changes() gives the UIDs still there instead of naming
    each UID gone (the pass then reads the folder's rows at once, and lists nothing); a few are named one
    by one. CONDSTORE alone names none: the UIDs still there come whenever the folder holds fewer messages
    than the cursor's count and those added since."""
    with DovecotServer(root=lab_root / "srv", name="vanished", layout="target", users=[USER],
                       capabilities=capabilities) as server:
        endpoint = ImapEndpoint(imap_config(server.port))
        login = Login("carol@example.org", USER.name, Secret(USER.password))

        def changes(cursor: str | None) -> FolderChanges:
            with open_mailbox(endpoint, login, write=False) as reader:
                listed = next(f for f in reader.list_folders(sizes=False) if f.path == "Bulk")
                found = reader.changes(listed, cursor)
            assert found is not None
            return found

        def expunge(count: int) -> list[str]:
            with open_mailbox(endpoint, login, write=True) as mailbox:
                folder, _ = mailbox.ensure_folder("Bulk", None)
                victims = [ref.id for ref in mailbox.list_messages(folder)][:count]
                mailbox.delete(folder, victims)
            return victims

        with open_mailbox(endpoint, login, write=True) as mailbox:
            folder, _ = mailbox.ensure_folder("Bulk", None)
            mailbox.append(folder, [message(b"Subject: %d\r\n\r\nbulk\r\n" % n) for n in range(LISTING_SLICE + 60)])
        first = changes(None)
        gone = expunge(LISTING_SLICE + 10)
        second = changes(first.cursor)
        left = {ref.id for ref in first.changed} - set(gone)
        assert not second.complete and not second.changed and not second.removed
        assert second.present == left and len(left) == 50
        few = expunge(2)
        third = changes(second.cursor)
        assert not third.complete and not third.changed
        if capabilities is None:
            assert sorted(third.removed) == sorted(few) and third.present is None
        else:
            assert not third.removed and third.present == left - set(few)
        assert changes(third.cursor).unchanged()


def test_flags_and_deletions_of_many_scattered_messages(dovecot: None, lab_root: Path) -> None:
    """A flag change on 13,000 scattered messages (every other one: a user marked half a large folder read)
    made a UID set of some 70 KB, over Dovecot's 64 KB line limit ("Too long argument": the folder failed in
    every delta pass), and so did deleting them (--sync-deletes). Both are now sent as one command per flag
    set and part of the UID set (RFC 7162 asks for command lines of 8 KB at most), pipelined."""
    with DovecotServer(root=lab_root / "srv", name="flags", layout="target", users=[USER]) as server, \
            open_mailbox(ImapEndpoint(imap_config(server.port)), Login("carol@example.org", USER.name,
                                                                        Secret(USER.password)), write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Scattered", None)
        mailbox.append(folder, [message(b"Subject: %d\r\n\r\nx\r\n" % n) for n in range(26_000)])
        refs = mailbox.list_messages(folder)
        wanted = {ref.id: frozenset({"\\Seen"}) if n % 2 else frozenset({"\\Flagged", "Later"})
                  for n, ref in enumerate(refs) if n % 2 or n % 3 == 0}
        mailbox.set_flags(folder, wanted)
        flags = {ref.id: ref.flags for ref in mailbox.list_messages(folder)}
        assert flags == {ref.id: wanted.get(ref.id, frozenset()) for ref in refs}
        mailbox.delete(folder, [ref.id for n, ref in enumerate(refs) if n % 2])
        left = {ref.id: ref.flags for ref in mailbox.list_messages(folder)}
    assert left == {ref.id: wanted.get(ref.id, frozenset()) for n, ref in enumerate(refs) if not n % 2}


def test_a_session_creates_the_folders_its_list_lacks_without_listing_again(dovecot: None, lab_root: Path) -> None:
    """A first pass creates most of a mailbox's folders: each costs a CREATE and a STATUS, not also a LIST of
    the whole mailbox (a round trip and a listing per folder, quadratic in the folders). A folder above one
    the session created is listed first (that CREATE may have made it, RFC 3501 6.3.3): here Gamma after
    Gamma/Delta. Counted on the wire."""
    with DovecotServer(root=lab_root / "srv", name="create", layout="target", users=[USER]) as server, \
            FaultProxy(("127.0.0.1", server.port)) as proxy:
        login = Login("carol@example.org", USER.name, Secret(USER.password))
        with open_mailbox(ImapEndpoint(imap_config(proxy.port)), login, write=True) as mailbox:
            mailbox.list_folders(sizes=False)
            made = {path: mailbox.ensure_folder(path, None) for path in ("Alpha", "Alpha/Beta", "Gamma/Delta", "Gamma")}
            again = mailbox.ensure_folder("Alpha/Beta", None)
            listed = {f.path: f.key for f in mailbox.list_folders(sizes=False) if f.selectable}
        proxy.wait_idle()
        commands = proxy.stats().marks.commands
    assert {path: created for path, (_folder, created) in made.items()} == dict.fromkeys(made, True)
    assert again == (made["Alpha/Beta"][0], False)
    assert {path: folder.key for path, (folder, _created) in made.items()} == {path: listed[path] for path in made}
    assert (len(commands["LIST"]), len(commands["CREATE"]), len(commands["STATUS"])) == (3, 4, 4)


def round_trips(imap: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A spy on an imaplib connection's writes and tagged-reply reads: a round trip is a run of writes
    before the replies are read (count with exchanges())."""
    events: list[str] = []
    write, read = imap.send, imap._command_complete
    monkeypatch.setattr(imap, "send", lambda data: (events.append("write"), write(data))[1])
    monkeypatch.setattr(imap, "_command_complete", lambda *args: (events.append("read"), read(*args))[1])
    return events


def exchanges(events: list[str]) -> int:
    return sum(1 for i, event in enumerate(events) if event == "write" and (i == 0 or events[i - 1] == "read"))


def test_a_mailbox_s_new_folders_cost_a_round_trip_per_level_and_one_for_their_status(
        dovecot: None, lab_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first pass creates most of a mailbox's folders: each cost a CREATE and a STATUS round trip, 2 x 7
    here; now the CREATEs of each level of the tree go together (parents first, whatever order they are
    asked in), then every STATUS: 3. On a server without LIST-STATUS, the list's STATUS of every folder
    goes together too: 2 round trips for a LIST of a dozen folders, where each STATUS cost one."""
    paths = ["Work/2025", "Work", "Home/Kids", "Home", "Travel", "Work/2026", "Home/Garden"]
    with DovecotServer(root=lab_root / "srv", name="levels", layout="target", users=[USER],
                       capabilities=PLAIN_CAPABILITIES) as server, \
            open_mailbox(ImapEndpoint(imap_config(server.port)), Login("carol@example.org", USER.name,
                                                                        Secret(USER.password)), write=True) as mailbox:
        imap = cast(ImapMailbox, mailbox).client._imap
        listing = round_trips(imap, monkeypatch)
        mailbox.list_folders(sizes=False)
        monkeypatch.undo()
        creating = round_trips(imap, monkeypatch)
        outcomes = mailbox.ensure_folders([(path, None) for path in paths])
        monkeypatch.undo()
        listed = {f.path: f.key for f in mailbox.list_folders(sizes=False) if f.selectable}
        relisting = round_trips(imap, monkeypatch)
        mailbox.list_folders(sizes=False)
        monkeypatch.undo()
    assert [(o[0].path, o[1], o[0].key == listed[o[0].path]) for o in outcomes if not isinstance(o, Exception)] == \
        [(path, True, True) for path in paths]
    assert (exchanges(listing), exchanges(creating), exchanges(relisting)) == (2, 3, 2)


def test_append_folders_writes_every_append_before_it_reads_a_reply(dovecot: None, lab_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What append_folders is for: with LITERAL+ the APPENDs of a pass's staged folders cost one round trip
    together, where one each cost a round trip to a distant target. A spy on the session's writes and reply
    reads: every APPEND is written before the first reply is read, one reply each, and each batch stored."""
    sent = {"A": [message(BODY), message(BODY.replace(b"hello", b"two"))], "B": [message(BODY.replace(b"o", b"0"))]}
    with DovecotServer(root=lab_root / "srv", name="together", layout="target", users=[USER]) as server, \
            open_mailbox(ImapEndpoint(imap_config(server.port)), Login("carol@example.org", USER.name,
                                                                        Secret(USER.password)), write=True) as mailbox:
        folders = [mailbox.ensure_folder(path, None)[0] for path in sent]
        events = round_trips(cast(ImapMailbox, mailbox).client._imap, monkeypatch)
        outcomes = mailbox.append_folders([(folder, sent[folder.path]) for folder in folders])
        monkeypatch.undo()
        stored = {folder.path: len(mailbox.list_messages(folder)) for folder in folders}
    assert events.count("read") == 2 and "write" not in events[events.index("read"):]
    assert [len(ids) for ids in outcomes if not isinstance(ids, Exception)] == [2, 1]
    assert stored == {"A": 2, "B": 1}


def test_a_folder_is_opened_and_read_in_one_round_trip(dovecot: None, lab_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a folder that is not open (its changes since a cursor, or a batch of its messages) writes the
    EXAMINE and the UID FETCH together, in one socket write: one round trip, where each folder a pass reads
    cost two (a delta's changed folder two of each: asked, then read). A folder gone meanwhile fails alone,
    saying why, and the session reads the next; one whose UIDVALIDITY changed is refused as before."""
    with DovecotServer(root=lab_root / "srv", name="examine", layout="target", users=[USER]) as server:
        endpoint = ImapEndpoint(imap_config(server.port))
        login = Login("carol@example.org", USER.name, Secret(USER.password))
        with open_mailbox(endpoint, login, write=True) as mailbox:
            for path in ("One", "Two", "Gone"):
                folder, _ = mailbox.ensure_folder(path, None)
                mailbox.append(folder, [message(BODY.replace(b"hello", path.encode()))])
        with open_mailbox(endpoint, login, write=False) as reader:
            listed = {f.path: f for f in reader.list_folders(sizes=False)}
            refs = {path: reader.list_messages(listed[path]) for path in ("One", "Two", "Gone")}
            with open_mailbox(endpoint, login, write=True) as other:
                other.remove_folder(listed["Gone"])
            imap = cast(ImapMailbox, cast(ReadOnlyMailbox, reader)._inner).client._imap
            events: list[str] = []
            send, readline = imap.send, imap.readline
            monkeypatch.setattr(imap, "send", lambda data: (events.append("write"), send(data))[1])
            monkeypatch.setattr(imap, "readline", lambda: (events.append("read"), readline())[1])
            bodies = [m.body for path in ("One", "Two") for m in reader.fetch(listed[path], refs[path])]
            # one socket write each, and none held back by Nagle's algorithm for an earlier one's ACK
            assert exchanges(events) == events.count("write") == 2
            assert imap.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert len(bodies) == 2 and b"One" in bodies[0] and b"Two" in bodies[1]
            monkeypatch.undo()
            with pytest.raises(FolderFailed, match=r"examine failed: NO .*Gone"):
                list(reader.fetch(listed["Gone"], refs["Gone"]))
            assert [m.body for m in reader.fetch(listed["One"], refs["One"])] == bodies[:1]
            renumbered = FolderInfo(listed["Two"].path, listed["Two"].separator, None, "1")
            with pytest.raises(FolderFailed, match="UIDVALIDITY is now"):
                list(reader.fetch(renumbered, refs["Two"]))


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_sessions_over_tls_verify_the_server_and_copy_byte_for_byte(dovecot: None, lab_root: Path,
                                                                   security: str) -> None:
    """Implicit TLS (993's kind) and STARTTLS against Dovecot with a certificate of the lab's own CA, named in
    ca_file: the session verifies it, logs in, stores and reads back the exact bytes, and its socket sends
    at once (TCP_NODELAY, set on the TLS socket as on a plain one). Without the CA the server is refused
    as unverified, before any password is sent."""
    with DovecotServer(root=lab_root / "srv", name="tls", layout="target", users=[USER], tls=True) as server:
        port = server.tls_port if security == "tls" else server.port
        assert port is not None

        def endpoint(ca_file: Path | None) -> ImapEndpoint:
            return ImapEndpoint(EndpointConfig("target", "imap", server.host, port, security, None, None, ca_file,
                                               False, 10.0, {}))

        login = Login("carol@example.org", USER.name, Secret(USER.password))
        with open_mailbox(endpoint(server.ca_file), login, write=True) as mailbox:
            sock = cast(ImapMailbox, mailbox).client._imap.sock
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) and sock.version() is not None
            folder, _ = mailbox.ensure_folder("Secure", None)
            mailbox.append(folder, [message(BODY)])
            assert [m.body for m in mailbox.fetch(folder, mailbox.list_messages(folder))] == [BODY]
        with pytest.raises(Unreachable, match="certificate verify failed"), \
                open_mailbox(endpoint(None), login, write=False):
            pass
