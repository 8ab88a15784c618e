"""The mailbox import/export API of the Graph simulator (a mixin of GraphSimulator): mailbox ids, the API's own folder
and item ids, exportItems, import sessions and the import itself, and the tenant switch that refuses it all.

Documented behaviour reproduced:

* `GET /users/{id}/settings/exchange` answers an exchangeSettings with `primaryMailboxId` ("MBX:e0643f21@a7809c93" in
  the example, https://learn.microsoft.com/en-us/graph/api/usersettings-list-exchange).
* The API has its own ids: "Use the id property returned by List folders as the folder identifier for mailbox import
  and export operations" (https://learn.microsoft.com/en-us/graph/api/resources/mailbox-import-export-api-overview);
  `GET /admin/exchange/mailboxes/{id}/folders` lists the folders directly under the root, children come from
  .../childFolders (https://learn.microsoft.com/en-us/graph/api/mailbox-list-folders); .../folders/{id}/items lists
  mailboxItem objects (id, createdDateTime, lastModifiedDateTime, changeKey, categories, type, size) with `$select`,
  `$top`, `$skip` (https://learn.microsoft.com/en-us/graph/api/mailboxfolder-list-items). Ids look like
  "EDSVrdi3lRAAE9J-20AAA=", not like mail API ids, which the mail API refuses as malformed. A mailboxItem and a
  message are both outlookItems, so one item has one changeKey in both APIs.
* `POST .../exportItems {"itemIds"}`: "You can export up to 20 items in a single export request"; 200 with one
  exportItemResponse per id: itemId, changeKey, data ("an item in a Base64-encoded opaque stream") or error (a
  mailTipsError: code, message) (https://learn.microsoft.com/en-us/graph/api/mailbox-exportitems,
  .../resources/exportitemresponse). Here the stream carries the whole stored item: properties, flags, dates,
  categories, extended properties, attachments and the MIME it came from.
* `POST .../createImportSession` (no body): 200 with `importUrl` and `expirationDateTime`
  (https://learn.microsoft.com/en-us/graph/api/mailbox-createimportsession; the how-to page says 201 Created, the
  reference page and both examples 200: the simulator answers 200). The URL is preauthenticated, its token embedded,
  and "After this time, the importUrl expires and is deleted" (https://learn.microsoft.com/en-us/graph/
  import-exchange-mailbox-item): a POST after it gets 401 InvalidAuthenticationToken (guess: the documentation gives
  no status). An Authorization header is refused like on an upload session's URL (guess).
* The import POST: `{"FolderId", "Mode", "Data"}`; `create` makes a new item, with ItemId or ChangeKey "it results in
  an error"; `update` (not simulated) is refused; 200 `{"itemId", "changeKey"}` (import-exchange-mailbox-item). The
  item is created in the folder exactly as exported (not a draft unless it was one), with a new id and a creation
  time of the import (guess). No size limit is documented: the mailbox's maximum message size applies
  (ErrorMessageSizeExceeded) and Graph's 4 MB request limit does not, the URL not being Graph's (guess). Imports
  count against the mailbox's Outlook limits like every other request.
* A tenant that has not granted the app MailboxItem.ImportExport.All (and the folder and item read permissions):
  every /admin/exchange request gets 403 ErrorAccessDenied "Access is denied. Check credentials and try again.", the
  answer Graph gives for an Outlook resource the app has no permission on (https://learn.microsoft.com/en-us/graph/
  errors: 403 "Access is denied to the requested resource").
* `POST /users/{id}/messages/{id}/move {"destinationId"}` moves a message and answers 201 with it
  (https://learn.microsoft.com/en-us/graph/api/message-move); with immutable ids the id stays
  (https://learn.microsoft.com/en-us/graph/outlook-immutable-id); a delta of the old folder reports it removed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .graph_mime import SimAttachment
from .graph_store import Mailbox, SimFolder, SimMessage, Tombstone, now_utc

IMPORT_PATH = re.compile(r"^/api/gv1\.0/Mailboxes\('([^']+)'\)/importItem$")
IMPORT_KEY = "/api/gv1.0/Mailboxes({box})/importItem"
MAX_EXPORT = 20
_STREAM_MAGIC = b"SIMFTS\x01"
_CARRIED = ("subject", "is_draft", "is_read", "flag_status", "categories", "internet_message_id", "extended",
            "body_type", "body", "importance")
_PEOPLE = ("to", "cc", "bcc", "reply_to")


@dataclass
class ImportSession:
    token: str
    user_id: str
    app: str
    expires: datetime


def box_id(user_id: str) -> str:
    """The primaryMailboxId of a user: "MBX:<8 hex>@<8 hex>", the documented shape."""
    plain = user_id.replace("-", "")
    return f"MBX:{plain[:8]}@{plain[-8:]}"


def box_object_id(kind: str, mail_id: str) -> str:
    """The import/export API's id of a folder or item given its mail API id."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(f"{kind}\x00{mail_id}".encode()).digest()).decode()
    return f"EDSV{digest[:18]}AAA="


