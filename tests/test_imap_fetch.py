"""The fast FETCH reply readers agree with imapclient's parser on every shape, and hand it what they do not know.

The replies are written as imaplib splits them (a literal arrives as a (head, bytes) pair followed by the
rest of its line); real servers' replies are exercised by the IMAP contract and end-to-end suites.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from imapclient.exceptions import ProtocolError
from imapclient.response_parser import parse_fetch_response

from migrator.connectors import imap_fetch

LISTING = [
    b'1 (UID 7 FLAGS (\\Seen $Label1) INTERNALDATE " 7-Jul-2026 10:00:00 +0200" RFC822.SIZE 4286)',
    b'2 (UID 9 RFC822.SIZE 10 INTERNALDATE "17-Jan-1999 23:59:59 -0000" FLAGS ())',
    b'3 (FLAGS (\\Recent) UID 12 MODSEQ (44) INTERNALDATE "01-Feb-2026 00:00:00 +0530" RFC822.SIZE 1)',
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


def test_uid_sets_are_compact() -> None:
    assert imap_fetch.uid_set([1, 2, 3, 5, 7, 8, 10]) == b"1:3,5,7:8,10"
    assert imap_fetch.uid_set([4]) == b"4"
    assert imap_fetch.uid_set([]) == b""


@pytest.mark.parametrize("text", [b" 7-Jul-2026 10:00:00 +0200", b"17-Jan-1999 23:59:59 -0000",
                                  b"01-Feb-2026 00:00:00 +0530", b"29-Feb-2024 12:34:56 -1130",
                                  b"31-dec-2025 01:02:03 +1400"])
def test_internal_dates_read_like_strptime(text: bytes) -> None:
    expected = datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    parsed = imap_fetch.internal_date(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


def test_an_impossible_internal_date_is_refused() -> None:
    with pytest.raises(ValueError):
        imap_fetch.internal_date(b"31-Feb-2026 00:00:00 +0000")
