"""A TCP proxy that turns a real Dovecot into a server implementing RFC 9738, the IMAP MESSAGELIMIT extension.

Dovecot does not implement MESSAGELIMIT, and a hosted service that does cannot be started in a test, so the
proxy reproduces the behaviour RFC 9738 ("IMAP MESSAGELIMIT Extension", March 2025) documents, between an
IMAP client and a real Dovecot on 127.0.0.1:

* the server announces ``MESSAGELIMIT=<n>`` among its capabilities;
* FETCH, SEARCH, STORE and UID EXPUNGE (and the UID variants) act on at most n messages, those with the
  highest UIDs. When a command names more, the server processes the n highest and completes with
  ``tag OK [MESSAGELIMIT <n> <lowest processed UID>] ...``; when that tagged OK already carries another
  response code, the code comes in an untagged ``* NO [MESSAGELIMIT <n> <uid>] ...`` before it instead. The
  client repeats the command for the messages below that UID;
* an APPEND (MULTIAPPEND, RFC 3502) of more than n messages, and a COPY or MOVE of more than n, fail as a
  whole with ``tag NO [MESSAGELIMIT <n>] ...``: nothing is stored;
* EXPUNGE, CLOSE, STATUS, LIST, SELECT ... are not limited.

``MessageLimitProxy(upstream, limit)`` listens on a free port of 127.0.0.1 (``port``) once started
(``start()``/``stop()`` or a ``with`` block). ``advertise=False`` enforces the limit without announcing it (a
server that limits without saying so); ``untagged=True`` always puts the code in the untagged
``* NO [MESSAGELIMIT n uid] Partial result`` line before a plain tagged OK (the RFC's other form).

How: one thread per client connection with blocking sockets, ONE COMMAND AT A TIME. The proxy reads a whole
command from the client (answering each synchronising literal ``{N}`` itself with ``+ Ready``), forwards it
with every ``{N}`` rewritten to ``{N+}`` (literal bytes forwarded unchanged; Dovecot accepts LITERAL+ even
when a lab server's ``capabilities=`` leaves it out of the advertised list), reads Dovecot's responses up
to the tagged reply, transforms them and writes them to the client. Commands a client pipelines wait in the
client socket until the previous one is answered, so they are answered in order.
AUTHENTICATE relays the server's ``+`` challenges and the client's answers. IDLE, STARTTLS and COMPRESS would
take the stream out of command/response lockstep: the proxy answers them ``BAD`` itself.

Counters for tests (dicts keyed by command name: "UID FETCH", "FETCH", "UID SEARCH", "UID STORE",
"UID EXPUNGE", "APPEND", "UID COPY", ...): ``partial`` (replies the proxy cut down and gave the code),
``refused`` (commands it answered ``NO [MESSAGELIMIT n]``), ``largest_set`` (the most messages one such
command named, see below: lets a test check that a client kept every command within n), ``unlimited``
(commands it could not size or cut, see below, and let through) and ``errors`` (sessions that ended on an
unexpected exception, or could not reach ``upstream``; a test should expect none; a client that closes or
resets its connection is not one). ``reset_counters()`` empties them all.

Approximations (a client that repeats the command below the reported number stays correct under each):

* The proxy counts the messages it can see. For FETCH and SEARCH that is the messages Dovecot's reply names
  (``* k FETCH`` responses, the numbers of ``* SEARCH``), not the ones Dovecot looked at, and the reply is
  cut after Dovecot did the work. For STORE, UID EXPUNGE, COPY and MOVE, which have side effects, it is the
  numbers in the command's set (``1:5,8`` counts 6), an upper bound on the messages: the command is cut
  (or refused) before it is forwarded. A set holding ``*`` or ``$`` cannot be counted: it is forwarded
  unchanged (a COPY or MOVE of ``1:*`` is not refused) and counted in ``unlimited``. ``largest_set``
  records these same counts (before cutting). An APPEND counts one message per literal, less a mailbox
  name sent as a literal; a CATENATE (RFC 4469) message counts once.
* The code is meant to carry a UID. A FETCH reply is only cut when its FETCH responses carry ``UID`` items
  (always so for UID FETCH); a plain FETCH without them passes whole and counts in ``unlimited``. Plain
  SEARCH and STORE (not their UID variants) work on sequence numbers, and the code then carries the lowest
  kept sequence number, not a UID as the RFC says (the one place where the proxy is not faithful): use the
  UID variants, as the migrator does, to get exact codes.
* Truncating a FETCH reply drops every ``* k FETCH`` response of the messages left out, an unsolicited flag
  update for one of them included. A cut ``* SEARCH ... (MODSEQ m)`` keeps Dovecot's MODSEQ for all matches.
  ESEARCH replies (SEARCH RETURN ...) pass unchanged.
* A real server may refuse an oversized MULTIAPPEND as soon as it has counted n+1 messages; the proxy reads
  the whole command first (its synchronising literals answered ``+ Ready``), then refuses it.
* Replies that are not a tagged OK (NO, BAD) pass unchanged: only a successful command gets the code.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import BufferedReader
from types import TracebackType

__all__ = ["MessageLimitProxy", "count_set", "format_set", "highest", "parse_set"]

Spans = list[tuple[int, int]]  # a message set as sorted, disjoint, non-adjacent inclusive ranges

_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r?\n\Z")
_SYNC_MARKER = re.compile(rb"\{(\d+)\}(\r?\n)\Z")
_HEAD = re.compile(rb"^(\S+)(?: (UID [A-Za-z]+|[A-Za-z]+))?", re.IGNORECASE)
_SET_ARGUMENT = re.compile(rb"^(\S+ (?:UID )?\S+ )(\S+)(.*)\Z", re.IGNORECASE | re.DOTALL)
_NUMBER_SET = re.compile(rb"\d+(?::\d+)?(?:,\d+(?::\d+)?)*")
_TAGGED = re.compile(rb"^(\S+) (OK|NO|BAD)\b(.*)\Z", re.IGNORECASE | re.DOTALL)  # group 3: " text\r\n"
_FETCH = re.compile(rb"^\* (\d+) FETCH ", re.IGNORECASE)
_SEARCH = re.compile(rb"^\* SEARCH((?: \d+)*)( \(MODSEQ \d+\))?(\r?\n)\Z", re.IGNORECASE)
_CAPABILITY_LINE = re.compile(rb"^(\* CAPABILITY [^\r\n]*)(\r?\n)\Z", re.IGNORECASE)
_CAPABILITY_CODE = re.compile(rb"^(\S+ (?:OK|NO|BAD|PREAUTH|BYE) \[CAPABILITY [^\]\r\n]*)\]", re.IGNORECASE)
# Tokens of a FETCH response outside its literals: quoted strings, parentheses, [section]s, atoms.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[()]|\[[^\]]*\]|[^\s()"\[\]]+')
_APPEND_MAILBOX = re.compile(rb"^\S+ APPEND \{\d+\+?\}\r?\n\Z", re.IGNORECASE)
_CATENATE = re.compile(rb"\bCATENATE \(", re.IGNORECASE)
_CATENATE_TEXT = re.compile(rb"\bTEXT \{\d+\+?\}\r?\n\Z", re.IGNORECASE)

_FETCH_NAMES = frozenset({"FETCH", "UID FETCH"})
_SEARCH_NAMES = frozenset({"SEARCH", "UID SEARCH"})
_CUT_NAMES = frozenset({"STORE", "UID STORE", "UID EXPUNGE"})
_TRANSFER_NAMES = frozenset({"COPY", "UID COPY", "MOVE", "UID MOVE"})
_UNSUPPORTED = frozenset({"IDLE", "STARTTLS", "COMPRESS"})


class _Closed(ConnectionError):
    """A peer closed its side (or the proxy is stopping): the session ends quietly."""


# ------------------------------------------------------------------------------------------- message sets


def parse_set(text: bytes) -> Spans | None:
    """The numbers of an IMAP sequence/UID set (``1:5,8``; ``5:1`` is ``1:5``) as merged ranges, or None for a
    set the proxy cannot count (``*``, ``$``). Ranges, not lists: ``1:4294967295`` is a valid set."""
    if not _NUMBER_SET.fullmatch(text):
        return None
    spans = []
    for part in text.split(b","):
        first, _, last = part.partition(b":")
        a, b = int(first), int(last or first)
        spans.append((min(a, b), max(a, b)))
    merged: Spans = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def count_set(spans: Spans) -> int:
    return sum(hi - lo + 1 for lo, hi in spans)


def highest(spans: Spans, n: int) -> Spans:
    """The n highest numbers of a set, as ranges (what a limited server processes, from the top down)."""
    kept: Spans = []
    for lo, hi in reversed(spans):
        if n <= 0:
            break
        take = min(n, hi - lo + 1)
        kept.append((hi - take + 1, hi))
        n -= take
    return kept[::-1]


def format_set(spans: Spans) -> bytes:
    return b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi) for lo, hi in spans)


# ------------------------------------------------------------------------------------ commands and responses


@dataclass
class _Chunked:
    """One command or response as it travels: ``texts[i]`` ends with the marker of ``literals[i]``; the last
    text ends the command or response. Literal bytes are kept apart so that no parsing ever looks into them."""

    texts: list[bytes]
    literals: list[bytes]

    @property
    def head(self) -> bytes:
        return self.texts[0]

    def raw(self) -> bytes:
        parts = [piece for text, literal in zip(self.texts, self.literals, strict=False) for piece in (text, literal)]
        return b"".join([*parts, self.texts[-1]])

    def forwarded(self) -> bytes:
        """The bytes for Dovecot: synchronising literals made LITERAL+ (the proxy answered them already)."""
        texts = [_SYNC_MARKER.sub(rb"{\1+}\2", text) for text in self.texts]
        return _Chunked(texts, self.literals).raw()


def _read_chunked(reader: BufferedReader, on_sync: Callable[[], None] | None = None) -> _Chunked | None:
    """Read one command or response: a line, and while it ends with a literal marker the literal and the next
    line. None when the peer closed between two of them; ``on_sync`` is called before a ``{N}`` literal."""
    texts: list[bytes] = []
    literals: list[bytes] = []
    while True:
        line = reader.readline()
        if not line.endswith(b"\n"):
            if not line and not texts:
                return None
            raise _Closed("peer closed in the middle of a command or response")
        texts.append(line)
        marker = _LITERAL.search(line)
        if marker is None:
            return _Chunked(texts, literals)
        if on_sync is not None and not marker.group(2):
            on_sync()
        size = int(marker.group(1))
        literal = reader.read(size)
        if len(literal) < size:
            raise _Closed("peer closed in the middle of a literal")
        literals.append(literal)


def _command_name(head: bytes) -> tuple[bytes, str]:
    """(tag, upper-case name with "UID " kept: "UID FETCH"); (b"", "") for an empty line."""
    match = _HEAD.match(head.rstrip(b"\r\n"))
    if match is None:
        return b"", ""
    return match.group(1), " ".join((match.group(2) or b"").decode("ascii").upper().split())


def _is_tagged(response: _Chunked, tag: bytes) -> bool:
    match = _TAGGED.match(response.head)
    return match is not None and match.group(1) == tag and not response.literals


def _fetch_uid(response: _Chunked) -> int | None:
    """The UID item of a FETCH response, looked for at the top level of its parenthesised list only: a quoted
    subject or a literal body saying "UID 7" is not it."""
    depth = 0
    previous = b""
    for text in response.texts:
        for match in _TOKEN.finditer(text):
            token = match.group()
            if token == b"(":
                depth += 1
            elif token == b")":
                depth -= 1
            elif depth == 1 and previous.upper() == b"UID" and token.isdigit():
                return int(token)
            previous = token
    return None


def _append_count(command: _Chunked) -> int:
    """Messages in an APPEND: one per literal, but not the mailbox name sent as a literal, and CATENATE
    (RFC 4469) counts once per ``CATENATE (...)`` whatever the number of its TEXT parts."""
    count = 0
    for index, text in enumerate(command.texts[: len(command.literals)]):
        if (index == 0 and _APPEND_MAILBOX.match(text)) or _CATENATE_TEXT.search(text):
            continue
        count += 1
    return count + sum(len(_CATENATE.findall(text)) for text in command.texts)


# ------------------------------------------------------------------------------------------------- proxy


class MessageLimitProxy:
    """RFC 9738 MESSAGELIMIT in front of ``upstream`` (host, port); see the module notes."""

    def __init__(self, upstream: tuple[str, int], limit: int, *, advertise: bool = True,
                 untagged: bool = False) -> None:
        if limit < 1:
            raise ValueError("MESSAGELIMIT is a positive number of messages")
        self.upstream = upstream
        self.limit = limit
        self.advertise = advertise
        self.untagged = untagged
        self.port = 0
        self.partial: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.largest_set: dict[str, int] = {}
        self.unlimited: dict[str, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._sessions: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> MessageLimitProxy:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.1)  # the accept loop looks at _stopping this often
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept_loop, name="limitproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection (which ends its thread), wait for the threads."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, sessions = list(self._sockets), list(self._sessions)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in sessions:
            thread.join(timeout=10)

    def __enter__(self) -> MessageLimitProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def reset_counters(self) -> None:
        with self._lock:
            for counter in (self.partial, self.refused, self.largest_set, self.unlimited):
                counter.clear()
            self.errors.clear()

    # ---------------------------------------------------------------------------------- counters

    def _count(self, counter: dict[str, int], name: str) -> None:
        with self._lock:
            counter[name] = counter.get(name, 0) + 1

    def _note_size(self, name: str, messages: int) -> None:
        with self._lock:
            self.largest_set[name] = max(self.largest_set.get(name, 0), messages)

    # ---------------------------------------------------------------------------------- connections

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), name="limitproxy-session", daemon=True)
            with self._lock:
                self._sessions = [t for t in self._sessions if t.is_alive()]
                self._sessions.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        server: socket.socket | None = None
        try:
            self._track(client)
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError as exc:  # a test set-up problem, not a client's doing: report it
                self._record_error(exc)
                return
            server.settimeout(None)
            self._track(server)
            if self._stopping.is_set():  # stop() may have looked at the sockets before this one was tracked
                return
            _Session(self, client, server).run()
        except ConnectionError:  # _Closed, or a peer that reset the connection (a killed client): quiet
            pass
        except Exception as exc:  # a proxy bug or a protocol surprise: the test should see it
            if not self._stopping.is_set():
                self._record_error(exc)
        finally:
            for sock in (client, server):
                if sock is not None:
                    self._untrack(sock)
                    sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")


class _Session:
    """One client connection and its own Dovecot connection, handled one command at a time."""

    def __init__(self, proxy: MessageLimitProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.limit = proxy.limit
        self.client = client
        self.server = server
        self.from_client = client.makefile("rb")
        self.from_server = server.makefile("rb")

    def run(self) -> None:
        try:
            self._to_client([self._read_server()])
            while (command := _read_chunked(self.from_client, self._go_ahead)) is not None:
                self._handle(command)
        finally:
            self.from_client.close()
            self.from_server.close()

    # ---------------------------------------------------------------------------------- plumbing

    def _go_ahead(self) -> None:
        self.client.sendall(b"+ Ready\r\n")

    def _read_server(self) -> _Chunked:
        response = _read_chunked(self.from_server)
        if response is None:
            raise _Closed("server closed the connection")
        return response

    def _to_client(self, responses: list[_Chunked]) -> None:
        self.client.sendall(b"".join(self._advertised(response).raw() for response in responses))

    def _advertised(self, response: _Chunked) -> _Chunked:
        """Add ``MESSAGELIMIT=n`` to a CAPABILITY response or to a status response's [CAPABILITY ...] code."""
        if not self.proxy.advertise or response.literals:
            return response
        capability = b" MESSAGELIMIT=%d" % self.limit
        head = _CAPABILITY_LINE.sub(lambda m: m.group(1) + capability + m.group(2), response.head)
        head = _CAPABILITY_CODE.sub(lambda m: m.group(1) + capability + b"]", head)
        return _Chunked([head], [])

    def _exchange(self, command: _Chunked, tag: bytes) -> list[_Chunked]:
        """Forward one command, return Dovecot's responses up to and including its tagged reply."""
        self.server.sendall(command.forwarded())
        responses = []
        while True:
            response = self._read_server()
            if response.head.startswith(b"+"):
                raise RuntimeError(f"unexpected continuation from the server after {command.head!r}: "
                                   f"{response.head!r}")
            responses.append(response)
            if _is_tagged(response, tag):
                return responses

    # ---------------------------------------------------------------------------------- commands

    def _handle(self, command: _Chunked) -> None:
        tag, name = _command_name(command.head)
        if not tag:
            return  # an empty line: nothing to answer
        if not name:
            self.client.sendall(tag + b" BAD Missing command name\r\n")
            return
        if name.split()[0] in _UNSUPPORTED:
            self.client.sendall(tag + b" BAD %s is not supported by MessageLimitProxy (tests/limitproxy.py)\r\n"
                                % name.encode())
            return
        if name == "AUTHENTICATE":
            self._authenticate(command, tag)
            return
        if self._too_many(name, command):
            self.proxy._count(self.proxy.refused, name)
            self.client.sendall(tag + b" NO [MESSAGELIMIT %d] Too many messages, try a smaller batch\r\n"
                                % self.limit)
            return
        command, lowest_kept = self._cut(name, command)
        responses = self._exchange(command, tag)
        self._to_client(self._limited(name, responses, lowest_kept))

    def _authenticate(self, command: _Chunked, tag: bytes) -> None:
        """Relay the SASL exchange: each server ``+`` challenge to the client, the client's answer line back."""
        self.server.sendall(command.forwarded())
        while True:
            response = self._read_server()
            self._to_client([response])
            if _is_tagged(response, tag):
                return
            if response.head.startswith(b"+"):
                answer = self.from_client.readline()
                if not answer.endswith(b"\n"):
                    raise _Closed("client closed during AUTHENTICATE")
                self.server.sendall(answer)

    def _too_many(self, name: str, command: _Chunked) -> bool:
        """Whether an APPEND, COPY or MOVE names more than n messages: those fail as a whole."""
        if name == "APPEND":
            messages: int | None = _append_count(command)
        elif name in _TRANSFER_NAMES:
            messages = self._set_size(name, command)
        else:
            return False
        if messages is None:
            return False
        self.proxy._note_size(name, messages)
        return messages > self.limit

    def _set_size(self, name: str, command: _Chunked) -> int | None:
        match = _SET_ARGUMENT.match(command.head)
        spans = parse_set(match.group(2)) if match else None
        if spans is None:
            self.proxy._count(self.proxy.unlimited, name)
            return None
        return count_set(spans)

    def _cut(self, name: str, command: _Chunked) -> tuple[_Chunked, int | None]:
        """STORE and UID EXPUNGE change things: cut their set to the n highest numbers before forwarding.
        Returns the command to forward and the lowest number kept (None when nothing was cut)."""
        if name not in _CUT_NAMES:
            return command, None
        match = _SET_ARGUMENT.match(command.head)
        spans = parse_set(match.group(2)) if match else None
        if match is None or spans is None:
            self.proxy._count(self.proxy.unlimited, name)
            return command, None
        self.proxy._note_size(name, count_set(spans))
        if count_set(spans) <= self.limit:
            return command, None
        kept = highest(spans, self.limit)
        head = match.group(1) + format_set(kept) + match.group(3)
        return _Chunked([head, *command.texts[1:]], command.literals), kept[0][0]

    # ---------------------------------------------------------------------------------- replies

    def _limited(self, name: str, responses: list[_Chunked], lowest_kept: int | None) -> list[_Chunked]:
        """The reply the client gets: cut to n messages with the MESSAGELIMIT code where the command was."""
        tagged = _TAGGED.match(responses[-1].head)
        if tagged is None or tagged.group(2).upper() != b"OK":
            return responses
        if lowest_kept is not None:
            return self._with_code(name, responses, lowest_kept)
        if name in _FETCH_NAMES:
            return self._limited_fetch(name, responses)
        if name in _SEARCH_NAMES:
            return self._limited_search(name, responses)
        return responses

    def _limited_fetch(self, name: str, responses: list[_Chunked]) -> list[_Chunked]:
        """Keep the FETCH responses of the n highest sequence numbers (the n highest UIDs) and drop the rest."""
        numbers = [_fetch_number(response) for response in responses[:-1]]
        distinct = sorted({n for n in numbers if n is not None}, reverse=True)
        self.proxy._note_size(name, len(distinct))
        if len(distinct) <= self.limit:
            return responses
        keep = set(distinct[: self.limit])
        kept = [r for r, n in zip(responses[:-1], numbers, strict=True) if n is None or n in keep]
        uids = [uid for r, n in zip(responses[:-1], numbers, strict=True)
                if n in keep and (uid := _fetch_uid(r)) is not None]
        if not uids:  # a plain FETCH without UID items: no UID to report, so no cut either
            self.proxy._count(self.proxy.unlimited, name)
            return responses
        return self._with_code(name, [*kept, responses[-1]], min(uids))

    def _limited_search(self, name: str, responses: list[_Chunked]) -> list[_Chunked]:
        """Keep the n highest numbers of the ``* SEARCH`` response."""
        result = list(responses)
        lowest: int | None = None
        for index, response in enumerate(responses[:-1]):
            match = _SEARCH.match(response.head) if not response.literals else None
            if match is None:
                continue
            numbers = [int(n) for n in match.group(1).split()]
            self.proxy._note_size(name, len(numbers))
            if len(numbers) <= self.limit:
                continue
            keep = set(sorted(numbers)[-self.limit:])
            kept = [n for n in numbers if n in keep]  # in the order Dovecot gave them
            head = b"* SEARCH " + b" ".join(b"%d" % n for n in kept) + (match.group(2) or b"") + match.group(3)
            result[index] = _Chunked([head], [])
            lowest = min(kept)
        return result if lowest is None else self._with_code(name, result, lowest)

    def _with_code(self, name: str, responses: list[_Chunked], lowest: int) -> list[_Chunked]:
        """Put ``[MESSAGELIMIT n lowest]`` in the tagged OK, or, when that OK has a code already (or the proxy
        was made with untagged=True), in an untagged NO just before it."""
        self.proxy._count(self.proxy.partial, name)
        code = b"[MESSAGELIMIT %d %d]" % (self.limit, lowest)
        tagged = _TAGGED.match(responses[-1].head)
        assert tagged is not None
        rest = tagged.group(3)
        if self.proxy.untagged or rest.startswith(b" ["):
            return [*responses[:-1], _Chunked([b"* NO " + code + b" Partial result\r\n"], []), responses[-1]]
        return [*responses[:-1], _Chunked([tagged.group(1) + b" " + tagged.group(2) + b" " + code + rest], [])]


def _fetch_number(response: _Chunked) -> int | None:
    match = _FETCH.match(response.head)
    return int(match.group(1)) if match else None
