"""The MESSAGELIMIT proxy (tests/limitproxy.py) behaves as RFC 9738 describes, in front of a real Dovecot.

The client here is a raw socket that writes exactly the bytes a test gives and reads whole responses, so the
assertions are about the wire; what Dovecot really did (flags set, messages expunged or stored) is checked
with imaplib straight on Dovecot's own port. One Dovecot serves the module; every test has its own folder of
ten messages (UIDs 1 to 10) and its own proxy with a limit of three.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from migrator.lab.dovecot import DovecotServer, LabUser
from tests.limitproxy import MessageLimitProxy, count_set, format_set, highest, parse_set

USER = LabUser("limits", "limits-pw")
LIMIT = 3
MESSAGES = 10
_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")


def message(index: int) -> bytes:
    """A distinct message; its body mentions a UID and holds 8-bit bytes, which must travel untouched."""
    return (b"From: sender@example.org\r\nTo: limits@example.org\r\nSubject: limit test %d\r\n"
            b"Message-ID: <limit-%d@example.org>\r\n\r\nUID 1 is not the UID of this message.\r\n" % (index, index)
            + bytes(range(0x80, 0x90)) + b"\r\n" + b"line\r\n" * index)


# ------------------------------------------------------------------------------------------------ clients


@dataclass
class Response:
    raw: bytes  # the whole response as received, literals included
    literals: list[bytes] = field(default_factory=list)


class Wire:
    """A raw IMAP client for the proxy's port; independent of the proxy's own parser on purpose."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.read_response()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self) -> Response:
        response = Response(b"")
        while True:
            line = self.reader.readline()
            if not line.endswith(b"\r\n"):
                raise ConnectionError(f"connection closed after {response.raw + line!r}")
            response.raw += line
            marker = _LITERAL.search(line)
            if marker is None:
                return response
            literal = self.reader.read(int(marker.group(1)))
            response.raw += literal
            response.literals.append(literal)

    def until_tagged(self, tag: bytes) -> list[Response]:
        responses = [self.read_response()]
        while not responses[-1].raw.startswith(tag + b" "):
            responses.append(self.read_response())
        return responses

    def command(self, tag: bytes, text: bytes) -> list[Response]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def login_and_select(self, folder: str) -> None:
        assert self.command(b"L1", b"LOGIN %s %s" % (USER.name.encode(), USER.password.encode()))[-1].raw \
            .startswith(b"L1 OK")
        assert self.command(b"S1", b'SELECT "%s"' % folder.encode())[-1].raw.startswith(b"S1 OK")


def tagged(responses: list[Response]) -> bytes:
    return responses[-1].raw


def untagged(responses: list[Response]) -> list[bytes]:
    return [r.raw for r in responses[:-1]]


def searched(responses: list[Response]) -> list[int]:
    lines = [r.raw for r in responses if r.raw.startswith(b"* SEARCH")]
    assert len(lines) == 1, lines
    return [int(n) for n in lines[0].split()[2:]]


def fetched(responses: list[Response]) -> dict[int, bytes]:
    """UID -> BODY[] of every FETCH response."""
    found = {}
    for response in responses:
        head = re.match(rb"\* \d+ FETCH \(.*?\bUID (\d+)\b", response.raw)
        if head is not None:
            assert len(response.literals) == 1, response.raw[:200]
            found[int(head.group(1))] = response.literals[0]
    return found


@contextmanager
def direct(server: DovecotServer, folder: str) -> Iterator[imaplib.IMAP4]:
    """imaplib straight on Dovecot (no proxy), the folder selected: what the server really holds."""
    client = imaplib.IMAP4(server.host, server.port)
    try:
        client.login(USER.name, USER.password)
        assert client.select(f'"{folder}"')[0] == "OK"
        yield client
    finally:
        client.logout()


def direct_search(server: DovecotServer, folder: str, *criteria: str) -> list[int]:
    with direct(server, folder) as client:
        typ, data = client.uid("SEARCH", *criteria)
        assert typ == "OK"
        return [int(n) for n in data[0].split()]


