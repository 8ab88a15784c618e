"""A TCP proxy that breaks connections on purpose: the network faults a migration must survive.

`tc netem` is not available on the test machines (TESTING.md), so faults are injected here, between the
migrator and a real server. The proxy runs an asyncio loop in a background thread (``start()``/``stop()`` or
a ``with`` block), listens on a free port of 127.0.0.1 and forwards every connection to ``upstream``
(host, port; may be changed between connections). Faults, each of which fires once:

* ``Cut(direction, after)``: forward exactly ``after`` bytes in ``direction`` (``C2S`` client->server or
  ``S2C`` server->client), then close both sides. Where the bytes are counted:
  ``connection=None`` and ``user=None`` (default): across every connection, in the order they were
  forwarded; the cut lands on whichever connection carries that byte (a point inside a whole run);
  ``connection=k``: within the k-th accepted connection only (``k=1``: the first one);
  ``user="name"``: within the first connection that logs in as that user (``session=n``: the n-th; IMAP
  LOGIN, or AUTHENTICATE PLAIN with its authorization identity), reproducible while others run in parallel.
  With ``landmark=Landmark(...)``, ``after`` counts from a point of the IMAP conversation instead of its
  first byte: the start of the n-th command (of a name, or any), just after its last CRLF, the start of the
  server's tagged reply to it, or the n-th line/literal boundary. Byte offsets of a replayed conversation
  drift by a few bytes (Dovecot's replies carry timings); landmarks do not.
  Later connections pass through untouched, so a resumed run can finish.
* ``Stall(direction, after, seconds)``, placed the same way: from there on forward nothing in ``direction``
  for ``seconds`` (``None``: until the connection ends, i.e. until the client gives up). What arrives
  meanwhile is kept and delivered when the stall ends; a peer that closes meanwhile ends the connection.
* ``SwallowAppendReply(ordinals)``: when the server's tagged completion (``OK``/``NO``/``BAD``) of an
  ``APPEND`` is the n-th such reply the proxy has seen and ``n in ordinals``, that line is dropped and the
  connection closed. The server stored the message (or refused it); the client never learns which: the case
  idempotent resume exists for. APPENDs the client had pipelined behind it lose their replies with the
  connection: each counts as the next reply (swallowed, if its ordinal is chosen).

To follow the conversation the proxy tracks command tags and literals (``{n}``/``{n+}``) both ways, without
changing a byte. Counters (``stats()``): bytes forwarded each way, in total and per connection (with the user
it logged in as), and ``Marks``: where every line/literal boundary, command, command end and tagged reply lies
in the streams, cumulative and per connection, so that a test can measure a clean run once and then choose
fault points inside it, at the protocol boundaries that matter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass, field
from types import TracebackType
from typing import Literal

Direction = Literal["c2s", "s2c"]
C2S: Direction = "c2s"  # client -> server
S2C: Direction = "s2c"  # server -> client

_CHUNK = 65536
_MAX_LINE = 1 << 20  # an unterminated "line" longer than this is not IMAP (or we lost step): start afresh
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_COMMAND = re.compile(rb"^([^\s*+]\S*) ([A-Za-z]+)")
_UID_COMMAND = re.compile(rb"^\S+ UID ([A-Za-z]+)", re.IGNORECASE)
_TAGGED = re.compile(rb"^(\S+) (OK|NO|BAD)\b", re.IGNORECASE)
_LOGIN = re.compile(rb'^\S+ LOGIN "?([^"\s]+)', re.IGNORECASE)
_AUTH_PLAIN = re.compile(rb"^\S+ AUTHENTICATE PLAIN(?: (\S+))?\r?\n$", re.IGNORECASE)


LandmarkKind = Literal["segment", "command", "command-end", "reply"]
ANY = "*"  # command name that matches every command


@dataclass(frozen=True)
class Landmark:
    """The ``ordinal``-th (1-based) point of a kind in the conversation, counted where the fault counts bytes
    (on its connection, or across all). ``command`` names the IMAP command ("APPEND", "UID FETCH"; ANY for
    all) of a "command" (its first byte), "command-end" (just after its last CRLF) or "reply" (first byte of
    its tagged reply); "segment" is any line or literal boundary."""

    kind: LandmarkKind
    ordinal: int
    command: str = ANY

    @property
    def direction(self) -> Direction | None:
        return {"command": C2S, "command-end": C2S, "reply": S2C}.get(self.kind)

    def __str__(self) -> str:
        what = "boundary" if self.kind == "segment" else f"{self.command} {self.kind}"
        return f"{what} #{self.ordinal}"


@dataclass
class _Placed:
    direction: Direction
    after: int
    _: KW_ONLY
    connection: int | None = None
    user: str | None = None
    session: int = 1  # with user: the session-th connection that logs in as that user
    landmark: Landmark | None = None
    fired: bool = False
    fired_on: int | None = None  # index of the connection it landed on
    anchor: tuple[int, int] | None = field(default=None, repr=False)  # (connection, its byte offset)

    def __post_init__(self) -> None:
        if self.after < 0:
            raise ValueError("a fault is placed a non-negative number of bytes after its start or landmark")
        if self.landmark is not None and self.landmark.direction not in (None, self.direction):
            raise ValueError(f"{self.landmark} is seen {self.landmark.direction}, not {self.direction}")

    def where(self) -> str:
        scope = "all connections"
        if self.user:
            scope = f"user {self.user}" + (f" session {self.session}" if self.session != 1 else "")
        elif self.connection:
            scope = f"connection {self.connection}"
        start = f"{self.landmark}" if self.landmark else "start"
        return f"{self.direction} {self.after} bytes after {start} ({scope})"


@dataclass
class Cut(_Placed):
    pass


@dataclass
class Stall(_Placed):
    seconds: float | None = None  # None: until the connection ends


class SwallowAppendReply:
    def __init__(self, ordinals: Iterable[int]) -> None:
        self.ordinals = frozenset(ordinals)
        self.swallowed: list[bytes] = []  # the reply lines dropped, in order

    def __repr__(self) -> str:
        return f"SwallowAppendReply({sorted(self.ordinals)}, swallowed={len(self.swallowed)})"


Fault = Cut | Stall | SwallowAppendReply


@dataclass
class Marks:
    """Stream offsets (bytes forwarded in that direction before the point) of protocol landmarks. Commands
    are listed under their name and under ANY."""

    segments: dict[str, list[int]] = field(default_factory=lambda: {C2S: [], S2C: []})  # lines, literal ends
    commands: dict[str, list[int]] = field(default_factory=dict)  # c2s: first byte of each command
    command_ends: dict[str, list[int]] = field(default_factory=dict)  # c2s: just after its last CRLF
    replies: dict[str, list[int]] = field(default_factory=dict)  # s2c: first byte of its tagged reply

    @property
    def append_starts(self) -> list[int]:
        return self.commands.get("APPEND", [])

    @property
    def append_ends(self) -> list[int]:
        return self.command_ends.get("APPEND", [])

    @property
    def append_replies(self) -> list[int]:
        return self.replies.get("APPEND", [])

    def table(self, kind: LandmarkKind, direction: Direction, command: str = ANY) -> list[int]:
        if kind == "segment":
            return self.segments[direction]
        table = {"command": self.commands, "command-end": self.command_ends, "reply": self.replies}[kind]
        return table.setdefault(command, [])

    def add(self, kind: LandmarkKind, direction: Direction, offset: int, command: str = ANY) -> None:
        self.table(kind, direction, command).append(offset)
        if kind != "segment" and command != ANY:
            self.table(kind, direction).append(offset)

    def copy(self) -> Marks:
        def dup(table: dict[str, list[int]]) -> dict[str, list[int]]:
            return {k: list(v) for k, v in table.items()}
        return Marks(dup(self.segments), dup(self.commands), dup(self.command_ends), dup(self.replies))


@dataclass
class ConnectionStats:
    index: int
    bytes: dict[str, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    user: str | None = None
    session: int = 0  # this is the session-th connection that logged in as user
    identified_at: dict[str, int] = field(default_factory=dict)  # bytes each way when the login was seen
    marks: Marks = field(default_factory=Marks)  # offsets within this connection
    ended_by: str = ""  # "eof", "cut", "stall", "swallow", "upstream-refused", "proxy-stopped"

    def copy(self) -> ConnectionStats:
        return ConnectionStats(self.index, dict(self.bytes), self.user, self.session, dict(self.identified_at),
                               self.marks.copy(), self.ended_by)


@dataclass
class ProxyStats:
    bytes: dict[str, int]
    connections: list[ConnectionStats]
    append_commands: int
    append_replies: int
    marks: Marks  # cumulative offsets, across connections

    @property
    def c2s(self) -> int:
        return self.bytes[C2S]

    @property
    def s2c(self) -> int:
        return self.bytes[S2C]

    def first_connection_of(self, user: str) -> ConnectionStats:
        return next(c for c in self.connections if c.user == user)


class _Scanner:
    """Splits one direction of an IMAP stream into lines and literals, without changing a byte.

    ``feed`` returns, for every line completed in the chunk, (start, line, is_new): ``start`` is the line's
    offset in the chunk (negative when it began in an earlier chunk) and ``is_new`` says whether it begins a
    command or response (the segment after a literal continues the line that announced the literal).
    """

    def __init__(self) -> None:
        self.literal_left = 0
        self.line = bytearray()
        self.continuation = False

    def feed(self, data: bytes) -> list[tuple[int, bytes, bool]]:
        events: list[tuple[int, bytes, bool]] = []
        pos, n = 0, len(data)
        while pos < n:
            if self.literal_left:
                take = min(self.literal_left, n - pos)
                self.literal_left -= take
                pos += take
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                if len(self.line) > _MAX_LINE:
                    self.line.clear()
                    self.continuation = False
                break
            self.line += data[pos:end + 1]
            pos = end + 1
            line = bytes(self.line)
            self.line.clear()
            events.append((pos - len(line), line, not self.continuation))
            literal = _LITERAL.search(line)
            self.literal_left = int(literal.group(1)) if literal else 0
            self.continuation = bool(literal)
        return events


def _plain_identity(response: bytes) -> str | None:
    try:
        parts = base64.b64decode(response.strip(), validate=True).split(b"\0")
    except (binascii.Error, ValueError):
        return None
    if len(parts) != 3:
        return None
    return (parts[0] or parts[1]).decode("utf-8", "replace")


class _SwallowCut(Cut):
    """The cut that drops a swallowed APPEND reply: anchored where the reply starts."""


class _Connection:
    def __init__(self, index: int) -> None:
        self.index = index
        self.stats = ConnectionStats(index)
        self.scanners = {C2S: _Scanner(), S2C: _Scanner()}
        self.scanned = {C2S: 0, S2C: 0}  # bytes each scanner has seen (held back ones included)
        self.tags: dict[bytes, str] = {}  # command tag -> command name, until its tagged reply
        self.command: str | None = None  # c2s: the command being sent, until its last CRLF
        self.awaiting_plain = False  # c2s: AUTHENTICATE PLAIN sent without an initial response
        self.swallows: list[_SwallowCut] = []
        self.stalled_until: dict[str, float | None] = {}  # direction -> monotonic deadline (None: forever)
        self.closed = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    def close(self, reason: str) -> None:
        if not self.stats.ended_by:
            self.stats.ended_by = reason
        self.closed.set()
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.close()

    def applies(self, fault: _Placed, direction: Direction) -> bool:
        if fault.fired or fault.direction != direction:
            return False
        if fault.anchor is not None:
            return fault.anchor[0] == self.index
        if fault.user is not None:
            return self.stats.user == fault.user and self.stats.session == fault.session
        return fault.connection is None or fault.connection == self.index


class FaultProxy:
    """``with FaultProxy(("127.0.0.1", port)) as proxy:`` ... point the client at ``proxy.port``."""

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._open: list[_Connection] = []
        self._reset_counters()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0,
                                                                            limit=_CHUNK))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # handed to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            for conn in list(self._open):
                conn.close("proxy-stopped")
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy-{self.upstream[1]}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults and counters

    def set_faults(self, *faults: Fault) -> None:
        """Arm these faults, replacing the previous ones (any that never fired are dropped)."""
        with self._lock:
            self._faults = list(faults)

    def clear_faults(self) -> None:
        self.set_faults()

    def _reset_counters(self) -> None:
        self._bytes: dict[str, int] = {C2S: 0, S2C: 0}
        self._connections: list[ConnectionStats] = []
        self._append_commands = 0
        self._append_replies = 0
        self._marks = Marks()

    def reset_counters(self) -> None:
        """Start counting afresh (connection numbers too); best between runs, with no connection open."""
        with self._lock:
            self._reset_counters()

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(dict(self._bytes), [c.copy() for c in self._connections], self._append_commands,
                              self._append_replies, self._marks.copy())

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no proxied connection is open (a finished client's sessions are fully torn down)."""
        deadline = time.monotonic() + timeout
        while self.open_connections():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # ------------------------------------------------------------------ forwarding

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A top-level connection task: cancelled by stop(), it ends quietly (asyncio's stream callback would
        # otherwise log the CancelledError as an error).
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            conn = _Connection(len(self._connections) + 1)
            self._connections.append(conn.stats)
            self._open.append(conn)
        conn.writers.append(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=_CHUNK)
            except OSError:
                conn.close("upstream-refused")
                return
            conn.writers.append(up_writer)
            for w in (writer, up_writer):
                _set_option(w, socket.TCP_NODELAY)
            pumps = [asyncio.create_task(self._pump(conn, C2S, reader, up_writer, writer)),
                     asyncio.create_task(self._pump(conn, S2C, up_reader, writer, up_writer))]
            _done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if not conn.closed.is_set() and pending:
                # One side ended its stream cleanly: give the other time to finish too (IMAP LOGOUT/BYE).
                await asyncio.wait(pending, timeout=5)
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            conn.close("eof")
            for w in conn.writers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 2)
        finally:
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)

    async def _pump(self, conn: _Connection, direction: Direction, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, source: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer`` through the faults; ``source`` is the writer on the reader's socket."""
        held = b""  # read but not forwarded yet (held back by a stall)
        try:
            while not conn.closed.is_set():
                if direction in conn.stalled_until:
                    deadline = conn.stalled_until[direction]
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is None or remaining > 0:
                        try:  # keep reading, so that a peer who gives up is noticed
                            data = await asyncio.wait_for(reader.read(_CHUNK), remaining)
                        except TimeoutError:
                            continue
                        if not data:
                            conn.close("stall")
                            return
                        held += data
                        continue
                    del conn.stalled_until[direction]
                if held:
                    data, held = held, b""
                else:
                    data = await reader.read(_CHUNK)
                    # ACK at once: a client that writes a literal and its CRLF separately (imaplib does) would
                    # otherwise wait for our delayed ACK (Nagle), 40 ms per APPEND on loopback.
                    _set_option(source, socket.TCP_QUICKACK)
                    if not data:
                        with contextlib.suppress(Exception):
                            if writer.can_write_eof():
                                writer.write_eof()
                        return
                held = await self._forward(conn, direction, data, writer)
        except (ConnectionError, OSError):
            conn.close("eof")

    async def _forward(self, conn: _Connection, direction: Direction, data: bytes,
                       writer: asyncio.StreamWriter) -> bytes:
        """Forward ``data`` as the faults allow; returns what a stall that began in it holds back."""
        with self._lock:
            base_total, base_conn = self._bytes[direction], conn.stats.bytes[direction]
            self._observe(conn, direction, data)
            # The earliest trigger inside this chunk (one whose point is already past fires at once).
            trigger: _Placed | None = None
            limit = len(data)
            for fault in [*self._faults, *conn.swallows]:
                if not isinstance(fault, _Placed) or not conn.applies(fault, direction):
                    continue
                if fault.landmark is not None or isinstance(fault, _SwallowCut):
                    if fault.anchor is None:
                        continue
                    offset = fault.anchor[1] - base_conn
                elif fault.user is None and fault.connection is None:
                    offset = fault.after - base_total
                else:
                    offset = fault.after - base_conn
                offset = max(0, offset)
                if offset <= len(data) and (trigger is None or offset < limit):
                    trigger, limit = fault, offset
            part = data[:limit]
            self._bytes[direction] += len(part)
            conn.stats.bytes[direction] += len(part)
            if trigger is not None:
                trigger.fired = True
                trigger.fired_on = conn.index
                if isinstance(trigger, _SwallowCut):
                    self._lose_pending_appends(conn)
        if part and not conn.closed.is_set():
            writer.write(part)
            await writer.drain()
        if trigger is None:
            return b""
        if isinstance(trigger, Stall):
            conn.stalled_until[direction] = None if trigger.seconds is None else time.monotonic() + trigger.seconds
            return data[limit:]
        conn.close("swallow" if isinstance(trigger, _SwallowCut) else "cut")
        return b""

    def _lose_pending_appends(self, conn: _Connection) -> None:
        """APPENDs written on a connection a swallow closes, whose replies will now never come (a client that
        pipelines APPENDs has sent the ones after the swallowed one): each counts as a reply, and as swallowed
        where its ordinal is chosen, so that a faulty run's ordinals stay those of its clean run."""
        swallow = next((f for f in self._faults if isinstance(f, SwallowAppendReply)), None)
        for tag in [tag for tag, name in conn.tags.items() if name == "APPEND"]:
            del conn.tags[tag]
            self._append_replies += 1
            if swallow is not None and self._append_replies in swallow.ordinals:
                swallow.swallowed.append(tag + b" (its reply lost with the connection)")

    def _observe(self, conn: _Connection, direction: Direction, data: bytes) -> None:
        """Follow the conversation through the bytes of ``data`` not seen yet: marks, logins, anchors."""
        base_total, base_conn = self._bytes[direction], conn.stats.bytes[direction]
        skip = conn.scanned[direction] - base_conn  # a held-back chunk was scanned when it arrived
        if skip >= len(data):
            return
        conn.scanned[direction] += len(data) - skip
        for start, line, is_new in conn.scanners[direction].feed(data[skip:]):
            offsets = (base_total + skip + start, base_conn + skip + start)
            self._landmark(conn, "segment", direction, offsets)
            if direction == C2S:
                self._observe_command(conn, line, is_new, offsets)
                continue
            tagged = _TAGGED.match(line) if is_new else None
            name = conn.tags.pop(tagged.group(1), None) if tagged else None
            if name is None:
                continue
            self._landmark(conn, "reply", S2C, offsets, name)
            if name == "APPEND":
                self._append_replies += 1
                swallow = next((f for f in self._faults if isinstance(f, SwallowAppendReply)), None)
                if swallow is not None and self._append_replies in swallow.ordinals:
                    swallow.swallowed.append(line)
                    conn.swallows.append(_SwallowCut(S2C, 0, anchor=(conn.index, offsets[1])))

    def _observe_command(self, conn: _Connection, line: bytes, is_new: bool, offsets: tuple[int, int]) -> None:
        if is_new and conn.awaiting_plain:
            conn.awaiting_plain = False
            self._identify(conn, _plain_identity(line), offsets[1] + len(line))
            return
        command = _COMMAND.match(line) if is_new else None
        if command:
            name = command.group(2).upper().decode()
            if name == "UID" and (uid := _UID_COMMAND.match(line)):
                name = "UID " + uid.group(1).upper().decode()
            conn.tags[command.group(1)] = name
            conn.command = name
            self._landmark(conn, "command", C2S, offsets, name)
            if name == "APPEND":
                self._append_commands += 1
            elif login := _LOGIN.match(line):
                self._identify(conn, login.group(1).decode("utf-8", "replace"), offsets[1] + len(line))
            elif plain := _AUTH_PLAIN.match(line):
                if plain.group(1):
                    self._identify(conn, _plain_identity(plain.group(1)), offsets[1] + len(line))
                else:
                    conn.awaiting_plain = True
        if conn.command is not None and not _LITERAL.search(line):
            self._landmark(conn, "command-end", C2S, (offsets[0] + len(line), offsets[1] + len(line)), conn.command)
            conn.command = None

    def _landmark(self, conn: _Connection, kind: LandmarkKind, direction: Direction, offsets: tuple[int, int],
                  command: str = ANY) -> None:
        """Record a landmark; anchor the faults placed relative to it (at its offset on this connection)."""
        for marks, offset in zip((self._marks, conn.stats.marks), offsets, strict=True):
            marks.add(kind, direction, offset, command)
        for fault in self._faults:
            if not isinstance(fault, _Placed) or fault.landmark is None or fault.anchor is not None:
                continue
            landmark = fault.landmark
            if landmark.kind != kind or landmark.command not in (ANY, command) or not conn.applies(fault, direction):
                continue
            everywhere = fault.user is None and fault.connection is None
            seen = (self._marks if everywhere else conn.stats.marks).table(kind, direction, landmark.command)
            if len(seen) == landmark.ordinal:
                fault.anchor = (conn.index, offsets[1] + fault.after)

    def _identify(self, conn: _Connection, user: str | None, c2s_offset: int) -> None:
        stats = conn.stats
        if user is None or stats.user is not None:
            return
        stats.user = user
        stats.session = 1 + sum(1 for c in self._connections if c is not stats and c.user == user)
        stats.identified_at = {C2S: c2s_offset, S2C: stats.bytes[S2C]}


def _set_option(writer: asyncio.StreamWriter, option: int) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