def export_stream(m: SimMessage) -> bytes:
    """The opaque stream of a stored item (everything the store keeps but its ids and bookkeeping)."""
    state: dict[str, Any] = {name: getattr(m, name) for name in _CARRIED}
    state |= {"received": m.received.isoformat(), "sent": m.sent.isoformat() if m.sent else None,
              "from": m.from_, "sender": m.sender, "raw": base64.b64encode(m.raw).decode() if m.raw else None,
              "attachments": [[a.name, a.content_type, base64.b64encode(a.data).decode(), a.is_inline, a.content_id]
                              for a in m.attachments]}
    state |= {name: getattr(m, name) for name in (*_PEOPLE, "headers")}
    return _STREAM_MAGIC + zlib.compress(json.dumps(state).encode())


def imported_message(stream: bytes, message_id: str, folder_id: str) -> SimMessage:
    """A new item from an exported stream; raises ValueError for anything exportItems did not produce."""
    if not stream.startswith(_STREAM_MAGIC):
        raise ValueError("not an exported item")
    state = json.loads(zlib.decompress(stream[len(_STREAM_MAGIC):]))
    now = now_utc()
    m = SimMessage(id=message_id, folder_id=folder_id, created=now, last_modified=now,
                   received=datetime.fromisoformat(state["received"]),
                   sent=datetime.fromisoformat(state["sent"]) if state["sent"] else None,
                   from_=_address(state["from"]), sender=_address(state["sender"]),
                   raw=base64.b64decode(state["raw"]) if state["raw"] else None,
                   attachments=[SimAttachment(n, t, base64.b64decode(d), i, c)
                                for n, t, d, i, c in state["attachments"]])
    for name in _CARRIED:
        setattr(m, name, state[name])
    for name in _PEOPLE:
        setattr(m, name, [_address(a) for a in state[name]])
    m.headers = [(str(name), str(value)) for name, value in state["headers"]]
    return m


def _address(value: Any) -> tuple[str, str] | None:
    return (str(value[0]), str(value[1])) if value else None


