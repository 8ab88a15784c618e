"""Reading UID FETCH replies without imaplib's reader and imapclient's general-purpose parser.

imapclient tokenises every FETCH reply byte by byte in Python, and imaplib matches and logs every line
before that; for the two FETCHes a copy pass makes by the thousand (a listing's UID FLAGS INTERNALDATE
RFC822.SIZE, and BODY.PEEK[]) that was most of the client's CPU, on a two-core machine whose other core
the servers need. `uid_fetch` reads the replies off the connection into the pieces imaplib would make (a
literal arrives as its own bytes object); they have a fixed shape, read with a few regular expressions.
A reply of any other shape (an unsolicited FETCH, a quoted or NIL body, a flag list the pattern does not
cover) sends the whole reply to imapclient's parser, so the fast path never decides on anything it does
not fully understand.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, TypeVar

from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from imapclient.response_parser import parse_fetch_response

_MESSAGELIMIT = re.compile(rb"\[MESSAGELIMIT (\d+)(?: (\d+))?\]", re.IGNORECASE)
_UNTAGGED = re.compile(rb"\* (?:(?P<number>\d+) )?(?P<type>[A-Z-]+)(?: (?P<rest>.*))?", re.DOTALL)
_RESPONSE_CODE = re.compile(rb"\[(?P<type>[A-Z-]+)(?: (?P<data>[^]]*))?\]")
_LITERAL = re.compile(rb".*\{(?P<size>\d+)\}", re.DOTALL)
_REPLY = re.compile(rb"\d+ \((?P<items>.*)\)", re.DOTALL)
_FLAGS = re.compile(rb"FLAGS \((?P<flags>[^()]*)\)")
# A listing as asked for, in that order (Dovecot's), and with the MODSEQ that a CHANGEDSINCE reply adds last.
_LISTING_AS_ASKED = re.compile(rb'\d+ \(UID (\d+) FLAGS \(([^()]*)\) INTERNALDATE "([^"]*)" RFC822\.SIZE (\d+)'
                               rb'(?: MODSEQ \(\d+\))?\)')
_FIELD = re.compile(rb'(UID|INTERNALDATE|RFC822\.SIZE|MODSEQ) ("[^"]*"|\d+|\(\d+\))')
_OTHER = (rb"(?:(?:UID (?P<uid>\d+)|MODSEQ \(\d+\)|FLAGS \([^()]*\)) )*")
_BODY_HEAD = re.compile(rb"\d+ \(" + _OTHER + rb"BODY\[\] \{(?P<size>\d+)\}")
_BODY_TAIL = re.compile(rb"(?:(?: UID (?P<uid>\d+)| MODSEQ \(\d+\)| FLAGS \([^()]*\)))*\)")

Listing = dict[int, tuple[int, tuple[bytes, ...], datetime]]
T = TypeVar("T")


_MONTHS = {name: number for number, name in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), 1)}
_DATE_TIME = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


def internal_date(text: bytes) -> datetime:
    """RFC 3501 date-time, e.g. " 7-Jul-2026 10:00:00 +0200". By hand: strptime took half of a listing's time."""
    match = _DATE_TIME.fullmatch(text)
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if match is None or month is None:
        return datetime.strptime(text.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")  # says what is wrong
    day, _, year, hour, minute, second, sign, tz_hours, tz_minutes = match.groups()
    return datetime(int(year), month, int(day), int(hour), int(minute), int(second),
                    tzinfo=_zone(sign + tz_hours + tz_minutes))


_MONTH_NAMES = (b"", *(name.capitalize() for name in _MONTHS))


def format_internal_date(value: datetime) -> bytes:
    """The date-time an APPEND carries, as imapclient's datetime_to_INTERNALDATE writes it (e.g.
    "07-Jul-2026 10:00:00 +0200"), in half its time; a date without a zone, or with one of odd seconds, goes
    its way."""
    offset = value.utcoffset()
    if offset is None or offset.seconds % 60:
        text: str = datetime_to_INTERNALDATE(value)
        return text.encode("ascii")
    minutes = offset.days * 1440 + offset.seconds // 60
    sign, minutes = (b"-", -minutes) if minutes < 0 else (b"+", minutes)
    return b"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d" % (value.day, _MONTH_NAMES[value.month], value.year, value.hour,
                                                         value.minute, value.second, sign, minutes // 60, minutes % 60)


@lru_cache(maxsize=256)
def _zone(offset: bytes) -> timezone:
    minutes = int(offset[1:3]) * 60 + int(offset[3:5])
    return timezone(timedelta(minutes=-minutes if offset[:1] == b"-" else minutes))


def uid_fetch(imap: Any, uids: bytes, items: bytes, *, after: tuple[bytes, bytes] | None = None
              ) -> tuple[list[Any], int | None]:
    """Send UID FETCH on imaplib connection `imap` and read its replies up to the tagged one: the FETCH
    replies in imaplib's shape (`n (...)` as bytes; a literal as a (line, literal) tuple followed by the rest
    of its line), every other untagged reply stored as imaplib stores it; and where a server stopped at its
    message limit, the UID it stopped at (stopped_at: the messages below it were not fetched). `after` is
    a command (its tag, and its line) written in the same socket write just before (an EXAMINE of the
    folder; in a write of its own, Nagle's algorithm would hold the FETCH back for a round trip) whose
    replies come first: they are stored as imaplib stores them, and where it failed, its failure is raised
    once the FETCH's own reply (a refusal too: no folder is open) has been read.

    Read here, not by imaplib: its reader matches three patterns and logs every line, which for a listing
    or a chunk of small messages cost as much as everything else the client does with them.
    """
    imap.untagged_responses.pop("MESSAGELIMIT", None)
    tag = imap._new_tag()
    imap.send(b"%s%s UID FETCH %s %s\r\n" % (after[1] if after else b"", tag, uids, items))
    fetched: list[Any] = []
    refused = b"" if after is None else _refusal(_replies_until(imap, after[0], fetched))
    status, _, text = _replies_until(imap, tag, fetched).partition(b" ")
    if refused:
        raise IMAPClientError(f"examine failed: {refused.decode(errors='replace')}")
    if status != b"OK":
        raise IMAPClientError(f"fetch failed: {text.decode(errors='replace')}")
    return fetched, stopped_at(imap, text)


def _replies_until(imap: Any, tag: bytes, fetched: list[Any]) -> bytes:
    """Read replies up to the tagged reply of `tag` and return it (status and text): FETCH replies go to
    `fetched`, every other untagged reply is stored as imaplib stores it."""
    prefix = tag + b" "
    try:
        while not (line := _line(imap)).startswith(prefix):
            untagged = _UNTAGGED.fullmatch(line)
            if untagged is None:
                raise IMAPClientAbortError(f"unexpected response: {line[:200]!r}")
            kind = untagged["type"].decode()
            data = b" ".join(part for part in (untagged["number"], untagged["rest"]) if part)
            replies = _with_literals(imap, data)
            if kind == "FETCH":
                fetched.extend(replies)
            elif kind == "BYE":
                raise IMAPClientAbortError(f"server said BYE: {data.decode(errors='replace')[:200]}")
            else:
                _keep(imap, kind, replies)
    finally:
        imap.tagged_commands.pop(tag, None)
    return line[len(prefix):]


def _refusal(reply: bytes) -> bytes:
    """b"" for a tagged OK, else the reply (a NO or BAD and its text)."""
    return b"" if reply.startswith(b"OK") else reply or b"refused"


def stopped_at(imap: Any, tagged: bytes) -> int | None:
    """Where a command that a server cut short at its message limit stopped (RFC 9738): a server that
    advertises MESSAGELIMIT=n works on at most n messages per FETCH, SEARCH, STORE or UID EXPUNGE, the
    highest UIDs first, and answers OK with [MESSAGELIMIT n uid], uid the lowest it processed; in an untagged
    NO instead where the tagged OK carries a code of its own (imaplib and _keep store it as "MESSAGELIMIT").
    None: the command covered its whole set. The caller asks again below the UID returned (below): an OK
    that did less than asked must never pass for the whole answer, or a listing would silently lose mail.
    Of several untagged codes (pipelined commands), the highest UID: asking again for more is harmless."""
    codes = [match.group(2) for match in [_MESSAGELIMIT.search(tagged)] if match is not None]
    codes += [data.partition(b" ")[2] or None for data in imap.untagged_responses.pop("MESSAGELIMIT", [])]
    if not codes:
        return None
    if not all(code and code.isdigit() for code in codes):
        raise IMAPClientError(f"the server stopped a command at its message limit without saying where "
                              f"(RFC 9738): {tagged.decode(errors='replace')[:200]}")
    return max(int(code) for code in codes if code)


def _keep(imap: Any, kind: str, replies: list[Any]) -> None:
    """Store an untagged reply other than FETCH (EXISTS, EXPUNGE, OK [code] ...) where imaplib would."""
    for reply in replies:
        imap._append_untagged(kind, reply)
    code = _RESPONSE_CODE.match(replies[-1]) if kind in ("OK", "NO", "BAD") else None
    if code is not None:
        imap._append_untagged(code["type"].decode(), code["data"])


def _line(imap: Any) -> bytes:
    line: bytes = imap.readline()
    if not line.endswith(b"\r\n"):
        raise IMAPClientAbortError("socket error: EOF" if not line else f"unterminated line: {line[:200]!r}")
    return line[:-2]


def _with_literals(imap: Any, data: bytes) -> list[Any]:
    """One untagged reply as imaplib splits it: each literal in a (text, literal) tuple, then the rest."""
    parts: list[Any] = []
    while data.endswith(b"}") and (literal := _LITERAL.fullmatch(data)) is not None:
        parts.append((data, imap.read(int(literal["size"]))))
        data = _line(imap)
    parts.append(data)
    return parts


def parse_listing(data: Sequence[Any]) -> Listing:
    """UID -> (RFC822.SIZE, FLAGS, INTERNALDATE) from the untagged replies of a listing FETCH."""
    result: Listing = {}
    for item in data:
        parsed = _listing_item(item) if isinstance(item, bytes) else None
        if parsed is None:
            return _slow_listing(data)
        result[parsed[0]] = parsed[1]
    return result


def _listing_item(item: bytes) -> tuple[int, tuple[int, tuple[bytes, ...], datetime]] | None:
    """`n (UID u FLAGS (...) INTERNALDATE "..." RFC822.SIZE s)` in any order, MODSEQ allowed; else None.
    The order asked for, which Dovecot keeps, is read with one match: half the time of any order."""
    asked = _LISTING_AS_ASKED.fullmatch(item)
    if asked is not None:
        uid, flags, date, size = asked.groups()
        return int(uid), (int(size), tuple(flags.split()), internal_date(date))
    reply = _REPLY.fullmatch(item)
    flags = _FLAGS.search(reply["items"]) if reply else None
    if reply is None or flags is None:
        return None
    rest = reply["items"][:flags.start()] + reply["items"][flags.end():]
    fields = dict(_FIELD.findall(rest))
    if _FIELD.sub(b"", rest).strip() or not {b"UID", b"INTERNALDATE", b"RFC822.SIZE"} <= fields.keys():
        return None
    return int(fields[b"UID"]), (int(fields[b"RFC822.SIZE"]), tuple(flags["flags"].split()),
                                 internal_date(fields[b"INTERNALDATE"].strip(b'"')))


def _slow_listing(data: Sequence[Any]) -> Listing:
    return {uid: (int(item[b"RFC822.SIZE"]), tuple(item[b"FLAGS"]), item[b"INTERNALDATE"])
            for uid, item in _by_uid(data).items() if {b"RFC822.SIZE", b"FLAGS", b"INTERNALDATE"} <= item.keys()}


def _by_uid(data: Sequence[Any]) -> dict[int, dict[bytes, Any]]:
    """imapclient's parse, keyed by UID; a reply without one (unsolicited, by sequence number) is left out,
    where imapclient would key it by its sequence number as if that were a UID."""
    parsed = parse_fetch_response(list(data), False, False)
    return {int(item[b"UID"]): item for item in parsed.values() if b"UID" in item}


def parse_bodies(data: Sequence[Any]) -> dict[int, bytes]:
    """UID -> BODY[] from the untagged replies of a UID FETCH (BODY.PEEK[]): `n (UID u BODY[] {size}`, the
    literal, then `)`; UID (and MODSEQ, once CONDSTORE is on) may also come after the literal."""
    result: dict[int, bytes] = {}
    body: bytes | None = None
    uid: bytes | None = None
    for item in data:
        if body is None and isinstance(item, tuple) and len(item) == 2:
            head = _BODY_HEAD.fullmatch(item[0])
            if head is None or int(head["size"]) != len(item[1]):
                return _slow_bodies(data)
            body, uid = item[1], head["uid"]
        elif body is not None and isinstance(item, bytes) and (tail := _BODY_TAIL.fullmatch(item)) is not None:
            uid = tail["uid"] or uid
            if uid is None:
                return _slow_bodies(data)
            result[int(uid)] = body
            body = uid = None
        else:
            return _slow_bodies(data)
    return result if body is None else _slow_bodies(data)


def _slow_bodies(data: Sequence[Any]) -> dict[int, bytes]:
    return {uid: item[b"BODY[]"] for uid, item in _by_uid(data).items() if isinstance(item.get(b"BODY[]"), bytes)}


Span = tuple[int, int | None]  # first and last UID of a part of a UID set; None: "*", the highest UID


def uid_runs(uids: Sequence[int]) -> list[Span]:
    """Sorted UIDs as runs of consecutive ones: a copy pass asks for runs of consecutive UIDs."""
    runs: list[list[int]] = []
    for uid in uids:
        if runs and uid == runs[-1][1] + 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return [(first, last) for first, last in runs]


def set_text(spans: Sequence[Span]) -> bytes:
    """A compact UID set ("1:5,8,10:*") of these spans."""
    return b",".join(b"%d" % first if first == last else b"%d:%s" % (first, b"*" if last is None else b"%d" % last)
                     for first, last in spans)


def progressed(before: list[T], left: list[T], command: str) -> list[T]:
    """What is still to ask for after a round of commands that a server stopped at its message limit
    (below); a round that left everything undone would repeat forever, and is the server's error."""
    if left and left == before:
        raise IMAPClientError(f"{command} stopped at the server's message limit without progress")
    return left


def below(spans: Sequence[Span], stopped: int | None) -> list[Span]:
    """What a command on these spans left undone when the server stopped at UID `stopped` (stopped_at; RFC
    9738 servers work from the highest UID down): the spans cut below it; none when it did not stop."""
    if stopped is None:
        return []
    return [(first, stopped - 1 if last is None or last >= stopped else last) for first, last in spans
            if first < stopped]


def uid_spans(text: bytes) -> list[tuple[int, int]]:
    """(first, last) of each part of a UID set as APPENDUID and VANISHED write it ("1:5,8,12:10"; RFC 3501
    allows either order in a range), without listing the UIDs: a range may be vast."""
    spans = []
    for part in text.split(b","):
        low, _, high = part.strip().partition(b":")
        first, last = sorted((int(low), int(high or low)))
        spans.append((first, last))
    return spans


def uid_range(text: bytes) -> Iterator[int]:
    """The UIDs of a UID set, in order."""
    for first, last in uid_spans(text):
        yield from range(first, last + 1)
