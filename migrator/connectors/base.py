"""The connector protocol, and the read-only guard every source session goes through.

A connector is a small required interface (rclone's lesson): list folders, list messages, fetch, append,
find a copy by its tag, set flags, delete. Optional features are declared in Capabilities and tested by
callers at run time. The read-only guard lives here, once, so that no connector can forget it: a source
is never modified.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from migrator.errors import FolderFailed, ItemFailed, StateError
from migrator.model import (
    Capabilities,
    CopyTag,
    CutoverSettings,
    FolderChanges,
    FolderInfo,
    Login,
    MessageRef,
    RawMessage,
    Role,
)


@dataclass(frozen=True)
class Probe:
    """What `check` learns from an endpoint without opening a mailbox."""

    address: str
    security: str
    capabilities: frozenset[str]
    admin_login: bool


FolderBatch = tuple[FolderInfo, Sequence[RawMessage]]  # messages to append to one folder
AppendOutcome = Sequence[str | ItemFailed | None] | ItemFailed | FolderFailed  # of one batch (append_folders)
FolderRequest = tuple[str, Role | None]  # a folder wanted at a path, in a role (ensure_folders)
EnsureOutcome = tuple[FolderInfo, bool] | FolderFailed  # the folder and whether this call made it, or why not


class Mailbox(Protocol):
    """One authenticated session on one mailbox."""

    def capabilities(self) -> Capabilities: ...

    def list_folders(self, *, sizes: bool = True) -> list[FolderInfo]:
        """Every folder with its key and message count, and with `sizes` its bytes (which may cost a
        listing of every message); raises Transient or FolderFailed."""
        ...

    def ensure_folder(self, path: str, role: Role | None) -> tuple[FolderInfo, bool]:
        """The folder at `path`, created if missing; returns (folder, created_now)."""
        ...

    def ensure_folders(self, wanted: Sequence[FolderRequest]) -> list[EnsureOutcome]:
        """`ensure_folder` of each (path, role), in as few exchanges as the server allows (IMAP: each level of
        the tree's CREATEs written at once, then every new folder's STATUS: a first pass creates most of a
        mailbox's folders, and each cost two round trips). Each outcome is its own, (folder, created_now) or
        the FolderFailed that refused it; raises what ensure_folder raises beyond that (Throttled,
        MailboxFailed, Transient)."""
        ...

    def list_messages(self, folder: FolderInfo) -> list[MessageRef]: ...

    def fetch(self, folder: FolderInfo, refs: Sequence[MessageRef], *, native: str | None = None
              ) -> Iterator[RawMessage]:
        """The messages of `refs`, as MIME; with `native` (one of Capabilities.native_formats) in that format
        where the endpoint can export them so, each RawMessage saying which it got."""
        ...

    def watermark(self, folder: FolderInfo) -> str | None:
        """An opaque mark: messages appended after it can be told apart from everything before it."""
        ...

    def append(self, folder: FolderInfo, messages: Sequence[RawMessage]) -> Sequence[str | ItemFailed | None]:
        """Write messages with flags and internal dates; returns, per message, its id where the server says
        it, or the ItemFailed that refused it where messages are stored one by one (Graph).

        Raises ItemFailed (the message is refused for good; a bulk append stores every message or none,
        RFC 3502), MailboxFailed (quota full) or Transient.
        """
        ...

    def append_folders(self, batches: Sequence[FolderBatch]) -> list[AppendOutcome]:
        """`append` of each (folder, messages) batch in order, as one exchange where the server allows it
        (IMAP with LITERAL+: every APPEND written at once and the replies read after, one round trip for
        all where one each cost a round trip; a delta pass copies a few messages into many folders). Each
        batch's outcome is its own, its ids or the ItemFailed or FolderFailed that refused it, and the
        others go on. Raises what `append` raises beyond those (MailboxFailed, Throttled, Transient) once
        the batches sent are answered.
        """
        ...

    def find_tagged(self, folder: FolderInfo, tags: Sequence[CopyTag], since: str | None) -> dict[CopyTag, list[str]]:
        """Ids of messages after watermark `since` that carry each tag, oldest first."""
        ...

    def changes(self, folder: FolderInfo, cursor: str | None) -> FolderChanges | None:
        """What changed since `cursor` (None: everything, with a first cursor), or None where the endpoint
        cannot say; then callers list the folder."""
        ...

    def set_flags(self, folder: FolderInfo, flags: Mapping[str, frozenset[str]]) -> None: ...

    def quota(self) -> tuple[int, int] | None:
        """(bytes used, byte limit) of the mailbox's storage quota, or None where there is none or the
        endpoint cannot say."""
        ...

    def cutover_settings(self) -> CutoverSettings:
        """Forwarding and automatic replies, as far as the endpoint can read them (IMAP cannot: Sieve
        scripts are not visible through IMAP)."""
        ...

    def throttled_seconds(self) -> float:
        """Seconds this session waited inside requests for the server's throttling (Graph's 429s and
        budgets); throttling that surfaces as Throttled is counted by the caller instead."""
        ...

    def delete(self, folder: FolderInfo, ids: Sequence[str]) -> None:
        """Remove messages by id (rollback and --sync-deletes only); ids already gone are no error."""
        ...

    def remove_folder(self, folder: FolderInfo) -> None:
        """Remove an empty folder (rollback of folders this tool created)."""
        ...


class Endpoint(Protocol):
    """One configured server or tenant."""

    def probe(self, on_behalf_of: str | None = None) -> Probe:
        """Reach it and negotiate TLS; with admin credentials configured and a user to act for, log in as
        the admin on that user's behalf. Raises Unreachable or AuthFailed."""
        ...

    def session(self, login: Login, *, write: bool) -> AbstractContextManager[Mailbox]: ...


