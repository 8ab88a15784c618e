"""IMAP commands written on imaplib's connection in our own framing, and their replies read: APPEND with
non-synchronising literals in a few large writes, commands written at once and answered after (RFC 3501
5.5), UID sets cut to short command lines, LIST with STATUS in one command. Kept apart from the connector
(imap.py), which decides what to ask; this module only says it on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from imapclient import exceptions as imap_errors
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imapclient import as_pairs
from imapclient.response_parser import parse_message_list, parse_response
from imapclient.util import chunk

from migrator.connectors import imap_fetch
from migrator.model import Capabilities, FolderInfo, RawMessage

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]")


def list_status(client: Any, items: Sequence[bytes], *, special_use: bool
                ) -> tuple[list[Any], dict[str, dict[bytes, Any]]]:
    """LIST "" "*" RETURN (STATUS (items)) (LIST-STATUS, RFC 5819): the folders as imapclient's list_folders
    gives them, and the STATUS of the selectable ones by name, in one command instead of one per folder. An
    extended LIST names special-use folders only when asked to (RFC 6154): `special_use` asks."""
    imap = client._imap
    options = b"SPECIAL-USE " if special_use else b""
    typ, data = imap._simple_command("LIST", client._normalise_folder(""), client._normalise_folder("*"),
                                     b"RETURN (" + options + b"STATUS (" + b" ".join(items) + b"))")
    client._checkok("list", typ, data)
    listed = imap._untagged_response(typ, data, "LIST")[1]
    return client._proc_folder_list(listed), dict(_status_list(imap))


def statuses(client: Any, paths: Sequence[str], items: Sequence[bytes]) -> dict[str, dict[bytes, Any] | str]:
    """STATUS `items` of each folder, the commands written at once and answered after (exchange): one round
    trip for a mailbox's folders where one each cost one (a server without LIST-STATUS, every folder a
    first pass creates). A folder's value is its STATUS, or the server's words where it refused."""
    imap = client._imap
    imap.untagged_responses.pop("STATUS", None)
    asked = b"(" + b" ".join(items) + b")"
    replies = exchange(imap, "STATUS", [b"STATUS %s %s" % (client._normalise_folder(path), asked) for path in paths])
    found = _status_list(imap)
    answered = [path for path, (typ, _text) in zip(paths, replies, strict=True) if typ == "OK"]
    # one STATUS reply per command answered OK, in order: paired so, as imapclient's folder_status took the
    # reply whatever name it gave; by name where a server sent more or fewer
    by_path = dict(zip(answered, (items for _name, items in found), strict=True)) \
        if len(found) == len(answered) else dict(found)
    return {path: by_path[path] if typ == "OK" and path in by_path else
            text.decode("utf-8", "replace") if typ != "OK" else "OK without a STATUS reply for the folder"
            for path, (typ, text) in zip(paths, replies, strict=True)}


def _status_list(imap: Any) -> list[tuple[str, dict[bytes, Any]]]:
    """The untagged STATUS replies imaplib stored, in order: (folder name, its items)."""
    replies = [reply for reply in imap.untagged_responses.pop("STATUS", []) if reply not in (b"", None)]
    return [(folder_name(name), dict(as_pairs(items)))
            for name, items in chunk(parse_response(replies) if replies else (), 2)]


def folder_name(name: Any) -> str:
    """A folder name from a reply, decoded as imapclient decodes LIST's (modified UTF-7; a number-like name
    parses as an int)."""
    return str(name) if isinstance(name, int) else str(decode_utf7(name))


_WRITE_BYTES = 256 * 1024


def write_append(imap: Any, mailbox: bytes, entries: Sequence[tuple[bytes, bytes, bytes]]) -> bytes:
    """Write an APPEND of (flags, INTERNALDATE, body) entries with non-synchronising literals (LITERAL+,
    RFC 7888) in a few large socket writes; returns its tag, for the reply to be read (read_replies).
    imapclient writes each argument and literal on its own, four writes per message: for small messages,
    the writes and the small TCP segments they make cost more of both ends' CPU than the bytes do."""
    tag: bytes = imap._new_tag()
    pending: list[bytes] = [tag, b" APPEND ", mailbox]
    size = 0
    for flags, date, body in entries:
        pending.append(b' (%s) "%s" {%d+}\r\n' % (flags, date, len(body)))
        if len(body) >= _WRITE_BYTES:  # sent as it is, not copied into a write
            imap.send(b"".join(pending))
            imap.send(body)
            pending, size = [], 0
            continue
        pending.append(body)
        size += len(body)
        if size >= _WRITE_BYTES:
            imap.send(b"".join(pending))
            pending, size = [], 0
    pending.append(b"\r\n")
    imap.send(b"".join(pending))
    return tag


