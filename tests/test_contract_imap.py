"""The connector contract, run against real Dovecot: what every connector must do, capability by capability.

A new connector gets its own file that provides the `contract` fixture and imports these tests; what it
cannot do is declared in its Capabilities and checked here, never skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from migrator.config import EndpointConfig
from migrator.connectors.base import Endpoint, open_mailbox
from migrator.connectors.imap import ImapEndpoint
from migrator.errors import AuthFailed, StateError, Unreachable
from migrator.lab.dovecot import DovecotServer, LabUser, free_port
from migrator.model import CopyTag, Login, MessageRef, RawMessage, Role, Secret

USER = LabUser("carol", "carol-pw")
# Dovecot's own list minus UIDPLUS and MULTIAPPEND: a server of the kind many hosted IMAP services are.
PLAIN_CAPABILITIES = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ SPECIAL-USE NAMESPACE CHILDREN"


@dataclass
class Contract:
    endpoint: Endpoint
    login: Login


def imap_config(port: int) -> EndpointConfig:
    return EndpointConfig("target", "imap", "127.0.0.1", port, "none", None, None, None, False, 10.0, {})


@pytest.fixture(params=["full", "no-uidplus-no-multiappend"])
def contract(request: pytest.FixtureRequest, dovecot: None, lab_root: Path) -> Iterator[Contract]:
    capabilities = PLAIN_CAPABILITIES if request.param != "full" else None
    with DovecotServer(root=lab_root / "srv", name="contract", layout="target", users=[USER],
                       capabilities=capabilities) as server:
        yield Contract(ImapEndpoint(imap_config(server.port)), Login("carol@example.org", USER.name,
                                                                      Secret(USER.password)))


def message(body: bytes, flags: frozenset[str] = frozenset(), when: datetime | None = None) -> RawMessage:
    date = when or datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    return RawMessage(MessageRef("0", len(body), flags, date), body)


BODY = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: contract\r\n\r\nhello\r\n"


def test_lists_folders_with_roles_and_keys(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=False) as mailbox:
        folders = {f.path: f for f in mailbox.list_folders()}
    assert folders["INBOX"].role == Role.INBOX
    assert folders["Sent Items"].role == Role.SENT and folders["Deleted Items"].role == Role.TRASH
    assert all(f.key for f in folders.values() if f.selectable)


def test_ensure_folder_creates_once_and_keeps_non_ascii_names(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        created, was_created = mailbox.ensure_folder("Projets/Été 2026", None)
        again, created_again = mailbox.ensure_folder("Projets/Été 2026", None)
        assert (was_created, created_again) == (True, False)
        assert created.key == again.key
        assert "Projets/Été 2026" in {f.path for f in mailbox.list_folders()}


def test_append_keeps_bytes_flags_and_date_and_ids_match_capabilities(contract: Contract) -> None:
    sent = [message(BODY, frozenset({"\\Seen", "$Forwarded", "Work"})),
            message(BODY.replace(b"hello", b"second"), frozenset({"\\Flagged"}),
                    datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC))]
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Contract", None)
        ids = mailbox.append(folder, sent)
        caps = mailbox.capabilities()
        assert all(i is not None for i in ids) == caps.append_returns_ids
        listing = mailbox.list_messages(folder)
        fetched = {m.ref.id: m for m in mailbox.fetch(folder, listing)}
    assert sorted(m.body for m in fetched.values()) == sorted(m.body for m in sent)
    for original in sent:
        copy = next(m for m in fetched.values() if m.body == original.body)
        assert copy.ref.flags == original.ref.flags
        assert copy.ref.internal_date == original.ref.internal_date
        assert copy.ref.size == len(original.body)
    if caps.append_returns_ids:
        assert sorted(ids, key=str) == sorted(fetched, key=str)


def test_find_tagged_sees_only_copies_after_the_watermark(contract: Contract) -> None:
    tag = CopyTag(hashlib.sha256(BODY).hexdigest(), len(BODY))
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Tagged", None)
        mailbox.append(folder, [message(BODY)])  # an identical message that was there before us
        watermark = mailbox.watermark(folder)
        mailbox.append(folder, [message(BODY), message(BODY)])
        found = mailbox.find_tagged(folder, [tag], watermark)
        everything = mailbox.find_tagged(folder, [tag], None)
    assert len(found[tag]) == 2 and len(everything[tag]) == 3
    assert set(found[tag]) < set(everything[tag])


def test_set_flags_and_delete(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Flags", None)
        mailbox.append(folder, [message(BODY), message(BODY + b"x")])
        first, second = mailbox.list_messages(folder)
        mailbox.set_flags(folder, {first.id: frozenset({"\\Answered", "Later"})})
        mailbox.delete(folder, [second.id])
        (remaining,) = mailbox.list_messages(folder)
    assert remaining.id == first.id and remaining.flags == {"\\Answered", "Later"}


def test_read_only_session_refuses_every_write(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=False) as mailbox:
        inbox = next(f for f in mailbox.list_folders() if f.role == Role.INBOX)
        with pytest.raises(StateError, match="read-only"):
            mailbox.append(inbox, [message(BODY)])
        with pytest.raises(StateError, match="read-only"):
            mailbox.ensure_folder("New", None)
        with pytest.raises(StateError, match="read-only"):
            mailbox.set_flags(inbox, {"1": frozenset()})
        with pytest.raises(StateError, match="read-only"):
            mailbox.delete(inbox, ["1"])
        assert mailbox.list_messages(inbox) == []


def test_wrong_password_and_unreachable_port_are_typed(contract: Contract) -> None:
    bad = Login(contract.login.address, contract.login.user, Secret("nope"))
    with pytest.raises(AuthFailed, match="login refused"), open_mailbox(contract.endpoint, bad, write=False):
        pass
    with pytest.raises(Unreachable, match="cannot connect"):
        ImapEndpoint(imap_config(free_port())).probe()