def direct_bodies(server: DovecotServer, folder: str) -> dict[int, bytes]:
    with direct(server, folder) as client:
        typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        assert typ == "OK"
        bodies = {}
        for item in data:
            if isinstance(item, tuple):
                uid = re.search(rb"UID (\d+)", item[0])
                assert uid is not None
                bodies[int(uid.group(1))] = item[1]
        return bodies


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(dovecot: None) -> Iterator[DovecotServer]:
    # Outside pytest's tmp tree: Dovecot's unprivileged processes must traverse it (see lab_root).
    root = Path(tempfile.mkdtemp(prefix="migrator-lab-"))
    root.chmod(0o755)
    try:
        with DovecotServer(root=root / "srv", name="limits", layout="target", users=[USER]) as dovecot_server:
            yield dovecot_server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def folder(server: DovecotServer, request: pytest.FixtureRequest) -> str:
    """A new folder named after the test, holding message(1) .. message(10) as UIDs 1 .. 10."""
    name: str = request.node.name
    client = imaplib.IMAP4(server.host, server.port)
    try:
        client.login(USER.name, USER.password)
        assert client.create(f'"{name}"')[0] == "OK"
        for index in range(1, MESSAGES + 1):
            assert client.append(f'"{name}"', "", None, message(index))[0] == "OK"
    finally:
        client.logout()
    assert direct_search(server, name, "ALL") == list(range(1, MESSAGES + 1))
    return name


@contextmanager
def running_proxy(server: DovecotServer, **options: bool) -> Iterator[MessageLimitProxy]:
    with MessageLimitProxy((server.host, server.port), LIMIT, **options) as proxy:
        yield proxy
    assert proxy.errors == []


@pytest.fixture
def proxy(server: DovecotServer) -> Iterator[MessageLimitProxy]:
    with running_proxy(server) as running:
        yield running


@pytest.fixture
def wire(proxy: MessageLimitProxy, folder: str) -> Iterator[Wire]:
    """A raw client through the proxy, logged in, the test's folder selected."""
    client = Wire(proxy.port)
    try:
        client.login_and_select(folder)
        yield client
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------ message sets


def test_sets_count_every_number_of_their_ranges_and_keep_the_highest() -> None:
    spans = parse_set(b"10:12,5:1,8,6")
    assert spans == [(1, 6), (8, 8), (10, 12)]
    assert count_set(spans) == 10
    assert format_set(highest(spans, 4)) == b"8,10:12"
    assert format_set(highest(spans, 5)) == b"6,8,10:12"
    assert count_set(parse_set(b"1:4294967295") or []) == 4294967295
    assert parse_set(b"1:*") is None
    assert parse_set(b"$") is None


# ------------------------------------------------------------------------------------------------ capability


def test_capability_announces_the_limit(server: DovecotServer, proxy: MessageLimitProxy) -> None:
    client = Wire(proxy.port)
    try:
        assert re.match(rb"\* OK \[CAPABILITY [^\]]* MESSAGELIMIT=3\] ", client.greeting.raw)
        login = client.command(b"a1", b"LOGIN %s %s" % (USER.name.encode(), USER.password.encode()))
        assert tagged(login).startswith(b"a1 OK")
        assert b"".join(r.raw for r in login).count(b"MESSAGELIMIT=3") == 1  # [CAPABILITY ...] of the OK
        capability = client.command(b"a2", b"CAPABILITY")
        assert re.fullmatch(rb"\* CAPABILITY .* MULTIAPPEND .* MESSAGELIMIT=3\r\n", untagged(capability)[0])
    finally:
        client.close()


def test_a_server_can_limit_without_announcing(server: DovecotServer, folder: str) -> None:
    with running_proxy(server, advertise=False) as proxy:
        client = Wire(proxy.port)
        try:
            assert b"MESSAGELIMIT" not in client.greeting.raw
            assert b"MESSAGELIMIT" not in b"".join(r.raw for r in client.command(b"a1", b"CAPABILITY"))
            client.login_and_select(folder)
            search = client.command(b"a2", b"UID SEARCH ALL")
            assert searched(search) == [8, 9, 10]
            assert tagged(search).startswith(b"a2 OK [MESSAGELIMIT 3 8] ")
        finally:
            client.close()


# ------------------------------------------------------------------------------------------------ SEARCH, FETCH


