"""A Microsoft Graph (Outlook mail) simulator: an HTTPS server on 127.0.0.1 that reproduces the documented behaviour of
Graph's mail API that a migration connector relies on. Microsoft Graph cannot run here; the connector tests run against
this instead. Each behaviour cites the Microsoft documentation it follows; where the documentation is silent and the
simulator had to choose, the comment says "(guess)".

Documented behaviour reproduced (details at each place in the code):

* Throttling, Outlook service limits (https://learn.microsoft.com/en-us/graph/throttling-limits#outlook-service-limits):
  per app ID and mailbox, 4 concurrent requests, 10,000 requests per 10 minutes, 150 MB of uploads (PATCH, POST, PUT)
  per 5 minutes; "If an application exceeds the limit in one mailbox, it does not affect the ability to access another
  mailbox." A throttled request gets 429 with `Retry-After` (https://learn.microsoft.com/en-us/graph/throttling) and
  "Microsoft Graph continues to log resource usage while a client is being throttled", so refused requests still count
  against the request budget.
* JSON batching (https://learn.microsoft.com/en-us/graph/json-batching): at most 20 requests; responses may come in any
  order; `dependsOn` sequences requests and "any request that depends on that request fails with status code 424";
  "Requests in a batch are evaluated individually against the applicable throttling limits and if any request exceeds
  the limits, it fails with a status of 429".
* Paging (https://learn.microsoft.com/en-us/graph/api/user-list-messages): default page size 10, `$top` 1..1000, the
  next page through the absolute `@odata.nextLink` URL, which keeps the query options.
* Delta (https://learn.microsoft.com/en-us/graph/delta-query-messages, .../api/message-delta): per-folder rounds of
  pages with `@odata.nextLink`, the last page with `@odata.deltaLink`; the next round returns only created, updated and
  deleted messages (`"@removed": {"reason": "deleted"}`); `Prefer: odata.maxpagesize`; `$select`, `$top`, `$expand`,
  `changeType=created|updated|deleted` and only `receivedDateTime ge|gt` as `$filter`; the options given in the first
  request are encoded in the state tokens.
* Creating messages (https://learn.microsoft.com/en-us/graph/api/user-post-messages): JSON (`application/json`) or MIME
  (`text/plain`, base64); the result is a draft, in Drafts when no folder is given; malformed base64 gives 400
  `ErrorMimeContentInvalidBase64String`; a request body over 4 MB gives 413. TESTING.md ("Microsoft Graph and msal")
  records the settled facts on the message-flags (`Integer 0x0E07`) and delivery-time (`SystemTime 0x0E06`) properties:
  settable only by the creating JSON request, later changes ignored; a MIME import is always a draft.
* Updating messages (https://learn.microsoft.com/en-us/graph/api/message-update): body, subject, internetMessageId and
  replyTo are "Updatable only if isDraft = true".
* Custom headers: only names starting with `x-`/`X-` (message resource, internetMessageHeaders), else 400
  `InvalidInternetMessageHeader`.
* Large attachments (https://learn.microsoft.com/en-us/graph/outlook-large-attachments, .../api/attachment-
  createuploadsession): upload sessions for 3..150 MB files (smaller gives 400
  `ErrorAttachmentSizeShouldNotBeLessThanMinimumSize`), a pre-authenticated `uploadUrl` (no Authorization header),
  ordered byte ranges with `Content-Range`, 200 with `nextExpectedRanges` then 201 with `Location` on the last range,
  DELETE on the URL cancels.
* Errors in Graph's JSON shape `{"error": {"code", "message", "innerError"}}`; a missing, invalid or expired token gives
  401 `InvalidAuthenticationToken` with a `WWW-Authenticate: Bearer ...` header.
* The mailbox import/export API (exportItems, import sessions, the import URL) and message move: graph_export.py.
* `$value` re-renders MIME from stored properties (https://learn.microsoft.com/en-us/graph/outlook-get-mime-message);
  see graph_mime.py.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .graph_export import IMPORT_KEY, IMPORT_PATH, ImportExportApi, ImportSession
from .graph_mime import (
    Address,
    SimAttachment,
    html_document,
    html_to_text,
    parse_mime,
    raw_size,
    text_to_html,
)
from .graph_query import (
    FilterError,
    PropId,
    PropKey,
    evaluate,
    parse_datetime,
    parse_expand,
    parse_filter,
    prop_key,
)
from .graph_store import (
    WELL_KNOWN,
    Mailbox,
    SimFolder,
    SimMessage,
    Tombstone,
    make_id,
    now_utc,
    well_formed_id,
)
from .tls import TestCA

__all__ = ["GraphSimulator", "SimAttachment", "SimMessage"]

# MAPI properties the simulator computes or interprets (MS-OXPROPS): PidTagMessageFlags, PidTagMessageDeliveryTime,
# PidTagClientSubmitTime, PidTagMessageSize; PidTagMessageSizeExtended on folders.
MSGFLAG_READ = 0x1
MSGFLAG_UNSENT = 0x8
MSGFLAG_HASATTACH = 0x10
FLAGS_KEY: PropKey = ("integer", None, 0x0E07)
DELIVERY_KEY: PropKey = ("systemtime", None, 0x0E06)
SUBMIT_KEY: PropKey = ("systemtime", None, 0x0039)
SIZE_KEY: PropKey = ("integer", None, 0x0E08)
FOLDER_SIZE_KEY: PropKey = ("long", None, 0x0E08)
CREATION_ONLY = frozenset({FLAGS_KEY, DELIVERY_KEY, SUBMIT_KEY})
_TYPE_NAMES = {"integer": "Integer", "long": "Long", "string": "String", "systemtime": "SystemTime",
               "boolean": "Boolean", "binary": "Binary", "clsid": "CLSID", "short": "Short", "double": "Double",
               "float": "Float", "currency": "Currency", "object": "Object"}

MESSAGE_PROPS = ("createdDateTime", "lastModifiedDateTime", "changeKey", "categories", "receivedDateTime",
                 "sentDateTime", "hasAttachments", "internetMessageId", "subject", "bodyPreview", "importance",
                 "parentFolderId", "conversationId", "conversationIndex", "isDeliveryReceiptRequested",
                 "isReadReceiptRequested", "isRead", "isDraft", "webLink", "inferenceClassification", "body",
                 "sender", "from", "toRecipients", "ccRecipients", "bccRecipients", "replyTo", "flag")
MESSAGE_EXTRA_PROPS = ("uniqueBody", "internetMessageHeaders")  # returned only when selected
FOLDER_PROPS = ("displayName", "parentFolderId", "childFolderCount", "unreadItemCount", "totalItemCount", "isHidden")
USER_PROPS = ("businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation",
              "preferredLanguage", "surname", "userPrincipalName")
USER_EXTRA_PROPS = ("accountEnabled", "proxyAddresses", "userType", "mailNickname", "otherMails")

JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
WWW_AUTHENTICATE = ('Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                    'client_id="00000003-0000-0000-c000-000000000000"')


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GraphError(Exception):
    """An error answered in Graph's JSON error shape."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


