"""HTTP to Microsoft Graph: tokens, the per-mailbox limits Outlook enforces, and error translation.

Outlook's documented limits are per app and per mailbox (https://learn.microsoft.com/en-us/graph/throttling-limits,
"Outlook service limits"): 4 concurrent requests, 10,000 requests per 10 minutes, 150 MB of uploads per
5 minutes. A 429 carries Retry-After, and requests sent while throttled still count against the budget, so
one task that is told to wait makes every task on that mailbox wait: the `MailboxGate` is shared by all
sessions of this process on one mailbox, and its concurrency cap and sliding-window budgets keep us under
the limits instead of provoking 429s.

Retries: a request the server refused without acting on it (429, 503, 401 with a stale token) is sent again
here, and so is a read or an idempotent write (PATCH, DELETE) that got a 502 or 504. A create or an upload
(POST, PUT) whose outcome is unknown is never sent again blind: a 502 or 504 comes from a gateway that lost the
backend's answer, which may have applied it, and a dropped connection says nothing either; both surface as
Transient and the engine settles the open intent by its tag first.

JSON batching (https://learn.microsoft.com/en-us/graph/json-batching): up to 20 requests travel in one
POST /$batch, saving their round trips but not their cost: "requests in a batch are evaluated individually
against the applicable throttling limits", so each counts against the request and upload budgets, and
independent ones run at once, a fifth concurrent one to a mailbox getting 429 (Microsoft Q&A 734143; Glen
Scales, https://gsexdev.blogspot.com/2020/09/the-mailboxconcurrency-limit-and-using.html: "the effective
default batch limit for Mailboxes is 4"; the throttling-limits page says instead that Graph hands Outlook at
most four of them at a time). Chained by `dependsOn` a batch is "fully sequential meaning that only one
connection is ever opened to the Exchange Mailbox" (same post), under either reading, so a batch takes one
of our four slots. The chain's price: once one request fails, the ones behind it are answered 424 (Failed
Dependency) without being run, and go again in the next batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json import dumps
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from requests.structures import CaseInsensitiveDict

from migrator.config import EndpointConfig
from migrator.connectors.msauth import GRAPH_SCOPE, TokenSource
from migrator.errors import (
    AuthFailed,
    FolderFailed,
    ItemFailed,
    MailboxFailed,
    MigratorError,
    StateError,
    Throttled,
    Transient,
    Unreachable,
)
from migrator.throttle import WindowBudget

DEFAULT_BASE_URL = "https://graph.microsoft.com/v1.0"
MAILBOX_CONCURRENCY = 4
REQUESTS_PER_WINDOW, REQUEST_WINDOW = 10_000, 600
UPLOAD_BYTES_PER_WINDOW, UPLOAD_WINDOW = 150_000_000, 300
MAX_WAITS = 8
MAX_RETRY_AFTER = 300.0
BATCH_LIMIT = 20  # requests per JSON batch (json-batching, "Batch size limitations")
# Message ids that survive moves between folders (https://learn.microsoft.com/en-us/graph/outlook-immutable-id).
IMMUTABLE_IDS = 'IdType="ImmutableId"'
_QUOTA_CODES = {"ErrorQuotaExceeded", "ErrorQuotaExceededOnDelete", "QuotaExceeded"}
_TOO_LARGE_CODES = {"ErrorMessageSizeExceeded", "RequestEntityTooLarge", "ErrorRequestEntityTooLarge"}
# Writes that would make a second item if applied twice: after a 502/504 their outcome is unknown.
_NOT_RESENT_BLIND = frozenset({"POST", "PUT"})
_UPLOADS = frozenset({"PATCH", "POST", "PUT"})  # what the upload budget counts (throttling-limits, Outlook)
_JSON = {"Content-Type": "application/json"}
_NO_MAILBOX_CODES = {"ErrorInvalidUser", "MailboxNotEnabledForRESTAPI", "ResourceNotFound", "Request_ResourceNotFound",
                     "ErrorNonExistentMailbox"}


T = TypeVar("T")


class GraphError(Exception):
    """A Graph answer other than success, before it is translated into the caller's terms."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class SubRequest:
    """One request of a JSON batch: `url` absolute, as `GraphClient.user_url` builds it; `json` its body."""

    method: str
    url: str
    json: Any = None


