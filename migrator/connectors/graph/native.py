"""Full-fidelity copies between Exchange Online mailboxes: Graph's mailbox import/export API.

The API (https://learn.microsoft.com/en-us/graph/api/resources/mailbox-import-export-api-overview) works on its
own ids: a mailbox id from `GET /users/{id}/settings/exchange` (`primaryMailboxId`,
https://learn.microsoft.com/en-us/graph/api/usersettings-list-exchange), folder ids from
`GET /admin/exchange/mailboxes/{id}/folders` ("Use the id property returned by List folders as the folder
identifier for mailbox import and export operations"; the list holds the folders under the root, children
come from .../folders/{id}/childFolders, https://learn.microsoft.com/en-us/graph/api/mailbox-list-folders)
and item ids from .../folders/{id}/items (https://learn.microsoft.com/en-us/graph/api/mailboxfolder-list-items).
Message ids of the mail API are not among them, so a folder's two listings are joined on `changeKey`, which
both resources inherit from outlookItem ("the version of the item"): one item, one version, one key.

Export: `POST .../exportItems {"itemIds": [...]}`, at most 20 ids, 200 with one exportItemResponse per id
(`itemId`, `changeKey`, `data`: "an item in a Base64-encoded opaque stream", or `error`)
(https://learn.microsoft.com/en-us/graph/api/mailbox-exportitems, .../resources/exportitemresponse).
Import: `POST .../createImportSession` (no body) gives a mailboxItemImportSession: an `importUrl` that is
preauthenticated ("don't specify an Authorization request header", "Don't customize this URL") and its
`expirationDateTime`, after which "the importUrl expires and is deleted"; a POST to it with
`{"FolderId", "Mode": "create", "Data"}` answers 200 `{"itemId", "changeKey"}`
(https://learn.microsoft.com/en-us/graph/api/mailbox-createimportsession,
https://learn.microsoft.com/en-us/graph/import-exchange-mailbox-item). The documentation states no size limit
for either; the mailbox's own maximum message size applies to what is imported. Permissions: the
application permission MailboxItem.ImportExport.All (export and import), MailboxFolder.Read.All and
MailboxItem.Read.All (the listings), User.Read.All (the mailbox id).

A tenant that has not granted these answers 403 (or 400/404 where the API is not offered): the probe
says why (one warning line per endpoint, the other mailboxes at INFO) and the session offers MIME only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from migrator.connectors.graph.client import GraphClient, GraphError, translate
from migrator.errors import StateError

FORMAT = "exchange-fts"  # FastTransfer stream (MS-OXCFXICS), the format exportItems streams are in
EXPORT_BATCH = 20  # "You can export up to 20 items in a single export request."
_REFUSED = frozenset({400, 403, 404, 405, 501})  # the tenant does not offer the API to this app
_EXPIRED = frozenset({401, 403, 404})  # an import URL past its expirationDateTime
SESSION_MARGIN = timedelta(minutes=2)
# The mail API properties a native copy's tag is computed from; the import keeps them as they were.
FINGERPRINTED = "internetMessageId,receivedDateTime,sentDateTime,subject"
log = logging.getLogger("migrator.graph")


def native_tag(item: Mapping[str, Any]) -> str:
    """The idempotency tag of a native copy: SHA-256 over the message's internetMessageId, receivedDateTime,
    sentDateTime and subject (mail API JSON; times normalised to UTC seconds). The opaque stream cannot carry
    our tag, and its bytes cannot be compared with what the target stores, but these properties are the
    same on the source item and on its imported copy, so the tag can be computed from either side."""
    parts = ["exchange-fts-v1", str(item.get("internetMessageId") or ""), _utc(item.get("receivedDateTime")),
             _utc(item.get("sentDateTime")), str(item.get("subject") or "")]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _utc(value: Any) -> str:
    if not value:
        return ""
    when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MailboxTransfer:
    """The import/export API on one mailbox, for one session: the mailbox id, folder ids and the import
    session are read once and kept."""

    def __init__(self, client: GraphClient, address: str, *, write: bool) -> None:
        self.client = client
        self.address = address
        self.write = write
        self.context = f"{client.describe()} {address}"
        self._offered: frozenset[str] | None = None
        self._mailbox_id = ""
        self._children: dict[str, dict[str, str]] = {}  # mailbox-API folder id ("" = root) -> name -> id
        self._session: tuple[str, datetime] | None = None
        self._session_lock = threading.Lock()  # the session's four request threads renew it once, not four times

    def offered(self) -> frozenset[str]:
        """{FORMAT} when this app may use the API on this mailbox, else empty; asked once per session with the
        requests the copy needs anyway (mailbox id, folder list, and for a target an import session)."""
        if self._offered is None:
            self._offered = self._probe()
        return self._offered

    def _probe(self) -> frozenset[str]:
        try:
            settings = self.client.get_json(self.client.user_url(self.address, "/settings/exchange"), self.address)
            self._mailbox_id = str(settings["primaryMailboxId"])
            self.client.get_json(self._url("/folders?$top=1&$select=id"), self.address)
            if self.write:
                self._import_url()
        except GraphError as exc:
            self._mailbox_id = ""  # refused: later use is a caller's bug (StateError), not another request
            why = ("the app lacks MailboxItem.ImportExport.All (with MailboxFolder.Read.All, MailboxItem.Read.All) "
                   "or the tenant does not offer the API" if exc.status in _REFUSED else "the API did not answer")
            level = logging.WARNING if self.client.first_time(f"native-refused {why}") else logging.INFO
            log.log(level, "%s: no full-fidelity copies, the mailbox import/export API is refused (%s: %s); "
                           "copying through MIME", self.context, why, exc)
            return frozenset()
        return frozenset({FORMAT})

    def _url(self, path: str) -> str:
        if not self._mailbox_id and FORMAT not in self.offered():  # the probe sets the id before its first use
            raise StateError(f"{self.context}: the mailbox import/export API is not offered here")
        return f"{self.client.base_url}/admin/exchange/mailboxes/{quote(self._mailbox_id, safe=':@')}{path}"

    # -- folders and items ---------------------------------------------------------------------------

    def folder_id(self, path: str, separator: str) -> str | None:
        """The mailbox-API id of the folder at a display-name path, or None where the API does not list it
        (a folder created since this session read the tree is looked for once more)."""
        folder = ""
        for name in path.split(separator):
            if name not in self._folder_children(folder, fresh=False) and \
                    name not in self._folder_children(folder, fresh=True):
                return None
            folder = self._children[folder][name]
        return folder

    def _folder_children(self, folder: str, *, fresh: bool) -> dict[str, str]:
        if fresh or folder not in self._children:
            url = self._url(f"/folders/{quote(folder, safe='')}/childFolders" if folder else "/folders")
            self._children[folder] = {str(f["displayName"]): str(f["id"]) for f in
                                      self.client.pages(f"{url}?$select=id,displayName&$top=250", self.address)}
        return self._children[folder]

    def item_ids(self, folder_id: str) -> dict[str, str]:
        """changeKey -> mailbox-API item id of every item in a folder."""
        url = self._url(f"/folders/{quote(folder_id, safe='')}/items?$select=id,changeKey&$top=500")
        return {str(i["changeKey"]): str(i["id"]) for i in self.client.pages(url, self.address)}

    def export(self, item_ids: Sequence[str]) -> dict[str, bytes]:
        """The streams of up to EXPORT_BATCH items by mailbox-API id; items the service could not export
        (an `error` instead of `data`) are left out, for the caller to copy another way."""
        if len(item_ids) > EXPORT_BATCH:
            raise StateError(f"exportItems takes at most {EXPORT_BATCH} ids, not {len(item_ids)}")
        answer = self.client.call("POST", self._url("/exportItems"), self.address,
                                  json={"itemIds": list(item_ids)}).json()
        streams = {}
        for item in answer.get("value", []):
            if item.get("data") and not item.get("error"):
                streams[str(item["itemId"])] = _decoded(str(item["data"]), self.context)
            else:
                log.info("%s: item %s not exported (%s); copied through MIME", self.context, item.get("itemId"),
                         (item.get("error") or {}).get("message", "no data"))
        return streams

    # -- import --------------------------------------------------------------------------------------

    def _import_url(self, stale: str | None = None) -> str:
        """The import session's URL, a new session's when there is none, it expires soon, or it is `stale`."""
        with self._session_lock:
            if self._session is None or self._session[0] == stale or \
                    self._session[1] - datetime.now(UTC) < SESSION_MARGIN:
                created = self.client.call("POST", self._url("/createImportSession"), self.address).json()
                expires = datetime.fromisoformat(str(created["expirationDateTime"]).replace("Z", "+00:00"))
                self._session = (str(created["importUrl"]), expires)
            return self._session[0]

    def import_item(self, folder_id: str, data: bytes) -> str:
        """Create one item from an exported stream in a folder (mailbox-API id); returns its changeKey. The
        session is renewed before it expires, and once more when the service says it has (refused, so
        nothing was created: sending again cannot make a second item). Raises GraphError."""
        body = {"FolderId": folder_id, "Mode": "create", "Data": base64.b64encode(data).decode("ascii")}
        url = self._import_url()
        for renewed in (False, True):
            try:
                created = self.client.call("POST", url, self.address, json=body, authorized=False)
                return str(created.json()["changeKey"])
            except GraphError as exc:
                if renewed or exc.status not in _EXPIRED:
                    raise
                log.info("%s: import session refused (%s); renewing it", self.context, exc)
                url = self._import_url(stale=url)
        raise AssertionError("unreachable")


def _decoded(data: str, context: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise translate(GraphError(502, "InvalidExportData", "exportItems returned data that is not base64"),
                        context) from None


def pages_of(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), EXPORT_BATCH):
        yield items[start:start + EXPORT_BATCH]