def test_uid_search_gives_the_highest_uids_and_continues_below(wire: Wire, proxy: MessageLimitProxy) -> None:
    first = wire.command(b"s1", b"UID SEARCH ALL")
    assert searched(first) == [8, 9, 10]
    assert re.fullmatch(rb"s1 OK \[MESSAGELIMIT 3 8\] Search completed.*\r\n", tagged(first))

    found, below, rounds = list(searched(first)), 8, 0
    while True:  # what the RFC asks of a client: repeat for the UIDs below the reported one
        rounds += 1
        page = wire.command(b"s%d" % (rounds + 1), b"UID SEARCH UID 1:%d" % (below - 1))
        found += searched(page)
        code = re.match(rb"\S+ OK \[MESSAGELIMIT 3 (\d+)\] ", tagged(page))
        if code is None:
            assert b"MESSAGELIMIT" not in tagged(page)
            break
        below = int(code.group(1))
        assert below == min(searched(page))
    assert sorted(found) == list(range(1, 11))
    assert len(found) == 10  # nothing twice
    assert rounds == 3  # 5..7, 2..4, then 1 without a code
    assert proxy.partial == {"UID SEARCH": 3}
    assert proxy.largest_set == {"UID SEARCH": 10}


def test_uid_fetch_gives_the_highest_messages_byte_identical(server: DovecotServer, folder: str, wire: Wire,
                                                             proxy: MessageLimitProxy) -> None:
    reply = wire.command(b"f1", b"UID FETCH 1:* (UID FLAGS BODY.PEEK[])")
    assert re.fullmatch(rb"f1 OK \[MESSAGELIMIT 3 8\] Fetch completed.*\r\n", tagged(reply))
    bodies = fetched(reply)
    assert sorted(bodies) == [8, 9, 10]
    on_server = direct_bodies(server, folder)
    assert len(on_server) == 10
    for uid, body in bodies.items():
        assert body == on_server[uid] == message(uid)
    # Within the limit: untouched, no code.
    small = wire.command(b"f2", b"UID FETCH 5:7 (UID BODY.PEEK[])")
    assert sorted(fetched(small)) == [5, 6, 7]
    assert b"MESSAGELIMIT" not in tagged(small)
    assert proxy.partial == {"UID FETCH": 1}
    assert proxy.largest_set == {"UID FETCH": 10}


def test_a_plain_fetch_without_uids_passes_whole(wire: Wire, proxy: MessageLimitProxy) -> None:
    """No UID in the reply, no UID for the code: the documented exception, counted as unlimited."""
    reply = wire.command(b"f1", b"FETCH 1:* (FLAGS)")
    assert len([r for r in untagged(reply) if b" FETCH " in r]) == 10
    assert b"MESSAGELIMIT" not in tagged(reply)
    assert proxy.unlimited == {"FETCH": 1}


# ------------------------------------------------------------------------------------------------ STORE, EXPUNGE


def test_uid_store_changes_only_the_highest(server: DovecotServer, folder: str, wire: Wire,
                                            proxy: MessageLimitProxy) -> None:
    reply = wire.command(b"t1", b"UID STORE 1:10 +FLAGS (\\Flagged)")
    assert re.fullmatch(rb"t1 OK \[MESSAGELIMIT 3 8\] Store completed.*\r\n", tagged(reply))
    assert direct_search(server, folder, "FLAGGED") == [8, 9, 10]
    reply = wire.command(b"t2", b"UID STORE 1:7 +FLAGS.SILENT (\\Flagged)")
    assert tagged(reply).startswith(b"t2 OK [MESSAGELIMIT 3 5] ")
    assert direct_search(server, folder, "FLAGGED") == [5, 6, 7, 8, 9, 10]
    assert proxy.partial == {"UID STORE": 2}
    assert proxy.largest_set == {"UID STORE": 10}