class ImportExportApi:
    """Handlers (`_h_*`) and the import URL of the mailbox import/export API, mixed into GraphSimulator, whose state
    (`_lock`, `_mailboxes`, `_json`, `_error`, `_admit`, ...) they use."""

    import_export: bool
    import_session_seconds: float
    _import_sessions: dict[str, ImportSession]

    def expire_import_sessions(self) -> None:
        """Every import session issued so far is past its expirationDateTime (as after a long pause)."""
        with self._lock:
            for session in self._import_sessions.values():
                session.expires = now_utc() - timedelta(seconds=1)

    # -- lookups ------------------------------------------------------------------------------------------------

    def _box(self, ref: str) -> Mailbox:
        """A mailbox by primaryMailboxId (404 ErrorInvalidUser, as for an unknown user, guess); refused with 403 while
        the tenant's switch is off."""
        if not self.import_export:
            raise self._graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        for mb in self._mailboxes.values():
            if box_id(mb.user_id).lower() == ref.lower():
                return mb
        raise self._graph_error(404, "ErrorInvalidUser", f"The requested mailbox '{ref}' is invalid.")

    def _graph_error(self, status: int, code: str, message: str) -> Exception:
        from .graph import GraphError
        return GraphError(status, code, message)

    def _box_folder(self, mb: Mailbox, ref: str) -> SimFolder:
        if ref.lower() in mb.well_known:
            return mb.folders[mb.well_known[ref.lower()]]
        found = next((f for f in mb.folders.values() if box_object_id("folder", f.id) == ref), None)
        if found is None:
            if ref in mb.folders:
                raise self._graph_error(400, "ErrorInvalidIdMalformed", "Id is malformed.")
            raise self._graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return found

    def _box_folder_json(self, mb: Mailbox, f: SimFolder) -> dict[str, Any]:
        return {"@odata.type": "#microsoft.graph.mailboxFolder", "id": box_object_id("folder", f.id),
                "displayName": f.display_name, "parentFolderId": box_object_id("folder", f.parent_id),
                "childFolderCount": sum(1 for c in mb.folders.values() if c.parent_id == f.id),
                "totalItemCount": sum(1 for m in mb.messages.values() if m.folder_id == f.id),
                "wellKnownName": f.well_known, "type": "IPF.Note"}

    def _box_item_json(self, m: SimMessage) -> dict[str, Any]:
        return {"@odata.type": "#microsoft.graph.mailboxItem", "@odata.etag": f'W/"{m.change_key()}"',
                "id": box_object_id("item", m.id), "createdDateTime": _iso(m.created),
                "lastModifiedDateTime": _iso(m.last_modified), "changeKey": m.change_key(),
                "categories": list(m.categories), "type": "IPM.Note", "size": m.size}

    def _selected(self, req: Any, out: dict[str, Any]) -> dict[str, Any]:
        raw = req.query.get("$select")
        if not raw:
            return out
        names = {n.strip() for n in raw.split(",")} | {"id", "@odata.type", "@odata.etag"}
        return {k: v for k, v in out.items() if k in names}

    def _listed(self, req: Any, values: list[dict[str, Any]]) -> Any:
        page, next_link = self._page(req, values, self.page_size)
        body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#admin/exchange/mailboxes"}
        if next_link:
            body["@odata.nextLink"] = next_link
        body["value"] = [self._selected(req, v) for v in page]
        return self._json(200, body)

    # -- handlers -----------------------------------------------------------------------------------------------

    def _h_exchange_settings(self, req: Any, p: dict[str, str]) -> Any:
        with self._lock:
            mb = self._mailbox(p["u"])
        return self._json(200, {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/settings/"
                                                  "exchange/$entity", "primaryMailboxId": box_id(mb.user_id)})

    def _h_box_folders(self, req: Any, p: dict[str, str]) -> Any:
        with self._lock:
            mb = self._box(p["box"])
            values = [self._box_folder_json(mb, f) for f in mb.children(mb.root_id)]
        return self._listed(req, values)

    def _h_box_child_folders(self, req: Any, p: dict[str, str]) -> Any:
        with self._lock:
            mb = self._box(p["box"])
            values = [self._box_folder_json(mb, f) for f in mb.children(self._box_folder(mb, p["f"]).id)]
        return self._listed(req, values)

    def _h_box_items(self, req: Any, p: dict[str, str]) -> Any:
        with self._lock:
            mb = self._box(p["box"])
            folder = self._box_folder(mb, p["f"])
            items = sorted((m for m in mb.messages.values() if m.folder_id == folder.id), key=lambda m: m.created_seq)
            values = [self._box_item_json(m) for m in items]
        return self._listed(req, values)

    def _h_export_items(self, req: Any, p: dict[str, str]) -> Any:
        data = req.json()
        ids = data.get("itemIds") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not ids:
            raise self._graph_error(400, "ErrorInvalidParameter", "itemIds is required.")
        if len(ids) > MAX_EXPORT:
            raise self._graph_error(400, "ErrorInvalidParameter", f"At most {MAX_EXPORT} items can be exported "
                                                                  "in one request.")
        with self._lock:
            mb = self._box(p["box"])
            by_id = {box_object_id("item", m.id): m for m in mb.messages.values()}
            values = [self._exported(str(item_id), by_id.get(str(item_id))) for item_id in ids]
        return self._json(200, {"@odata.context": f"{self.base_url}/$metadata#Collection("
                                                  "microsoft.graph.exportItemResponse)", "value": values})

    @staticmethod
    def _exported(item_id: str, m: SimMessage | None) -> dict[str, Any]:
        if m is None:
            return {"itemId": item_id, "error": {"code": "ErrorItemNotFound",
                                                 "message": "The specified object was not found in the store."}}
        return {"itemId": item_id, "changeKey": m.change_key(),
                "data": base64.b64encode(export_stream(m)).decode("ascii")}

    def _h_create_import_session(self, req: Any, p: dict[str, str]) -> Any:
        with self._lock:
            mb = self._box(p["box"])
            session = ImportSession(uuid.uuid4().hex, mb.user_id, req.app,
                                    now_utc() + timedelta(seconds=self.import_session_seconds))
            self._import_sessions[session.token] = session
        url = f"{self._origin}/api/gv1.0/Mailboxes('{box_id(mb.user_id)}')/importItem?authtoken={session.token}"
        return self._json(200, {"@odata.context": f"{self.base_url}/$metadata#microsoft.graph."
                                                  "mailboxItemImportSession",
                                "importUrl": url, "expirationDateTime": _iso(session.expires)})

    def _h_move(self, req: Any, p: dict[str, str]) -> Any:
        data = req.json()
        destination = str(data.get("destinationId") or "") if isinstance(data, dict) else ""
        with self._lock:
            mb = self._mailbox(p["u"])
            m = self._message(mb, p["m"])
            folder = self._folder(mb, destination)
            if folder.id != m.folder_id:
                mb.tombstones.append(Tombstone(mb.bump(), m.id, m.folder_id, m.created_seq))
                m.folder_id = folder.id
                m.created_seq = m.changed_seq = mb.bump()
            body = self._message_json(req, mb, m, None)
        return self._json(201, body)

    # -- the import URL -----------------------------------------------------------------------------------------

    def _import_request(self, method: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> Any:
        with self._lock:
            session = self._import_sessions.get(query.get("authtoken", ""))
        if session is None or session.expires < now_utc():
            return self._error(self._graph_error(401, "InvalidAuthenticationToken",
                                                 "The import URL's token has expired or is invalid."))
        if headers.get("authorization"):
            return self._error(self._graph_error(401, "InvalidAudienceForResource",
                                                 "The audience claim value is invalid for current resource."))
        if method != "POST":
            return self._error(self._graph_error(405, "ErrorInvalidRequest", "Use POST to import an item."))
        key = (session.app, session.user_id)
        refused = self._admit(key, len(body))
        if refused is not None:
            return refused
        try:
            return self._import_item(session, body)
        except Exception as err:  # GraphError and malformed requests alike
            status, code = (getattr(err, "status", 500), getattr(err, "code", "InternalServerError"))
            return self._error(self._graph_error(status, code, getattr(err, "message", str(err))))
        finally:
            self._release(key)

    def _import_item(self, session: ImportSession, body: bytes) -> Any:
        try:
            data = json.loads(body)
            stream = base64.b64decode(str(data["Data"]), validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise self._graph_error(400, "ErrorInvalidRequest", "FolderId, Mode and Data are required.") from exc
        if str(data.get("Mode", "")).lower() != "create":
            raise self._graph_error(400, "ErrorInvalidRequest", "Only Mode 'create' is simulated.")
        if "ItemId" in data or "ChangeKey" in data:
            raise self._graph_error(400, "ErrorInvalidRequest", "ItemId and ChangeKey are not allowed with 'create'.")
        with self._lock:
            mb = self._mailboxes[session.user_id]
            folder = self._box_folder(mb, str(data.get("FolderId") or ""))
            try:
                m = imported_message(stream, mb.next_id("message"), folder.id)
            except (ValueError, KeyError, TypeError, zlib.error) as exc:
                raise self._graph_error(400, "ErrorInvalidRequest", "Data is not an exported item.") from exc
            self._check_size(mb, m)
            self._store_new(mb, m)
        return self._json(200, {"@odata.context": f"{self._origin}/api/gv1.0/$metadata#microsoft.graph."
                                                  "importMailboxItemResponse",
                                "itemId": box_object_id("item", m.id), "changeKey": m.change_key()})


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
