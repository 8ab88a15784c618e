"""The connector contract: what every connector must do, capability by capability.

Each connector has its own test file that provides the `contract` fixture (a real server or a documented-
behaviour simulator) and imports these tests with `from tests.contract import *`; what a connector cannot
do is declared in its Capabilities and checked here, never skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from migrator.connectors.base import Endpoint, Mailbox, open_mailbox
from migrator.engine.verify import FILLED_IN_BY_TARGET
from migrator.errors import AuthFailed, FolderFailed, ItemFailed, StateError, Unreachable
from migrator.fingerprint import fingerprint_fields
from migrator.model import CopyTag, FolderChanges, FolderInfo, Login, MessageRef, RawMessage, Role

__all__ = ["Contract", "test_append_folders_stores_each_batch_and_keeps_a_refusal_to_its_own_batch",
           "test_append_keeps_content_flags_and_date_and_ids_match_capabilities",
           "test_changes_since_a_cursor_are_what_was_added_flagged_or_deleted",
           "test_ensure_folder_creates_once_and_keeps_non_ascii_names",
           "test_ensure_folder_takes_a_folder_someone_made_after_the_list",
           "test_ensure_folders_makes_a_tree_and_takes_what_someone_else_made",
           "test_find_tagged_finds_our_copies_only",
           "test_lists_folders_with_roles_and_keys", "test_read_only_session_refuses_every_write",
           "test_set_flags_and_delete", "test_wrong_credentials_and_unreachable_endpoint_are_typed"]


@dataclass
class Contract:
    endpoint: Endpoint
    login: Login
    bad_login: Login
    unreachable: Endpoint
    plant: Callable[[str, bytes], None]  # put a message into a folder as someone else would (not through us)


def content_key(body: bytes) -> str:
    """The content fingerprint without the fields a target fills in when the source has none (verify
    compares those only where the source has them): equal for a message and its copy on any target."""
    fields = {k: v for k, v in fingerprint_fields(body).items() if k not in FILLED_IN_BY_TARGET}
    return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()


def message(body: bytes, flags: frozenset[str] = frozenset(), when: datetime | None = None) -> RawMessage:
    date = when or datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    return RawMessage(MessageRef("0", len(body), flags, date), body)


BODY = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: contract\r\n\r\nhello\r\n"


def test_lists_folders_with_roles_and_keys(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=False) as mailbox:
        folders = {f.path: f for f in mailbox.list_folders()}
    roles = {f.role: f.path for f in folders.values() if f.role}
    assert roles[Role.INBOX].upper() == "INBOX"
    assert roles[Role.SENT] == "Sent Items" and roles[Role.TRASH] == "Deleted Items"
    assert all(f.key for f in folders.values() if f.selectable)


def test_ensure_folder_creates_once_and_keeps_non_ascii_names(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        created, was_created = mailbox.ensure_folder("Projets/Été 2026", None)
        again, created_again = mailbox.ensure_folder("Projets/Été 2026", None)
        assert (was_created, created_again) == (True, False)
        assert created.key == again.key
        assert "Projets/Été 2026" in {f.path for f in mailbox.list_folders()}


def test_ensure_folders_makes_a_tree_and_takes_what_someone_else_made(contract: Contract) -> None:
    """A pass's target folders are asked for together (ensure_folders): parents and children, a folder asked
    twice, one the list showed, one another client made after the list (taken, not ours: a rollback removes
    only what we created). Each outcome is the folder as ensure_folder gives it, with the key a new list
    shows."""
    contract.plant("Shown", BODY)
    contract.plant("Tree", BODY)
    wanted: list[tuple[str, Role | None]] = [
        ("Tree/Leaf A", None), ("Shown", None), ("Tree/Leaf B", None), ("New Top", Role.ARCHIVE),
        ("Tree/Late", None), ("Tree/Leaf A", None), ("Tree/Leaf B/Deep", None)]
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        mailbox.list_folders(sizes=False)
        contract.plant("Tree/Late", BODY)
        outcomes = mailbox.ensure_folders(wanted)
        listed = {f.path: f.key for f in mailbox.list_folders(sizes=False) if f.selectable}
        late = mailbox.list_messages(next(o[0] for o in outcomes if not isinstance(o, Exception)
                                          and o[0].path == "Tree/Late"))
    made = [(o[0].path, o[1], o[0].key == listed[o[0].path]) for o in outcomes if not isinstance(o, Exception)]
    assert made == [("Tree/Leaf A", True, True), ("Shown", False, True), ("Tree/Leaf B", True, True),
                    ("New Top", True, True), ("Tree/Late", False, True), ("Tree/Leaf A", True, True),
                    ("Tree/Leaf B/Deep", True, True)], made
    assert len(late) == 1


def test_ensure_folder_takes_a_folder_someone_made_after_the_list(contract: Contract) -> None:
    """A session trusts the folder list it read (a first pass then creates folders without listing again
    before each): a folder another client made since (below one the list showed) is found once the server
    refuses to create it again, taken with its own key and message, and not reported as created: a rollback
    removes only the folders we created."""
    contract.plant("Raced", BODY)
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        mailbox.list_folders(sizes=False)
        contract.plant("Raced/Deeper", BODY)
        folder, created = mailbox.ensure_folder("Raced/Deeper", None)
        assert created is False
        assert len(mailbox.list_messages(folder)) == 1
        assert folder.key == {f.path: f.key for f in mailbox.list_folders(sizes=False)}["Raced/Deeper"]


def test_append_keeps_content_flags_and_date_and_ids_match_capabilities(contract: Contract) -> None:
    sent = [message(BODY, frozenset({"\\Seen", "$Forwarded", "Work"})),
            message(BODY.replace(b"hello", b"second"), frozenset({"\\Flagged"}),
                    datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC))]
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Contract", None)
        ids = mailbox.append(folder, sent)
        assert_stored_as_sent(mailbox, folder, sent, ids)


def test_append_folders_stores_each_batch_and_keeps_a_refusal_to_its_own_batch(contract: Contract) -> None:
    """A pass's staged folders go to the target together (append_folders): each batch is stored in its own
    folder as `append` stores it, and a batch the target refuses (its folder is gone) is that batch's
    outcome alone, before and after it the others are stored."""
    one = [message(BODY, frozenset({"\\Seen"})), message(BODY.replace(b"hello", b"two"), frozenset({"Work"}))]
    three = [message(BODY.replace(b"hello", b"three"), frozenset({"\\Flagged"}),
                     datetime(2020, 2, 29, 12, 0, tzinfo=UTC))]
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        first, _ = mailbox.ensure_folder("Stage One", None)
        gone, _ = mailbox.ensure_folder("Stage Gone", None)
        third, _ = mailbox.ensure_folder("Stage Three", None)
        mailbox.remove_folder(gone)
        outcomes = mailbox.append_folders([(first, one), (gone, [message(BODY)]), (third, three)])
        assert len(outcomes) == 3 and isinstance(outcomes[1], FolderFailed)
        for folder, sent, ids in ((first, one, outcomes[0]), (third, three, outcomes[2])):
            assert not isinstance(ids, Exception)
            assert_stored_as_sent(mailbox, folder, sent, ids)


def append_in_batches(mailbox: Mailbox, folder: FolderInfo, messages: Sequence[RawMessage]) -> None:
    """Append as the engine does: in batches of no more messages than the target takes in one append
    (Capabilities.max_batch_messages, e.g. an IMAP server's MESSAGELIMIT)."""
    most = mailbox.capabilities().max_batch_messages or len(messages)
    for start in range(0, len(messages), most):
        mailbox.append(folder, messages[start:start + most])


def assert_stored_as_sent(mailbox: Mailbox, folder: FolderInfo, sent: Sequence[RawMessage],
                          ids: Sequence[str | ItemFailed | None]) -> None:
    """`folder` holds `sent` as the capabilities promise (bytes or content, flags, dates), and `ids` are the
    copies' ids where the target names them."""
    caps = mailbox.capabilities()
    assert all(i is not None for i in ids) == caps.append_returns_ids
    fetched = {m.ref.id: m for m in mailbox.fetch(folder, mailbox.list_messages(folder))}
    content = (lambda body: body) if caps.preserves_bytes else content_key
    assert sorted(content(m.body) for m in fetched.values()) == sorted(content(m.body) for m in sent)
    for original in sent:
        copy = next(m for m in fetched.values() if content(m.body) == content(original.body))
        assert copy.ref.flags == caps.storable_flags(original.ref.flags)
        assert copy.ref.internal_date == original.ref.internal_date
        if caps.preserves_bytes:
            assert copy.ref.size == len(original.body)
    if caps.append_returns_ids:
        assert sorted(ids, key=str) == sorted(fetched, key=str)


def test_find_tagged_finds_our_copies_only(contract: Contract) -> None:
    """An identical message that was there before us is never taken for our copy: IMAP tells them apart by
    the watermark (UIDNEXT), Graph by the tag property only our copies carry."""
    tag = CopyTag(hashlib.sha256(BODY).hexdigest(), len(BODY))
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Tagged", None)
    contract.plant("Tagged", BODY)
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Tagged", None)
        watermark = mailbox.watermark(folder)
        ids = mailbox.append(folder, [message(BODY), message(BODY)])
        found = mailbox.find_tagged(folder, [tag], watermark)
    assert len(found[tag]) == 2
    if mailbox.capabilities().append_returns_ids:
        assert sorted(found[tag]) == sorted(str(i) for i in ids)


def test_set_flags_and_delete(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Flags", None)
        append_in_batches(mailbox, folder, [message(BODY), message(BODY + b"x"),
                                            message(BODY + b"y", frozenset({"\\Seen"}))])
        first, second, third = mailbox.list_messages(folder)
        mailbox.set_flags(folder, {first.id: frozenset({"\\Answered", "Later"}), third.id: frozenset({"\\Flagged"})})
        mailbox.delete(folder, [second.id])
        remaining = {ref.id: ref.flags for ref in mailbox.list_messages(folder)}
    assert remaining == {first.id: {"\\Answered", "Later"}, third.id: {"\\Flagged"}}


def test_changes_since_a_cursor_are_what_was_added_flagged_or_deleted(contract: Contract) -> None:
    """A connector that keeps change cursors (Capabilities.change_cursor) says, on a session that reads,
    what was added, re-flagged or deleted since a cursor, and nothing about the messages left alone; one
    that does not answers None (the pass lists the folder)."""
    words = (b"kept", b"flagged", b"deleted")
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Changes", None)
        append_in_batches(mailbox, folder, [message(BODY.replace(b"hello", word)) for word in words])
        tracked = mailbox.capabilities().change_cursor is not None

    def changes(cursor: str | None) -> FolderChanges | None:
        with open_mailbox(contract.endpoint, contract.login, write=False) as reader:
            listed = next(f for f in reader.list_folders(sizes=False) if f.path == "Changes")
            return reader.changes(listed, cursor)

    first = changes(None)
    if not tracked:
        assert first is None
        return
    assert first is not None and first.complete and len(first.changed) == 3
    with open_mailbox(contract.endpoint, contract.login, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Changes", None)
        by_word = {word: m.ref.id for m in mailbox.fetch(folder, mailbox.list_messages(folder))
                   for word in words if word in m.body}
        kept, flagged, deleted = (by_word[word] for word in words)
        mailbox.set_flags(folder, {flagged: frozenset({"\\Flagged"})})
        mailbox.delete(folder, [deleted])
        mailbox.append(folder, [message(BODY.replace(b"hello", b"arrived later"))])
    second = changes(first.cursor)
    assert second is not None and not second.complete
    changed = {ref.id: ref for ref in second.changed}
    assert flagged in changed and changed[flagged].flags == {"\\Flagged"} and kept not in changed
    # gone: named (removed), or left out of every id the folder still holds (present)
    gone = set(second.removed) if second.present is None else {kept, deleted} - second.present
    assert len(changed) == 2 and gone & {kept, deleted} == {deleted}
    third = changes(second.cursor)
    assert third is not None and not third.complete and not third.changed and not third.removed


def test_read_only_session_refuses_every_write(contract: Contract) -> None:
    with open_mailbox(contract.endpoint, contract.login, write=False) as mailbox:
        inbox = next(f for f in mailbox.list_folders() if f.role == Role.INBOX)
        with pytest.raises(StateError, match="read-only"):
            mailbox.append(inbox, [message(BODY)])
        with pytest.raises(StateError, match="read-only"):
            mailbox.ensure_folder("New", None)
        with pytest.raises(StateError, match="read-only"):
            mailbox.ensure_folders([("New", None)])
        with pytest.raises(StateError, match="read-only"):
            mailbox.append_folders([(inbox, [message(BODY)])])
        with pytest.raises(StateError, match="read-only"):
            mailbox.set_flags(inbox, {"1": frozenset()})
        with pytest.raises(StateError, match="read-only"):
            mailbox.delete(inbox, ["1"])
        assert mailbox.list_messages(inbox) == []


def test_wrong_credentials_and_unreachable_endpoint_are_typed(contract: Contract) -> None:
    with pytest.raises(AuthFailed), open_mailbox(contract.endpoint, contract.bad_login, write=False):
        pass
    with pytest.raises(Unreachable):
        contract.unreachable.probe()