@runtime_checkable
class MailboxLister(Protocol):
    """Optional: an endpoint that can list its own mailboxes (`discover --export-mailboxes`); callers test it
    with isinstance. IMAP cannot: a server shows one user's folders, never its list of users."""

    def list_mailboxes(self) -> list[str]:
        """The address of every mailbox, for a starting mailboxes.csv; raises EndpointError."""
        ...


class ReadOnlyMailbox:
    """Delegates reads; any write is a bug in migrator, never a user error, so it raises StateError."""

    def __init__(self, inner: Mailbox) -> None:
        self._inner = inner

    def capabilities(self) -> Capabilities:
        return self._inner.capabilities()

    def list_folders(self, *, sizes: bool = True) -> list[FolderInfo]:
        return self._inner.list_folders(sizes=sizes)

    def list_messages(self, folder: FolderInfo) -> list[MessageRef]:
        return self._inner.list_messages(folder)

    def fetch(self, folder: FolderInfo, refs: Sequence[MessageRef], *, native: str | None = None
              ) -> Iterator[RawMessage]:
        return self._inner.fetch(folder, refs, native=native)

    def watermark(self, folder: FolderInfo) -> str | None:
        return self._inner.watermark(folder)

    def find_tagged(self, folder: FolderInfo, tags: Sequence[CopyTag], since: str | None) -> dict[CopyTag, list[str]]:
        return self._inner.find_tagged(folder, tags, since)

    def changes(self, folder: FolderInfo, cursor: str | None) -> FolderChanges | None:
        return self._inner.changes(folder, cursor)

    def quota(self) -> tuple[int, int] | None:
        return self._inner.quota()

    def cutover_settings(self) -> CutoverSettings:
        return self._inner.cutover_settings()

    def throttled_seconds(self) -> float:
        return self._inner.throttled_seconds()

    def _refuse(self, operation: str) -> StateError:
        return StateError(f"refused to {operation} on a read-only session (the source is never modified)")

    def ensure_folder(self, path: str, role: Role | None) -> tuple[FolderInfo, bool]:
        raise self._refuse(f"create folder {path!r}")

    def ensure_folders(self, wanted: Sequence[FolderRequest]) -> list[EnsureOutcome]:
        raise self._refuse(f"create folders {', '.join(repr(path) for path, _role in wanted)}")

    def append(self, folder: FolderInfo, messages: Sequence[RawMessage]) -> Sequence[str | ItemFailed | None]:
        raise self._refuse(f"append to {folder.path!r}")

    def append_folders(self, batches: Sequence[FolderBatch]) -> list[AppendOutcome]:
        raise self._refuse(f"append to {', '.join(repr(folder.path) for folder, _messages in batches)}")

    def set_flags(self, folder: FolderInfo, flags: Mapping[str, frozenset[str]]) -> None:
        raise self._refuse(f"change flags in {folder.path!r}")

    def delete(self, folder: FolderInfo, ids: Sequence[str]) -> None:
        raise self._refuse(f"delete from {folder.path!r}")

    def remove_folder(self, folder: FolderInfo) -> None:
        raise self._refuse(f"remove folder {folder.path!r}")


def append_each(mailbox: Mailbox, batches: Sequence[FolderBatch]) -> list[AppendOutcome]:
    """Mailbox.append_folders one batch after another, for sessions that cannot send them together."""
    outcomes: list[AppendOutcome] = []
    for folder, messages in batches:
        try:
            outcomes.append(mailbox.append(folder, messages))
        except (ItemFailed, FolderFailed) as exc:
            outcomes.append(exc)
    return outcomes


@contextmanager
def open_mailbox(endpoint: Endpoint, login: Login, *, write: bool) -> Iterator[Mailbox]:
    """A session on `login`'s mailbox; read-only (guarded) unless `write`."""
    with endpoint.session(login, write=write) as mailbox:
        yield mailbox if write else ReadOnlyMailbox(mailbox)
