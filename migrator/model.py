"""Frozen value objects shared by every layer; connectors, store and engine speak only these."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property


class Role(StrEnum):
    """Special-use role of a folder (RFC 6154), the common ground between IMAP and Exchange folders."""

    INBOX = "inbox"
    SENT = "sent"
    DRAFTS = "drafts"
    TRASH = "trash"
    JUNK = "junk"
    ARCHIVE = "archive"


class Stage(StrEnum):
    PRESTAGE = "prestage"
    DELTA = "delta"
    FINAL = "final"


class Secret:
    """A password or client secret; its repr and str never show the value, so it cannot leak into logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Login:
    """How to open one mailbox on one endpoint: its address, and the user's own credentials if given.

    When `password` is None the endpoint logs in with its admin credentials on behalf of `user`.
    """

    address: str
    user: str
    password: Secret | None = None


@dataclass(frozen=True)
class MailboxEntry:
    """One row of mailboxes.csv."""

    source: str
    target: str
    source_login: str | None = None
    source_password: Secret | None = None
    target_login: str | None = None
    target_password: Secret | None = None
    group: str | None = None
    priority: int = 0

    def source_access(self) -> Login:
        return Login(self.source, self.source_login or self.source, self.source_password)

    def target_access(self) -> Login:
        return Login(self.target, self.target_login or self.target, self.target_password)


@dataclass(frozen=True)
class FolderInfo:
    """A folder as the endpoint reports it. `key` changes when the folder's ids are no longer valid
    (IMAP UIDVALIDITY); `path` is the decoded name with the endpoint's own `separator`."""

    path: str
    separator: str | None
    role: Role | None = None
    key: str | None = None
    messages: int = 0
    size: int = 0
    selectable: bool = True

    @property
    def parts(self) -> tuple[str, ...]:
        if not self.separator:
            return (self.path,)
        return tuple(self.path.split(self.separator))


@dataclass(frozen=True)
class MessageRef:
    """A message in a listing: enough to decide whether it must be copied, without its bytes."""

    id: str
    size: int
    flags: frozenset[str]
    internal_date: datetime


@dataclass(frozen=True)
class RawMessage:
    """A fetched message. `body` is RFC 5322 bytes unless `format` names an endpoint's native format (e.g.
    "exchange-fts", an opaque full-fidelity stream only the same kind of endpoint can store). `tag` is the
    copy's idempotency tag where the target cannot hash the stored bytes (a native copy is tagged with a
    fingerprint of properties the target keeps); otherwise the tag is the SHA-256 of `body`."""

    ref: MessageRef
    body: bytes = field(repr=False)
    format: str | None = None
    tag: str | None = None

    @cached_property
    def digest(self) -> str:
        """Computed once, by the fetching thread (the prefetcher asks for it), in parallel with the APPEND
        of the batch before: hashlib lets go of the GIL while it hashes."""
        return self.tag or hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class CopyTag:
    """Idempotency tag of one copy: the SHA-256 of the exact bytes plus their size.

    The tag never modifies the message: on resume the target folder is searched for messages of this
    size that arrived after the recorded watermark, and their bytes are hashed to find the copy.
    """

    digest: str
    size: int


@dataclass(frozen=True)
class FolderChanges:
    """What changed in a folder since a cursor (Graph delta, IMAP QRESYNC or CONDSTORE): messages new or
    changed, ids gone (`removed`, possibly with ids the ledger never held), and the cursor to keep once
    this pass has acted on them. `complete` when `changed` is the whole folder (no cursor yet, or the
    server no longer knew it). A server that cannot name what was deleted (CONDSTORE without QRESYNC)
    gives every id the folder still holds instead (`present`): whatever else the ledger holds is gone."""

    changed: list[MessageRef]
    removed: list[str]
    cursor: str
    complete: bool
    present: frozenset[str] | None = None

    def unchanged(self) -> bool:
        """Nothing new, changed or gone since the cursor."""
        return not self.complete and not self.changed and not self.removed and self.present is None


@dataclass(frozen=True)
class CutoverSettings:
    """Mailbox settings that change what a cutover must take care of: where mail is forwarded (inbox rules
    that forward or redirect) and whether automatic replies are on. Endpoints that cannot tell say nothing."""

    forwards_to: tuple[str, ...] = ()
    auto_reply: bool = False


@dataclass(frozen=True)
class Capabilities:
    """What an endpoint can do; callers test these, connectors never pretend. `native_formats`: formats other
    than MIME the endpoint can fetch and append (the engine uses one only when source and target share it)."""

    append_returns_ids: bool = False
    bulk_append: bool = False
    preserves_bytes: bool = False
    preserves_internal_date: bool = False
    special_use: bool = False
    change_cursor: str | None = None
    max_message_size: int | None = None
    max_batch_messages: int | None = None  # messages one append may hold (IMAP MESSAGELIMIT/SAVELIMIT, RFC 9738)
    raw: frozenset[str] = frozenset()
    system_flags: frozenset[str] | None = None
    atom_keywords: bool = True
    native_formats: frozenset[str] = frozenset()

    def storable_flags(self, flags: frozenset[str]) -> frozenset[str]:
        """The flags a copy on this endpoint can carry: the system flags it keeps (`system_flags`, None for
        all) and every keyword, as an IMAP atom where keywords must be atoms (an Exchange category such as
        "Red category" becomes the keyword "Red_category"). Verify compares source flags through this."""
        kept = set()
        for flag in flags:
            if flag.startswith("\\"):
                if self.system_flags is None or flag in self.system_flags:
                    kept.add(flag)
            elif flag:
                kept.add(imap_keyword(flag) if self.atom_keywords else flag)
        return frozenset(kept)


_ATOM_SPECIALS = frozenset('(){ %*"\\]')


def imap_keyword(name: str) -> str:
    """`name` as an IMAP keyword (RFC 3501 atom): atom-specials, controls and non-ASCII become "_"."""
    return "".join("_" if ch in _ATOM_SPECIALS or not " " < ch < "\x7f" else ch for ch in name)
