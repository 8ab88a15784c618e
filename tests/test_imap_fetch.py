"""The fast FETCH reply readers agree with imapclient's parser on every shape, and hand it what they do not know.

The replies are written as imaplib splits them (a literal arrives as a (head, bytes) pair followed by the
rest of its line); the reader that makes that split is compared with imaplib's on a real Dovecot.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import imapclient
import pytest
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import IMAPClientError, ProtocolError
from imapclient.response_parser import parse_fetch_response

from migrator.connectors import imap_commands, imap_fetch
from migrator.lab.dovecot import DovecotServer, LabUser

LISTING = [
    b'1 (UID 7 FLAGS (\\Seen $Label1) INTERNALDATE " 7-Jul-2026 10:00:00 +0200" RFC822.SIZE 4286)',
    b'2 (UID 9 RFC822.SIZE 10 INTERNALDATE "17-Jan-1999 23:59:59 -0000" FLAGS ())',
    b'3 (FLAGS (\\Recent) UID 12 MODSEQ (44) INTERNALDATE "01-Feb-2026 00:00:00 +0530" RFC822.SIZE 1)',
    b'4 (UID 15 FLAGS () INTERNALDATE "31-Dec-2025 23:00:00 -1130" RFC822.SIZE 0)',
    b'5 (UID 16 FLAGS (\\Seen) INTERNALDATE "01-Mar-2026 08:00:00 +0000" RFC822.SIZE 3 MODSEQ (45))',  # CHANGEDSINCE
]


def _imapclient_listing(data: list[object]) -> imap_fetch.Listing:
    parsed = parse_fetch_response(data, False, False).values()
    return {item[b"UID"]: (item[b"RFC822.SIZE"], tuple(item[b"FLAGS"]), item[b"INTERNALDATE"])
            for item in parsed if b"RFC822.SIZE" in item}


def test_listing_matches_imapclient() -> None:
    fast = imap_fetch.parse_listing(LISTING)
    assert fast == _imapclient_listing(list(LISTING))
    assert fast[7] == (4286, (b"\\Seen", b"$Label1"), datetime(2026, 7, 7, 10, tzinfo=timezone(timedelta(hours=2))))
    assert fast[9][2] == datetime(1999, 1, 17, 23, 59, 59, tzinfo=UTC)
    assert fast[12][1] == (b"\\Recent",)


@pytest.mark.parametrize("odd", [
    b'4 (FLAGS (\\Seen))',  # unsolicited: a flag change made by another session
    b'4 (UID 13 FLAGS (\\Seen) INTERNALDATE "01-Feb-2026 00:00:00 +0000" RFC822.SIZE 5 X-GM-MSGID 99)',
])
def test_listing_of_another_shape_goes_to_imapclient(odd: bytes) -> None:
    data = [*LISTING, odd]
    assert imap_fetch.parse_listing(data) == {
        uid: value for uid, value in _imapclient_listing(list(data)).items()}


def test_bodies_in_every_order() -> None:
    data = [
        (b"1 (UID 7 BODY[] {5}", b"hello"), b")",
        (b"2 (UID 8 MODSEQ (3) BODY[] {0}", b""), b")",
        (b"3 (BODY[] {4}", b"a\r\nb"), b" UID 9)",
        (b"4 (BODY[] {2}", b"\r\n"), b" MODSEQ (5) UID 10 FLAGS (\\Seen))",
    ]
    assert imap_fetch.parse_bodies(data) == {7: b"hello", 8: b"", 9: b"a\r\nb", 10: b"\r\n"}


def test_bodies_of_another_shape_go_to_imapclient() -> None:
    quoted = [b'1 (UID 7 BODY[] "hi")', (b"2 (UID 8 BODY[] {3}", b"abc"), b")"]
    assert imap_fetch.parse_bodies(quoted) == {7: b"hi", 8: b"abc"}
    unsolicited = [(b"1 (UID 7 BODY[] {3}", b"abc"), b")", b"5 (FLAGS (\\Deleted))"]
    assert imap_fetch.parse_bodies(unsolicited) == {7: b"abc"}
    no_uid = [(b"1 (BODY[] {3}", b"abc"), b")"]
    assert imap_fetch.parse_bodies(no_uid) == {}


def test_a_literal_of_the_wrong_length_is_not_trusted() -> None:
    # imaplib reads exactly {n} bytes, so this cannot come from a server; the fast path must not guess
    with pytest.raises(ProtocolError):
        imap_fetch.parse_bodies([(b"1 (UID 7 BODY[] {9}", b"abc"), b")"])


def test_uid_ranges_read_in_either_order() -> None:
    assert list(imap_fetch.uid_range(b"1:3,7,12:10")) == [1, 2, 3, 7, 10, 11, 12]
    assert list(imap_fetch.uid_range(b"5")) == [5]
    assert imap_fetch.uid_spans(b"1:4294967295,7") == [(1, 4294967295), (7, 7)]  # not listed one by one


def test_uid_sets_are_compact() -> None:
    assert imap_fetch.set_text(imap_fetch.uid_runs([1, 2, 3, 5, 7, 8, 10])) == b"1:3,5,7:8,10"
    assert imap_fetch.set_text(imap_fetch.uid_runs([4])) == b"4"
    assert imap_fetch.set_text(imap_fetch.uid_runs([])) == b""
    assert imap_fetch.set_text([(1, None), (3, 3)]) == b"1:*,3"


def test_what_a_command_stopped_at_its_message_limit_left_undone() -> None:
    """RFC 9738 servers work from the highest UID down: what is left is every UID below where they stopped."""
    assert imap_fetch.below([(1, 3), (7, 9), (12, 12)], 8) == [(1, 3), (7, 7)]
    assert imap_fetch.below([(1, None)], 500) == [(1, 499)]
    assert imap_fetch.below([(5, 9)], 5) == []
    assert imap_fetch.below([(5, 9)], None) == []


def test_a_server_that_stops_without_progress_is_an_error_not_a_loop() -> None:
    """A stop at a UID above everything asked leaves the whole set undone: asking again would never end."""
    spans: list[imap_fetch.Span] = [(1, 3), (7, 9)]
    with pytest.raises(IMAPClientError, match="without progress"):
        imap_fetch.progressed(spans, imap_fetch.below(spans, 50), "FETCH")
    assert imap_fetch.progressed(spans, imap_fetch.below(spans, 8), "FETCH") == [(1, 3), (7, 7)]
    assert imap_fetch.progressed(spans, imap_fetch.below(spans, None), "FETCH") == []


class _Replies:
    """What stopped_at reads of an imaplib connection: the untagged responses it stored."""

    def __init__(self, **untagged: list[bytes]) -> None:
        self.untagged_responses: dict[str, list[bytes]] = dict(untagged)


def test_a_message_limit_is_read_from_the_tagged_reply_or_an_untagged_no() -> None:
    assert imap_fetch.stopped_at(_Replies(), b"[MESSAGELIMIT 1000 23007] FETCH completed") == 23007
    assert imap_fetch.stopped_at(_Replies(), b"Fetch completed (0.001 + 0.000 secs).") is None
    untagged = _Replies(MESSAGELIMIT=[b"1000 23007"])
    assert imap_fetch.stopped_at(untagged, b"[HIGHESTMODSEQ 9] done") == 23007
    assert not untagged.untagged_responses  # read once: the next command's answer is its own
    with pytest.raises(IMAPClientError, match="without saying where"):
        imap_fetch.stopped_at(_Replies(), b"[MESSAGELIMIT 1000] partial")


def test_uid_set_parts_hold_at_most_the_message_limit_and_short_lines() -> None:
    assert imap_commands.uid_set_parts([1, 2, 3, 5, 6, 7, 8, 10], most=3) == [[(1, 3)], [(5, 7)], [(8, 8), (10, 10)]]
    assert imap_commands.uid_set_parts(range(1, 10)) == [[(1, 9)]]
    scattered = imap_commands.uid_set_parts(range(1, 40_000, 2), most=1000)
    assert [sum(last - first + 1 for first, last in part) for part in scattered] == [1000] * 20
    lines = imap_commands.uid_set_parts(range(1, 40_000, 2))
    assert all(len(imap_fetch.set_text(part)) <= 8000 for part in lines) and len(lines) > 1
    assert sorted(uid for part in lines for first, last in part for uid in range(first, last + 1)) == \
        list(range(1, 40_000, 2))


@pytest.mark.parametrize("text", [b" 7-Jul-2026 10:00:00 +0200", b"17-Jan-1999 23:59:59 -0000",
                                  b"01-Feb-2026 00:00:00 +0530", b"29-Feb-2024 12:34:56 -1130",
                                  b"31-dec-2025 01:02:03 +1400"])
def test_internal_dates_read_like_strptime(text: bytes) -> None:
    expected = datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    parsed = imap_fetch.internal_date(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("value", [
    datetime(2026, 7, 7, 10, tzinfo=timezone(timedelta(hours=2))), datetime(1999, 1, 17, 23, 59, 59, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 34, 56, tzinfo=timezone(-timedelta(hours=11, minutes=30))),
    datetime(2026, 12, 31, 1, 2, 3, tzinfo=timezone(timedelta(hours=14))),
    datetime(2026, 3, 1, 4, 5, 6),  # no zone: imapclient's way (the machine's zone)
    datetime(2026, 3, 1, 4, 5, 6, tzinfo=timezone(timedelta(seconds=30))),  # odd seconds: imapclient's way
])
def test_internal_dates_are_written_like_imapclient(value: datetime) -> None:
    written = imap_fetch.format_internal_date(value)
    assert written == datetime_to_INTERNALDATE(value).encode()
    if value.tzinfo is not None and not value.utcoffset().seconds % 60:  # type: ignore[union-attr]
        assert imap_fetch.internal_date(written) == value


def test_an_impossible_internal_date_is_refused() -> None:
    with pytest.raises(ValueError):
        imap_fetch.internal_date(b"31-Feb-2026 00:00:00 +0000")


# ------------------------------------------------------------------------------------------- against Dovecot

ODD_BODY = (b"From: a@example.org\r\nSubject: braces {5}\r\n\r\nA line ending in a literal marker {12}\r\n"
            b")\r\n* 1 FETCH (UID 99)\r\nA0001 OK not a tag\r\n")


@pytest.fixture
def dovecot_client(dovecot: None, lab_root: Path) -> Iterator[tuple[imapclient.IMAPClient, DovecotServer]]:
    user = LabUser("dora", "dora-pw")
    with DovecotServer(root=lab_root / "srv", name="fetch", layout="target", users=[user]) as server:
        client = imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=False)
        client.login(user.name, user.password)
        bodies = (ODD_BODY, b"Subject: two\r\n\r\nshort\r\n", b"Subject: 3\r\n\r\n" + b"x" * 9000)
        for number, body in enumerate(bodies):
            client.append("INBOX", body, flags=[b"\\Seen"] if number else [],
                          msg_time=datetime(2026, 7, number + 1, 10, tzinfo=UTC))
        client.select_folder("INBOX")
        yield client, server
        client.logout()


ITEMS = b"(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"


def test_replies_read_from_a_server_equal_imaplibs(dovecot_client: tuple[imapclient.IMAPClient, DovecotServer]
                                                    ) -> None:
    client, _server = dovecot_client
    for items in (ITEMS, b"(UID BODY.PEEK[HEADER] BODY.PEEK[TEXT])"):  # the second: two literals in one reply
        ours, stopped = imap_fetch.uid_fetch(client._imap, b"1:*", items)
        assert stopped is None  # Dovecot has no message limit
        theirs = client._command_and_check("fetch", "1:*", items.decode(), uid=True)
        assert ours == [item for item in theirs if item is not None]
    ours, _stopped = imap_fetch.uid_fetch(client._imap, b"1:*", ITEMS)
    assert imap_fetch.parse_bodies(ours)[1] == ODD_BODY
    assert client.noop()[0].startswith(b"NOOP")  # the connection's tags and state are intact


def test_other_replies_are_kept_where_imaplib_keeps_them(
        dovecot_client: tuple[imapclient.IMAPClient, DovecotServer]) -> None:
    client, server = dovecot_client
    other = imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=False)
    other.login("dora", "dora-pw")
    other.append("INBOX", b"Subject: new\r\n\r\nnew\r\n")
    other.logout()
    fetched = imap_fetch.parse_listing(imap_fetch.uid_fetch(client._imap, b"1:3",
                                                            b"(UID FLAGS INTERNALDATE RFC822.SIZE)")[0])
    assert sorted(fetched) == [1, 2, 3]
    assert client._imap.untagged_responses["EXISTS"][-1] == b"4"


def test_a_refused_fetch_raises_and_leaves_the_connection_usable(
        dovecot_client: tuple[imapclient.IMAPClient, DovecotServer]) -> None:
    client, _server = dovecot_client
    with pytest.raises(IMAPClientError, match="fetch failed"):
        imap_fetch.uid_fetch(client._imap, b"1:*", b"(NOSUCHITEM)")
    assert not client._imap.tagged_commands
    assert client.noop()[0].startswith(b"NOOP")


class _Pipelined:
    """An imaplib connection as imap_commands.statuses sees it: replies given, writes recorded."""

    def __init__(self, untagged: list[bytes], tagged: list[tuple[str, list[bytes]]]) -> None:
        self.untagged_responses: dict[str, list[bytes]] = {}
        self.sent: list[bytes] = []
        self._untagged, self._tagged = untagged, iter(tagged)
        self._tags = 0

    def _new_tag(self) -> bytes:
        self._tags += 1
        return b"T%d" % self._tags

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.untagged_responses["STATUS"] = self._untagged

    def _command_complete(self, _name: str, _tag: bytes) -> tuple[str, list[bytes]]:
        return next(self._tagged)


class _Client:
    def __init__(self, imap: _Pipelined) -> None:
        self._imap = imap

    def _normalise_folder(self, name: str) -> bytes:
        return b'"' + name.encode() + b'"'


def test_statuses_of_many_folders_go_in_one_write_and_pair_with_their_replies_in_order() -> None:
    """STATUS of every folder written at once; each reply is its command's in order, whatever name the server
    gives the folder in it (imapclient's folder_status never looked at the name); a refusal stays its own."""
    imap = _Pipelined([b'"sent" (UIDVALIDITY 5 UIDNEXT 9)', b'"Drafts" (UIDVALIDITY 6 UIDNEXT 2)'],
                      [("OK", [b"done"]), ("NO", [b"Mailbox doesn't exist: Gone"]), ("OK", [b"done"])])
    found = imap_commands.statuses(_Client(imap), ["Sent", "Gone", "Drafts"], [b"UIDVALIDITY", b"UIDNEXT"])
    assert found == {"Sent": {b"UIDVALIDITY": 5, b"UIDNEXT": 9}, "Gone": "Mailbox doesn't exist: Gone",
                     "Drafts": {b"UIDVALIDITY": 6, b"UIDNEXT": 2}}
    assert imap.sent == [b'T1 STATUS "Sent" (UIDVALIDITY UIDNEXT)\r\nT2 STATUS "Gone" (UIDVALIDITY UIDNEXT)\r\n'
                         b'T3 STATUS "Drafts" (UIDVALIDITY UIDNEXT)\r\n']