def read_replies(imap: Any, name: str, tags: Sequence[bytes]) -> list[tuple[str, list[Any]]]:
    """The tagged replies of commands written before (in order), each read even when one before it was
    refused (a BAD is that command's reply), so that the session stays in step; a lost connection raises."""
    replies: list[tuple[str, list[Any]]] = []
    for tag in tags:
        try:
            replies.append(imap._command_complete(name, tag))
        except imap_errors.IMAPClientAbortError:
            raise
        except imap_errors.IMAPClientError as exc:
            replies.append(("BAD", [str(exc).encode()]))
    return replies


def reply_text(data: Sequence[Any]) -> bytes:
    """The text of a tagged reply as imaplib returns it (its response code included)."""
    return b" ".join(d for d in data if isinstance(d, bytes))


# Of a UID set in one command: RFC 7162 section 4 asks clients to keep command lines to about 8,192 octets,
# and servers refuse longer ones at limits of their own (Dovecot's imap_max_line_length is 64k).
_UID_SET_BYTES = 8000


def store_commands(imap: Any, groups: Mapping[frozenset[str], Sequence[int]], how: bytes = b"FLAGS",
                   most: int | None = None) -> None:
    """UID STORE `how`.SILENT of each flag set on its UIDs, pipelined (uid_commands): a folder's flag changes
    cost one round trip however many distinct flag sets they hold, where one STORE each cost one each (a
    delta pass after users read their mail sets flags in most folders; to a hosted target a round trip
    is tens of ms). `most`: messages a command may name (the server's MESSAGELIMIT)."""
    uid_commands(imap, "STORE", b"UID STORE", [
        (part, b" %s.SILENT (%s)" % (how, b" ".join(f.encode() for f in sorted(flags))))
        for flags, uids in groups.items() for part in uid_set_parts(uids, most)])


def uid_commands(imap: Any, name: str, verb: bytes, commands: Sequence[tuple[Sequence[imap_fetch.Span], bytes]]
                 ) -> None:
    """`verb` on each (UID set, rest of the command) of `commands`, pipelined (UID STORE, UID EXPUNGE: both
    idempotent); a command that a server stopped short at its message limit (RFC 9738) is sent again for
    the UIDs it left undone."""
    pending = [(list(spans), tail) for spans, tail in commands]
    while pending:
        stopped = pipelined(imap, name, [b"%s %s%s" % (verb, imap_fetch.set_text(spans), tail)
                                         for spans, tail in pending])
        left = [(rest, tail) for (spans, tail), stop in zip(pending, stopped, strict=True)
                if (rest := imap_fetch.below(spans, stop))]
        pending = imap_fetch.progressed(pending, left, name)


def exchange(imap: Any, name: str, commands: Sequence[bytes]) -> list[tuple[str, bytes]]:
    """Write every command at once and read each one's tagged reply after (RFC 3501 5.5: a server may take
    commands before the ones before them are answered): one round trip for all. Each reply is its
    command's own: (OK, NO or BAD, its text)."""
    tags = [imap._new_tag() for _command in commands]
    imap.send(b"".join(b"%s %s\r\n" % (tag, command) for tag, command in zip(tags, commands, strict=True)))
    return [(typ, reply_text(data)) for typ, data in read_replies(imap, name, tags)]


