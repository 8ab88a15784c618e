"""The mailbox store behind the Graph simulator: users, folders, messages as Exchange keeps them (properties, not
MIME), and the change log that message delta queries read.

Documented facts this store reproduces:

* Default folders. A new mailbox has Archive, Conversation History, Deleted Items, Drafts, Inbox, Junk Email, Outbox
  and Sent Items under the root ("Top of Information Store"), plus the hidden Clutter folder (the `List mailFolders`
  examples, https://learn.microsoft.com/en-us/graph/api/user-list-mailfolders). Well-known names (inbox, drafts,
  sentitems, deleteditems, junkemail, archive, outbox, conversationhistory, clutter, msgfolderroot,
  recoverableitemsdeletions) work "regardless of the locale" (https://learn.microsoft.com/en-us/graph/api/resources/
  mailfolder, "Well-known folder names"); Recoverable Items Deletions is hidden and outside the folder tree.
* Folder and item ids are opaque base64 strings, stable for the item's life (the `id` property; ids like
  `AQMkADYAAAIBDAAAAA==` and `AAMkAGI2THVSAAA=` in the documentation's examples).
* Deleting an item leaves a tombstone that a delta round reports as `@removed` (https://learn.microsoft.com/en-us/
  graph/delta-query-messages).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .graph_mime import Address, RenderInput, SimAttachment, render_mime

DEFAULT_FOLDERS: tuple[tuple[str, str, bool], ...] = (
    ("Archive", "archive", False),
    ("Conversation History", "conversationhistory", False),
    ("Deleted Items", "deleteditems", False),
    ("Drafts", "drafts", False),
    ("Inbox", "inbox", False),
    ("Junk Email", "junkemail", False),
    ("Outbox", "outbox", False),
    ("Sent Items", "sentitems", False),
    ("Clutter", "clutter", True),
)
ROOT_NAME = "msgfolderroot"
DELETIONS_NAME = "recoverableitemsdeletions"
WELL_KNOWN = frozenset({name for _, name, _ in DEFAULT_FOLDERS} | {ROOT_NAME, DELETIONS_NAME})

_ID_RE = re.compile(r"^A[AQ]Mk[A-Za-z0-9_-]{8,}={0,2}$")


def now_utc() -> datetime:
    return datetime.now(UTC)


def make_id(kind: str, *parts: str) -> str:
    """An opaque, url-safe id: `AQMk...` for folders, `AAMk...` for items and attachments."""
    digest = hashlib.sha256("\x00".join((kind, *parts)).encode()).digest()[:30]
    prefix = "AQMkA" if kind == "folder" else "AAMkA"
    return prefix + base64.urlsafe_b64encode(digest).decode()


def well_formed_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


@dataclass
class SimMessage:
    """A stored message: the properties Exchange keeps (what `$value` is rendered from)."""

    id: str
    folder_id: str
    subject: str = ""
    is_draft: bool = False
    is_read: bool = False
    flag_status: str = "notFlagged"
    categories: list[str] = field(default_factory=list)
    received: datetime = field(default_factory=now_utc)
    sent: datetime | None = None
    internet_message_id: str = ""
    extended: dict[str, str] = field(default_factory=dict)  # property id (as first written) -> value
    body_type: str = "text"
    body: str = ""
    attachments: list[SimAttachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)  # custom x- internet message headers
    from_: Address | None = None
    sender: Address | None = None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    importance: str = "normal"
    created: datetime = field(default_factory=now_utc)
    last_modified: datetime = field(default_factory=now_utc)
    raw: bytes | None = None  # the MIME it was created from, if any (returned as-is when rerender=False)
    size: int = 0  # PidTagMessageSize: bytes of the rendered MIME
    created_seq: int = 0
    changed_seq: int = 0
    version: int = 1

    def render_input(self) -> RenderInput:
        return RenderInput(item_id=self.id, subject=self.subject, from_=self.from_, sender=self.sender, to=self.to,
                           cc=self.cc, reply_to=self.reply_to, sent=self.sent, received=self.received,
                           internet_message_id=self.internet_message_id, body_type=self.body_type, body=self.body,
                           attachments=self.attachments, headers=self.headers, is_draft=self.is_draft,
                           importance=self.importance)

    def render(self, rerender: bool = True) -> bytes:
        if not rerender and self.raw is not None:
            return self.raw
        return render_mime(self.render_input())

    @property
    def has_attachments(self) -> bool:
        """`hasAttachments` does not count inline attachments."""
        return any(not a.is_inline for a in self.attachments)

    def change_key(self) -> str:
        """The item's version (outlookItem.changeKey): new with every change, the same in every API."""
        return base64.b64encode(f"{self.id}:{self.version}".encode()).decode()[-28:]

    def attachment_id(self, index: int) -> str:
        return make_id("attachment", self.id, str(index))

    def snapshot(self) -> SimMessage:
        return copy.deepcopy(self)