# A batched request's answer: its JSON body ({} when it has none), or the server's refusal of it.
Answer = dict[str, Any] | GraphError


class MailboxGate:
    """What Outlook counts per app and mailbox, shared by every task in this process on that mailbox: the
    concurrency cap, the request and upload budgets (sliding windows, so a large mailbox stays under them
    instead of living on 429s), and the Retry-After hold."""

    def __init__(self) -> None:
        self.slots = threading.BoundedSemaphore(MAILBOX_CONCURRENCY)
        self.requests = WindowBudget(REQUESTS_PER_WINDOW, _with_margin(REQUEST_WINDOW))
        self.uploads = WindowBudget(UPLOAD_BYTES_PER_WINDOW, _with_margin(UPLOAD_WINDOW))
        self._lock = threading.Lock()
        self._not_before = 0.0
        self.throttled_seconds = 0.0

    def hold_off(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, time.monotonic() + seconds)
            self.throttled_seconds += seconds

    def wait_turn(self, upload_bytes: int, count: int = 1) -> None:
        """Block until `count` more requests and `upload_bytes` more bytes fit the budgets and no hold is on."""
        waited = self.requests.acquire(count) + self.uploads.acquire(upload_bytes)
        with self._lock:
            self.throttled_seconds += waited
        while True:
            with self._lock:
                delay = self._not_before - time.monotonic()
            if delay <= 0:
                return
            time.sleep(min(delay, 1.0))


