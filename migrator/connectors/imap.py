"""IMAP connector on imapclient: UIDs always, capabilities checked before use, bytes never rewritten.

Why some things are done by hand:
- APPEND sends each message as a literal, never through imaplib's own `append`, which rewrites bare LF
  and CR to CRLF and would break byte identity for hostile or legacy mail: written in a few large
  writes where the server takes LITERAL+ (imap_commands.py), through imapclient's raw command path where
  it does not.
- The idempotency tag is the SHA-256 of the exact bytes, so no header is added: to find a copy after a
  crash we search the target folder for messages of the right size above the recorded UIDNEXT and hash
  their bodies. The same search stands in for APPENDUID on servers without UIDPLUS.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import imapclient
from imapclient import exceptions as imap_errors
from imapclient.imapclient import _literal

from migrator.config import EndpointConfig
from migrator.connectors import imap_fetch
from migrator.connectors.base import AppendOutcome, EnsureOutcome, FolderBatch, FolderRequest, Probe, append_each
from migrator.connectors.imap_commands import (
    append_entries,
    appended_uids,
    exchange,
    list_status,
    read_replies,
    reply_text,
    statuses,
    storable,
    store_commands,
    uid_commands,
    uid_search,
    uid_set_parts,
    write_append,
)
from migrator.errors import (
    AuthFailed,
    FolderFailed,
    ItemFailed,
    MailboxFailed,
    MigratorError,
    Throttled,
    Transient,
    Unreachable,
    UserError,
)
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

if TYPE_CHECKING:
    from migrator.connectors.msauth import TokenSource

_ROLE_FLAGS = {b"\\Sent": Role.SENT, b"\\Drafts": Role.DRAFTS, b"\\Trash": Role.TRASH, b"\\Junk": Role.JUNK,
               b"\\Archive": Role.ARCHIVE}
_UNSELECTABLE = {b"\\Noselect", b"\\NonExistent"}
_LISTING = b"(UID FLAGS INTERNALDATE RFC822.SIZE)"
T = TypeVar("T")
_BACKOFF = re.compile(rb"Suggested Backoff Time: (\d+) milliseconds", re.IGNORECASE)
# imapclient raises an abort when a server answers a command (NO, BAD) where it waited to send a literal
# (RFC 3501 7.5: the server refuses the command instead of asking for its literal); the connection is fine.
_REFUSED_BEFORE_LITERAL = re.compile(rb"waiting for continuation response: \('(?:NO|BAD)'")
FETCH_CHUNK = 200
_STATUS_ALWAYS = (b"UIDVALIDITY", b"UIDNEXT")  # what every STATUS of ours asks (ImapMailbox._status)
LISTING_SLICE = 2000


def _text(exc: BaseException) -> bytes:
    return str(exc).encode("utf-8", "replace")


def classify_failure(exc: BaseException, context: str, endpoint: str | None = None) -> MigratorError:
    """Turn an imaplib/imapclient/socket failure into the error class that says what to do next; a Throttled
    names the `endpoint` (role) that said so, and a retry_after of 0 where the server gave no figure."""
    raw = _text(exc)
    reason = raw.decode("utf-8", "replace").strip()
    if isinstance(exc, imap_errors.LoginError):
        if b"Maximum number of connections" in raw or b"[UNAVAILABLE]" in raw:
            return Throttled(f"{context}: server refuses more connections: {reason}", 0.0, endpoint)
        return AuthFailed(f"{context}: login refused: {reason}")
    backoff = _BACKOFF.search(raw)
    if backoff:
        return Throttled(f"{context}: {reason}", int(backoff.group(1)) / 1000, endpoint)
    if b"[THROTTLED]" in raw or b"[UNAVAILABLE]" in raw or b"Maximum number of connections" in raw:
        return Throttled(f"{context}: {reason}", 0.0, endpoint)
    if b"[OVERQUOTA]" in raw or b"Quota exceeded" in raw:
        return MailboxFailed(f"{context}: target quota full: {reason}", reason="quota")
    if b"[MESSAGELIMIT" in raw.upper():  # RFC 9738: more messages in one APPEND than the server takes
        return ItemFailed(f"{context}: refused as too many messages at once: {reason}", reason="too-many")
    if b"[TOOBIG]" in raw or b"[LIMIT]" in raw or b"too large" in raw.lower():
        return ItemFailed(f"{context}: refused as too large: {reason}", reason="too-large")
    if isinstance(exc, imap_errors.IMAPClientAbortError) and _REFUSED_BEFORE_LITERAL.search(raw):
        return FolderFailed(f"{context}: server said: {reason}")
    if isinstance(exc, imap_errors.IMAPClientAbortError | OSError | EOFError):
        return Transient(f"{context}: connection lost: {reason or type(exc).__name__}")
    return FolderFailed(f"{context}: server said: {reason}")


@contextmanager
def _translated(endpoint: str | None, context: str) -> Iterator[None]:
    try:
        yield
    except MigratorError:
        raise
    except (imap_errors.IMAPClientError, OSError, EOFError) as exc:
        raise classify_failure(exc, context, endpoint) from None


def _token_source(config: EndpointConfig) -> TokenSource:
    """Imported here: msal and cryptography take a tenth of a second to import, a cost every IMAP run
    would pay at start-up for the few endpoints that use XOAUTH2."""
    from migrator.connectors.msauth import IMAP_SCOPE, TokenSource

    return TokenSource(config, IMAP_SCOPE)


class ImapEndpoint:
    """One IMAP server; logins are per user, or an admin logging in on behalf of users (SASL PLAIN authzid)."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        # auth = "xoauth2": the app's own token opens every mailbox (Exchange Online application access).
        self.tokens = _token_source(config) if config.options.get("auth") == "xoauth2" else None
        self._tls: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()

    def _ssl_context(self) -> ssl.SSLContext:
        """One context per endpoint, made at the first TLS connection: loading the system's CA bundle
        takes tens of milliseconds, once per session otherwise (two sessions per mailbox pass). An
        SSLContext is safe to share between threads."""
        with self._tls_lock:
            if self._tls is None:
                self._tls = ssl.create_default_context(
                    cafile=str(self.config.ca_file) if self.config.ca_file else None)
            return self._tls

    def connect(self) -> Any:
        """A connected, not yet authenticated client; raises Unreachable."""
        cfg = self.config
        try:
            tls = self._ssl_context() if cfg.security != "none" else None
            client = imapclient.IMAPClient(cfg.host, port=cfg.port, ssl=cfg.security == "tls",
                                           ssl_context=tls, timeout=cfg.timeout)
            if cfg.security == "starttls":
                client.starttls(tls)
        except (OSError, imap_errors.IMAPClientError) as exc:
            raise Unreachable(f"{cfg.describe()}: cannot connect ({cfg.security}): {exc}") from None
        client.normalise_times = False
        # imapclient turns imaplib's protocol trace on (debug = 5) to feed its own logger, and imaplib then
        # formats every response, whole message bodies included, into a string the logger drops unless it
        # logs at DEBUG (which it never does here: see cli's -v). That formatting was 40 % of the CPU of a
        # copy pass; without the trace nothing protocol-level is logged, which also keeps secrets out.
        client._imap.debug = 0
        # Our commands go out in writes of our own making (a batch's APPEND, commands written together), so
        # nothing is gained by Nagle's algorithm holding back a short write, such as the CRLF that ends an
        # APPEND after a large literal, until what went before is acknowledged: a round trip per batch.
        client._imap.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    def _admin_secret(self) -> str:
        if not self.config.admin_password:
            raise UserError(f"{self.config.describe()}: no password for this mailbox and no admin_user configured")
        return self.config.admin_password.resolve().reveal()

    def login(self, client: Any, login: Login) -> None:
        context = f"{self.config.describe()} as {login.user}"
        with _translated(self.config.role, context):
            if self.tokens is not None:
                self._xoauth2_login(client, login.user, context)
            elif login.password is not None:
                client.login(login.user, login.password.reveal())
            elif self.config.admin_user:
                client.plain_login(self.config.admin_user, self._admin_secret(), authorization_identity=login.user)
            else:
                raise UserError(f"{context}: no password in mailboxes.csv and no admin_user in [{self.config.role}]")

    def _xoauth2_login(self, client: Any, user: str, context: str) -> None:
        """SASL XOAUTH2 as `user` with the app's token. A refused token is dropped from the cache and a fresh
        one tried once (it may have expired or been revoked on the server's side); then the refusal stands."""
        assert self.tokens is not None
        if b"AUTH=XOAUTH2" not in client.capabilities():
            raise AuthFailed(f'{context}: the server does not offer SASL XOAUTH2 (auth = "xoauth2")')
        token = self.tokens.token()
        try:
            client.sasl_login("XOAUTH2", _xoauth2(user, token))
        except imap_errors.LoginError as exc:
            if not isinstance(classify_failure(exc, context), AuthFailed):
                raise
            self.tokens.invalidate(token)
            client.sasl_login("XOAUTH2", _xoauth2(user, self.tokens.token()))

    def probe(self, on_behalf_of: str | None = None) -> Probe:
        client = self.connect()
        try:
            with _translated(self.config.role, self.config.describe()):
                capabilities = frozenset(c.decode() for c in client.capabilities())
                admin = bool((self.config.admin_user or self.tokens) and on_behalf_of)
                if self.tokens is not None and on_behalf_of:
                    self._xoauth2_login(client, on_behalf_of, f"{self.config.describe()} as {on_behalf_of}")
                    capabilities = frozenset(c.decode() for c in client.capabilities())
                elif admin:
                    client.plain_login(self.config.admin_user, self._admin_secret(),
                                       authorization_identity=on_behalf_of)
                    capabilities = frozenset(c.decode() for c in client.capabilities())
        finally:
            _close(client)
        return Probe(f"{self.config.host}:{self.config.port}", self.config.security, capabilities, admin)

    @contextmanager
    def session(self, login: Login, *, write: bool) -> Iterator[ImapMailbox]:
        client = self.connect()
        try:
            self.login(client, login)
            mailbox = ImapMailbox(client, f"{self.config.describe()} {login.address}", self.config.role)
            if not write:
                mailbox.track_changes()
            yield mailbox
        finally:
            _close(client)


