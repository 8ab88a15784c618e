"""One Exchange Online mailbox through Microsoft Graph, as the connector protocol sees it.

Folders are addressed by their display-name path ("Inbox/Projects", separator "/"); a folder's key is a
digest of its Graph id, so a folder deleted and recreated under the same name reads as a new folder (the
role UIDVALIDITY plays for IMAP). Message ids are immutable ids, stable across moves.

Writes: each message is created by a JSON POST (see mime.py for why not MIME), four at a time, the per-mailbox
concurrency Outlook allows. The copy's idempotency tag (the SHA-256 of the source bytes) is a named extended
property set in the creating request, so settling an open intent is one filtered query. A message whose
attachments go through upload sessions is created with a "pending-" tag that becomes the real tag only after
the last upload: a crash in between leaves an incomplete copy that settling recognises by that tag and removes
before copying again.

Requests that create nothing (tag queries, flag changes, deletions, native copies' tags, the well-known folder
reads) go in chained JSON batches, up to four at a time (client.py). Creates stay one request each: a create
whose answer is lost is then one open intent, settled by its tag, and never sent again blind.

Native copies (Graph to Graph, when both tenants offer the mailbox import/export API, native.py): the source
exports each message as an opaque full-fidelity stream and the target imports it. The stream cannot carry
our tag, and an imported item is indistinguishable from the customer's own mail (mail keeps arriving in
target folders during a migration, and an earlier tool may have left identical copies there), so an item
is never imported straight into a customer's folder. It is imported into our hidden staging folder
(`STAGING`), which holds nothing but our imports; there it is found by the changeKey the import answers,
given the tag by PATCH, and only then moved into its folder (an immutable id survives the move,
https://learn.microsoft.com/en-us/graph/outlook-immutable-id). The tag of a native copy is a fingerprint of
properties the import keeps (native.native_tag), so it is known before the import and computable from the
staged item itself. After a crash an open intent's copy is therefore either in its folder carrying the tag
(found by the same one filtered query as a MIME copy: done), or still in the staging folder, tagged or not
(recognised by its fingerprint and removed, so the intent reads as never arrived and is copied again), or
nowhere. Nothing in a customer's folder is ever adopted or removed by fingerprint, only by our tag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

from migrator.connectors.base import AppendOutcome, EnsureOutcome, FolderBatch, FolderRequest, append_each
from migrator.connectors.graph import mime
from migrator.connectors.graph.client import (
    MAILBOX_CONCURRENCY,
    Answer,
    GraphClient,
    GraphError,
    SubRequest,
    spread,
    translate,
    translated,
)
from migrator.connectors.graph.native import FINGERPRINTED, FORMAT, MailboxTransfer, native_tag, pages_of
from migrator.errors import FolderFailed, ItemFailed, StateError, Transient
from migrator.fingerprint import Attachment
from migrator.model import (
    Capabilities,
    CopyTag,
    CutoverSettings,
    FolderChanges,
    FolderInfo,
    MessageRef,
    RawMessage,
    Role,
)

# Well-known folder names (https://learn.microsoft.com/en-us/graph/api/resources/mailfolder) and their roles.
WELL_KNOWN = {"inbox": Role.INBOX, "sentitems": Role.SENT, "deleteditems": Role.TRASH, "drafts": Role.DRAFTS,
              "junkemail": Role.JUNK, "archive": Role.ARCHIVE}
SEPARATOR = "/"
PAGE = 500
UPLOAD_CHUNK = 10 * 320 * 1024  # upload session chunks must be multiples of 320 KiB
UPLOAD_SESSION_MINIMUM = 3 * 2**20  # smaller attachments are one POST; sessions refuse them
PENDING = "pending-"
STAGING = "Migrator staging"  # hidden folder (isHidden can be set only when creating a folder, mailfolder)
KEPT_SYSTEM_FLAGS = frozenset({"\\Seen", "\\Flagged", "\\Draft", "\\Answered"})
_LISTED = "id,receivedDateTime,isRead,isDraft,flag,categories"
_EXPANDED = (f"singleValueExtendedProperties($filter=id eq '{mime.SIZE_PROPERTY}' "
             f"or id eq '{mime.LAST_VERB_PROPERTY}')")
T = TypeVar("T")
R = TypeVar("R")


def folder_key(folder_id: str) -> str:
    return hashlib.sha256(folder_id.encode()).hexdigest()[:32]


class GraphMailbox:
    """A session on one mailbox; `write` allows the clean-up of incomplete copies while settling."""

    def __init__(self, client: GraphClient, address: str, *, write: bool, max_message_size: int) -> None:
        self.client = client
        self.address = address
        self.write = write
        self.context = f"{client.describe()} {address}"
        self.max_message_size = max_message_size
        self._ids: dict[str, str] = {}  # folder path -> Graph id
        self._walked = False  # the folder tree was read in this session (_ids holds it)
        self._role_ids: dict[str, Role] | None = None  # Graph id -> role, read once a session
        self._pool = ThreadPoolExecutor(max_workers=MAILBOX_CONCURRENCY, thread_name_prefix="graph")
        self._waited_before = client.gate(address).throttled_seconds
        self.transfer = MailboxTransfer(client, address, write=write)
        self._joins: dict[str, dict[str, tuple[str, str]]] = {}  # folder path -> message id -> (item id, tag)
        self._staging: tuple[str, str] | None = None  # (mail API id, import/export API id)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _parallel(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """Results in order; the first failure is raised after every request in flight has ended. A lone item
        runs in the calling thread, which may then be one of the pool's own (it would wait on itself)."""
        items = list(items)
        if len(items) == 1:
            return [function(items[0])]
        futures = [self._pool.submit(function, item) for item in items]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]

    def _url(self, path: str) -> str:
        return self.client.user_url(self.address, path)

    def _message_url(self, message_id: str, path: str = "") -> str:
        return self._url(f"/messages/{quote(message_id, safe='')}{path}")

    def _batched(self, requests: Sequence[SubRequest], *, missing_ok: bool = False) -> list[dict[str, Any]]:
        """The answers to `requests` in order, sent as chained JSON batches spread over the mailbox's slots
        (client.batch); the first refusal is raised once every batch has ended, but with `missing_ok` a 404
        (already gone, or no such well-known folder) answers {}."""
        def send(part: Sequence[SubRequest]) -> list[dict[str, Any]]:
            return [_accepted(answer, missing_ok) for answer in self.client.batch(self.address, part)]
        return [answer for answers in self._parallel(send, spread(requests)) for answer in answers]

    def capabilities(self) -> Capabilities:
        return Capabilities(append_returns_ids=True, bulk_append=False, preserves_bytes=False,
                            preserves_internal_date=True, special_use=True, change_cursor="delta",
                            max_message_size=self.max_message_size, raw=frozenset({"graph"}),
                            system_flags=KEPT_SYSTEM_FLAGS, atom_keywords=False,
                            native_formats=self.transfer.offered())

    # -- folders -----------------------------------------------------------------------------------------

    def _roles(self) -> dict[str, Role]:
        if self._role_ids is None:
            self._role_ids = self._read_roles()
        return self._role_ids

    def _read_roles(self) -> dict[str, Role]:
        """Graph id -> role of the well-known folders the mailbox has (404: e.g. no archive folder)."""
        found = self._batched([SubRequest("GET", self._url(f"/mailFolders/{name}?$select=id")) for name in WELL_KNOWN],
                              missing_ok=True)
        return {str(folder["id"]): role for folder, role in zip(found, WELL_KNOWN.values(), strict=True) if folder}

    def _walk(self, url: str, parent: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for folder in self.client.pages(url, self.address):
            path = f"{parent}{SEPARATOR}{folder['displayName']}" if parent else str(folder["displayName"])
            yield path, folder
            if folder.get("childFolderCount"):
                yield from self._walk(self._url(f"/mailFolders/{folder['id']}/childFolders?$top=250"), path)

    def _tree(self) -> list[tuple[str, dict[str, Any]]]:
        with translated(f"{self.context} folders"):
            walked = list(self._walk(self._url("/mailFolders?$top=250"), ""))
        self._ids = {path: str(folder["id"]) for path, folder in walked}
        self._walked = True
        return walked

    def list_folders(self, *, sizes: bool = True) -> list[FolderInfo]:
        with translated(f"{self.context} folders"):
            roles = self._roles()
        walked = self._tree()
        folders = []
        for path, folder in walked:
            info = FolderInfo(path, SEPARATOR, roles.get(str(folder["id"])), folder_key(str(folder["id"])),
                              int(folder.get("totalItemCount") or 0))
            if sizes:
                size = folder.get("sizeInBytes")
                size = int(size) if size is not None else sum(r.size for r in self.list_messages(info))
                info = FolderInfo(info.path, SEPARATOR, info.role, info.key, info.messages, size)
            folders.append(info)
        return folders

    def _folder_id(self, folder: FolderInfo) -> str:
        if folder.path not in self._ids:
            self._tree()
        folder_id = self._ids.get(folder.path)
        if folder_id is None:
            raise FolderFailed(f"{self.context} folder {folder.path!r}: no such folder")
        if folder.key is not None and folder_key(folder_id) != folder.key:
            raise FolderFailed(f"{self.context} folder {folder.path!r} was deleted and recreated (key "
                               f"{folder_key(folder_id)}, was {folder.key}); its message ids are no longer valid")
        return folder_id

    def ensure_folder(self, path: str, role: Role | None) -> tuple[FolderInfo, bool]:
        outcome = self.ensure_folders([(path, role)])[0]
        if isinstance(outcome, FolderFailed):
            raise outcome
        return outcome

    def ensure_folders(self, wanted: Sequence[FolderRequest]) -> list[EnsureOutcome]:
        """The folders at these paths, created level by level of the tree where missing, each level's
        creates at once over the mailbox's request slots (MAILBOX_CONCURRENCY): a first pass creates most
        of a mailbox's folders, and one after the other each cost a request's round trip. The tree read
        earlier in this session is trusted, for folders it lacks too: reading it again before each (a
        request per folder with children) cost requests of the mailbox's budget per folder. A folder
        someone made meanwhile is refused as ErrorFolderExists, and then taken from a new read of the tree,
        never reported as created (a rollback removes only ours). Without a tree read yet, it is read first."""
        if not self._walked:
            self._tree()
        made: set[str] = set()
        failed: dict[str, FolderFailed] = {}
        for level in _levels(path for path, _role in wanted):
            present = {"", *self._ids}  # "": the root; a folder under one that failed is not tried
            todo = [here for here in level if here not in present and _parent(here) in present]
            someone_made = False  # a folder created by someone else meanwhile: use it, from a new read of the tree
            for here, answer in zip(todo, self._parallel(self._post_folder, todo), strict=True):
                if isinstance(answer, str):
                    self._ids[here] = answer
                    made.add(here)
                elif answer.code == "ErrorFolderExists":
                    someone_made = True
                else:
                    error = translate(answer, f"{self.context} create folder {here!r}")
                    if not isinstance(error, FolderFailed):
                        raise error
                    failed[here] = error
            if someone_made:
                self._tree()
        return [self._ensured(path, made, failed) for path, _role in wanted]

    def _post_folder(self, path: str) -> str | GraphError:
        """Create the folder at `path` under its parent (which exists): its id, or the service's refusal."""
        parent, _, name = path.rpartition(SEPARATOR)
        url = self._url(f"/mailFolders/{self._ids[parent]}/childFolders" if parent else "/mailFolders")
        try:
            return str(self.client.call("POST", url, self.address, json={"displayName": name}).json()["id"])
        except GraphError as exc:
            return exc

    def _ensured(self, path: str, made: set[str], failed: Mapping[str, FolderFailed]) -> EnsureOutcome:
        refused = next((failed[here] for here in _prefixes(path) if here in failed), None)
        if refused is not None:
            return refused
        if path not in self._ids:
            return FolderFailed(f"{self.context} folder {path!r}: refused as existing, then not found")
        return self._info(path), path in made

    def _info(self, path: str) -> FolderInfo:
        folder_id = self._ids[path]
        with translated(f"{self.context} folders"):
            role = self._roles().get(folder_id)
        return FolderInfo(path, SEPARATOR, role, folder_key(folder_id))

    def remove_folder(self, folder: FolderInfo) -> None:
        try:
            self.client.call("DELETE", self._url(f"/mailFolders/{self._folder_id(folder)}"), self.address)
        except GraphError as exc:
            if exc.status != 404:  # already gone (a retried DELETE whose first answer was lost) is done
                raise translate(exc, f"{self.context} delete folder {folder.path!r}") from None
        self._ids.pop(folder.path, None)

    # -- messages ----------------------------------------------------------------------------------------

    def list_messages(self, folder: FolderInfo) -> list[MessageRef]:
        url = self._url(f"/mailFolders/{self._folder_id(folder)}/messages?$select={_LISTED}"
                        f"&$expand={_EXPANDED}&$top={PAGE}")
        with translated(f"{self.context} folder {folder.path!r}"):
            return [_ref(item) for item in self.client.pages(url, self.address)]

    def changes(self, folder: FolderInfo, cursor: str | None) -> FolderChanges:
        """A delta round (https://learn.microsoft.com/en-us/graph/delta-query-messages): pages up to the
        deltaLink, which is the next cursor. Without a cursor, or when the service no longer knows it (410,
        documented for expired sync state), every message comes back and `complete` is set."""
        folder_id = self._folder_id(folder)
        first = self._url(f"/mailFolders/{folder_id}/messages/delta?$select={_LISTED}&$expand={_EXPANDED}")
        try:
            return self._delta_round(cursor or first, complete=cursor is None)
        except GraphError as exc:
            if cursor is not None and exc.status == 410:
                return self._delta_round(first, complete=True)
            raise translate(exc, f"{self.context} changes in {folder.path!r}") from None

    def _delta_round(self, url: str, *, complete: bool) -> FolderChanges:
        changed: dict[str, MessageRef] = {}
        removed: list[str] = []
        next_url = url
        while True:
            page = self.client.call("GET", next_url, self.address,
                                    headers={"Prefer": f"odata.maxpagesize={PAGE}"}).json()
            for item in page.get("value", []):
                if "@removed" in item:
                    changed.pop(str(item["id"]), None)
                    removed.append(str(item["id"]))
                else:
                    changed[str(item["id"])] = _ref(item)
            if page.get("@odata.nextLink"):
                next_url = str(page["@odata.nextLink"])
                continue
            return FolderChanges(list(changed.values()), removed, str(page["@odata.deltaLink"]), complete)

    def fetch(self, folder: FolderInfo, refs: Sequence[MessageRef], *, native: str | None = None
              ) -> Iterator[RawMessage]:
        """MIME from `$value`; with `native` FORMAT, exported streams wherever the API exports the item, and
        MIME for the rest (items it cannot see or export)."""
        exported = self._export(folder, refs) if native == FORMAT and FORMAT in self.transfer.offered() else {}

        def one(ref: MessageRef) -> RawMessage:
            try:
                response = self.client.call("GET", self._message_url(ref.id, "/$value"), self.address)
            except GraphError as exc:
                if exc.status == 404:
                    raise FolderFailed(f"{self.context} folder {folder.path!r}: message {ref.id} vanished while "
                                       f"copying") from None
                raise translate(exc, f"{self.context} fetch {ref.id}") from None
            return RawMessage(ref, response.content)
        rest = [ref for ref in refs if ref.id not in exported]
        fetched = dict(zip([ref.id for ref in rest], self._parallel(one, rest), strict=True))
        yield from (exported.get(ref.id) or fetched[ref.id] for ref in refs)

    def _export(self, folder: FolderInfo, refs: Sequence[MessageRef]) -> dict[str, RawMessage]:
        with translated(f"{self.context} export from {folder.path!r}"):
            known = self._joined(folder, fresh=False)
            if any(ref.id not in known for ref in refs):
                known = self._joined(folder, fresh=True)
            wanted = [(ref, *known[ref.id]) for ref in refs if ref.id in known]
            streams: dict[str, bytes] = {}
            for part in self._parallel(self.transfer.export, pages_of([item for _ref, item, _tag in wanted])):
                streams.update(part)
        return {ref.id: RawMessage(ref, streams[item], FORMAT, tag) for ref, item, tag in wanted if item in streams}

    def _joined(self, folder: FolderInfo, *, fresh: bool) -> dict[str, tuple[str, str]]:
        """message id -> (import/export API item id, native tag) for a folder: its two listings joined on
        changeKey. An item changed between the two reads is left out (and copied through MIME)."""
        if fresh or folder.path not in self._joins:
            box_folder = self.transfer.folder_id(folder.path, SEPARATOR)
            by_key = self.transfer.item_ids(box_folder) if box_folder else {}
            url = self._url(f"/mailFolders/{self._folder_id(folder)}/messages?$select=changeKey,{FINGERPRINTED}"
                            f"&$top={PAGE}")
            self._joins[folder.path] = {str(m["id"]): (by_key[str(m["changeKey"])], native_tag(m))
                                        for m in self.client.pages(url, self.address)
                                        if str(m.get("changeKey")) in by_key}
        return self._joins[folder.path]

    def watermark(self, folder: FolderInfo) -> str | None:
        return None  # copies are found by their tag, not by position

    def append_folders(self, batches: Sequence[FolderBatch]) -> list[AppendOutcome]:
        """Every batch's messages created at once, sharing the mailbox's request slots (MAILBOX_CONCURRENCY),
        not folder after folder: a delta pass brings a few messages into many folders, and each folder's
        creates were a round of requests of their own. A folder that cannot be found is its batch's
        outcome alone. Native imports (through the staging folder) go batch by batch."""
        if any(message.format == FORMAT for _folder, messages in batches for message in messages):
            return append_each(self, batches)
        outcomes: list[AppendOutcome] = []
        creates: list[tuple[list[str | ItemFailed], str, RawMessage]] = []
        for folder, messages in batches:
            results: list[str | ItemFailed] = []
            try:
                folder_id = self._folder_id(folder)
            except FolderFailed as exc:
                outcomes.append(exc)
                continue
            outcomes.append(results)
            creates.extend((results, folder_id, message) for message in messages)
        created = self._parallel(lambda create: self._create(create[1], create[2]), creates)
        for (results, _folder_id, _message), result in zip(creates, created, strict=True):
            results.append(result)
        return outcomes

    def append(self, folder: FolderInfo, messages: Sequence[RawMessage]) -> Sequence[str | ItemFailed | None]:
        folder_id = self._folder_id(folder)
        native = [m.format == FORMAT for m in messages]
        imported = iter(self._import(folder_id, [m for m, n in zip(messages, native, strict=True) if n]))
        created = iter(self._parallel(lambda message: self._create(folder_id, message),
                                      [m for m, n in zip(messages, native, strict=True) if not n]))
        return [next(imported) if n else next(created) for n in native]

    def _import(self, folder_id: str, messages: Sequence[RawMessage]) -> list[str | ItemFailed]:
        """Native copies: import into the staging folder, find each there by the changeKey the import
        answered, tag it, move it into `folder_id` (see the module docstring for why in this order)."""
        if not messages:
            return []
        context = f"{self.context} import into folder {folder_id[:12]}…"
        staging, box_staging = self._staging_folder()

        def put(message: RawMessage) -> str | ItemFailed:
            try:
                return self.transfer.import_item(box_staging, message.body)
            except GraphError as exc:
                return _item_failure(exc, context)
        with translated(context):
            staged = self._in_staging(staging, messages, self._parallel(put, messages))

        placed = [_placeable(staged_id, context) for staged_id in staged]
        tagged = [(message, staged_id) for message, staged_id in zip(messages, placed, strict=True)
                  if isinstance(staged_id, str)]

        def move(staged_id: str) -> str:
            moved = self.client.call("POST", self._message_url(staged_id, "/move"), self.address,
                                     json={"destinationId": folder_id})
            return str(moved.json()["id"])
        with translated(context):
            self._set_tags([(staged_id, message.digest) for message, staged_id in tagged])
            moved = iter(self._parallel(move, [staged_id for _message, staged_id in tagged]))
        return [next(moved) if isinstance(staged_id, str) else staged_id for staged_id in placed]

    def _in_staging(self, staging: str, messages: Sequence[RawMessage], keys: Sequence[str | ItemFailed]
                    ) -> list[str | ItemFailed | None]:
        """The mail API id of each import in the staging folder: the item whose changeKey the import
        answered, else (should the two APIs ever word an item's version differently) a not yet claimed
        staged item with the message's fingerprint. Everything in the staging folder is an import of ours,
        and items with one fingerprint are copies of the same message as far as a tag can tell."""
        url = self._url(f"/mailFolders/{staging}/messages?$select=changeKey,{FINGERPRINTED}&$top={PAGE}")
        items = list(self.client.pages(url, self.address))
        by_key = {str(item["changeKey"]): str(item["id"]) for item in items}
        claimed = {by_key[key] for key in keys if isinstance(key, str) and key in by_key}
        spare: dict[str, list[str]] = {}
        for item in items:
            if str(item["id"]) not in claimed:
                spare.setdefault(native_tag(item), []).append(str(item["id"]))
        found: list[str | ItemFailed | None] = []
        for message, key in zip(messages, keys, strict=True):
            pool = spare.get(message.digest, [])
            found.append(key if isinstance(key, ItemFailed) else by_key.get(key) or (pool.pop() if pool else None))
        return found

    def _staging_folder(self) -> tuple[str, str]:
        """The staging folder's ids in both APIs, created (hidden) on first use."""
        if self._staging is None:
            with translated(f"{self.context} staging folder"):
                found = self._staging_id()
                if found is None:
                    try:
                        found = str(self.client.call("POST", self._url("/mailFolders"), self.address,
                                                     json={"displayName": STAGING, "isHidden": True}).json()["id"])
                    except GraphError as exc:
                        if exc.code != "ErrorFolderExists":
                            raise
                        found = self._staging_id()
                box_id = self.transfer.folder_id(STAGING, SEPARATOR)
            if found is None or box_id is None:
                raise Transient(f"{self.context}: staging folder {STAGING!r} not visible to both APIs yet")
            self._staging = (found, box_id)
        return self._staging

    def _staging_id(self) -> str | None:
        condition = quote(f"displayName eq '{STAGING}'")
        url = self._url(f"/mailFolders?includeHiddenFolders=true&$filter={condition}&$select=id")
        return next((str(folder["id"]) for folder in self.client.pages(url, self.address)), None)

    def _staged(self, tags: Sequence[CopyTag]) -> list[str]:
        """Ids of imports still in the staging folder whose fingerprint is one of `tags`: copies a crash
        stopped before their move. The staging folder holds only our imports."""
        staging = self._staging[0] if self._staging else self._staging_id()
        if staging is None:
            return []
        wanted = {tag.digest for tag in tags}
        url = self._url(f"/mailFolders/{staging}/messages?$select={FINGERPRINTED}&$top={PAGE}")
        return [str(item["id"]) for item in self.client.pages(url, self.address) if native_tag(item) in wanted]

    def _create(self, folder_id: str, message: RawMessage) -> str | ItemFailed:
        context = f"{self.context} create in folder {folder_id[:12]}…"
        try:
            planned = mime.to_graph_import(message.body, message.ref.flags, message.ref.internal_date, message.digest)
        except ItemFailed as exc:
            return exc
        body = planned.message if not planned.uploads else _with_tag(planned.message, PENDING + message.digest)
        try:
            created = self.client.call("POST", self._url(f"/mailFolders/{folder_id}/messages"), self.address,
                                       json=body).json()
        except GraphError as exc:
            return _item_failure(exc, context)
        message_id = str(created["id"])
        if planned.uploads:
            try:
                for attachment in planned.uploads:
                    self._upload(message_id, attachment)
                self._set_tags([(message_id, message.digest)])
            except GraphError as exc:
                failure = _item_failure(exc, context)
                self._delete_ids([message_id])  # refused for good: no incomplete copy may stay behind
                return failure
        return message_id

    def _set_tags(self, tags: Sequence[tuple[str, str]]) -> None:
        """Write each (message id, digest) as that message's idempotency tag, batched."""
        self._batched([SubRequest("PATCH", self._message_url(message_id),
                                  {"singleValueExtendedProperties": [{"id": mime.TAG_PROPERTY, "value": digest}]})
                       for message_id, digest in tags])

    def _upload(self, message_id: str, attachment: Attachment) -> None:
        """An attachment added after the create: one POST under 3 MB, else an upload session of ordered
        chunks to a pre-authenticated URL (https://learn.microsoft.com/en-us/graph/outlook-large-attachments)."""
        attachments = self._message_url(message_id, "/attachments")
        if len(attachment.data) < UPLOAD_SESSION_MINIMUM:
            self.client.call("POST", attachments, self.address, json=mime.file_attachment(attachment))
            return
        item = {"attachmentType": "file", "name": attachment.name, "size": len(attachment.data),
                "contentType": attachment.content_type, "isInline": attachment.is_inline}
        if attachment.content_id:
            item["contentId"] = attachment.content_id
        session = self.client.call("POST", f"{attachments}/createUploadSession", self.address,
                                   json={"AttachmentItem": item}).json()
        total = len(attachment.data)
        for start in range(0, total, UPLOAD_CHUNK):
            chunk = attachment.data[start:start + UPLOAD_CHUNK]
            self.client.call("PUT", str(session["uploadUrl"]), self.address, data=chunk, authorized=False,
                             headers={"Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{total}",
                                      "Content-Type": "application/octet-stream"})

    def find_tagged(self, folder: FolderInfo, tags: Sequence[CopyTag], since: str | None) -> dict[CopyTag, list[str]]:
        """One filtered query per tag, batched. Copies still tagged "pending-" never got all their attachments,
        and native copies still in the staging folder were never moved into place: in a write session both
        are removed here, so the intent reads as never arrived and is copied anew."""
        folder_id = self._folder_id(folder)
        values = [tag.digest for tag in tags] + ([PENDING + tag.digest for tag in tags] if self.write else [])
        with translated(f"{self.context} find copies in {folder.path!r}"):
            found = self._tagged(folder_id, values)
            if self.write:
                self._delete_ids([i for ids in found[len(tags):] for i in ids] + self._staged(tags))
        return {tag: ids for tag, ids in zip(tags, found[:len(tags)], strict=True) if ids}

    def _tagged(self, folder_id: str, values: Sequence[str]) -> list[list[str]]:
        """For each tag value, the ids of the messages in the folder carrying it, oldest copy first."""
        def query(value: str) -> SubRequest:
            condition = (f"singleValueExtendedProperties/Any(ep: ep/id eq '{mime.TAG_PROPERTY}' "
                         f"and ep/value eq '{value}')")
            return SubRequest("GET", self._url(f"/mailFolders/{folder_id}/messages?$filter={quote(condition)}"
                                               f"&$select=id,createdDateTime&$top={PAGE}"))

        def ids(page: dict[str, Any]) -> list[str]:
            items = list(page.get("value", []))
            if page.get("@odata.nextLink"):
                items += self.client.pages(str(page["@odata.nextLink"]), self.address)
            return [str(i["id"]) for i in sorted(items, key=lambda i: (str(i.get("createdDateTime")), str(i["id"])))]
        return [ids(page) for page in self._batched([query(value) for value in values])]

    def set_flags(self, folder: FolderInfo, flags: Mapping[str, frozenset[str]]) -> None:
        with translated(f"{self.context} flags in {folder.path!r}"):
            self._batched([SubRequest("PATCH", self._message_url(message_id), mime.flag_update(wanted))
                           for message_id, wanted in flags.items()])

    def delete(self, folder: FolderInfo, ids: Sequence[str]) -> None:
        with translated(f"{self.context} delete in {folder.path!r}"):
            self._delete_ids(ids)

    def _delete_ids(self, ids: Sequence[str]) -> None:
        """Already gone (404: a retried deletion whose first answer was lost) is what we wanted."""
        if ids and not self.write:
            raise StateError(f"{self.context}: delete on a read-only session")
        self._batched([SubRequest("DELETE", self._message_url(message_id)) for message_id in ids], missing_ok=True)

    def throttled_seconds(self) -> float:
        return self.client.gate(self.address).throttled_seconds - self._waited_before

    def quota(self) -> tuple[int, int] | None:
        return None  # Graph has no per-mailbox quota read for app-only access outside usage reports

    def cutover_settings(self) -> CutoverSettings:
        """Inbox rules that forward or redirect (https://learn.microsoft.com/en-us/graph/api/mailfolder-list-messagerules)
        and the automatic-replies status (https://learn.microsoft.com/en-us/graph/api/user-get-mailboxsettings).
        Mailbox-level forwarding (ForwardingSmtpAddress) and delegates are not in Graph: they come from the
        dependency file exported with Exchange Online PowerShell."""
        with translated(f"{self.context} mailbox settings"):
            settings = self.client.get_json(self._url("/mailboxSettings"), self.address)
            rules = list(self.client.pages(self._url("/mailFolders/inbox/messageRules"), self.address))
        forwards = sorted({str(recipient["emailAddress"]["address"]).lower()
                           for rule in rules if rule.get("isEnabled", True)
                           for action in ("forwardTo", "redirectTo", "forwardAsAttachmentTo")
                           for recipient in (rule.get("actions") or {}).get(action) or []})
        status = str((settings.get("automaticRepliesSetting") or {}).get("status", "disabled"))
        return CutoverSettings(tuple(forwards), status.lower() != "disabled")


def _accepted(answer: Answer, missing_ok: bool) -> dict[str, Any]:
    if isinstance(answer, GraphError):
        if missing_ok and answer.status == 404:
            return {}
        raise answer
    return answer


def _placeable(staged_id: str | ItemFailed | None, context: str) -> str | ItemFailed:
    if staged_id is None:
        raise Transient(f"{context}: an imported item is not in the staging folder; settling removes it")
    return staged_id


def _item_failure(exc: GraphError, context: str) -> ItemFailed:
    """The refusal of one message; anything that is not about the message itself stops the batch."""
    failure = translate(exc, context, item=True)
    if isinstance(failure, ItemFailed):
        return failure
    raise failure from None


def _with_tag(message: dict[str, Any], value: str) -> dict[str, Any]:
    properties = [p for p in message.get("singleValueExtendedProperties", [])
                  if not mime.same_property_id(str(p.get("id")), mime.TAG_PROPERTY)]
    return {**message, "singleValueExtendedProperties": [*properties, {"id": mime.TAG_PROPERTY, "value": value}]}


def _ref(item: Mapping[str, Any]) -> MessageRef:
    size = next((int(p["value"]) for p in item.get("singleValueExtendedProperties", [])
                 if mime.same_property_id(str(p.get("id", "")), mime.SIZE_PROPERTY)), 0)
    received = datetime.fromisoformat(str(item["receivedDateTime"]).replace("Z", "+00:00"))
    return MessageRef(str(item["id"]), size, mime.flags_from_graph(item), received)


def _prefixes(path: str) -> list[str]:
    """The folders a path needs, parents first: A, A/B and A/B/C for A/B/C."""
    parts = path.split(SEPARATOR)
    return [SEPARATOR.join(parts[:depth]) for depth in range(1, len(parts) + 1)]


def _parent(path: str) -> str:
    return path.rpartition(SEPARATOR)[0]


def _levels(paths: Iterable[str]) -> list[list[str]]:
    """Every folder the paths need, by depth in the tree, shallowest first."""
    levels: dict[int, dict[str, None]] = {}
    for path in paths:
        for depth, here in enumerate(_prefixes(path)):
            levels.setdefault(depth, {})[here] = None
    return [list(levels[depth]) for depth in sorted(levels)]