class GraphClient:
    """One endpoint's HTTP session and token; requests name the mailbox they count against."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.base_url = str(config.options.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.tokens = TokenSource(config, GRAPH_SCOPE)
        self.http = requests.Session()
        self.http.trust_env = False  # REQUESTS_CA_BUNDLE would override ca_file (TESTING.md)
        self.http.verify = str(config.ca_file) if config.ca_file else True
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        self.http.mount("https://", adapter)
        self._gates: dict[str, MailboxGate] = {}
        self._gates_lock = threading.Lock()
        self._said: set[str] = set()

    def first_time(self, notice: str) -> bool:
        """True the first time this endpoint is to say `notice` (a warning worth one line, not one per mailbox)."""
        with self._gates_lock:
            new = notice not in self._said
            self._said.add(notice)
            return new

    def describe(self) -> str:
        return f"{self.config.role} graph {self.base_url}"

    def gate(self, mailbox: str) -> MailboxGate:
        with self._gates_lock:
            return self._gates.setdefault(mailbox.lower(), MailboxGate())

    def user_url(self, mailbox: str, path: str = "") -> str:
        return f"{self.base_url}/users/{quote(mailbox, safe='@')}{path}"

    def call(self, method: str, url: str, mailbox: str, *, json: Any = None, data: bytes | None = None,
             headers: Mapping[str, str] | None = None, authorized: bool = True) -> requests.Response:
        """Send one request, waiting out throttling and refreshing a stale token; returns a 2xx response or
        raises GraphError (the server's refusal) or Transient (no answer)."""
        if json is not None:  # serialised here so that its size counts against the upload budget
            data, headers = dumps(json).encode(), {**_JSON, **(headers or {})}
        upload = len(data) if data and method.upper() in _UPLOADS else 0
        return self._call(method, url, mailbox, data, headers, authorized=authorized, count=1, upload=upload,
                          resendable=method.upper() not in _NOT_RESENT_BLIND)

    def _call(self, method: str, url: str, mailbox: str, data: bytes | None, headers: Mapping[str, str] | None, *,
              authorized: bool, count: int, upload: int, resendable: bool) -> requests.Response:
        """`call`, for a request that counts as `count` requests and `upload` bytes against the mailbox's
        budgets and may be sent again after a 502 or 504 only when `resendable`."""
        gate = self.gate(mailbox)
        stale_token_retried = False
        for _attempt in range(MAX_WAITS):
            gate.wait_turn(upload, count=count)
            with gate.slots:
                token = self.tokens.token() if authorized else None
                response = self._send(method, url, data, headers, token)
            if response.status_code < 300:
                return response
            if response.status_code == 401 and token is not None and not stale_token_retried:
                self.tokens.invalidate(token)
                stale_token_retried = True
                continue
            if response.status_code in (502, 504) and not resendable:
                raise self._lost(mailbox, response.status_code, method, url)
            if response.status_code in (429, 502, 503, 504):
                gate.hold_off(_retry_after(response.headers))
                continue
            raise _graph_error(response)
        raise Throttled(f"{self.describe()} {mailbox}: still throttled after {MAX_WAITS} waits",
                        retry_after=_retry_after(response.headers), endpoint=self.config.role)

    def _lost(self, mailbox: str, status: int, method: str, url: str) -> Transient:
        return Transient(f"{self.describe()} {mailbox}: HTTP {status} to {method} {_path(url)}: a gateway lost the "
                         f"answer, so whether it was applied is unknown; not sent again")

    def batch(self, mailbox: str, requests: Sequence[SubRequest]) -> list[Answer]:
        """The answers to `requests`, in their order: JSON batches of up to BATCH_LIMIT chained requests (see
        the module docstring), one after another; a lone request goes as itself. Every request counts against
        the budgets, the batch holds one of the mailbox's slots. A request the server did not act on (429 and
        503, whose Retry-After holds the mailbox; 424 behind a failed one) goes again in the next batch, so do
        reads and idempotent writes after a 502 or 504; raises Transient when a create's outcome is unknown
        and Throttled after MAX_WAITS holds."""
        if len(requests) == 1:
            return [self._alone(mailbox, requests[0])]
        answers: list[Answer] = []
        for start in range(0, len(requests), BATCH_LIMIT):
            answers += self._chained(mailbox, requests[start:start + BATCH_LIMIT])
        return answers

    def _alone(self, mailbox: str, request: SubRequest) -> Answer:
        try:
            response = self.call(request.method, request.url, mailbox, json=request.json)
        except GraphError as exc:
            return exc
        return _body(response.json() if response.content else None)

    def _chained(self, mailbox: str, requests: Sequence[SubRequest]) -> list[Answer]:
        """`batch` for up to BATCH_LIMIT requests: batch after batch of those still without an answer. Each
        batch answers at least its first request unless told to wait, so only waits need a bound."""
        answers: dict[str, Answer] = {}
        pending = {str(index): request for index, request in enumerate(requests)}
        stalls = 0
        while pending:
            replies, before = self._post_batch(mailbox, pending), len(pending)
            hold: float | None = None
            for key, request in list(pending.items()):
                reply = replies.get(key) or {"status": 504}  # a reply left out says no more than a lost one
                status = int(reply.get("status", 504))
                if status in (502, 504) and request.method.upper() in _NOT_RESENT_BLIND:
                    raise self._lost(mailbox, status, request.method, request.url)
                if status in (429, 502, 503, 504):
                    hold = max(hold or 0.0, _retry_after(CaseInsensitiveDict(reply.get("headers") or {})))
                elif status != 424:
                    answers[key] = _body(reply.get("body")) if status < 300 else _error_of(status, reply.get("body"))
                    del pending[key]
            if hold is not None:
                self.gate(mailbox).hold_off(hold)
            if hold is not None or len(pending) == before:  # a round that answered nothing counts as a wait
                stalls += 1
                if stalls >= MAX_WAITS:
                    raise Throttled(f"{self.describe()} {mailbox}: still throttled after {MAX_WAITS} waits",
                                    retry_after=hold or 0.0, endpoint=self.config.role)
        return [answers[str(index)] for index in range(len(requests))]

    def _post_batch(self, mailbox: str, pending: Mapping[str, SubRequest]) -> dict[str, dict[str, Any]]:
        """One POST /$batch of `pending` (by id), each depending on the one before; the replies by id."""
        items: list[dict[str, Any]] = []
        upload = 0
        for key, request in pending.items():
            if not request.url.startswith(f"{self.base_url}/"):
                raise StateError(f"{self.describe()}: {request.url} is not under {self.base_url}")
            item: dict[str, Any] = {"id": key, "method": request.method, "url": request.url[len(self.base_url):],
                                    "headers": {"Prefer": IMMUTABLE_IDS}}
            if request.json is not None:
                item |= {"body": request.json, "headers": {**item["headers"], **_JSON}}
                upload += len(dumps(request.json).encode()) if request.method.upper() in _UPLOADS else 0
            if items:
                item["dependsOn"] = [items[-1]["id"]]
            items.append(item)
        resendable = not any(r.method.upper() in _NOT_RESENT_BLIND for r in pending.values())
        response = self._call("POST", f"{self.base_url}/$batch", mailbox, dumps({"requests": items}).encode(), _JSON,
                              authorized=True, count=len(items), upload=upload, resendable=resendable)
        return {str(reply.get("id")): reply for reply in response.json().get("responses", [])}

    def _send(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
              token: str | None) -> requests.Response:
        all_headers = {"Prefer": IMMUTABLE_IDS, **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        try:
            return self.http.request(method, url, data=data, headers=all_headers, timeout=self.config.timeout)
        except requests.exceptions.SSLError as exc:
            raise Unreachable(f"{self.describe()}: TLS failed (is ca_file right?): {_short(exc)}") from None
        except requests.exceptions.ConnectionError as exc:
            if isinstance(exc.__context__, ConnectionRefusedError) or "refused" in str(exc).lower():
                raise Unreachable(f"{self.describe()}: cannot connect: {_short(exc)}") from None
            raise Transient(f"{self.describe()}: connection lost: {_short(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise Transient(f"{self.describe()}: {type(exc).__name__}: {_short(exc)}") from None

    def get_json(self, url: str, mailbox: str) -> dict[str, Any]:
        body: dict[str, Any] = self.call("GET", url, mailbox).json()
        return body

    def pages(self, url: str, mailbox: str) -> Iterator[dict[str, Any]]:
        """Every item of a collection, following @odata.nextLink verbatim (https://learn.microsoft.com/en-us/graph/paging)."""
        next_url: str | None = url
        while next_url:
            page = self.get_json(next_url, mailbox)
            yield from page.get("value", [])
            next_url = page.get("@odata.nextLink")


def _with_margin(window: float) -> float:
    """The service stamps a request when it arrives, we when we send it: a slightly longer window keeps
    the two counts from disagreeing at the window's edge."""
    return window + max(0.5, 0.02 * window)


def spread(items: Sequence[T], lanes: int = MAILBOX_CONCURRENCY) -> list[Sequence[T]]:
    """`items` cut into parts of one size, at most BATCH_LIMIT, for `lanes` concurrent chained batches: as few
    rounds of `lanes` batches as the limit allows, parts as short as that many rounds allow. A chained batch
    takes as long as its requests one after another, so short even parts keep every slot busy and the whole
    no slower than one request per slot (four items are four lone requests, as unbatched)."""
    if not items:
        return []
    rounds = -(-len(items) // (BATCH_LIMIT * lanes))
    size = -(-len(items) // (rounds * lanes))
    return [items[start:start + size] for start in range(0, len(items), size)]


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(headers.get("Retry-After", "2"))))
    except ValueError:
        return 2.0


def _path(url: str) -> str:
    return url.split("?", 1)[0][-120:]


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def _graph_error(response: requests.Response) -> GraphError:
    try:
        body = response.json()
    except ValueError:
        return GraphError(response.status_code, response.reason or "", response.text[:200])
    return _error_of(response.status_code, body, response.reason or "")


def _error_of(status: int, body: Any, reason: str = "") -> GraphError:
    """The refusal a Graph error body (`{"error": {"code", "message"}}`) states."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    return GraphError(status, str(error.get("code") or reason), str(error.get("message", "")))


def _body(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {}


def translate(exc: GraphError, context: str, *, item: bool = False) -> MigratorError:
    """The error class that says what to do next; `item` when the request concerned one message."""
    text = f"{context}: {exc}"
    if exc.code in _QUOTA_CODES or exc.status == 507:
        return MailboxFailed(f"{text} (target mailbox quota full)", reason="quota")
    if exc.code in _TOO_LARGE_CODES or exc.status == 413:
        return ItemFailed(f"{text} (refused as too large)", reason="too-large")
    if exc.status in (401, 403):
        return AuthFailed(f"{text} (check the app's Mail.ReadWrite application permission and admin consent)")
    if exc.status == 404 and exc.code in _NO_MAILBOX_CODES:
        return AuthFailed(f"{text} (no such mailbox for this app)")
    if exc.status >= 500:  # the service failed; for a create the outcome is unknown: settle, then retry
        return Transient(text)
    if item and exc.status == 400:
        return ItemFailed(f"{text} (refused by the server)", reason="refused")
    return FolderFailed(text)


@contextmanager
def translated(context: str, *, item: bool = False) -> Iterator[None]:
    try:
        yield
    except GraphError as exc:
        raise translate(exc, context, item=item) from None