def _xoauth2(user: str, token: str) -> Callable[[bytes], bytes]:
    """The XOAUTH2 client: `user=..^Aauth=Bearer ..^A^A` first; to the server's error challenge (a JSON status)
    an empty response, after which the server answers NO."""
    sent: list[bool] = []

    def respond(_challenge: bytes) -> bytes:
        if sent:
            return b""
        sent.append(True)
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()

    return respond


def _close(client: Any) -> None:
    try:
        client.logout()
    except (imap_errors.IMAPClientError, OSError, EOFError):
        with suppress(OSError):
            client.shutdown()


def _limit(caps: frozenset[str], name: str) -> int | None:
    """The number a NAME=n capability gives (APPENDLIMIT, MESSAGELIMIT); None where it is absent."""
    return next((int(value) for c in caps for key, _, value in [c.partition("=")]
                 if key == name and value.isdigit()), None)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans of UIDs without overlaps: a FETCH asked again below a message limit names expunges again."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


@lru_cache(maxsize=4096)
def _flags(raw: tuple[bytes, ...]) -> frozenset[str]:
    """Cached: a folder has few distinct flag lists."""
    return frozenset(f.decode("utf-8", "replace") for f in raw if f != b"\\Recent")


@dataclass(frozen=True)
class _Mark:
    """A folder's state as a change cursor holds it: its HIGHESTMODSEQ, and with CONDSTORE alone (no
    VANISHED to name expunges) its UIDNEXT and message count, which tell an expunge apart."""

    modseq: int
    uidnext: int
    messages: int

    def cursor(self, key: str, qresync: bool) -> str:
        return f"{key}:{self.modseq}" if qresync else f"{key}:{self.modseq}:{self.uidnext}:{self.messages}"

    @staticmethod
    def parse(cursor: str | None, key: str, qresync: bool) -> _Mark | None:
        """The cursor's state; None for no cursor, another UIDVALIDITY, or a cursor of the other kind (the
        server gained or lost QRESYNC): the folder is then listed whole."""
        parts = (cursor or "").split(":")
        if parts[0] != key or len(parts) != (2 if qresync else 4) or not all(p.isdigit() for p in parts[1:]):
            return None
        numbers = [int(p) for p in parts[1:]]
        return _Mark(numbers[0], *(numbers[1:] or (0, 0)))


