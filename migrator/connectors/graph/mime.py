"""MIME to a Microsoft Graph ``message`` JSON for import, and Graph flags back to IMAP flags.

Which import: a JSON create (POST /users/{id}/mailFolders/{id}/messages,
https://learn.microsoft.com/en-us/graph/api/user-post-messages) carrying the MAPI properties that only the
creating request can set, as ``singleValueExtendedProperties``
(https://learn.microsoft.com/en-us/graph/api/resources/extended-properties-overview; id formats in
https://learn.microsoft.com/en-us/graph/api/resources/singlevaluelegacyextendedproperty):

- PidTagMessageFlags (``Integer 0x0E07``): 1 = read; without MSGFLAG_UNSENT (8) the item is not a draft;
- PidTagMessageDeliveryTime (``SystemTime 0x0E06``): the received time (the source's INTERNALDATE);
- PidTagClientSubmitTime (``SystemTime 0x0039``): the sent time (the Date header);
- PidTagLastVerbExecuted (``Integer 0x1081``): 102 = replied, so Outlook shows \\Answered;
- PidTagInReplyToId (``String 0x1042``) and PidTagInternetReferences (``String 0x1039``), which Exchange's
  MIME writer turns back into In-Reply-To and References, so threads survive;
- our idempotency tag, a named property (``TAG_PROPERTY``) that a filtered query finds.

Why not the MIME create (the same POST with base64 MIME): it makes a *draft* whose received time is the
time of the import, and the flags and delivery time cannot be changed afterwards; a request body is also
limited to 4 MB, so base64 MIME caps a message at about 3 MB. With JSON the body and small attachments go
in the create and larger attachments follow through upload sessions
(https://learn.microsoft.com/en-us/graph/outlook-large-attachments): ``GraphImport.uploads``.

What is carried: subject, body (html if the message has an html body part, else text, chosen by the same
rules as the content fingerprint, ``migrator.fingerprint``), From, Sender, To, Cc, Bcc, Reply-To,
Message-ID (when well formed), In-Reply-To, References, importance, the sent and received times, read /
flagged / draft / answered state, IMAP keywords as categories, and every attachment with its name,
content type and Content-ID (attached messages as ``.eml`` files); an attachment is inline (isInline)
when the html body shows it through a ``cid:`` reference, as Outlook hides inline attachments it cannot
place. So
``content_fingerprint(source) == content_fingerprint(Exchange's rendering of the copy)`` for well-formed mail.

What is lost: every other header (Received and the rest of the trace, List-*, Auto-Submitted, DKIM and
authentication results, custom X- headers), the MIME structure and transfer encodings, the charsets the
parts were written in, the text/plain alternative of an html body (Exchange generates its own), and the
bytes of a malformed message (it is imported as its headers plus the raw message as ``message.eml``).
X- headers are deliberately not sent as ``internetMessageHeaders``: Graph takes at most five, names
starting with "x-" only, and every distinct header name becomes a named property of the mailbox, whose
quota arbitrary mail from years of history could exhaust (MapiExceptionNamedPropsQuotaExceeded).
Exchange assigns its own Message-ID to a message without a well-formed one and renders the sent time as
Date when the source had none, so such messages fingerprint differently after the copy.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from migrator.errors import ItemFailed
from migrator.fingerprint import Attachment, MessageContent, Person, message_content, well_formed_message_id

__all__ = [
    "DELIVERY_TIME_PROPERTY",
    "FLAGS_PROPERTY",
    "IN_REPLY_TO_PROPERTY",
    "LAST_VERB_PROPERTY",
    "REFERENCES_PROPERTY",
    "REQUEST_LIMIT",
    "SIZE_PROPERTY",
    "SUBMIT_TIME_PROPERTY",
    "TAG_PROPERTY",
    "GraphImport",
    "flag_update",
    "flags_from_graph",
    "to_graph_import",
]

TAG_PROPERTY = "String {6f0c7a1e-5b7d-4a36-9a8e-3c2f7b1d9e42} Name MigratorCopyTag"  # our idempotency tag
SIZE_PROPERTY = "Integer 0x0E08"  # PidTagMessageSize
FLAGS_PROPERTY = "Integer 0x0E07"  # PidTagMessageFlags: 1 read; without MSGFLAG_UNSENT (8) not a draft
DELIVERY_TIME_PROPERTY = "SystemTime 0x0E06"  # PidTagMessageDeliveryTime -> receivedDateTime
SUBMIT_TIME_PROPERTY = "SystemTime 0x0039"  # PidTagClientSubmitTime -> sentDateTime
LAST_VERB_PROPERTY = "Integer 0x1081"  # PidTagLastVerbExecuted: 102 reply, 103 reply all, 104 forward
IN_REPLY_TO_PROPERTY = "String 0x1042"  # PidTagInReplyToId -> In-Reply-To
REFERENCES_PROPERTY = "String 0x1039"  # PidTagInternetReferences -> References
REQUEST_LIMIT = 4 * 2**20  # Graph refuses request bodies over 4 MB (413)

MSGFLAG_READ = 1
MSGFLAG_UNSENT = 8
VERB_REPLY, VERB_REPLY_ALL = 102, 103
_REFERENCES_LIMIT = 32_000  # characters; MIME readers may truncate References at 64 KB
_FILE_ATTACHMENT = "#microsoft.graph.fileAttachment"


@dataclass(frozen=True)
class GraphImport:
    """The creating request's JSON (attachments that fit included) and the attachments to upload after it,
    largest first."""

    message: dict[str, Any]
    uploads: tuple[Attachment, ...]


def to_graph_import(
    raw: bytes, flags: frozenset[str], received: datetime, tag: str, *, request_limit: int = REQUEST_LIMIT
) -> GraphImport:
    """The Graph import of ``raw`` with IMAP ``flags``, received (INTERNALDATE) ``received`` and copy tag ``tag``.

    Attachments go into the creating request, smallest first, while its serialized JSON stays under
    ``request_limit`` less some headroom; the others become ``uploads``. Never raises on malformed MIME
    (see ``migrator.fingerprint.message_content``). Raises ``ItemFailed`` (reason "too-large") only when
    the JSON without any attachment is already over the limit, i.e. a huge body.
    """
    content = message_content(raw)
    message = _message(content, flags, received, tag)
    budget = request_limit - min(64 * 1024, request_limit // 16)
    base = _size(message)
    if base > budget:
        raise ItemFailed(f"the message body alone makes a {base}-byte Graph request; the limit is {request_limit}",
                         "too-large")
    items = [file_attachment(attachment) for attachment in content.attachments]
    sizes = [len(json.dumps(item)) for item in items]
    # The list costs its key and brackets; each entry its JSON and a ", " separator.
    room = budget - base - len(', "attachments": []')
    inline: set[int] = set()
    for index in sorted(range(len(items)), key=lambda i: sizes[i]):
        cost = sizes[index] + (2 if inline else 0)
        if cost > room:
            break
        inline.add(index)
        room -= cost

    def place() -> None:
        message.pop("attachments", None)
        if inline:
            message["attachments"] = [items[i] for i in sorted(inline)]

    place()
    while inline and _size(message) > budget:  # not expected: the arithmetic above is exact
        inline.discard(max(inline, key=lambda i: sizes[i]))
        place()
    uploads = [a for index, a in enumerate(content.attachments) if index not in inline]
    uploads.sort(key=lambda u: len(u.data), reverse=True)
    return GraphImport(message, tuple(uploads))


def flags_from_graph(message: Mapping[str, Any]) -> frozenset[str]:
    """IMAP flags of a Graph message JSON: \\Seen from isRead, \\Flagged from flag.flagStatus, \\Draft from
    isDraft, \\Answered from PidTagLastVerbExecuted (102 or 103, when the listing expanded it), keywords
    from categories."""
    flags: set[str] = set()
    if message.get("isRead"):
        flags.add("\\Seen")
    flag = message.get("flag")
    if isinstance(flag, Mapping) and str(flag.get("flagStatus", "")).lower() == "flagged":
        flags.add("\\Flagged")
    if message.get("isDraft"):
        flags.add("\\Draft")
    for prop in message.get("singleValueExtendedProperties") or []:
        if isinstance(prop, Mapping) and same_property_id(str(prop.get("id", "")), LAST_VERB_PROPERTY):
            try:
                verb = int(str(prop.get("value", "")).strip())
            except ValueError:
                continue
            if verb in (VERB_REPLY, VERB_REPLY_ALL):
                flags.add("\\Answered")
    flags.update(str(category) for category in message.get("categories") or [] if str(category))
    return frozenset(flags)


def flag_update(flags: frozenset[str]) -> dict[str, Any]:
    """The PATCH body that gives an existing message ``flags``: isRead, flag, categories and
    PidTagLastVerbExecuted (102 for \\Answered, else 0). \\Draft cannot change after the create; other
    system flags (\\Deleted, \\Recent) have no Exchange counterpart."""
    system = {f.lower() for f in flags if f.startswith("\\")}
    return {
        "isRead": "\\seen" in system,
        "flag": {"flagStatus": "flagged" if "\\flagged" in system else "notFlagged"},
        "categories": _keywords(flags),
        "singleValueExtendedProperties": [
            {"id": LAST_VERB_PROPERTY, "value": str(VERB_REPLY if "\\answered" in system else 0)}],
    }


# --------------------------------------------------------------------------------------------------


def _message(content: MessageContent, flags: frozenset[str], received: datetime, tag: str) -> dict[str, Any]:
    system = {f.lower() for f in flags if f.startswith("\\")}
    received_utc = _utc(received)
    sent = content.date or received_utc
    message: dict[str, Any] = {
        "subject": content.subject,
        "body": {"contentType": "html" if content.html else "text",
                 "content": "\n".join(content.body_parts) if content.html else "\n\n".join(content.body_parts)},
    }
    if content.from_:
        message["from"] = _recipient(content.from_[0])
        message["sender"] = _recipient(content.sender[0] if content.sender else content.from_[0])
    for key, people in (("toRecipients", content.to), ("ccRecipients", content.cc),
                        ("bccRecipients", content.bcc), ("replyTo", content.reply_to)):
        if people:
            message[key] = [_recipient(p) for p in people]
    if well_formed_message_id(content.message_id):
        message["internetMessageId"] = content.message_id
    if content.importance:
        message["importance"] = content.importance
    message["isRead"] = "\\seen" in system
    message["flag"] = {"flagStatus": "flagged" if "\\flagged" in system else "notFlagged"}
    keywords = _keywords(flags)
    if keywords:
        message["categories"] = keywords
    value = (MSGFLAG_READ if "\\seen" in system else 0) | (MSGFLAG_UNSENT if "\\draft" in system else 0)
    properties = [
        {"id": FLAGS_PROPERTY, "value": str(value)},
        {"id": DELIVERY_TIME_PROPERTY, "value": _system_time(received_utc)},
        {"id": SUBMIT_TIME_PROPERTY, "value": _system_time(sent)},
    ]
    if "\\answered" in system:
        properties.append({"id": LAST_VERB_PROPERTY, "value": str(VERB_REPLY)})
    if well_formed_message_id(content.in_reply_to):
        properties.append({"id": IN_REPLY_TO_PROPERTY, "value": content.in_reply_to})
    references = _references(content.references)
    if references:
        properties.append({"id": REFERENCES_PROPERTY, "value": references})
    properties.append({"id": TAG_PROPERTY, "value": tag})
    message["singleValueExtendedProperties"] = properties
    return message


def _recipient(person: Person) -> dict[str, Any]:
    return {"emailAddress": {"name": person.name or person.address, "address": person.address}}


def _keywords(flags: frozenset[str]) -> list[str]:
    return sorted(f for f in flags if f and not f.startswith("\\"))


def _references(value: str) -> str:
    """The well-formed ids of a References header; when too long, the thread's root and as many of the
    most recent ancestors as fit (RFC 5322 3.6.4)."""
    ids = [i for i in re.findall(r"<[^<>]*>", value) if well_formed_message_id(i)]
    if not ids or len(ids[0]) > _REFERENCES_LIMIT:
        return ""
    recent: list[str] = []
    length = len(ids[0])
    for reference in reversed(ids[1:]):
        if length + 1 + len(reference) > _REFERENCES_LIMIT:
            break
        recent.append(reference)
        length += 1 + len(reference)
    return " ".join([ids[0], *reversed(recent)])


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _system_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def same_property_id(a: str, b: str) -> bool:
    """Graph echoes extended property ids in its own form ("Integer 0xe08" for "Integer 0x0E08", GUIDs in
    any case): compare type, then the tag's number or the named property's GUID and name."""
    return _property_key(a) == _property_key(b)


def _property_key(text: str) -> tuple[str, ...]:
    parts = text.split()
    if len(parts) == 2 and parts[1].lower().startswith("0x"):
        try:
            return parts[0].lower(), str(int(parts[1], 16))
        except ValueError:
            pass
    if len(parts) >= 4 and parts[2].lower() == "name":  # the name part is case-sensitive
        return parts[0].lower(), parts[1].lower(), "name", " ".join(parts[3:])
    return tuple(part.lower() for part in parts)


def file_attachment(attachment: Attachment) -> dict[str, Any]:
    """A fileAttachment JSON, for the creating request or a POST to the message's attachments."""
    item: dict[str, Any] = {
        "@odata.type": _FILE_ATTACHMENT,
        "name": attachment.name,
        "contentType": attachment.content_type,
        "contentBytes": base64.b64encode(attachment.data).decode("ascii"),
        "isInline": attachment.is_inline,
    }
    if attachment.content_id:
        item["contentId"] = attachment.content_id
    return item


def _size(message: Mapping[str, Any]) -> int:
    """Bytes of the request body as an HTTP client sends it (json.dumps defaults: ASCII escapes, ", ")."""
    return len(json.dumps(message).encode("ascii"))