@dataclass
class SimFolder:
    id: str
    display_name: str
    parent_id: str
    well_known: str | None = None
    is_hidden: bool = False


@dataclass
class Tombstone:
    seq: int
    message_id: str
    folder_id: str
    created_seq: int


@dataclass
class Mailbox:
    user_id: str
    address: str
    display_name: str
    quota_bytes: int | None = None
    forwarding_to: str | None = None
    auto_reply: bool = False
    root_id: str = ""
    folders: dict[str, SimFolder] = field(default_factory=dict)
    well_known: dict[str, str] = field(default_factory=dict)
    messages: dict[str, SimMessage] = field(default_factory=dict)
    tombstones: list[Tombstone] = field(default_factory=list)
    seq: int = 0
    counter: int = 0

    @classmethod
    def create(cls, user_id: str, address: str, display_name: str, quota_bytes: int | None,
               forwarding_to: str | None, auto_reply: bool) -> Mailbox:
        mb = cls(user_id, address, display_name, quota_bytes, forwarding_to, auto_reply)
        top = make_id("folder", user_id, "root-of-mailbox")
        mb.root_id = make_id("folder", user_id, ROOT_NAME)
        mb.folders[mb.root_id] = SimFolder(mb.root_id, "Top of Information Store", top, ROOT_NAME)
        mb.well_known[ROOT_NAME] = mb.root_id
        for name, wk, hidden in DEFAULT_FOLDERS:
            fid = make_id("folder", user_id, wk)
            mb.folders[fid] = SimFolder(fid, name, mb.root_id, wk, hidden)
            mb.well_known[wk] = fid
        recoverable = make_id("folder", user_id, "recoverableitemsroot")
        deletions = make_id("folder", user_id, DELETIONS_NAME)
        mb.folders[deletions] = SimFolder(deletions, "Deletions", recoverable, DELETIONS_NAME, True)
        mb.well_known[DELETIONS_NAME] = deletions
        return mb

    def next_id(self, kind: str) -> str:
        self.counter += 1
        return make_id(kind, self.user_id, str(self.counter))

    def bump(self) -> int:
        self.seq += 1
        return self.seq

    def children(self, folder_id: str) -> list[SimFolder]:
        return sorted((f for f in self.folders.values() if f.parent_id == folder_id),
                      key=lambda f: f.display_name.lower())

    def in_tree(self, folder: SimFolder) -> bool:
        """Whether the folder hangs under the root (Recoverable Items does not)."""
        seen = 0
        current: SimFolder | None = folder
        while current is not None and seen < 1000:
            if current.id == self.root_id:
                return True
            current = self.folders.get(current.parent_id)
            seen += 1
        return False

    def paths(self) -> dict[str, str]:
        out: dict[str, str] = {}

        def walk(parent: str, prefix: str) -> None:
            for child in self.children(parent):
                path = f"{prefix}{child.display_name}"
                out[path] = child.id
                walk(child.id, path + "/")

        walk(self.root_id, "")
        return out

    def folder_by_path(self, path: str) -> SimFolder | None:
        if path.lower() in self.well_known:
            return self.folders[self.well_known[path.lower()]]
        current = self.root_id
        for part in [p for p in path.split("/") if p]:
            match = next((c for c in self.children(current) if c.display_name.lower() == part.lower()), None)
            if match is None:
                return None
            current = match.id
        return self.folders[current]

    def used_bytes(self) -> int:
        return sum(m.size for m in self.messages.values())

    def subtree(self, folder_id: str) -> list[str]:
        out = [folder_id]
        for child in [f.id for f in self.folders.values() if f.parent_id == folder_id]:
            out.extend(self.subtree(child))
        return out