def pipelined(imap: Any, name: str, commands: Sequence[bytes]) -> list[int | None]:
    """Write every command at once and read the replies after (RFC 3501 5.5 allows it for commands on
    distinct messages); raises the first refusal once every reply is read, so the session stays usable.
    Returns where each command stopped at the server's message limit (imap_fetch.stopped_at); a code in
    an untagged NO, which names no command, counts for each."""
    imap.untagged_responses.pop("MESSAGELIMIT", None)
    replies = exchange(imap, name, commands)
    refusals = [text.decode("utf-8", "replace") for typ, text in replies if typ != "OK"]
    if refusals:
        raise imap_errors.IMAPClientError(f"{name} failed: {refusals[0]}")
    untagged = imap_fetch.stopped_at(imap, b"")
    return [max((at for at in (imap_fetch.stopped_at(imap, text), untagged) if at is not None), default=None)
            for _typ, text in replies]


def uid_search(imap: Any, spans: Sequence[imap_fetch.Span], criteria: bytes = b"") -> tuple[list[int], int | None]:
    """UID SEARCH UID `spans` `criteria` on imaplib's connection: the UIDs found, and where a server stopped
    at its message limit (imap_fetch.stopped_at). imapclient's search drops the tagged reply, and with it
    the code that says the answer is partial."""
    imap.untagged_responses.pop("SEARCH", None)
    imap.untagged_responses.pop("MESSAGELIMIT", None)
    typ, data = imap._simple_command("UID", b"SEARCH", b"UID " + imap_fetch.set_text(spans) + criteria)
    text = reply_text(data)
    if typ != "OK":
        raise imap_errors.IMAPClientError(f"SEARCH failed: {text.decode('utf-8', 'replace')}")
    found = parse_message_list(imap.untagged_responses.pop("SEARCH", []))
    return list(found), imap_fetch.stopped_at(imap, text)


def uid_set_parts(uids: Iterable[int], most: int | None = None) -> list[list[imap_fetch.Span]]:
    """The UIDs as UID sets of at most _UID_SET_BYTES each and, with `most`, of at most that many UIDs."""
    parts: list[list[imap_fetch.Span]] = []
    part: list[imap_fetch.Span] = []
    size = count = 0
    for first, last in imap_fetch.uid_runs(sorted(uids)):
        while last is not None and first <= last:
            end = last if most is None else min(last, first + most - count - 1)
            item = len(imap_fetch.set_text([(first, end)])) + 1
            if part and size + item > _UID_SET_BYTES:
                parts.append(part)
                part, size, count = [], 0, 0
                continue
            part.append((first, end))
            size, count, first = size + item, count + end - first + 1, end + 1
            if count == most:
                parts.append(part)
                part, size, count = [], 0, 0
    if part:
        parts.append(part)
    return parts


@lru_cache(maxsize=4096)
def flag_list(flags: frozenset[str]) -> bytes:
    """The flags an APPEND carries, in a flag list. Cached: a folder has few distinct flag sets."""
    return " ".join(sorted(storable(flags))).encode()


def storable(flags: frozenset[str]) -> frozenset[str]:
    """Keywords from other kinds of endpoint (Exchange categories) may hold spaces: IMAP needs atoms."""
    return Capabilities().storable_flags(flags)


def append_entries(messages: Sequence[RawMessage]) -> list[tuple[bytes, bytes, bytes]]:
    """(flags, INTERNALDATE, body) of each message, as an APPEND writes them."""
    return [(flag_list(m.ref.flags), imap_fetch.format_internal_date(m.ref.internal_date), m.body) for m in messages]


def appended_uids(text: bytes, folder: FolderInfo, count: int) -> list[str | None]:
    match = _APPENDUID.search(text)
    if not match or (folder.key is not None and match.group(1).decode() != folder.key):
        return [None] * count
    uids: list[str | None] = [str(uid) for uid in imap_fetch.uid_range(match.group(2))]
    return uids if len(uids) == count else [None] * count