def test_a_code_already_in_the_tagged_ok_moves_the_limit_to_an_untagged_no(server: DovecotServer, folder: str,
                                                                           wire: Wire) -> None:
    """UNCHANGEDSINCE 0 fails for every message: Dovecot answers OK [MODIFIED ...], so the limit goes first."""
    reply = wire.command(b"t1", b"UID STORE 1:10 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
    assert re.fullmatch(rb"t1 OK \[MODIFIED 8:10\] .*\r\n", tagged(reply))
    assert untagged(reply)[-1] == b"* NO [MESSAGELIMIT 3 8] Partial result\r\n"
    assert direct_search(server, folder, "SEEN") == []


def test_uid_expunge_removes_only_the_highest_named(server: DovecotServer, folder: str, wire: Wire,
                                                    proxy: MessageLimitProxy) -> None:
    with direct(server, folder) as client:
        assert client.uid("STORE", "2,4,6,8,10", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
    reply = wire.command(b"x1", b"UID EXPUNGE 2,4,6,8,10")
    assert re.fullmatch(rb"x1 OK \[MESSAGELIMIT 3 6\] Expunge completed.*\r\n", tagged(reply))
    assert len([r for r in untagged(reply) if r.endswith(b" EXPUNGE\r\n")]) == 3
    assert direct_search(server, folder, "ALL") == [1, 2, 3, 4, 5, 7, 9]
    reply = wire.command(b"x2", b"UID EXPUNGE 2,4")
    assert b"MESSAGELIMIT" not in tagged(reply)
    assert direct_search(server, folder, "ALL") == [1, 3, 5, 7, 9]
    assert proxy.partial == {"UID EXPUNGE": 1}
    assert proxy.largest_set == {"UID EXPUNGE": 5}


def test_copy_of_more_than_the_limit_fails_whole(server: DovecotServer, folder: str, wire: Wire,
                                                 proxy: MessageLimitProxy) -> None:
    assert tagged(wire.command(b"c0", b'CREATE "%s.copy"' % folder.encode())).startswith(b"c0 OK")
    assert tagged(wire.command(b"c1", b'UID COPY 1:4 "%s.copy"' % folder.encode())) == \
        b"c1 NO [MESSAGELIMIT 3] Too many messages, try a smaller batch\r\n"
    assert direct_search(server, f"{folder}.copy", "ALL") == []
    assert tagged(wire.command(b"c2", b'UID COPY 1:3 "%s.copy"' % folder.encode())).startswith(b"c2 OK")
    assert direct_search(server, f"{folder}.copy", "ALL") == [1, 2, 3]
    assert proxy.refused == {"UID COPY": 1}


# ------------------------------------------------------------------------------------------------ APPEND


def multiappend_plus(tag: bytes, folder: str, bodies: list[bytes]) -> bytes:
    """A MULTIAPPEND with LITERAL+ literals, written in one go; the first message gets \\Seen and a date."""
    command = b'%s APPEND "%s"' % (tag, folder.encode())
    for index, body in enumerate(bodies):
        extra = b' (\\Seen) "01-Feb-2024 10:00:00 +0000"' if index == 0 else b""
        command += extra + b" {%d+}\r\n" % len(body) + body
    return command + b"\r\n"


def test_multiappend_beyond_the_limit_is_refused_and_stores_nothing(server: DovecotServer, folder: str,
                                                                    wire: Wire, proxy: MessageLimitProxy) -> None:
    four = [message(100 + i) for i in range(4)]
    wire.send(multiappend_plus(b"m1", folder, four))
    assert tagged(wire.until_tagged(b"m1")) == b"m1 NO [MESSAGELIMIT 3] Too many messages, try a smaller batch\r\n"
    # The same with synchronising literals: each gets its go-ahead, then the whole command is refused.
    wire.send(b'm2 APPEND "%s" {%d}\r\n' % (folder.encode(), len(four[0])))
    for body, following in zip(four, [*four[1:], None], strict=True):
        assert wire.read_response().raw == b"+ Ready\r\n"
        wire.send(body + (b" {%d}\r\n" % len(following) if following is not None else b"\r\n"))
    assert tagged(wire.until_tagged(b"m2")).startswith(b"m2 NO [MESSAGELIMIT 3] ")
    assert direct_search(server, folder, "ALL") == list(range(1, 11))
    assert proxy.refused == {"APPEND": 2}
    assert proxy.largest_set == {"APPEND": 4}


def test_multiappend_within_the_limit_stores_identical_bytes(server: DovecotServer, folder: str, wire: Wire,
                                                             proxy: MessageLimitProxy) -> None:
    plus = [message(200 + i) for i in range(3)]
    wire.send(multiappend_plus(b"m1", folder, plus))
    assert re.match(rb"m1 OK \[APPENDUID \d+ 11:13\] ", tagged(wire.until_tagged(b"m1")))

    synchronised = [message(300 + i) for i in range(3)]
    wire.send(b'm2 APPEND "%s" {%d}\r\n' % (folder.encode(), len(synchronised[0])))
    for body, following in zip(synchronised, [*synchronised[1:], None], strict=True):
        assert wire.read_response().raw == b"+ Ready\r\n"
        wire.send(body + (b" {%d}\r\n" % len(following) if following is not None else b"\r\n"))
    assert re.match(rb"m2 OK \[APPENDUID \d+ 14:16\] ", tagged(wire.until_tagged(b"m2")))

    on_server = direct_bodies(server, folder)
    assert [on_server[uid] for uid in range(11, 17)] == plus + synchronised
    assert direct_search(server, folder, "SEEN") == [11]
    assert proxy.refused == {}
    assert proxy.largest_set == {"APPEND": 3}


# ------------------------------------------------------------------------------------------------ forms, pipelining


def test_untagged_form_puts_the_code_before_a_plain_tagged_ok(server: DovecotServer, folder: str) -> None:
    with running_proxy(server, untagged=True) as proxy:
        client = Wire(proxy.port)
        try:
            client.login_and_select(folder)
            reply = client.command(b"u1", b"UID SEARCH ALL")
            assert untagged(reply) == [b"* SEARCH 8 9 10\r\n", b"* NO [MESSAGELIMIT 3 8] Partial result\r\n"]
            assert re.fullmatch(rb"u1 OK Search completed.*\r\n", tagged(reply))
            reply = client.command(b"u2", b"UID FETCH 1:* (UID BODY.PEEK[])")
            assert sorted(fetched(reply)) == [8, 9, 10]
            assert untagged(reply)[-1] == b"* NO [MESSAGELIMIT 3 8] Partial result\r\n"
            assert re.fullmatch(rb"u2 OK Fetch completed.*\r\n", tagged(reply))
        finally:
            client.close()
        assert proxy.partial == {"UID SEARCH": 1, "UID FETCH": 1}


def test_pipelined_commands_are_answered_in_order(server: DovecotServer, folder: str, wire: Wire) -> None:
    body = message(400)
    wire.send(b"p1 UID SEARCH ALL\r\n"
              + multiappend_plus(b"p2", folder, [body])
              + b"p3 UID FETCH 11 (UID BODY.PEEK[])\r\np4 NOOP\r\n")
    replies = [wire.until_tagged(tag) for tag in (b"p1", b"p2", b"p3", b"p4")]
    assert searched(replies[0]) == [8, 9, 10]
    assert tagged(replies[0]).startswith(b"p1 OK [MESSAGELIMIT 3 8] ")
    assert re.match(rb"p2 OK \[APPENDUID \d+ 11\] ", tagged(replies[1]))
    assert fetched(replies[2]) == {11: body}
    assert b"MESSAGELIMIT" not in tagged(replies[2])
    assert tagged(replies[3]).startswith(b"p4 OK")
    assert direct_bodies(server, folder)[11] == body


def test_imaplib_authenticates_and_pages_through_the_proxy(server: DovecotServer, folder: str,
                                                          proxy: MessageLimitProxy) -> None:
    """A stock client: AUTHENTICATE PLAIN (the server's "+" relayed, the client's answer forwarded), then UID
    SEARCH pages; and stopping the proxy under a connected client ends its session cleanly."""
    client = imaplib.IMAP4("127.0.0.1", proxy.port)
    assert "MESSAGELIMIT=3" in client.capabilities
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0{USER.name}\0{USER.password}".encode())
    assert typ == "OK"
    assert client.select(f'"{folder}"')[0] == "OK"
    typ, data = client.uid("SEARCH", "ALL")
    assert (typ, data) == ("OK", [b"8 9 10"])
    typ, data = client.uid("SEARCH", "UID", "1:7")
    assert (typ, data) == ("OK", [b"5 6 7"])
    proxy.stop()
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        client.noop()
    client.shutdown()
    assert proxy.partial == {"UID SEARCH": 2}
