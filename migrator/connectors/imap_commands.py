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
from imapclient.response_parser import parse_response
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
    replies = [reply for reply in imap.untagged_responses.pop("STATUS", []) if reply not in (b"", None)]
    statuses = {folder_name(name): dict(as_pairs(items))
                for name, items in chunk(parse_response(replies) if replies else (), 2)}
    return client._proc_folder_list(listed), statuses


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


# Of a UID set in one command: RFC 7162 section 4 asks clients to keep command lines to about 8,192 octets,
# and servers refuse longer ones at limits of their own (Dovecot's imap_max_line_length is 64k).
_UID_SET_BYTES = 8000


def store_commands(imap: Any, groups: Mapping[frozenset[str], Sequence[int]], how: bytes = b"FLAGS") -> None:
    """UID STORE `how`.SILENT of each flag set on its UIDs, pipelined (pipelined): a folder's flag changes
    cost one round trip however many distinct flag sets they hold, where one STORE each cost one each (a
    delta pass after users read their mail sets flags in most folders; to a hosted target a round trip
    is tens of ms)."""
    commands = [b"UID STORE %s %s.SILENT (%s)" % (part, how, b" ".join(f.encode() for f in sorted(flags)))
                for flags, uids in groups.items() for part in uid_set_parts(uids)]
    pipelined(imap, "STORE", commands)


def pipelined(imap: Any, name: str, commands: Sequence[bytes]) -> None:
    """Write every command at once and read the replies after (RFC 3501 5.5 allows it for commands on
    distinct messages); raises the first refusal once every reply is read, so the session stays usable."""
    tags = [imap._new_tag() for _command in commands]
    imap.send(b"".join(b"%s %s\r\n" % (tag, command) for tag, command in zip(tags, commands, strict=True)))
    refusals = [b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
                for typ, data in read_replies(imap, name, tags) if typ != "OK"]
    if refusals:
        raise imap_errors.IMAPClientError(f"{name} failed: {refusals[0]}")


def uid_set_parts(uids: Iterable[int]) -> list[bytes]:
    """The UIDs as UID sets of at most _UID_SET_BYTES each (a part never cut inside)."""
    parts: list[bytes] = []
    part: list[bytes] = []
    size = 0
    for item in imap_fetch.uid_set(sorted(uids)).split(b","):
        if part and size + len(item) + 1 > _UID_SET_BYTES:
            parts.append(b",".join(part))
            part, size = [], 0
        part.append(item)
        size += len(item) + 1
    if part:
        parts.append(b",".join(part))
    return parts


@lru_cache(maxsize=4096)
def flag_list(flags: frozenset[str]) -> bytes:
    """The flags an APPEND carries, in a flag list. Cached: a folder has few distinct flag sets."""
    return " ".join(sorted(_storable(flags))).encode()


def _storable(flags: frozenset[str]) -> frozenset[str]:
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