@dataclass
class _Req:
    method: str
    segments: list[str]
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    full: str  # path and query as sent, for fault matching
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> str:
        return str(self.claims.get("appid") or self.claims.get("azp") or "")

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type "
                                                "header is set and payload is of valid JSON format.") from exc

    def prefer(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.headers.get("prefer", "").split(","):
            key, _, value = item.strip().partition("=")
            if key:
                out[key.strip().lower()] = value.strip().strip('"')
        return out


@dataclass
class _Resp:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Route:
    key: str  # "METHOD /template" for the request counter
    handler: str
    params: dict[str, str]
    outlook: bool


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    times: int
    drop_connection: bool
    after: bool


@dataclass
class _UploadSession:
    id: str
    token: str
    user_id: str
    message_id: str
    app: str
    name: str
    content_type: str
    size: int
    is_inline: bool
    content_id: str | None
    expires: datetime
    data: bytearray = field(default_factory=bytearray)


# route templates: (methods, template, handler, Outlook resource subject to the mailbox limits)
_ROUTES: tuple[tuple[str, str, str, bool], ...] = (
    ("GET", "users", "users", False),
    ("GET", "users/{u}", "user", False),
    ("GET", "users/{u}/mailboxSettings", "mailbox_settings", True),
    ("GET", "users/{u}/settings/exchange", "exchange_settings", False),
    ("GET", "admin/exchange/mailboxes/{box}/folders", "box_folders", True),
    ("GET", "admin/exchange/mailboxes/{box}/folders/{f}/childFolders", "box_child_folders", True),
    ("GET", "admin/exchange/mailboxes/{box}/folders/{f}/items", "box_items", True),
    ("POST", "admin/exchange/mailboxes/{box}/exportItems", "export_items", True),
    ("POST", "admin/exchange/mailboxes/{box}/createImportSession", "create_import_session", True),
    ("POST", "users/{u}/messages/{m}/move", "move", True),
    ("GET", "users/{u}/mailFolders/{f}/messageRules", "message_rules", True),
    ("GET POST", "users/{u}/mailFolders", "top_folders", True),
    ("GET", "users/{u}/mailFolders/{f}/messages/delta", "delta", True),
    ("GET POST", "users/{u}/mailFolders/{f}/childFolders", "child_folders", True),
    ("GET POST", "users/{u}/mailFolders/{f}/messages", "folder_messages", True),
    ("GET PATCH DELETE", "users/{u}/mailFolders/{f}/messages/{m}", "message", True),
    ("GET", "users/{u}/mailFolders/{f}/messages/{m}/$value", "value", True),
    ("GET PATCH DELETE", "users/{u}/mailFolders/{f}", "folder", True),
    ("GET POST", "users/{u}/messages", "messages", True),
    ("GET PATCH DELETE", "users/{u}/messages/{m}", "message", True),
    ("GET", "users/{u}/messages/{m}/$value", "value", True),
    ("POST", "users/{u}/messages/{m}/attachments/createUploadSession", "create_upload", True),
    ("GET POST", "users/{u}/messages/{m}/attachments", "attachments", True),
    ("GET", "users/{u}/messages/{m}/attachments/{a}", "attachment", True),
    ("GET", "users/{u}/messages/{m}/attachments/{a}/$value", "attachment_value", True),
    ("POST", "$batch", "batch", False),
)
_UPLOAD_PATH = re.compile(r"^/api/v2\.0/Users\('([^']+)'\)/Messages\('([^']+)'\)/AttachmentSessions\('([^']+)'\)$")
_UPLOAD_KEY = "/api/v2.0/Users({u})/Messages({m})/AttachmentSessions({s})"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        self.server.sim._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, sim: GraphSimulator, context: ssl.SSLContext) -> None:
        self.sim = sim
        self.context = context
        self.connections: set[ssl.SSLSocket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:  # skip HTTPServer's reverse DNS lookup of the address
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the connection's own thread, so a slow client cannot stall the accept loop.
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            _Handler(conn, client_address, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    def close_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


class GraphSimulator(ImportExportApi):
    """Microsoft Graph mail API on https://127.0.0.1:PORT/v1.0 (a context manager: `with GraphSimulator(...) as sim`).

    `validate_token(token) -> claims` raises for a token Graph would refuse (401 `InvalidAuthenticationToken`). The
    app id claim (`appid`, else `azp`) keys the Outlook limits per app and mailbox. `import_export=False` is a tenant
    whose app lacks the mailbox import/export permissions; import sessions last `import_session_seconds`.
    """

    def __init__(self, ca: TestCA, validate_token: Callable[[str], Mapping[str, Any]], *,
                 page_size: int = 10,
                 max_concurrent_per_mailbox: int = 4,
                 requests_per_window: int = 10_000, request_window_seconds: float = 600.0,
                 upload_bytes_per_window: int = 150 * 2**20, upload_window_seconds: float = 300.0,
                 retry_after_seconds: int = 1,
                 max_message_size: int = 150 * 2**20,
                 max_request_body: int = 4 * 2**20,
                 rerender: bool = True,
                 latency_seconds: float = 0.0,
                 min_upload_session_size: int = 3 * 2**20,
                 import_export: bool = True,
                 import_session_seconds: float = 3600.0) -> None:
        self._ca = ca
        self._validate = validate_token
        self.page_size = page_size
        self.max_concurrent_per_mailbox = max_concurrent_per_mailbox
        self.requests_per_window = requests_per_window
        self.request_window_seconds = request_window_seconds
        self.upload_bytes_per_window = upload_bytes_per_window
        self.upload_window_seconds = upload_window_seconds
        self.retry_after_seconds = retry_after_seconds
        self.max_message_size = max_message_size
        self.max_request_body = max_request_body
        self.rerender = rerender
        self.latency_seconds = latency_seconds
        self.min_upload_session_size = min_upload_session_size
        self.import_export = import_export
        self.import_session_seconds = import_session_seconds
        self._import_sessions: dict[str, ImportSession] = {}
        self.requests: Counter[str] = Counter()  # by route key, each sub-request of a $batch included
        self.sub_requests: Counter[str] = Counter()  # the part of `requests` that came inside a $batch
        self.throttled = 0
        self.base_url = ""
        self._origin = ""
        self._lock = threading.RLock()
        self._throttle_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._mailboxes: dict[str, Mailbox] = {}  # user id -> mailbox
        self._names: dict[str, str] = {}  # lower-case id / address -> user id
        self._user_order: list[str] = []
        self._faults: list[_Fault] = []
        self._seen_tokens: set[str] = set()
        self._revoked: set[str] = set()
        self._inflight: dict[tuple[str, str], int] = {}
        self.peak_inflight = 0  # the most requests one app had in flight on one mailbox at once (instrumentation)
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._uploads: dict[tuple[str, str], deque[tuple[float, int]]] = {}
        self._sessions: dict[str, _UploadSession] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> GraphSimulator:
        self._server = _Server(self, self._ca.server_context())
        port = self._server.server_address[1]
        self._origin = f"https://127.0.0.1:{port}"
        self.base_url = f"{self._origin}/v1.0"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="graph-simulator", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    # --------------------------------------------------------------------------------------------- Python API

    def add_user(self, address: str, *, display_name: str = "", quota_bytes: int | None = None,
                 forwarding_to: str | None = None, auto_reply: bool = False) -> None:
        """A licensed user with a mailbox holding the default folders."""
        with self._lock:
            if address.lower() in self._names:
                raise ValueError(f"user {address} exists")
            user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "mailbox:" + address.lower()))
            mb = Mailbox.create(user_id, address, display_name or address.split("@")[0], quota_bytes, forwarding_to,
                                auto_reply)
            self._mailboxes[user_id] = mb
            self._names[address.lower()] = user_id
            self._names[user_id.lower()] = user_id
            self._user_order.append(user_id)

    def add_folder(self, address: str, path: str) -> str:
        """Create the folders of a '/'-separated displayName path under the root (parents too); -> folder id."""
        with self._lock:
            mb = self._mailbox_by_address(address)
            current = mb.root_id
            for part in [p for p in path.split("/") if p]:
                match = next((c for c in mb.children(current) if c.display_name.lower() == part.lower()), None)
                if match is None:
                    fid = mb.next_id("folder")
                    mb.folders[fid] = SimFolder(fid, part, current)
                    match = mb.folders[fid]
                current = match.id
            return current

    def add_message(self, address: str, folder_path: str, mime: bytes, *, received: datetime | None = None,
                    is_read: bool = False, flagged: bool = False, categories: Sequence[str] = ()) -> str:
        """A message as if delivered (not a draft): received at `received`, else at its Date, else now."""
        parsed = parse_mime(mime)
        if received is not None and received.tzinfo is None:
            received = received.replace(tzinfo=UTC)
        with self._lock:
            mb = self._mailbox_by_address(address)
            folder = self._folder_by_path(mb, folder_path)
            now = now_utc()
            m = SimMessage(id=mb.next_id("message"), folder_id=folder.id, subject=parsed.subject, is_draft=False,
                           is_read=is_read, flag_status="flagged" if flagged else "notFlagged",
                           categories=list(categories), received=received or parsed.date or now, sent=parsed.date,
                           internet_message_id=parsed.message_id or self._new_message_id(mb),
                           body_type=parsed.body_type, body=parsed.body, attachments=list(parsed.attachments),
                           headers=_x_headers(mime), from_=parsed.from_, sender=parsed.sender, to=parsed.to,
                           cc=parsed.cc, bcc=parsed.bcc, reply_to=parsed.reply_to, created=now, last_modified=now,
                           raw=mime)
            self._store_new(mb, m)
            return m.id

    def folders(self, address: str) -> dict[str, str]:
        """Every folder under the root: '/'-joined displayName path -> folder id."""
        with self._lock:
            return self._mailbox_by_address(address).paths()

    def messages(self, address: str, folder_path: str) -> list[SimMessage]:
        """Copies of the stored items of a folder (path or well-known name), oldest received first."""
        with self._lock:
            mb = self._mailbox_by_address(address)
            folder = self._folder_by_path(mb, folder_path)
            found = [m.snapshot() for m in mb.messages.values() if m.folder_id == folder.id]
        return sorted(found, key=lambda m: (m.received, m.created_seq))

    def mime(self, address: str, message_id: str) -> bytes:
        """What `GET .../messages/{id}/$value` returns."""
        with self._lock:
            mb = self._mailbox_by_address(address)
            if message_id not in mb.messages:
                raise KeyError(message_id)
            return mb.messages[message_id].render(self.rerender)

    def delete_message(self, address: str, message_id: str) -> None:
        """The user deletes a message (a later delta round reports it as @removed)."""
        with self._lock:
            mb = self._mailbox_by_address(address)
            self._remove_message(mb, mb.messages[message_id])

    def update_message(self, address: str, message_id: str, *, is_read: bool | None = None,
                       flagged: bool | None = None, categories: Sequence[str] | None = None,
                       extended: Mapping[str, str] | None = None) -> None:
        """The user changes a message's state (a later delta round reports it as updated); `extended` sets single-value
        extended properties by id, as a client's PATCH would."""
        with self._lock:
            mb = self._mailbox_by_address(address)
            m = mb.messages[message_id]
            if is_read is not None:
                m.is_read = is_read
            if flagged is not None:
                m.flag_status = "flagged" if flagged else "notFlagged"
            if categories is not None:
                m.categories = list(categories)
            for pid, value in (extended or {}).items():
                _set_extended(m, pid, _parse_prop_id(pid), value)
            self._touch(mb, m)

    def expire_tokens(self) -> None:
        """Every token seen so far now gets 401 InvalidAuthenticationToken (as when access tokens expire)."""
        with self._lock:
            self._revoked |= self._seen_tokens

    def fail_next(self, method: str, path_contains: str, status: int, *, times: int = 1,
                  drop_connection: bool = False, after: bool = False) -> None:
        """Fault injection for the next `times` requests whose method matches (`*` for any) and whose path contains
        `path_contains`: answer `status` instead of handling the request (nothing is applied), or with
        `drop_connection` close the connection without any reply. With `after=True` the request is applied first and
        then the reply is replaced (by `status`, or by a dropped connection: a lost reply). Batch sub-requests are
        matched too (status faults only)."""
        if not drop_connection and not 100 <= status <= 599:
            raise ValueError("a fault needs an HTTP status, or drop_connection=True")
        with self._lock:
            self._faults.append(_Fault(method.upper(), path_contains, status, times, drop_connection, after))

    # ----------------------------------------------------------------------------------------------- HTTP layer

    def _serve(self, h: _Handler) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        try:
            body, too_big = self._read_body(h, headers)
        except (OSError, ValueError):
            h.close_connection = True
            return
        if headers.get("connection", "").lower() == "close":
            h.close_connection = True
        fault = self._take_fault(h.command, h.path, sub_request=False)
        resp = self._process(h.command, h.path, headers, body, too_big, fault)
        if fault is not None and fault.after:
            if fault.drop_connection:
                h.close_connection = True
                return
            resp = self._fault_response(fault)
        if resp is None:  # dropped before anything was applied
            h.close_connection = True
            return
        rid = headers.get("client-request-id") or str(uuid.uuid4())
        resp.headers.setdefault("request-id", rid)
        resp.headers.setdefault("client-request-id", rid)
        h.send_response(resp.status)
        for name, value in resp.headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(resp.body)))
        h.end_headers()
        with contextlib.suppress(OSError):
            h.wfile.write(resp.body)

    def _read_body(self, h: _Handler, headers: dict[str, str]) -> tuple[bytes, bool]:
        """The request body; bodies over `max_request_body` are read and discarded (the reply is then 413)."""
        # Graph's 4 MB request limit; the import URL is not Graph's and documents none (graph_export.py)
        limit = self.max_message_size * 2 if IMPORT_PATH.match(urlsplit(h.path).path) else self.max_request_body
        chunks: list[bytes] = []
        total = 0
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                line = h.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = h.rfile.read(size)
                h.rfile.readline(65537)
                total += len(data)
                if total <= limit:
                    chunks.append(data)
            return b"".join(chunks), total > limit
        length = int(headers.get("content-length", "0") or "0")
        remaining = length
        while remaining > 0:
            data = h.rfile.read(min(remaining, 1 << 20))
            if not data:
                raise ValueError("connection closed mid-body")
            remaining -= len(data)
            if length <= limit:
                chunks.append(data)
        return b"".join(chunks), length > limit

    def _take_fault(self, method: str, full: str, *, sub_request: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method not in ("*", method.upper()) or fault.path_contains not in full:
                    continue
                if sub_request and fault.drop_connection:
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: _Fault) -> _Resp:
        codes = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout",
                 429: "TooManyRequests"}
        headers = {"Retry-After": str(self.retry_after_seconds)} if fault.status in (429, 503) else {}
        return self._error(GraphError(fault.status, codes.get(fault.status, "UnknownError"),
                                      "Injected fault (simulator).", headers))

    def _process(self, method: str, raw_path: str, headers: dict[str, str], body: bytes, too_big: bool,
                 fault: _Fault | None) -> _Resp | None:
        split = urlsplit(raw_path)
        imported = IMPORT_PATH.match(split.path)
        if imported:
            self._count(f"{method} {IMPORT_KEY}")
            if fault is not None and not fault.after:
                return None if fault.drop_connection else self._fault_response(fault)
            return self._import_request(method, dict(parse_qsl(split.query)), headers, body)
        upload = _UPLOAD_PATH.match(split.path)
        if upload:
            self._count(f"{method} {_UPLOAD_KEY}")
            if fault is not None and not fault.after:
                return None if fault.drop_connection else self._fault_response(fault)
            if too_big:
                return self._too_large()
            return self._upload_request(method, upload.group(3), dict(parse_qsl(split.query)), headers, body)
        if not (split.path == "/v1.0" or split.path.startswith("/v1.0/")):
            self._count(f"{method} ?")
            return self._error(GraphError(404, "NotFound", "The requested version segment is not supported "
                                                           "(simulator serves /v1.0)."))
        req = _Req(method.upper(), [unquote(s) for s in split.path[len("/v1.0"):].split("/") if s],
                   dict(parse_qsl(split.query, keep_blank_values=True)), headers, body, raw_path)
        try:
            route = self._route(req)
        except GraphError as err:
            self._count(f"{method} ?")
            return self._error(err)
        self._count(route.key)
        if fault is not None and not fault.after:
            return None if fault.drop_connection else self._fault_response(fault)
        if too_big:
            return self._too_large()
        try:
            req.claims = self._authenticate(headers)
        except GraphError as err:
            return self._error(err)
        if route.handler == "batch":
            try:
                return self._batch(req)
            except GraphError as err:
                return self._error(err)
            except Exception as err:
                return self._error(GraphError(500, "InternalServerError", f"Simulator error: {err!r}"))
        return self._execute(req, route)

    def _count(self, key: str, *, sub_request: bool = False) -> None:
        with self._count_lock:
            self.requests[key] += 1
            if sub_request:
                self.sub_requests[key] += 1

    def _too_large(self) -> _Resp:
        """"S/MIME message payloads are currently limited to 4 MB. Submission attempts that exceed this limit will
        result in an HTTP 413 Request Entity Too Large error response" (user-post-messages); every Graph request body
        is limited to 4 MB (a 4 MB body is answered "The maximum request length supported is 4MB.")."""
        return self._error(GraphError(413, "RequestEntityTooLarge", "The maximum request length supported is 4MB."))

    def _route(self, req: _Req) -> _Route:
        path_matched = False
        for methods, template, handler, outlook in _ROUTES:
            parts = template.split("/")
            if len(parts) != len(req.segments):
                continue
            params: dict[str, str] = {}
            for part, seg in zip(parts, req.segments, strict=True):
                if part.startswith("{"):
                    params[part[1:-1]] = seg
                elif part.lower() != seg.lower():  # Graph path segments are case-insensitive
                    break
            else:
                path_matched = True
                if req.method in methods.split():
                    return _Route(f"{req.method} /{template}", handler, params, outlook)
        if path_matched:
            raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{'/'.join(req.segments)}'.")

    def _authenticate(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """401 InvalidAuthenticationToken for a missing, refused or expired bearer token."""
        challenge = {"WWW-Authenticate": WWW_AUTHENTICATE}
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", challenge)
        token = auth[7:].strip()
        with self._lock:
            revoked = token in self._revoked
        if revoked:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.",
                             challenge)
        try:
            claims = dict(self._validate(token))
        except Exception as exc:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.",
                             challenge) from exc
        with self._lock:
            self._seen_tokens.add(token)
        return claims

    # ---------------------------------------------------------------------------------------------- throttling

    def _admit(self, key: tuple[str, str], upload_bytes: int) -> _Resp | None:
        """Apply the Outlook limits for one app and mailbox; None when admitted (a concurrency slot is then held).

        https://learn.microsoft.com/en-us/graph/throttling-limits#outlook-service-limits: 4 concurrent requests,
        10,000 requests per 10 minutes, 150 MB upload (PATCH, POST, PUT) per 5 minutes, per app ID and mailbox.
        Every request, refused ones included, counts against the request budget ("Microsoft Graph continues to log
        resource usage while a client is being throttled", https://learn.microsoft.com/en-us/graph/throttling).
        Refused uploads do not count against the byte budget (guess: the bytes were not stored).
        """
        now = time.monotonic()
        with self._throttle_lock:
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - self.request_window_seconds:
                window.popleft()
            window.append(now)
            uploads = self._uploads.setdefault(key, deque())
            while uploads and uploads[0][0] <= now - self.upload_window_seconds:
                uploads.popleft()
            if self._inflight.get(key, 0) >= self.max_concurrent_per_mailbox:
                limit = "MailboxConcurrency"
            elif len(window) > self.requests_per_window:
                limit = "request rate"
            elif upload_bytes and sum(n for _, n in uploads) + upload_bytes > self.upload_bytes_per_window:
                limit = "IncomingBytes"
            else:
                if upload_bytes:
                    uploads.append((now, upload_bytes))
                self._inflight[key] = self._inflight.get(key, 0) + 1
                self.peak_inflight = max(self.peak_inflight, self._inflight[key])
                return None
            self.throttled += 1
        # The concurrency refusal's code and text are the ones Outlook sends (ApplicationThrottled, "Application is
        # over its MailboxConcurrency limit."); the other two texts follow the same pattern (guess).
        return self._error(GraphError(429, "ApplicationThrottled", f"Application is over its {limit} limit.",
                                      {"Retry-After": str(self.retry_after_seconds)}))

    def _release(self, key: tuple[str, str]) -> None:
        with self._throttle_lock:
            self._inflight[key] = max(0, self._inflight.get(key, 0) - 1)

    def _throttle_key(self, req: _Req, route: _Route) -> tuple[str, str] | None:
        if not route.outlook:
            return None
        with self._lock:
            mb = self._mailbox(route.params["u"]) if "u" in route.params else self._box(route.params["box"])
        return (req.app, mb.user_id)

    def _execute(self, req: _Req, route: _Route, admitted: tuple[str, str] | None = None) -> _Resp:
        """Run one (sub-)request: mailbox limits (unless already admitted), the handler, the simulated latency."""
        key = admitted
        if key is None:
            try:
                key = self._throttle_key(req, route)
            except GraphError as err:
                return self._error(err)
            if key is not None:
                upload = len(req.body) if req.method in ("POST", "PUT", "PATCH") else 0
                refused = self._admit(key, upload)
                if refused is not None:
                    return refused
        try:
            handler: Callable[[_Req, dict[str, str]], _Resp] = getattr(self, "_h_" + route.handler)
            try:
                resp = handler(req, route.params)
            except GraphError as err:
                resp = self._error(err)
            except FilterError as err:
                resp = self._error(GraphError(400, "ErrorInvalidUrlQueryFilter", f"The query filter contains one "
                                                                                 f"or more invalid nodes. ({err})"))
            except Exception as err:  # a simulator bug or an unexpected body: answer 500 rather than hang up
                resp = self._error(GraphError(500, "InternalServerError", f"Simulator error: {err!r}"))
            if self.latency_seconds:
                time.sleep(self.latency_seconds)  # the request stays "in flight" (holds its slot) meanwhile
            return resp
        finally:
            if key is not None:
                self._release(key)

    # ---------------------------------------------------------------------------------------------------- batch

    def _batch(self, outer: _Req) -> _Resp:
        """POST /$batch (https://learn.microsoft.com/en-us/graph/json-batching).

        Independent sub-requests run concurrently, dependent ones wait for their dependencies (waves). Each is
        evaluated against the mailbox limits on its own, taking concurrency slots in request order, so a batch of 5
        independent requests to one mailbox gets a 429 for the 5th. That follows the json-batching page ("if any
        request exceeds the limits, it fails with a status of 429") and Microsoft Q&A 734143 ("if you tried to execute
        a batch request with 5 requests the last request would be throttled in the batch because of the
        Concurrency"); the throttling-limits page's JSON-batching section says instead that Outlook runs at most 4 of
        them at a time, which would queue the 5th (documentation conflict; the simulator takes the stricter reading).
        """
        data = outer.json()
        items = data.get("requests") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise GraphError(400, "BadRequest", "Invalid batch payload format.")
        if len(items) > 20:
            raise GraphError(400, "BadRequest", "Number of batch request steps exceeds the maximum of 20.")
        ids: list[str] = []
        for item in items:
            if not isinstance(item, dict) or not item.get("id") or not item.get("method") or not item.get("url"):
                raise GraphError(400, "BadRequest", "Each batch request needs id, method and url.")
            ids.append(str(item["id"]).lower())  # ids are not case-sensitive
        if len(set(ids)) != len(ids):
            raise GraphError(400, "BadRequest", "Batch request ids must be unique.")
        deps: dict[str, list[str]] = {}
        for item in items:
            depends = item.get("dependsOn") or []
            if isinstance(depends, str):
                depends = [depends]
            deps[str(item["id"]).lower()] = [str(d).lower() for d in depends]
            if any(d not in ids for d in deps[str(item["id"]).lower()]):
                raise GraphError(400, "BadRequest", "dependsOn refers to an unknown request id.")
        results: dict[str, dict[str, Any]] = {}
        remaining = list(items)
        while remaining:
            wave = [it for it in remaining if all(d in results for d in deps[str(it["id"]).lower()])]
            if not wave:
                raise GraphError(400, "BadRequest", "The dependsOn graph has a cycle.")
            runnable: list[tuple[dict[str, Any], _Req, _Route, tuple[str, str] | None]] = []
            for item in wave:
                bid = str(item["id"]).lower()
                if any(results[d]["status"] >= 400 for d in deps[bid]):
                    results[bid] = self._sub_response(item, self._error(GraphError(
                        424, "FailedDependency", "The request depends on a request that failed.")))
                    continue
                prepared = self._prepare_sub(outer, item)
                if isinstance(prepared, _Resp):
                    results[bid] = self._sub_response(item, prepared)
                    continue
                sub, route = prepared
                key: tuple[str, str] | None = None
                try:
                    key = self._throttle_key(sub, route)
                except GraphError as err:
                    results[bid] = self._sub_response(item, self._error(err))
                    continue
                if key is not None:
                    upload = len(sub.body) if sub.method in ("POST", "PUT", "PATCH") else 0
                    refused = self._admit(key, upload)  # slots are taken in request order: the 5th gets 429
                    if refused is not None:
                        results[bid] = self._sub_response(item, refused)
                        continue
                runnable.append((item, sub, route, key))
            done: dict[str, _Resp] = {}
            threads = [threading.Thread(target=self._run_sub, args=(done, str(it["id"]).lower(), sub, route, key),
                                        daemon=True) for it, sub, route, key in runnable]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for item, *_ in runnable:
                results[str(item["id"]).lower()] = self._sub_response(item, done[str(item["id"]).lower()])
            remaining = [it for it in remaining if str(it["id"]).lower() not in results]
        # Responses may come in any order; ids correlate them (here: request order).
        ordered = [results[i] for i in ids]
        return self._json(200, {"responses": ordered})

    def _execute_unthrottled(self, req: _Req, route: _Route) -> _Resp:
        try:
            handler: Callable[[_Req, dict[str, str]], _Resp] = getattr(self, "_h_" + route.handler)
            return handler(req, route.params)
        except GraphError as err:
            return self._error(err)
        except Exception as err:
            return self._error(GraphError(500, "InternalServerError", f"Simulator error: {err!r}"))

    def _run_sub(self, done: dict[str, _Resp], bid: str, sub: _Req, route: _Route,
                 key: tuple[str, str] | None) -> None:
        if key is None:  # not a mailbox resource: nothing to hold
            done[bid] = self._execute_unthrottled(sub, route)
        else:
            done[bid] = self._execute(sub, route, admitted=key)

    def _prepare_sub(self, outer: _Req, item: dict[str, Any]) -> tuple[_Req, _Route] | _Resp:
        url = str(item["url"])
        if not url.startswith("/"):
            url = "/" + url
        split = urlsplit(url)
        headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
        body_value = item.get("body")
        if body_value is None:
            body = b""
        elif isinstance(body_value, (dict, list)):
            body = json.dumps(body_value).encode()
            headers.setdefault("content-type", "application/json")
        else:
            # A non-JSON body is a string ("a base64 URL-encoded value"); a MIME create already sends base64 text.
            body = str(body_value).encode()
        if body and "content-type" not in headers:
            return self._error(GraphError(400, "BadRequest", "Content-Type header is required when a body is given."))
        sub = _Req(str(item["method"]).upper(), [unquote(s) for s in split.path.split("/") if s],
                   dict(parse_qsl(split.query, keep_blank_values=True)), headers, body, "/v1.0" + url,
                   claims=outer.claims)
        try:
            route = self._route(sub)
        except GraphError as err:
            self._count(f"{sub.method} ?", sub_request=True)
            return self._error(err)
        self._count(route.key, sub_request=True)
        if route.handler == "batch":
            return self._error(GraphError(400, "BadRequest", "A batch cannot contain a batch."))
        fault = self._take_fault(sub.method, sub.full, sub_request=True)
        if fault is not None:
            if not fault.after:
                return self._fault_response(fault)
            self._execute(sub, route)
            return self._fault_response(fault)
        return sub, route

    def _sub_response(self, item: dict[str, Any], resp: _Resp) -> dict[str, Any]:
        out: dict[str, Any] = {"id": str(item["id"]), "status": resp.status}
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("request-id", "client-request-id")}
        if headers:
            out["headers"] = headers
        if resp.body:
            if resp.headers.get("Content-Type", "").startswith("application/json"):
                out["body"] = json.loads(resp.body)
            else:
                out["body"] = base64.b64encode(resp.body).decode()
        return out

    # ------------------------------------------------------------------------------------------------- helpers

    def _json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> _Resp:
        out = {"Content-Type": JSON_TYPE, "OData-Version": "4.0", "Cache-Control": "no-cache"}
        out.update(headers or {})
        return _Resp(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), out)

    def _error(self, err: GraphError) -> _Resp:
        rid = str(uuid.uuid4())
        body = {"error": {"code": err.code, "message": err.message,
                          "innerError": {"date": _iso(now_utc()), "request-id": rid, "client-request-id": rid}}}
        return self._json(err.status, body, err.headers)

    def _mailbox(self, ref: str) -> Mailbox:
        """A mailbox by user id, userPrincipalName or mail (case-insensitive); unknown -> 404 ErrorInvalidUser
        ("The requested user '...' is invalid.", as Graph answers mail requests for a user it cannot resolve)."""
        user_id = self._names.get(ref.lower())
        if user_id is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{ref}' is invalid.")
        return self._mailboxes[user_id]

    def _mailbox_by_address(self, address: str) -> Mailbox:
        user_id = self._names.get(address.lower())
        if user_id is None:
            raise KeyError(address)
        return self._mailboxes[user_id]

    def _folder_by_path(self, mb: Mailbox, path: str) -> SimFolder:
        folder = mb.folder_by_path(path)
        if folder is None:
            raise KeyError(path)
        return folder

    def _folder(self, mb: Mailbox, ref: str) -> SimFolder:
        """A folder by id or well-known name (any case); malformed id -> 400, unknown -> 404 ErrorItemNotFound."""
        if ref.lower() in WELL_KNOWN:
            return mb.folders[mb.well_known[ref.lower()]]
        if not well_formed_id(ref):
            raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        folder = mb.folders.get(ref)
        if folder is None:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return folder

    def _message(self, mb: Mailbox, ref: str, folder_ref: str | None = None) -> SimMessage:
        if not well_formed_id(ref):
            raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        m = mb.messages.get(ref)
        if m is None or (folder_ref is not None and m.folder_id != self._folder(mb, folder_ref).id):
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return m

    def _new_message_id(self, mb: Mailbox) -> str:
        return f"<{uuid.uuid4().hex.upper()}@SIM0PR01MB0001.namprd00.prod.outlook.com>"

    def _store_new(self, mb: Mailbox, m: SimMessage) -> None:
        m.size = len(m.render(self.rerender))
        m.created_seq = m.changed_seq = mb.bump()
        mb.messages[m.id] = m

    def _touch(self, mb: Mailbox, m: SimMessage) -> None:
        m.version += 1
        m.last_modified = now_utc()
        m.size = len(m.render(self.rerender))
        m.changed_seq = mb.bump()

    def _remove_message(self, mb: Mailbox, m: SimMessage) -> None:
        del mb.messages[m.id]
        mb.tombstones.append(Tombstone(mb.bump(), m.id, m.folder_id, m.created_seq))

    def _check_size(self, mb: Mailbox, m: SimMessage, previous_size: int = 0) -> None:
        """The maximum message size (Exchange Online default 35 MB, raisable to 150 MB, attachment-createuploadsession
        tip) -> 400 ErrorMessageSizeExceeded "The message exceeds the maximum supported size." (the error Graph gives,
        microsoft-graph-docs issue #2561; its 400 status is a guess). A full mailbox -> ErrorQuotaExceeded "Mailbox has
        exceeded maximum mailbox size." with 403, the status reported in microsoft-graph-docs-contrib issue #6596."""
        if raw_size(m.body, m.attachments) > self.max_message_size:
            raise GraphError(400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
        if mb.quota_bytes is not None:
            size = len(m.render(self.rerender))
            if mb.used_bytes() - previous_size + size > mb.quota_bytes:
                raise GraphError(403, "ErrorQuotaExceeded", "Mailbox has exceeded maximum mailbox size.")

    def _link(self, req: _Req, params: Mapping[str, str | None]) -> str:
        query = {k: v for k, v in req.query.items() if k not in params}
        query.update({k: v for k, v in params.items() if v is not None})
        path = "/".join(quote(s, safe="$@='()") for s in req.segments)
        return f"{self.base_url}/{path}?" + urlencode(query, quote_via=quote, safe="$'(),:/")

    def _top(self, req: _Req, default: int, maximum: int = 1000) -> int:
        """`$top`: 1..1000 for messages ("within the range of 1 and 1000", user-list-messages); larger values are
        capped (guess)."""
        raw = req.query.get("$top")
        if raw is None:
            return default
        try:
            top = int(raw)
        except ValueError as exc:
            raise GraphError(400, "BadRequest", f"Invalid $top value '{raw}'.") from exc
        if top < 1:
            raise GraphError(400, "BadRequest", f"Invalid $top value '{raw}'.")
        return min(top, maximum)

    def _page(self, req: _Req, items: list[Any], default: int) -> tuple[list[Any], str | None]:
        top = self._top(req, default)
        try:
            skip = int(req.query.get("$skip", "0") or "0")
        except ValueError as exc:
            raise GraphError(400, "BadRequest", "Invalid $skip value.") from exc
        page = items[skip:skip + top]
        more = skip + top < len(items)
        return page, (self._link(req, {"$skip": str(skip + top)}) if more else None)

    @staticmethod
    def _select(req: _Req, known: Sequence[str], extra: Sequence[str], type_name: str) -> list[str] | None:
        raw = req.query.get("$select")
        if not raw:
            return None
        canon = {p.lower(): p for p in (*known, *extra, "id")}
        out = []
        for name in (s.strip() for s in raw.split(",")):
            if not name:
                continue
            if name.lower() not in canon:
                raise GraphError(400, "RequestBroker--ParseUri",
                                 f"Could not find a property named '{name}' on type 'microsoft.graph.{type_name}'.")
            out.append(canon[name.lower()])
        return out

    # ------------------------------------------------------------------------------------------- users & settings

    def _user_json(self, mb: Mailbox, select: list[str] | None) -> dict[str, Any]:
        given, _, surname = mb.display_name.partition(" ")
        props: dict[str, Any] = {"businessPhones": [], "displayName": mb.display_name, "givenName": given or None,
                                 "jobTitle": None, "mail": mb.address, "mobilePhone": None, "officeLocation": None,
                                 "preferredLanguage": "en-US", "surname": surname or None,
                                 "userPrincipalName": mb.address, "accountEnabled": True,
                                 "proxyAddresses": [f"SMTP:{mb.address}"], "userType": "Member",
                                 "mailNickname": mb.address.split("@")[0], "otherMails": []}
        names = select if select is not None else list(USER_PROPS)
        out = {n: props[n] for n in names if n != "id"}
        out["id"] = mb.user_id
        return out

    def _h_users(self, req: _Req, p: dict[str, str]) -> _Resp:
        select = self._select(req, USER_PROPS, USER_EXTRA_PROPS, "user")
        with self._lock:
            users = [self._mailboxes[u] for u in self._user_order]
            values = [self._user_json(mb, select) for mb in users]
        top = self._top(req, self.page_size, 999)
        offset = 0
        token = req.query.get("$skiptoken")
        if token:
            try:
                offset = int(base64.urlsafe_b64decode(token.encode()).decode())
            except (ValueError, binascii.Error) as exc:
                raise GraphError(400, "BadRequest", "Invalid $skiptoken.") from exc
        body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#users", "value": values[offset:
                                                                                                      offset + top]}
        if offset + top < len(values):
            body["@odata.nextLink"] = self._link(req, {"$skiptoken": base64.urlsafe_b64encode(
                str(offset + top).encode()).decode()})
        return self._json(200, body)

    def _h_user(self, req: _Req, p: dict[str, str]) -> _Resp:
        select = self._select(req, USER_PROPS, USER_EXTRA_PROPS, "user")
        with self._lock:
            user_id = self._names.get(p["u"].lower())
            if user_id is None:  # a directory lookup, not a mailbox one
                raise GraphError(404, "Request_ResourceNotFound", f"Resource '{p['u']}' does not exist or one of its "
                                                                  "queried reference-property objects are not present.")
            body = self._user_json(self._mailboxes[user_id], select)
        return self._json(200, {"@odata.context": f"{self.base_url}/$metadata#users/$entity", **body})

    def _h_mailbox_settings(self, req: _Req, p: dict[str, str]) -> _Resp:
        """GET /users/{u}/mailboxSettings (resource mailboxSettings: automaticRepliesSetting.status is disabled,
        alwaysEnabled or scheduled)."""
        with self._lock:
            mb = self._mailbox(p["u"])
            body = {
                "@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/mailboxSettings",
                "archiveFolder": mb.well_known["archive"],
                "timeZone": "UTC",
                "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
                "dateFormat": "M/d/yyyy",
                "timeFormat": "h:mm tt",
                "userPurpose": "user",
                "automaticRepliesSetting": {
                    "status": "alwaysEnabled" if mb.auto_reply else "disabled",
                    "externalAudience": "all",
                    "internalReplyMessage": "I am out of the office." if mb.auto_reply else "",
                    "externalReplyMessage": "I am out of the office." if mb.auto_reply else "",
                    "scheduledStartDateTime": {"dateTime": "2024-01-01T00:00:00.0000000", "timeZone": "UTC"},
                    "scheduledEndDateTime": {"dateTime": "2024-01-02T00:00:00.0000000", "timeZone": "UTC"},
                },
                "language": {"locale": "en-US", "displayName": "English (United States)"},
                "workingHours": {"daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                                 "startTime": "08:00:00.0000000", "endTime": "17:00:00.0000000",
                                 "timeZone": {"name": "UTC"}},
            }
        return self._json(200, body)

    def _h_message_rules(self, req: _Req, p: dict[str, str]) -> _Resp:
        """GET /users/{u}/mailFolders/inbox/messageRules (messageRule: actions.forwardTo is a recipient collection).
        Rules exist on the Inbox only."""
        with self._lock:
            mb = self._mailbox(p["u"])
            folder = self._folder(mb, p["f"])
            if folder.well_known != "inbox":
                raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            rules: list[dict[str, Any]] = []
            if mb.forwarding_to:
                rules.append({"id": "AQAAAJ5dZqA=", "displayName": f"Forward to {mb.forwarding_to}", "sequence": 1,
                              "isEnabled": True, "hasError": False, "isReadOnly": False, "conditions": {},
                              "actions": {"forwardTo": [{"emailAddress": {"name": mb.forwarding_to,
                                                                          "address": mb.forwarding_to}}],
                                          "stopProcessingRules": True}})
        return self._json(200, {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/mailFolders"
                                                  "('inbox')/messageRules", "value": rules})

    # ---------------------------------------------------------------------------------------------------- folders

    def _folder_json(self, mb: Mailbox, f: SimFolder, select: list[str] | None,
                     expand: str | None = None) -> dict[str, Any]:
        msgs = [m for m in mb.messages.values() if m.folder_id == f.id]
        props: dict[str, Any] = {
            "displayName": f.display_name, "parentFolderId": f.parent_id,
            "childFolderCount": sum(1 for c in mb.folders.values() if c.parent_id == f.id),
            "unreadItemCount": sum(1 for m in msgs if not m.is_read), "totalItemCount": len(msgs),
            "isHidden": f.is_hidden,
        }
        names = select if select is not None else list(FOLDER_PROPS)
        out: dict[str, Any] = {"id": f.id}
        out.update({n: props[n] for n in names if n != "id"})
        if expand:
            # Folder size is not a v1.0 mailFolder property; it is read as PidTagMessageSizeExtended ("Long 0x0E08").
            eps = [("Long 0xe08", str(sum(m.size for m in msgs)))]
            out["singleValueExtendedProperties"] = self._expand_props(expand, eps, "mailFolder")
        return out

    def _folder_list(self, req: _Req, mb: Mailbox, parent: SimFolder) -> _Resp:
        """List child folders: hidden ones only with includeHiddenFolders=true (user-list-mailfolders); default page
        size 10 ("If a collection exceeds the default page size (10 items), the @odata.nextLink property is
        returned")."""
        select = self._select(req, FOLDER_PROPS, (), "mailFolder")
        hidden = req.query.get("includeHiddenFolders", "").lower() == "true"
        children = [c for c in mb.children(parent.id) if hidden or not c.is_hidden]
        flt = req.query.get("$filter")
        if flt:
            node = parse_filter(flt)
            children = [c for c in children if evaluate(node, self._folder_resolver(mb, c), lambda _p: [])]
        page, next_link = self._page(req, children, self.page_size)
        body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/mailFolders"}
        if req.query.get("$count", "").lower() == "true":
            body["@odata.count"] = len(children)
        if next_link:
            body["@odata.nextLink"] = next_link
        body["value"] = [self._folder_json(mb, c, select, req.query.get("$expand")) for c in page]
        return self._json(200, body)

    def _folder_resolver(self, mb: Mailbox, f: SimFolder) -> Callable[[str], Any]:
        def resolve(path: str) -> Any:
            key = path.lower()
            values = {"displayname": f.display_name, "id": f.id, "parentfolderid": f.parent_id,
                      "ishidden": f.is_hidden}
            if key not in values:
                raise FilterError(f"unsupported property {path!r}")
            return values[key]
        return resolve

    def _create_folder(self, req: _Req, mb: Mailbox, parent: SimFolder) -> _Resp:
        """POST .../mailFolders or .../childFolders {"displayName", "isHidden"} -> 201; a sibling with the same name
        -> 409 ErrorFolderExists (the Exchange code for this case; the Graph docs list 409 Conflict)."""
        data = req.json()
        name = str(data.get("displayName") or "").strip() if isinstance(data, dict) else ""
        if not name:
            raise GraphError(400, "ErrorInvalidParameter", "The displayName of a folder must not be empty.")
        if any(c.display_name.lower() == name.lower() for c in mb.children(parent.id)):
            raise GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.")
        fid = mb.next_id("folder")
        mb.folders[fid] = SimFolder(fid, name, parent.id, None, bool(data.get("isHidden", False)))
        body = {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/mailFolders/$entity",
                **self._folder_json(mb, mb.folders[fid], None)}
        return self._json(201, body)

    def _h_top_folders(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            root = mb.folders[mb.root_id]
            if req.method == "POST":
                return self._create_folder(req, mb, root)
            return self._folder_list(req, mb, root)

    def _h_child_folders(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            parent = self._folder(mb, p["f"])
            if req.method == "POST":
                return self._create_folder(req, mb, parent)
            return self._folder_list(req, mb, parent)

    def _h_folder(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            folder = self._folder(mb, p["f"])
            if req.method == "DELETE":
                # Distinguished folders cannot be deleted (ErrorDeleteDistinguishedFolder); deleting another folder
                # removes it with its subfolders and items (mailfolder-delete; where the items go is not modelled).
                if folder.well_known:
                    raise GraphError(400, "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted.")
                for fid in mb.subtree(folder.id):
                    for m in [m for m in mb.messages.values() if m.folder_id == fid]:
                        self._remove_message(mb, m)
                    mb.folders.pop(fid, None)
                return _Resp(204)
            if req.method == "PATCH":
                data = req.json()
                name = str(data.get("displayName") or "").strip() if isinstance(data, dict) else ""
                if name:
                    if any(c.display_name.lower() == name.lower() and c.id != folder.id
                           for c in mb.children(folder.parent_id)):
                        raise GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.")
                    folder.display_name = name
            select = self._select(req, FOLDER_PROPS, (), "mailFolder")
            body = {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/mailFolders/$entity",
                    **self._folder_json(mb, folder, select, req.query.get("$expand"))}
        return self._json(200, body)

    # --------------------------------------------------------------------------------------------- message JSON

    @staticmethod
    def _recipient(address: Address | None) -> dict[str, Any] | None:
        if address is None:
            return None
        return {"emailAddress": {"name": address[0] or address[1], "address": address[1]}}

    def _flags(self, m: SimMessage) -> int:
        flags = (MSGFLAG_READ if m.is_read else 0) | (MSGFLAG_UNSENT if m.is_draft else 0)
        return flags | (MSGFLAG_HASATTACH if m.has_attachments else 0)

    def _extended_items(self, m: SimMessage) -> list[tuple[str, str]]:
        """The single-value extended properties of a message: the stored ones plus those Exchange computes."""
        items = [("Integer 0xe07", str(self._flags(m))), ("Integer 0xe08", str(m.size)),
                 ("SystemTime 0xe06", _iso(m.received) or "")]
        if m.sent is not None:
            items.append(("SystemTime 0x39", _iso(m.sent) or ""))
        items.extend((_canonical_prop_id(k), v) for k, v in m.extended.items())
        return items

    def _expand_props(self, expand_text: str, items: list[tuple[str, str]], type_name: str) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for entry in parse_expand(expand_text):
            if entry.name.lower() != "singlevalueextendedproperties":
                continue
            for pid, value in items:
                if entry.filter is None or evaluate(entry.filter, _ep_resolver(pid, value), lambda _p: []):
                    out.append({"id": pid, "value": value})
        return out

    def _message_json(self, req: _Req, mb: Mailbox, m: SimMessage, select: list[str] | None) -> dict[str, Any]:
        prefer_text = req.prefer().get("outlook.body-content-type", "").lower() == "text"

        def body() -> dict[str, str]:
            # Bodies come back as html unless `Prefer: outlook.body-content-type="text"` (user-list-messages).
            if prefer_text:
                text = html_to_text(m.body) if m.body_type == "html" else m.body
                return {"contentType": "text", "content": text}
            markup = html_document(m.body) if m.body_type == "html" else html_document(text_to_html(m.body))
            return {"contentType": "html", "content": markup}

        def preview() -> str:
            text = html_to_text(m.body) if m.body_type == "html" else m.body
            return " ".join(text.split())[:255]

        change_key = m.change_key()
        getters: dict[str, Callable[[], Any]] = {
            "createdDateTime": lambda: _iso(m.created),
            "lastModifiedDateTime": lambda: _iso(m.last_modified),
            "changeKey": lambda: change_key,
            "categories": lambda: list(m.categories),
            "receivedDateTime": lambda: _iso(m.received),
            "sentDateTime": lambda: _iso(m.sent),
            "hasAttachments": lambda: m.has_attachments,
            "internetMessageId": lambda: m.internet_message_id,
            "subject": lambda: m.subject,
            "bodyPreview": preview,
            "importance": lambda: m.importance,
            "parentFolderId": lambda: m.folder_id,
            "conversationId": lambda: make_id("conversation", mb.user_id, m.subject.lower()),
            "conversationIndex": lambda: base64.b64encode(m.id.encode()[:22]).decode(),
            "isDeliveryReceiptRequested": lambda: False,
            "isReadReceiptRequested": lambda: False,
            "isRead": lambda: m.is_read,
            "isDraft": lambda: m.is_draft,
            "webLink": lambda: f"https://outlook.office365.com/owa/?ItemID={quote(m.id)}&exvsurl=1"
                               "&viewmodel=ReadMessageItem",
            "inferenceClassification": lambda: "focused",
            "body": body,
            "uniqueBody": body,
            "sender": lambda: self._recipient(m.sender),
            "from": lambda: self._recipient(m.from_),
            "toRecipients": lambda: [self._recipient(a) for a in m.to],
            "ccRecipients": lambda: [self._recipient(a) for a in m.cc],
            "bccRecipients": lambda: [self._recipient(a) for a in m.bcc],
            "replyTo": lambda: [self._recipient(a) for a in m.reply_to],
            "flag": lambda: {"flagStatus": m.flag_status},
            "internetMessageHeaders": lambda: [{"name": n, "value": v} for n, v in m.headers],
        }
        names = select if select is not None else list(MESSAGE_PROPS)
        out: dict[str, Any] = {"@odata.etag": f'W/"{change_key}"', "id": m.id}
        for name in names:
            if name != "id":
                out[name] = getters[name]()
        expand = req.query.get("$expand")
        if expand:
            for entry in parse_expand(expand):
                if entry.name.lower() == "attachments":
                    out["attachments"] = [self._attachment_json(m, i, True) for i in range(len(m.attachments))]
                elif entry.name.lower() != "singlevalueextendedproperties":
                    raise GraphError(400, "BadRequest", f"Could not find a property named '{entry.name}' on type "
                                                        "'microsoft.graph.message'.")
            props = self._expand_props(expand, self._extended_items(m), "message")
            if any(e.name.lower() == "singlevalueextendedproperties" for e in parse_expand(expand)):
                out["singleValueExtendedProperties"] = props
        return out

    def _message_resolver(self, m: SimMessage) -> Callable[[str], Any]:
        values: dict[str, Callable[[], Any]] = {
            "receiveddatetime": lambda: m.received, "sentdatetime": lambda: m.sent,
            "createddatetime": lambda: m.created, "lastmodifieddatetime": lambda: m.last_modified,
            "isread": lambda: m.is_read, "isdraft": lambda: m.is_draft, "subject": lambda: m.subject,
            "internetmessageid": lambda: m.internet_message_id, "hasattachments": lambda: m.has_attachments,
            "importance": lambda: m.importance, "parentfolderid": lambda: m.folder_id, "id": lambda: m.id,
            "flag/flagstatus": lambda: m.flag_status,
            "from/emailaddress/address": lambda: m.from_[1] if m.from_ else None,
            "sender/emailaddress/address": lambda: m.sender[1] if m.sender else None,
            "inferenceclassification": lambda: "focused",
        }

        def resolve(path: str) -> Any:
            getter = values.get(path.lower())
            if getter is None:
                raise FilterError(f"unsupported property {path!r}")
            return getter()
        return resolve

    def _message_collections(self, m: SimMessage) -> Callable[[str], list[Any]]:
        def collections(path: str) -> list[Any]:
            if path.lower() == "singlevalueextendedproperties":
                return [{"id": PropId(pid), "value": value} for pid, value in self._extended_items(m)]
            if path.lower() == "categories":
                return list(m.categories)
            raise FilterError(f"unsupported collection {path!r}")
        return collections

    def _filtered(self, messages: list[SimMessage], flt: str | None) -> list[SimMessage]:
        if not flt:
            return messages
        node = parse_filter(flt)
        return [m for m in messages if evaluate(node, self._message_resolver(m), self._message_collections(m))]

    @staticmethod
    def _ordered(req: _Req, messages: list[SimMessage]) -> list[SimMessage]:
        """Newest received first unless `$orderby` names receivedDateTime/sentDateTime/createdDateTime asc|desc."""
        order = req.query.get("$orderby", "receivedDateTime desc").strip()
        m = re.fullmatch(r"(receivedDateTime|sentDateTime|createdDateTime|lastModifiedDateTime)(?:\s+(asc|desc))?",
                         order, re.IGNORECASE)
        if not m:
            raise GraphError(400, "ErrorInvalidUrlQuery", f"The $orderby '{order}' is not supported.")
        attr = {"receiveddatetime": "received", "sentdatetime": "sent", "createddatetime": "created",
                "lastmodifieddatetime": "last_modified"}[m.group(1).lower()]
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return sorted(messages, key=lambda x: (getattr(x, attr) or epoch, x.created_seq),
                      reverse=(m.group(2) or "asc").lower() == "desc")

    def _list_messages(self, req: _Req, mb: Mailbox, folder: SimFolder | None) -> _Resp:
        select = self._select(req, MESSAGE_PROPS, MESSAGE_EXTRA_PROPS, "message")
        if "$search" in req.query:
            raise GraphError(400, "ErrorInvalidUrlQuery", "$search is not supported by the simulator.")
        messages = [m for m in mb.messages.values() if folder is None or m.folder_id == folder.id]
        messages = self._ordered(req, self._filtered(messages, req.query.get("$filter")))
        page, next_link = self._page(req, messages, self.page_size)
        context = f"{self.base_url}/$metadata#users('{mb.user_id}')/messages"
        body: dict[str, Any] = {"@odata.context": context}
        if req.query.get("$count", "").lower() == "true":
            body["@odata.count"] = len(messages)
        if next_link:
            body["@odata.nextLink"] = next_link
        body["value"] = [self._message_json(req, mb, m, select) for m in page]
        return self._json(200, body)

    # ------------------------------------------------------------------------------------------ message handlers

    def _h_folder_messages(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            folder = self._folder(mb, p["f"])
            if req.method == "POST":
                return self._create_message(req, mb, folder)
            return self._list_messages(req, mb, folder)

    def _h_messages(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            if req.method == "POST":
                # "By default, this operation saves the draft in the Drafts folder." (user-post-messages)
                return self._create_message(req, mb, mb.folders[mb.well_known["drafts"]])
            return self._list_messages(req, mb, None)

    def _create_message(self, req: _Req, mb: Mailbox, folder: SimFolder) -> _Resp:
        content_type = req.headers.get("content-type", "application/json").lower()
        if content_type.startswith("text/plain"):
            m = self._message_from_mime(mb, folder, req.body)
        else:
            data = req.json()
            if not isinstance(data, dict):
                raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
            m = self._message_from_json(mb, folder, data)
        self._check_size(mb, m)
        self._store_new(mb, m)
        body = {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/messages/$entity",
                **self._message_json(req, mb, m, None)}
        return self._json(201, body)

    def _message_from_mime(self, mb: Mailbox, folder: SimFolder, body: bytes) -> SimMessage:
        """MIME create: base64 MIME in a text/plain body. The result is always a draft received now, read, with the
        sent time from the Date header (the documented MIME example returns isDraft true, isRead true, a
        receivedDateTime of the import and the sentDateTime of the MIME)."""
        try:
            mime = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise GraphError(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.") \
                from exc
        try:
            parsed = parse_mime(mime)
        except ValueError as exc:
            raise GraphError(400, "ErrorMimeContentInvalid", "The MIME content is invalid.") from exc
        now = now_utc()
        return SimMessage(id=mb.next_id("message"), folder_id=folder.id, subject=parsed.subject, is_draft=True,
                          is_read=True, received=now, sent=parsed.date or now,
                          internet_message_id=parsed.message_id or self._new_message_id(mb),
                          body_type=parsed.body_type, body=parsed.body, attachments=list(parsed.attachments),
                          headers=_x_headers(mime), from_=parsed.from_, sender=parsed.sender, to=parsed.to,
                          cc=parsed.cc, bcc=parsed.bcc, reply_to=parsed.reply_to, created=now, last_modified=now,
                          raw=mime)

    def _message_from_json(self, mb: Mailbox, folder: SimFolder, data: dict[str, Any]) -> SimMessage:
        """JSON create. A draft (isDraft true, isRead true, received now) unless the creating request sets the
        message flags (`Integer 0x0E07`) without MSGFLAG_UNSENT (8): then a delivered item, read when bit 1 is set.
        `SystemTime 0x0E06` sets receivedDateTime and `SystemTime 0x0039` sentDateTime (TESTING.md)."""
        now = now_utc()
        m = SimMessage(id=mb.next_id("message"), folder_id=folder.id, is_draft=True, is_read=True, received=now,
                       sent=now, created=now, last_modified=now)
        for prop in data.get("singleValueExtendedProperties") or []:
            pid, value = str(prop.get("id", "")), prop.get("value")
            key = _parse_prop_id(pid)
            if key == FLAGS_KEY:
                flags = _int_value(pid, value)
                m.is_draft = bool(flags & MSGFLAG_UNSENT)
                m.is_read = bool(flags & MSGFLAG_READ)
            elif key == DELIVERY_KEY:
                m.received = _time_value(pid, value)
            elif key == SUBMIT_KEY:
                m.sent = _time_value(pid, value)
            elif key != SIZE_KEY:  # the size is computed, never stored
                _set_extended(m, pid, key, value)
        self._apply_json(m, data, creating=True)
        if not m.internet_message_id:
            m.internet_message_id = self._new_message_id(mb)
        for att in data.get("attachments") or []:
            m.attachments.append(_file_attachment(att))
        return m

    def _apply_json(self, m: SimMessage, data: dict[str, Any], *, creating: bool) -> None:
        """Writable message properties (message-update): body, subject, internetMessageId and replyTo only while the
        message is a draft (else 400 ErrorInvalidPropertyUpdateSentMessage)."""
        draft_only = ("body", "subject", "internetMessageId", "replyTo")
        if not creating and not m.is_draft and any(k in data for k in draft_only):
            raise GraphError(400, "ErrorInvalidPropertyUpdateSentMessage",
                             "Update operation is not allowed on a message that is not a draft for this property.")
        if "subject" in data:
            m.subject = str(data["subject"] or "")
        if "body" in data:
            body = data["body"] or {}
            m.body_type = "html" if str(body.get("contentType", "text")).lower() == "html" else "text"
            m.body = str(body.get("content") or "")
        if data.get("internetMessageId"):
            m.internet_message_id = str(data["internetMessageId"])
        if "replyTo" in data:
            m.reply_to = _recipients(data["replyTo"])
        for key, attr in (("toRecipients", "to"), ("ccRecipients", "cc"), ("bccRecipients", "bcc")):
            if key in data:
                setattr(m, attr, _recipients(data[key]))
        if "from" in data:
            m.from_ = _recipient_of(data["from"])
        if "sender" in data:
            m.sender = _recipient_of(data["sender"])
        elif "from" in data and creating:
            m.sender = m.from_
        if "isRead" in data:
            m.is_read = bool(data["isRead"])
        if "flag" in data:
            status = str((data["flag"] or {}).get("flagStatus", "notFlagged"))
            if status not in ("notFlagged", "flagged", "complete"):
                raise GraphError(400, "ErrorInvalidArgument", f"Invalid flagStatus '{status}'.")
            m.flag_status = status
        if "categories" in data:
            m.categories = [str(c) for c in data["categories"] or []]
        if "importance" in data:
            m.importance = str(data["importance"] or "normal").lower()
        if "internetMessageHeaders" in data:
            if not creating:
                raise GraphError(400, "ErrorInvalidPropertyUpdateSentMessage",
                                 "Internet message headers can only be set when the message is created.")
            headers = []
            for header in data["internetMessageHeaders"] or []:
                name, value = str(header.get("name", "")), str(header.get("value", ""))
                # "Add custom headers only when creating a message, and name them starting with x-" (message).
                if not name.lower().startswith("x-"):
                    raise GraphError(400, "InvalidInternetMessageHeader",
                                     f"The internet message header name '{name}' should start with 'x-' or 'X-'.")
                headers.append((name, value))
            m.headers = headers

    def _h_message(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            m = self._message(mb, p["m"], p.get("f"))
            if req.method == "DELETE":
                self._remove_message(mb, m)
                return _Resp(204)
            if req.method == "PATCH":
                data = req.json()
                if not isinstance(data, dict):
                    raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
                before = m.snapshot()
                try:
                    self._apply_json(m, data, creating=False)
                    for prop in data.get("singleValueExtendedProperties") or []:
                        pid = str(prop.get("id", ""))
                        key = _parse_prop_id(pid)
                        # Flags and delivery/submit times are settable only by the creating request: later changes
                        # are ignored (TESTING.md); the size is computed.
                        if key not in CREATION_ONLY and key != SIZE_KEY:
                            _set_extended(m, pid, key, prop.get("value"))
                    self._check_size(mb, m, before.size)
                except GraphError:
                    mb.messages[m.id] = before
                    raise
                self._touch(mb, m)
            select = self._select(req, MESSAGE_PROPS, MESSAGE_EXTRA_PROPS, "message")
            body = {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/messages/$entity",
                    **self._message_json(req, mb, m, select)}
        return self._json(200, body)

    def _h_value(self, req: _Req, p: dict[str, str]) -> _Resp:
        """GET .../messages/{id}/$value: the MIME content, rendered from the stored properties."""
        with self._lock:
            mb = self._mailbox(p["u"])
            m = self._message(mb, p["m"], p.get("f"))
            data = m.render(self.rerender)
        return _Resp(200, data, {"Content-Type": "text/plain"})

    # ---------------------------------------------------------------------------------------------- attachments

    def _attachment_json(self, m: SimMessage, index: int, content: bool) -> dict[str, Any]:
        att = m.attachments[index]
        out: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.fileAttachment", "@odata.mediaContentType": att.content_type,
            "id": m.attachment_id(index), "lastModifiedDateTime": _iso(m.last_modified), "name": att.name,
            "contentType": att.content_type, "size": len(att.data), "isInline": att.is_inline,
            "contentId": att.content_id, "contentLocation": None,
        }
        if content:
            out["contentBytes"] = base64.b64encode(att.data).decode()
        return out

    def _attachment_index(self, m: SimMessage, ref: str) -> int:
        for index in range(len(m.attachments)):
            if m.attachment_id(index) == ref:
                return index
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")

    def _h_attachments(self, req: _Req, p: dict[str, str]) -> _Resp:
        """GET/POST .../messages/{id}/attachments (message-post-attachments: a fileAttachment under 3 MB)."""
        with self._lock:
            mb = self._mailbox(p["u"])
            m = self._message(mb, p["m"])
            if req.method == "GET":
                values = [self._attachment_json(m, i, True) for i in range(len(m.attachments))]
                return self._json(200, {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/messages"
                                                          f"('{m.id}')/attachments", "value": values})
            data = req.json()
            if not isinstance(data, dict):
                raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
            before = m.snapshot()
            m.attachments.append(_file_attachment(data))
            try:
                self._check_size(mb, m, before.size)
            except GraphError:
                mb.messages[m.id] = before
                raise
            self._touch(mb, m)
            body = {"@odata.context": f"{self.base_url}/$metadata#users('{mb.user_id}')/messages('{m.id}')/"
                                      "attachments/$entity", **self._attachment_json(m, len(m.attachments) - 1, True)}
        return self._json(201, body)

    def _h_attachment(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            m = self._message(mb, p["m"])
            body = self._attachment_json(m, self._attachment_index(m, p["a"]), True)
        return self._json(200, body)

    def _h_attachment_value(self, req: _Req, p: dict[str, str]) -> _Resp:
        with self._lock:
            mb = self._mailbox(p["u"])
            m = self._message(mb, p["m"])
            att = m.attachments[self._attachment_index(m, p["a"])]
        return _Resp(200, att.data, {"Content-Type": att.content_type})

    def _h_create_upload(self, req: _Req, p: dict[str, str]) -> _Resp:
        """POST .../attachments/createUploadSession {"AttachmentItem": {attachmentType, name, size, ...}} -> 201
        uploadSession (attachment-createuploadsession). Files under 3 MB are refused with
        ErrorAttachmentSizeShouldNotBeLessThanMinimumSize (outlook-large-attachments, "Errors")."""
        data = req.json()
        item = next((v for k, v in (data.items() if isinstance(data, dict) else []) if k.lower() == "attachmentitem"),
                    None)
        if not isinstance(item, dict):
            raise GraphError(400, "ErrorInvalidRequest", "AttachmentItem is required.")
        if str(item.get("attachmentType", "file")).lower() != "file":
            raise GraphError(400, "ErrorInvalidRequest", "Only file attachments can be uploaded in a session.")
        try:
            size = int(str(item.get("size")))
        except (TypeError, ValueError) as exc:
            raise GraphError(400, "ErrorInvalidRequest", "AttachmentItem.size is required.") from exc
        name = str(item.get("name") or "")
        if not name:
            raise GraphError(400, "ErrorInvalidRequest", "AttachmentItem.name is required.")
        if size < self.min_upload_session_size:
            raise GraphError(400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                             "Attachment size must be greater than the minimum size.")
        with self._lock:
            mb = self._mailbox(p["u"])
            m = self._message(mb, p["m"])
            session = _UploadSession(id=make_id("session", m.id, uuid.uuid4().hex), token=uuid.uuid4().hex,
                                     user_id=mb.user_id, message_id=m.id, app=req.app, name=name,
                                     content_type=str(item.get("contentType") or "application/octet-stream"),
                                     size=size, is_inline=bool(item.get("isInline", False)),
                                     content_id=item.get("contentId"), expires=now_utc() + timedelta(hours=1))
            self._sessions[session.id] = session
        url = (f"{self._origin}/api/v2.0/Users('{session.user_id}')/Messages('{quote(m.id, safe='=')}')"
               f"/AttachmentSessions('{quote(session.id, safe='=')}')?authtoken={session.token}")
        return self._json(201, {"@odata.context": f"{self.base_url}/$metadata#microsoft.graph.uploadSession",
                                "uploadUrl": url, "expirationDateTime": _iso(session.expires),
                                "nextExpectedRanges": ["0-"]})

    def _upload_request(self, method: str, session_id: str, query: dict[str, str], headers: dict[str, str],
                        body: bytes) -> _Resp:
        """PUT/DELETE on an uploadUrl. The URL is pre-authenticated ("Do not specify an Authorization request
        header"); byte ranges must come in order; the last one answers 201 with a Location header, earlier ones 200
        with nextExpectedRanges; DELETE cancels (204) (outlook-large-attachments). A range that does not start at the
        next expected byte is refused with 416 (guess: the documentation only says "You must upload bytes in a file
        in order"). An Authorization header is refused (401 InvalidAudienceForResource). Uploads count against the
        mailbox's limits like any other request."""
        with self._lock:
            session = self._sessions.get(unquote(session_id))
        if session is None or session.expires < now_utc():
            return self._error(GraphError(404, "ErrorItemNotFound", "The upload session was not found or expired."))
        if query.get("authtoken") != session.token:
            return self._error(GraphError(401, "InvalidAuthenticationToken", "The upload URL's token is invalid."))
        if headers.get("authorization"):
            # A Graph token sent to the pre-authenticated URL is refused: "Error code: InvalidAudienceForResource ...
            # Audience claim is 'https://graph.microsoft.com/', request url is 'https://outlook.office.com/api/v2.0/
            # Users...'" (microsoftgraph/msgraph-sdk-java issue #409).
            return self._error(GraphError(401, "InvalidAudienceForResource", "The audience claim value is invalid "
                                          f"for current resource. Audience claim is 'https://graph.microsoft.com/', "
                                          f"request url is '{self._origin}/api/v2.0/Users...'."))
        if method == "DELETE":
            with self._lock:
                self._sessions.pop(session.id, None)
            return _Resp(204)
        if method != "PUT":
            return self._error(GraphError(405, "ErrorInvalidRequest", "Use PUT to upload a byte range."))
        key = (session.app, session.user_id)
        refused = self._admit(key, len(body))
        if refused is not None:
            return refused
        try:
            resp = self._upload_range(session, headers, body)
            if self.latency_seconds:
                time.sleep(self.latency_seconds)
            return resp
        finally:
            self._release(key)

    def _upload_range(self, session: _UploadSession, headers: dict[str, str], body: bytes) -> _Resp:
        m_range = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", headers.get("content-range", ""))
        if not m_range:
            return self._error(GraphError(400, "ErrorInvalidRequest", "A Content-Range header is required."))
        start, end, total = (int(g) for g in m_range.groups())
        if total != session.size or end < start or end - start + 1 != len(body) or end >= total:
            return self._error(GraphError(400, "ErrorInvalidRequest", "Content-Range does not match the body or the "
                                                                      "session's size."))
        with self._lock:
            if start != len(session.data):
                return self._error(GraphError(416, "ErrorInvalidRange", f"The next expected range starts at "
                                                                        f"{len(session.data)}."))
            mb = self._mailboxes.get(session.user_id)
            m = mb.messages.get(session.message_id) if mb else None
            if mb is None or m is None:
                self._sessions.pop(session.id, None)
                return self._error(GraphError(404, "ErrorItemNotFound", "The item of the upload session was "
                                                                        "deleted."))
            if raw_size(m.body, m.attachments) + end + 1 > self.max_message_size:
                self._sessions.pop(session.id, None)
                return self._error(GraphError(400, "ErrorMessageSizeExceeded",
                                              "The message exceeds the maximum supported size."))
            session.data.extend(body)
            if len(session.data) < session.size:
                return self._json(200, {"@odata.context": f"{self._origin}/api/v2.0/$metadata#AttachmentSessions"
                                                          "/$entity", "expirationDateTime": _iso(session.expires),
                                        "nextExpectedRanges": [str(len(session.data))]})
            before = m.snapshot()
            m.attachments.append(SimAttachment(session.name, session.content_type, bytes(session.data),
                                               session.is_inline, session.content_id))
            try:
                self._check_size(mb, m, before.size)
            except GraphError as err:
                mb.messages[m.id] = before
                self._sessions.pop(session.id, None)
                return self._error(err)
            self._touch(mb, m)
            self._sessions.pop(session.id, None)
            aid = m.attachment_id(len(m.attachments) - 1)
        location = f"{self._origin}/api/v2.0/Users('{mb.user_id}')/Messages('{m.id}')/Attachments('{aid}')"
        return _Resp(201, b"", {"Location": location})

    # ---------------------------------------------------------------------------------------------------- delta

    def _h_delta(self, req: _Req, p: dict[str, str]) -> _Resp:
        """GET .../mailFolders/{id}/messages/delta (see the module docstring for the documented behaviour).

        Rounds are computed from the mailbox's change sequence, so state tokens are stateless: the first round lists
        the items that existed when it began; a round from a deltaLink lists items created or changed after that
        link's watermark and the tombstones of items deleted since (only those the previous rounds could have
        reported). An item changed while a round is being paged shows up again in the next round.
        """
        with self._lock:
            mb = self._mailbox(p["u"])
            folder = self._folder(mb, p["f"])
            token_text = req.query.get("$skiptoken") or req.query.get("$deltatoken")
            if token_text:
                state = _decode_token(token_text)
                if state.get("f") != folder.id:
                    raise GraphError(400, "ErrorInvalidSyncStateData", "The state token is not for this folder.")
            else:
                change_type = req.query.get("changeType")
                if change_type and change_type.lower() not in ("created", "updated", "deleted"):
                    raise GraphError(400, "ErrorInvalidUrlQuery", f"Invalid changeType '{change_type}'.")
                flt = req.query.get("$filter")
                if flt and not re.fullmatch(r"\s*receivedDateTime\s+(ge|gt)\s+\S+\s*", flt, re.IGNORECASE):
                    # "The only supported $filter expressions are receivedDateTime ge|gt {value}" (message-delta)
                    raise GraphError(400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more "
                                                                        "invalid nodes.")
                self._select(req, MESSAGE_PROPS, MESSAGE_EXTRA_PROPS, "message")
                state = {"f": folder.id, "w": None, "sel": req.query.get("$select"),
                         "exp": req.query.get("$expand"), "flt": flt, "ct": (change_type or "").lower() or None,
                         "top": req.query.get("$top")}
            if "$skiptoken" not in req.query:  # a new round: fix its upper watermark
                state = {**state, "u": mb.seq, "l": 0}
            prefer = req.prefer()
            page_size = self.page_size
            if state.get("top"):
                try:
                    page_size = max(1, min(int(state["top"]), 1000))
                except ValueError as exc:
                    raise GraphError(400, "BadRequest", "Invalid $top value.") from exc
            applied: dict[str, str] = {}
            if "odata.maxpagesize" in prefer:
                with contextlib.suppress(ValueError):
                    page_size = max(1, int(prefer["odata.maxpagesize"]))
                    applied["Preference-Applied"] = f"odata.maxpagesize={page_size}"
            entries = self._delta_entries(mb, folder, state)
            page = entries[:page_size]
            sub_req = _Req(req.method, req.segments, {k: v for k, v in (("$select", state.get("sel")),
                                                                         ("$expand", state.get("exp"))) if v},
                           req.headers, b"", req.full, req.claims)
            select = self._select(sub_req, MESSAGE_PROPS, MESSAGE_EXTRA_PROPS, "message")
            values: list[dict[str, Any]] = []
            for _seq, item in page:
                if isinstance(item, Tombstone):
                    values.append({"@odata.type": "#microsoft.graph.message", "id": item.message_id,
                                   "@removed": {"reason": "deleted"}})
                else:
                    values.append({"@odata.type": "#microsoft.graph.message",
                                   **self._message_json(sub_req, mb, item, select)})
            base = f"{self.base_url}/users/{mb.user_id}/mailFolders/{folder.id}/messages/delta"
            body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#Collection(message)"}
            if len(entries) > page_size:
                nxt = {**state, "l": page[-1][0]}
                body["@odata.nextLink"] = f"{base}?$skiptoken={_encode_token(nxt)}"
            else:
                done = {k: v for k, v in state.items() if k not in ("u", "l")}
                done["w"] = state["u"]
                body["@odata.deltaLink"] = f"{base}?$deltatoken={_encode_token(done)}"
            body["value"] = values
        return self._json(200, body, applied)

    def _delta_entries(self, mb: Mailbox, folder: SimFolder,
                       state: dict[str, Any]) -> list[tuple[int, SimMessage | Tombstone]]:
        base, upper, last = state.get("w"), int(state["u"]), int(state.get("l") or 0)
        change_type = state.get("ct")
        received_filter = state.get("flt")
        node = parse_filter(received_filter) if received_filter else None
        out: list[tuple[int, SimMessage | Tombstone]] = []
        for m in mb.messages.values():
            if m.folder_id != folder.id:
                continue
            if node is not None and not evaluate(node, self._message_resolver(m), self._message_collections(m)):
                continue
            if base is None:  # first round: everything that existed when it began, by creation order
                if m.created_seq <= upper and m.created_seq > last:
                    out.append((m.created_seq, m))
                continue
            if not base < m.changed_seq <= upper or m.changed_seq <= last:
                continue
            created = m.created_seq > base
            if change_type == "deleted" or (change_type == "created" and not created) or \
                    (change_type == "updated" and created):
                continue
            out.append((m.changed_seq, m))
        if base is not None and change_type in (None, "deleted"):
            for t in mb.tombstones:
                if t.folder_id == folder.id and base < t.seq <= upper and t.seq > last and t.created_seq <= base:
                    out.append((t.seq, t))
        out.sort(key=lambda e: e[0])
        return out


# ---------------------------------------------------------------------------------------------- module helpers


def _x_headers(mime: bytes) -> list[tuple[str, str]]:
    """The X- headers of a MIME message (Exchange keeps them as internet-header properties and renders them)."""
    head = mime.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", errors="replace")
    out: list[tuple[str, str]] = []
    for match in re.finditer(r"^(X-[A-Za-z0-9-]+):[ \t]*(.*(?:\r?\n[ \t].*)*)", head, re.MULTILINE):
        name = match.group(1)
        if name.lower().startswith("x-ms-"):
            continue  # Exchange's own headers are regenerated, not kept
        out.append((name, " ".join(match.group(2).split())))
    return out


def _parse_prop_id(pid: str) -> PropKey:
    try:
        return prop_key(pid)
    except ValueError as exc:
        raise GraphError(400, "ErrorInvalidExtendedProperty", f"The extended property id '{pid}' is invalid.") \
            from exc


def _canonical_prop_id(pid: str) -> str:
    """The form Graph echoes a property id in (type keyword capitalized, hex tag in lower case without padding,
    GUID in lower case), so clients must compare ids without regard to case (guess on the exact echo)."""
    key = prop_key(pid)
    type_name = _TYPE_NAMES.get(key[0], key[0].capitalize())
    if key[1] is None:
        return f"{type_name} 0x{int(key[2]):x}"
    if isinstance(key[2], str):
        return f"{type_name} {{{key[1]}}} Name {key[2][5:]}"
    return f"{type_name} {{{key[1]}}} Id 0x{key[2]:x}"


def _set_extended(m: SimMessage, pid: str, key: PropKey, value: Any) -> None:
    if key[0] in ("integer", "long", "short"):
        _int_value(pid, value)
    elif key[0] == "systemtime":
        _time_value(pid, value)
    for existing in list(m.extended):
        if prop_key(existing) == key:
            del m.extended[existing]
    if value is not None:
        m.extended[pid] = str(value)


def _int_value(pid: str, value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError) as exc:
        raise GraphError(400, "ErrorInvalidExtendedPropertyValue",
                         f"The value of extended property '{pid}' is not a valid integer.") from exc


def _time_value(pid: str, value: Any) -> datetime:
    try:
        return parse_datetime(str(value))
    except (FilterError, ValueError) as exc:
        raise GraphError(400, "ErrorInvalidExtendedPropertyValue",
                         f"The value of extended property '{pid}' is not a valid date and time.") from exc


def _recipient_of(value: Any) -> Address | None:
    if not isinstance(value, dict):
        return None
    email = value.get("emailAddress") or {}
    address = str(email.get("address") or "")
    if not address:
        raise GraphError(400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
    return (str(email.get("name") or ""), address)


def _recipients(value: Any) -> list[Address]:
    out = []
    for item in value or []:
        recipient = _recipient_of(item)
        if recipient is not None:
            out.append(recipient)
    return out


def _file_attachment(data: Any) -> SimAttachment:
    """A fileAttachment from JSON (contentBytes in base64); other attachment types are not simulated."""
    if not isinstance(data, dict):
        raise GraphError(400, "ErrorInvalidRequest", "An attachment must be a JSON object.")
    kind = str(data.get("@odata.type", "#microsoft.graph.fileAttachment")).lower()
    if kind not in ("#microsoft.graph.fileattachment", "microsoft.graph.fileattachment"):
        raise GraphError(400, "ErrorInvalidRequest", f"Attachment type {kind} is not supported by the simulator.")
    try:
        content = base64.b64decode(str(data.get("contentBytes") or ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GraphError(400, "ErrorInvalidRequest", "contentBytes is not valid base64.") from exc
    cid = data.get("contentId")
    return SimAttachment(str(data["name"]) if data.get("name") is not None else None,
                         str(data.get("contentType") or "application/octet-stream"), content,
                         bool(data.get("isInline", False)), str(cid) if cid else None)


def _ep_resolver(pid: str, value: str) -> Callable[[str], Any]:
    def resolve(path: str) -> Any:
        key = path.lower()
        if key == "id":
            return PropId(pid)
        if key == "value":
            return value
        raise FilterError(f"unsupported property {path!r} in an extended property filter")
    return resolve


def _encode_token(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_token(text: str) -> dict[str, Any]:
    try:
        padded = text + "=" * (-len(text) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error) as exc:
        raise GraphError(400, "ErrorInvalidSyncStateData", "The state token is invalid.") from exc
    if not isinstance(state, dict) or "f" not in state:
        raise GraphError(400, "ErrorInvalidSyncStateData", "The state token is invalid.")
    return state