class ImapMailbox:
    """One logged-in IMAP session on one mailbox."""

    def __init__(self, client: Any, context: str, role: str | None = None) -> None:
        self.client = client
        self.context = context
        self._selected: tuple[str, bool] | None = None
        self._selected_key = ""
        self._listed: dict[str, FolderInfo] = {}  # selectable folders of this session's last list_folders
        self._listed_statuses: dict[str, dict[bytes, Any]] = {}  # their STATUS, until used (_listed_status)
        self._names: frozenset[str] | None = None  # every name of that list, selectable or not
        self._separator: str | None = None  # the hierarchy separator that list showed
        self._created: list[str] = []  # folders this session created since that list
        self.role = role
        self._tracking: str | None = None  # how changes() asks: "QRESYNC" or "CONDSTORE" (track_changes)
        with _translated(role, context):
            self._caps = frozenset(c.decode() for c in client.capabilities())
        # RFC 9738: messages one FETCH, SEARCH, STORE or UID EXPUNGE works on (beyond: the server stops, and
        # says where), and one APPEND or COPY may hold (beyond: refused); SAVELIMIT limits only the latter.
        self._message_limit = _limit(self._caps, "MESSAGELIMIT")
        self._save_limit = min((n for n in (self._message_limit, _limit(self._caps, "SAVELIMIT")) if n), default=None)

    def track_changes(self) -> None:
        """ENABLE QRESYNC (RFC 7162) where the server offers it, so that changes() can ask what changed since
        a cursor, expunges included, in one command. Before any folder is opened: RFC 5161 allows ENABLE only
        then. Sessions that read the source call this; a target's sessions never ask for changes, and keep
        the plain EXPUNGE replies their deletions get. A server of CONDSTORE alone (Gmail's) needs no ENABLE:
        changes() then asks what changed and, when a folder holds fewer messages than that implies, which
        are still there."""
        if "QRESYNC" in self._caps:
            with _translated(self.role, f"{self.context} ENABLE QRESYNC"):
                if "QRESYNC" in {c.decode() if isinstance(c, bytes) else c for c in self.client.enable("QRESYNC")}:
                    self._tracking = "QRESYNC"
        if self._tracking is None and "CONDSTORE" in self._caps:
            self._tracking = "CONDSTORE"

    def capabilities(self) -> Capabilities:
        cursor = "QRESYNC" if "QRESYNC" in self._caps else "CONDSTORE" if "CONDSTORE" in self._caps else None
        return Capabilities(append_returns_ids="UIDPLUS" in self._caps, bulk_append="MULTIAPPEND" in self._caps,
                            preserves_bytes=True, preserves_internal_date=True, special_use="SPECIAL-USE" in self._caps,
                            change_cursor=cursor, max_message_size=_limit(self._caps, "APPENDLIMIT"),
                            max_batch_messages=self._save_limit, raw=self._caps)

    def _select(self, folder: FolderInfo, *, write: bool) -> None:
        """SELECT (or EXAMINE) the folder unless it is already open in a mode that allows this; a copy pass
        fetches a folder in many batches and a SELECT per batch would cost a round trip and an index open."""
        if self._selected is not None and self._selected[0] == folder.path and (self._selected[1] or not write):
            key = self._selected_key
        else:
            with _translated(self.role, f"{self.context} folder {folder.path!r}"):
                response: dict[bytes, Any] = self.client.select_folder(folder.path, readonly=not write)
            self._selected = (folder.path, write)
            key = self._selected_key = str(response.get(b"UIDVALIDITY", ""))
        self._check_key(folder, key)

    def _check_key(self, folder: FolderInfo, key: str) -> None:
        if folder.key is not None and key != folder.key:
            raise FolderFailed(f"{self.context} folder {folder.path!r}: UIDVALIDITY is now {key}, "
                               f"was {folder.key}; its message ids are no longer valid")

    def _examine(self, folder: FolderInfo) -> tuple[bytes, bytes] | None:
        """For a FETCH in `folder`: None where it is open (its key checked), else an EXAMINE (its tag and
        line) for the FETCH to write with it and read the reply of first (imap_fetch.uid_fetch `after`; the
        key is checked by _examined): one round trip where opening the folder and reading it took two, for
        every folder a pass reads and, in a delta pass, twice for a changed one (asked, then read)."""
        if self._selected is not None and self._selected[0] == folder.path:
            self._check_key(folder, self._selected_key)
            return None
        imap = self.client._imap
        imap.untagged_responses.clear()  # as imaplib's own select does: the replies of the folder left
        imap.state, self._selected = "AUTH", None  # no folder is open until the EXAMINE succeeds
        tag: bytes = imap._new_tag()
        return tag, b"%s EXAMINE %s\r\n" % (tag, self.client._normalise_folder(folder.path))

    def _examined(self, folder: FolderInfo) -> None:
        """The EXAMINE that _examine made succeeded: the folder is open (for imaplib too, which refuses UID
        commands otherwise), under the UIDVALIDITY it named."""
        imap = self.client._imap
        imap.state = "SELECTED"
        key = b"".join(imap.untagged_responses.pop("UIDVALIDITY", [b""])[-1:]).decode()
        self._selected, self._selected_key = (folder.path, False), key
        self._check_key(folder, key)

    def list_folders(self, *, sizes: bool = True) -> list[FolderInfo]:
        """LIST, and the STATUS of every selectable folder (UIDVALIDITY, UIDNEXT, MESSAGES, and HIGHESTMODSEQ
        where changes() reads it): inside the LIST command where the server offers LIST-STATUS (RFC 5819),
        otherwise one STATUS per folder, all written at once. With `sizes`, also every message's RFC822.SIZE
        to sum the folder's bytes (discovery needs it, a copy pass does not). The STATUS read here serves
        this session's first changes() and watermark() of the folder (_listed_status)."""
        items = (*_STATUS_ALWAYS, b"MESSAGES", *((b"HIGHESTMODSEQ",) if self._caps & {"CONDSTORE", "QRESYNC"} else ()))
        listing, listed = self._list(items)
        for name, status in self._statuses([name for name, _separator, _role, selectable in listing if selectable
                                            and not all(item in listed.get(name, {}) for item in items)],
                                           items).items():
            if isinstance(status, FolderFailed):
                raise status
            listed[name] = status
        folders = []
        for name, separator, role, selectable in listing:
            key, count, size = None, 0, 0
            if selectable:
                status = listed[name]
                key, count = str(status[b"UIDVALIDITY"]), int(status[b"MESSAGES"])
                if sizes and count:
                    self._select(FolderInfo(name, separator, role, key), write=False)
                    size = sum(r.size for r in self._listing())
            folders.append(FolderInfo(name, separator, role, key, count, size, selectable))
        self._listed = {f.path: f for f in folders if f.selectable}
        self._listed_statuses = {path: listed[path] for path in self._listed}
        self._names = frozenset(f.path for f in folders)
        self._separator = next((f.separator for f in folders if f.separator), None)
        self._created = []
        return folders

    def _listed_status(self, path: str, *items: bytes) -> dict[bytes, Any]:
        """The folder's STATUS as this session's list_folders read it, once; a new STATUS after that or when
        the list did not hold every item. What callers take from it is a lower bound, which is all they
        need: a HIGHESTMODSEQ, UIDNEXT or message count read earlier in the pass only makes the next pass or a
        search after an APPEND look a little further back. A copy pass lists once and then asks this of
        every folder, so an unchanged folder costs the delta pass no command of its own."""
        status = self._listed_statuses.pop(path, None)
        if status is not None and all(item in status for item in items):
            return status
        return self._status(path, *items)

    def _list(self, status: Sequence[bytes] = ()
              ) -> tuple[list[tuple[str, str | None, Role | None, bool]], dict[str, dict[bytes, Any]]]:
        """The folders (name, separator, role, selectable); with `status` items and LIST-STATUS, the STATUS
        of each selectable folder by name (possibly not of every one: callers ask for what is missing)."""
        with _translated(self.role, f"{self.context} LIST"):
            if status and "LIST-STATUS" in self._caps:
                listing, found = list_status(self.client, status, special_use="SPECIAL-USE" in self._caps)
            else:
                listing, found = self.client.list_folders(), {}
        result = []
        for flags, delimiter, name in listing:
            separator = delimiter.decode() if isinstance(delimiter, bytes) else delimiter
            role = Role.INBOX if name.upper() == "INBOX" else next(
                (r for f, r in _ROLE_FLAGS.items() if f in flags), None)
            result.append((name, separator, role, not _UNSELECTABLE.intersection(flags)))
        return result, found

    def ensure_folder(self, path: str, role: Role | None) -> tuple[FolderInfo, bool]:
        outcome = self.ensure_folders([(path, role)])[0]
        if isinstance(outcome, FolderFailed):
            raise outcome
        return outcome

    def ensure_folders(self, wanted: Sequence[FolderRequest]) -> list[EnsureOutcome]:
        """A folder this session's list_folders saw is taken as listed (its UIDVALIDITY from that STATUS):
        a copy pass lists the target once, then asks for every routed folder. Should the folder be recreated
        in between, every later use of it checks the key (SELECT, STATUS, APPENDUID) and stops the folder.

        Folders that list did not show are created without listing again, level by level of the tree (a
        parent before its children), each level's CREATEs written at once, then every new folder's STATUS
        at once: a first pass creates most of a mailbox's folders, and each cost a CREATE and a STATUS round
        trip (before that, also a LIST of the whole mailbox, quadratic in its folders). A folder is listed
        first only where the list may be out of date by this session's own doing (a CREATE of a folder below
        it may have made it, RFC 3501 6.3.3) or shows it unselectable, or where no list was read; a refused
        CREATE is checked against a new list (someone made the folder meanwhile: it is taken, not ours)."""
        roles = dict(wanted)
        outcomes: dict[str, EnsureOutcome] = {}
        for path in roles:
            seen = self._listed.get(path)
            if seen is not None and seen.key is not None:
                outcomes[path] = (FolderInfo(path, seen.separator, seen.role, seen.key), False)
        created: list[str] = []
        for level in self._levels([path for path in roles if path not in outcomes]):
            unsure = [path for path in level if not self._surely_absent(path)]
            found = self._existing(unsure) if unsure else {}
            outcomes.update((path, (folder, False)) for path, folder in found.items() if folder is not None)
            # parents first here too: without a list before, the separator was unknown and all were level 0
            absent = sorted((path for path in level if path not in outcomes), key=self._depth)
            refused = {path: exc for path, exc in zip(absent, self._create(absent), strict=True) if exc is not None}
            taken = self._existing(list(refused)) if refused else {}
            outcomes.update((path, (folder, False) if (folder := taken[path]) is not None else exc)
                            for path, exc in refused.items())
            created += [path for path in absent if path not in refused]
        for path, status in self._kept_statuses(created).items():
            outcomes[path] = status if isinstance(status, FolderFailed) else (
                self._remember(FolderInfo(path, self._separator, roles[path], status)), True)
        return [outcomes[path] for path, _role in wanted]

    def _levels(self, paths: Sequence[str]) -> list[list[str]]:
        """The paths by depth in the tree, shallowest first."""
        depth: dict[int, list[str]] = {}
        for path in paths:
            depth.setdefault(self._depth(path), []).append(path)
        return [depth[level] for level in sorted(depth)]

    def _depth(self, path: str) -> int:
        return path.count(self._separator) if self._separator else 0

    def _surely_absent(self, path: str) -> bool:
        """The session's last list lacks `path`, and no folder this session created since lies below it."""
        if self._names is None or path in self._names:
            return False
        below = f"{path}{self._separator}" if self._separator else path
        return not any(created.startswith(below) for created in self._created)

    def _existing(self, paths: Sequence[str]) -> dict[str, FolderInfo | None]:
        """Each folder that a new LIST shows selectable (its UIDVALIDITY read), else None."""
        listing = self._list()[0]
        self._separator = next((separator for _n, separator, _r, _s in listing if separator), self._separator)
        shown = {name: (separator, role) for name, separator, role, selectable in listing if selectable}
        keys = self._kept_statuses([path for path in paths if path in shown])
        return {path: FolderInfo(path, shown[path][0], shown[path][1], key) if isinstance(key := keys.get(path), str)
                else None for path in paths}

    def _create(self, paths: Sequence[str]) -> list[FolderFailed | None]:
        """CREATE each folder, written at once; None where it was made, else the refusal as classify_failure
        says (FolderFailed; anything else, such as Throttled, raised once every reply is read)."""
        imap = self.client._imap
        with _translated(self.role, f"{self.context} CREATE"):
            replies = exchange(imap, "CREATE", [b"CREATE " + self.client._normalise_folder(path) for path in paths])
        self._created += [path for path, (typ, _text) in zip(paths, replies, strict=True) if typ == "OK"]
        refusals = [None if typ == "OK" else self._refusal(text, f"{self.context} CREATE {path!r}")
                    for path, (typ, text) in zip(paths, replies, strict=True)]
        for refusal in refusals:
            if refusal is not None and not isinstance(refusal, FolderFailed):
                raise refusal
        return [refusal if isinstance(refusal, FolderFailed) else None for refusal in refusals]

    def _refusal(self, text: bytes, context: str) -> MigratorError:
        """A command's refusal (its reply's text) as classify_failure says."""
        return classify_failure(imap_errors.IMAPClientError(text.decode("utf-8", "replace")), context, self.role)

    def _kept_statuses(self, paths: Sequence[str]) -> dict[str, str | FolderFailed]:
        """Each folder's UIDVALIDITY (or why not), its STATUS kept for the folder's watermark() (_listed_status)."""
        keys: dict[str, str | FolderFailed] = {}
        for path, status in self._statuses(paths, _STATUS_ALWAYS).items():
            if not isinstance(status, FolderFailed):
                self._listed_statuses[path] = status
            keys[path] = status if isinstance(status, FolderFailed) else str(status[b"UIDVALIDITY"])
        return keys

    def _remember(self, folder: FolderInfo) -> FolderInfo:
        self._listed[folder.path] = folder
        return folder

    def _statuses(self, paths: Sequence[str], items: Sequence[bytes]) -> dict[str, dict[bytes, Any] | FolderFailed]:
        """STATUS of each folder, written at once (a server without LIST-STATUS, or a folder its LIST-STATUS
        left out, RFC 5819; the folders a pass creates); a FolderFailed where the server refused it or gave
        no UIDVALIDITY."""
        if not paths:
            return {}
        with _translated(self.role, f"{self.context} STATUS"):
            found = statuses(self.client, paths, items)
        return {path: FolderFailed(f"{self.context} STATUS {path!r}: server said: {status}")
                if isinstance(status, str) or b"UIDVALIDITY" not in status else status
                for path, status in found.items()}

    def _status(self, path: str, *extra: bytes) -> dict[bytes, Any]:
        """STATUS of UIDVALIDITY and UIDNEXT, and of the `extra` items (each asked once)."""
        items = list(dict.fromkeys((*_STATUS_ALWAYS, *extra)))
        with _translated(self.role, f"{self.context} STATUS {path!r}"):
            result: dict[bytes, Any] = self.client.folder_status(path, items)
        return result

    def _listing(self, floor: int = 1) -> list[MessageRef]:
        """Size, flags and date of every message with UID >= floor in the selected folder: the UIDs from UID
        SEARCH, fetched in slices that keep command lines short."""
        with _translated(self.role, f"{self.context} SEARCH"):
            uids = self._search(floor)
        return self._refs(uids)

    def _search(self, floor: int = 1, criteria: bytes = b"") -> list[int]:
        """UIDs >= floor of the selected folder that match `criteria`, in order; where the server stops at
        its message limit (RFC 9738) it is asked again below where it stopped, until it covers them all."""
        found: set[int] = set()
        spans: list[imap_fetch.Span] = [(floor, None)]
        while spans:
            uids, stopped = uid_search(self.client._imap, spans, criteria)
            found.update(uid for uid in uids if uid >= floor)  # "floor:*" names the highest UID when all are below
            spans = imap_fetch.progressed(spans, imap_fetch.below(spans, stopped), "SEARCH")
        return sorted(found)

    def _refs(self, uids: Sequence[int]) -> list[MessageRef]:
        """Size, flags and date of these messages of the selected folder, in UID order."""
        data: imap_fetch.Listing = {}
        for start in range(0, len(uids), LISTING_SLICE):
            data.update(self._uid_fetch(uids[start:start + LISTING_SLICE], _LISTING, imap_fetch.parse_listing))
        asked = set(uids)  # the server may add unsolicited replies for other messages
        return [MessageRef(str(uid), size, _flags(flags), date)
                for uid, (size, flags, date) in sorted(data.items()) if uid in asked]

    def _uid_fetch(self, uids: Sequence[int], items: bytes, parse: Callable[[list[Any]], T],
                   folder: FolderInfo | None = None) -> T:
        """UID FETCH of these messages, its untagged replies read by `parse` (see imap_fetch)."""
        with _translated(self.role, f"{self.context} FETCH"):
            return parse(self._fetched(imap_fetch.uid_runs(sorted(uids)), items, folder))

    def _fetched(self, spans: list[imap_fetch.Span], items: bytes, folder: FolderInfo | None = None) -> list[Any]:
        """The untagged replies of UID FETCH `items` of these spans in `folder` (opened with the first FETCH
        where it is not open: _examine) or in the folder open: one command, and where the server stops at its
        message limit (RFC 9738) one more for what it left below, until it covers them all."""
        data: list[Any] = []
        opening = self._examine(folder) if folder is not None else None
        while spans:
            replies, stopped = imap_fetch.uid_fetch(self.client._imap, imap_fetch.set_text(spans), items,
                                                    after=opening)
            if folder is not None and opening is not None:
                self._examined(folder)
                opening = None
            data.extend(replies)
            spans = imap_fetch.progressed(spans, imap_fetch.below(spans, stopped), "FETCH")
        return data

    def list_messages(self, folder: FolderInfo) -> list[MessageRef]:
        self._select(folder, write=False)
        return self._listing()

    def fetch(self, folder: FolderInfo, refs: Sequence[MessageRef], *, native: str | None = None
              ) -> Iterator[RawMessage]:
        by_uid = {int(ref.id): ref for ref in refs}
        data = self._uid_fetch(list(by_uid), b"(BODY.PEEK[])", imap_fetch.parse_bodies, folder)
        for uid in sorted(by_uid):
            if uid not in data:
                raise FolderFailed(f"{self.context} folder {folder.path!r}: message UID {uid} vanished while copying")
            yield RawMessage(by_uid[uid], data[uid])

    def watermark(self, folder: FolderInfo) -> str | None:
        status = self._listed_status(folder.path, b"UIDNEXT")
        self._check_key(folder, str(status[b"UIDVALIDITY"]))
        return str(status[b"UIDNEXT"])

    def append(self, folder: FolderInfo, messages: Sequence[RawMessage]) -> list[str | None]:
        if len(messages) > 1 and "MULTIAPPEND" not in self._caps:
            return [uid for message in messages for uid in self.append(folder, [message])]
        mailbox = self.client._normalise_folder(folder.path)
        entries = append_entries(messages)
        context = f"{self.context} APPEND to {folder.path!r}"
        with _translated(self.role, context):
            if self._literal_plus(entries):
                imap = self.client._imap
                ((typ, data),) = read_replies(imap, "APPEND", [write_append(imap, mailbox, entries)])
            else:  # each literal waits for the server's go-ahead: imapclient's path
                args = [arg for flags, date, body in entries
                        for arg in (b"(" + flags + b")", b'"' + date + b'"', _literal(body))]
                typ, data = self.client._raw_command(b"APPEND", [mailbox, *args], uid=False)
        return self._appended(folder, len(messages), typ, data, context)

    def append_folders(self, batches: Sequence[FolderBatch]) -> list[AppendOutcome]:
        """With LITERAL+ (and MULTIAPPEND for batches of more than one message), the APPENDs are written
        at once and their replies read after (RFC 3501 5.5: a server may take commands before the ones
        before them are answered); otherwise one after the other."""
        entries = [append_entries(messages) for _folder, messages in batches]
        if len(batches) < 2 or not all(self._literal_plus(e) for e in entries) or (
                "MULTIAPPEND" not in self._caps and any(len(messages) > 1 for _folder, messages in batches)):
            return append_each(self, batches)
        imap = self.client._imap
        with _translated(self.role, f"{self.context} APPEND to {len(batches)} folders"):
            tags = [write_append(imap, self.client._normalise_folder(folder.path), folder_entries)
                    for (folder, _messages), folder_entries in zip(batches, entries, strict=True)]
            replies = read_replies(imap, "APPEND", tags)
        outcomes: list[AppendOutcome] = []
        beyond: list[MigratorError] = []  # refusals that are not the batch's own (quota, throttling)
        for (folder, messages), (typ, data) in zip(batches, replies, strict=True):
            try:
                outcomes.append(self._appended(folder, len(messages), typ, data,
                                               f"{self.context} APPEND to {folder.path!r}"))
            except (ItemFailed, FolderFailed) as exc:
                outcomes.append(exc)
            except MigratorError as exc:
                beyond.append(exc)
        if beyond:
            raise beyond[0]
        return outcomes

    def _literal_plus(self, entries: Sequence[tuple[bytes, bytes, bytes]]) -> bool:
        """Whether these APPEND entries can be written without waiting for the server (write_append)."""
        return "LITERAL+" in self._caps and all(flags.isascii() for flags, _date, _body in entries)

    def _appended(self, folder: FolderInfo, count: int, typ: str, data: list[Any], context: str) -> list[str | None]:
        """The ids of an APPEND's `count` messages from its reply; a refusal raises as classify_failure says."""
        text = reply_text(data)
        if typ != "OK":
            raise self._refusal(text, context)
        if "UIDPLUS" not in self._caps:  # an unadvertised APPENDUID is not a promise: callers search instead
            return [None] * count
        return appended_uids(text, folder, count)

    def find_tagged(self, folder: FolderInfo, tags: Sequence[CopyTag], since: str | None) -> dict[CopyTag, list[str]]:
        self._select(folder, write=False)
        sizes = {tag.size for tag in tags}
        candidates = [ref for ref in self._listing(int(since) if since else 1) if ref.size in sizes]
        found: dict[CopyTag, list[str]] = {}
        wanted = set(tags)
        for start in range(0, len(candidates), FETCH_CHUNK):
            for message in self.fetch(folder, candidates[start:start + FETCH_CHUNK]):
                tag = CopyTag(hashlib.sha256(message.body).hexdigest(), len(message.body))
                if tag in wanted:
                    found.setdefault(tag, []).append(message.ref.id)
        return found

    def set_flags(self, folder: FolderInfo, flags: Mapping[str, frozenset[str]]) -> None:
        self._select(folder, write=True)
        groups: dict[frozenset[str], list[int]] = {}
        for uid, wanted in flags.items():
            groups.setdefault(storable(wanted), []).append(int(uid))
        if groups:
            with _translated(self.role, f"{self.context} STORE in {folder.path!r}"):
                store_commands(self.client._imap, groups, most=self._message_limit)

    def delete(self, folder: FolderInfo, ids: Sequence[str]) -> None:
        """UID EXPUNGE where UIDPLUS allows; otherwise other messages that carry \\Deleted (copied so from
        the source) lose the flag for the moment of a plain EXPUNGE and get it back right after."""
        self._select(folder, write=True)
        uids = [int(i) for i in ids]
        deleted = frozenset({"\\Deleted"})
        imap, most = self.client._imap, self._message_limit
        with _translated(self.role, f"{self.context} EXPUNGE in {folder.path!r}"):
            store_commands(imap, {deleted: uids}, b"+FLAGS", most)
            if "UIDPLUS" in self._caps:
                uid_commands(imap, "EXPUNGE", b"UID EXPUNGE", [(part, b"") for part in uid_set_parts(uids, most)])
                return
            bystanders = sorted(set(self._search(criteria=b" DELETED")) - set(uids))
            if bystanders:
                store_commands(imap, {deleted: bystanders}, b"-FLAGS", most)
            self.client.expunge()
            if bystanders:
                store_commands(imap, {deleted: bystanders}, b"+FLAGS", most)

    def quota(self) -> tuple[int, int] | None:
        """STORAGE of the INBOX's quota root (RFC 2087 counts it in units of 1024 octets)."""
        if "QUOTA" not in self._caps:
            return None
        with _translated(self.role, f"{self.context} GETQUOTAROOT"):
            _roots, quotas = self.client.get_quota_root("INBOX")
        storage = [q for q in quotas if q.resource.upper() == "STORAGE"]
        if not storage:
            return None
        return int(storage[0].usage) * 1024, int(storage[0].limit) * 1024

    def changes(self, folder: FolderInfo, cursor: str | None) -> FolderChanges | None:
        """What changed since `cursor`, on a session that tracks changes (track_changes); None elsewhere and
        for a folder that keeps no mod-sequences, and callers list the folder. An unchanged folder costs no
        command of its own (its STATUS came with the LIST); otherwise one UID FETCH ... (CHANGEDSINCE m)
        lists the messages changed or added since: the pass reads what changed, not the folder, on either
        side. What was expunged: with QRESYNC the same command names it (VANISHED); with CONDSTORE alone,
        where the folder holds fewer messages than the cursor's and those added imply, one UID SEARCH says
        which are still there (FolderChanges.present). The cursor is "UIDVALIDITY:HIGHESTMODSEQ", and with
        CONDSTORE alone ":UIDNEXT:MESSAGES" after it: without them an expunge could hide behind a count
        that did not change."""
        if self._tracking is None:
            return None
        status = self._listed_status(folder.path, b"HIGHESTMODSEQ", b"MESSAGES")
        key = str(status[b"UIDVALIDITY"])
        self._check_key(folder, key)
        mark = _Mark(int(status[b"HIGHESTMODSEQ"]), int(status[b"UIDNEXT"]), int(status[b"MESSAGES"]))
        if not mark.modseq:  # NOMODSEQ (RFC 7162 3.1.2.1): this folder's changes cannot be asked for
            return None
        qresync = self._tracking == "QRESYNC"
        now = mark.cursor(key, qresync)
        old = _Mark.parse(cursor, key, qresync)
        if old is None:
            return FolderChanges(self.list_messages(folder), [], now, complete=True)
        if old.modseq == mark.modseq and (qresync or old == mark):
            return FolderChanges([], [], now, complete=False)
        changed, vanished = self._changed_since(folder, old.modseq)
        if not qresync:
            arrived = sum(1 for ref in changed if old.uidnext <= int(ref.id) < mark.uidnext)
            if mark.messages - arrived == old.messages:
                return FolderChanges(changed, [], now, complete=False)
            return FolderChanges(changed, [], now, complete=False, present=self._present())
        # VANISHED (EARLIER) may name UIDs that never held a message, never one that still does; none at or
        # past UIDNEXT. A server that no longer knows every expunge since the cursor names whole ranges: past
        # a folder's worth, the UIDs still there cost less than reading a ledger row for each.
        spans = [(first, min(last, mark.uidnext - 1)) for first, last in vanished if first < mark.uidnext]
        if sum(last - first + 1 for first, last in spans) > max(folder.messages, LISTING_SLICE):
            return FolderChanges(changed, [], now, complete=False, present=self._present())
        removed = [str(uid) for first, last in spans for uid in range(first, last + 1)]
        return FolderChanges(changed, removed, now, complete=False)

    def _present(self) -> frozenset[str]:
        """Every UID the open folder holds."""
        with _translated(self.role, f"{self.context} SEARCH"):
            return frozenset(str(uid) for uid in self._search())

    def _changed_since(self, folder: FolderInfo, modseq: int) -> tuple[list[MessageRef], list[tuple[int, int]]]:
        """The folder's messages changed or added after `modseq`, and with QRESYNC the spans of UIDs
        expunged since (RFC 7162 3.1.4, 3.2.6). Unsolicited FETCH replies of changes newer than the cursor's
        STATUS may come with them: a reply without a listing's every item is left out, the next pass sees
        that change."""
        imap = self.client._imap
        qresync = self._tracking == "QRESYNC"
        imap.untagged_responses.pop("VANISHED", None)
        with _translated(self.role, f"{self.context} FETCH CHANGEDSINCE"):
            listing = imap_fetch.parse_listing(self._fetched(
                [(1, None)], _LISTING + b" (CHANGEDSINCE %d%s)" % (modseq, b" VANISHED" if qresync else b""), folder))
        vanished = _merged([span for reply in imap.untagged_responses.pop("VANISHED", [])
                            for span in imap_fetch.uid_spans(reply.removeprefix(b"(EARLIER) "))])
        return [MessageRef(str(uid), size, _flags(flags), date)
                for uid, (size, flags, date) in sorted(listing.items())], vanished

    def throttled_seconds(self) -> float:
        return 0.0  # IMAP throttling ([THROTTLED], connection limits) surfaces as Throttled to the caller

    def cutover_settings(self) -> CutoverSettings:
        return CutoverSettings()  # forwarding lives in Sieve scripts, which IMAP does not show

    def remove_folder(self, folder: FolderInfo) -> None:
        if self._selected and self._selected[0] == folder.path:
            with _translated(self.role, f"{self.context} EXAMINE INBOX"):  # leaves the folder without CLOSE's expunge
                self.client.select_folder("INBOX", readonly=True)
            self._selected = None  # INBOX is open now, but its key was not read: select it anew when asked
        self._listed.pop(folder.path, None)
        with _translated(self.role, f"{self.context} DELETE {folder.path!r}"):
            self.client.delete_folder(folder.path)
