"""MIME -> Graph message JSON: never crashes, loses no attachment, stays under Graph's request limit, and
Exchange's rendering of the JSON fingerprints like the source (the fingerprint verify --deep compares).

`render` stands in for Exchange: it writes MIME from the JSON the way Exchange does for a stored item
(html body as multipart/alternative with a generated text part, inline attachments in multipart/related,
every file attachment base64, attached messages as message/rfc822, a generated Message-ID when none was
given, Date from the submit time). Only the email package is used; nothing touches the network.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from email import encoders, message_from_bytes
from email import policy as email_policy
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from functools import cache
from typing import Any

import pytest

from migrator.connectors.graph.mime import (
    DELIVERY_TIME_PROPERTY,
    FLAGS_PROPERTY,
    IN_REPLY_TO_PROPERTY,
    LAST_VERB_PROPERTY,
    REFERENCES_PROPERTY,
    REQUEST_LIMIT,
    SUBMIT_TIME_PROPERTY,
    TAG_PROPERTY,
    GraphImport,
    flag_update,
    flags_from_graph,
    to_graph_import,
)
from migrator.errors import ItemFailed
from migrator.fingerprint import content_fingerprint, fingerprint_fields, message_content
from migrator.lab.corpus import CorpusSpec, cpython_sample_paths, generate_corpus
from migrator.lab.dovecot import LabUser
from tests.test_hostile_mail import hostile_messages

RECEIVED = datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
TAG = "0" * 64
CRLF = email_policy.compat32.clone(linesep="\r\n")


# --------------------------------------------------------------------------------------------------
# the Exchange stand-in


def _props(message: Mapping[str, Any]) -> dict[str, str]:
    return {p["id"]: p["value"] for p in message.get("singleValueExtendedProperties", [])}


def _address(recipient: Mapping[str, Any]) -> str:
    email_address = recipient["emailAddress"]
    return formataddr((email_address.get("name", ""), email_address["address"]), charset="utf-8")


def _file_part(attachment: Mapping[str, Any]) -> Message:
    data = base64.b64decode(attachment["contentBytes"])
    ctype = attachment["contentType"]
    if ctype == "message/rfc822":
        part: Message = MIMEMessage(message_from_bytes(data, policy=email_policy.compat32))
    else:  # the email package writes other message/* types only from parsed parts: send them as bytes
        maintype, _, subtype = ctype.partition("/") if not ctype.startswith("message/") else ("application", "",
                                                                                              "octet-stream")
        part = MIMEBase(maintype, subtype or "octet-stream")
        part.set_payload(data)
        encoders.encode_base64(part)
    disposition = "inline" if attachment.get("isInline") else "attachment"
    part.add_header("Content-Disposition", disposition, filename=("utf-8", "", attachment["name"]))
    if attachment.get("contentId"):
        part["Content-ID"] = f"<{attachment['contentId']}>"
    return part


def render(planned: GraphImport) -> bytes:
    """MIME for the item the JSON (and its uploads) would create, written the way Exchange writes it."""
    message = planned.message
    props = _props(message)
    attachments = [*message.get("attachments", []),
                   *({"name": u.name, "contentType": u.content_type, "isInline": u.is_inline,
                      "contentId": u.content_id, "contentBytes": base64.b64encode(u.data).decode()}
                     for u in planned.uploads)]
    body = message["body"]
    html = body["contentType"] == "html"
    inline = [a for a in attachments if html and a.get("isInline")]
    files = [a for a in attachments if not (html and a.get("isInline"))]
    if html:
        wrapped = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
                   f"<style>p {{margin: 0}}</style></head><body>{body['content']}</body></html>")
        generated = re.sub(r"<[^>]*>", " ", body["content"])
        top: Message = MIMEMultipart("alternative", _subparts=[MIMEText(generated, "plain", "utf-8"),
                                                                MIMEText(wrapped, "html", "utf-8")])
        if inline:
            top = MIMEMultipart("related", _subparts=[top, *(_file_part(a) for a in inline)])
    else:
        top = MIMEText(body["content"], "plain", "utf-8")
    if files:
        top = MIMEMultipart("mixed", _subparts=[top, *(_file_part(a) for a in files)])
    if "from" in message:
        top["From"] = _address(message["from"])
    if "sender" in message and message["sender"] != message.get("from"):
        top["Sender"] = _address(message["sender"])
    for key, name in (("toRecipients", "To"), ("ccRecipients", "Cc"), ("replyTo", "Reply-To")):
        if message.get(key):
            top[name] = ", ".join(_address(r) for r in message[key])
    charset = Charset("utf-8")
    charset.header_encoding = QP
    top["Subject"] = Header(message["subject"], charset)
    top["Date"] = format_datetime(datetime.fromisoformat(props[SUBMIT_TIME_PROPERTY].replace("Z", "+00:00")))
    top["Message-ID"] = message.get("internetMessageId", "<generated.by.exchange@example.invalid>")
    if IN_REPLY_TO_PROPERTY in props:
        top["In-Reply-To"] = props[IN_REPLY_TO_PROPERTY]
    if REFERENCES_PROPERTY in props:
        top["References"] = props[REFERENCES_PROPERTY]
    top["X-MS-Exchange-Organization-AuthAs"] = "Internal"
    return top.as_bytes(policy=CRLF)


def expected_after_import(raw: bytes, received: datetime = RECEIVED) -> dict[str, Any]:
    """The fingerprint fields of the source with what Exchange necessarily changes: it assigns a Message-ID
    when the source has no well-formed one, and writes the submit time (the received time if the source
    had no usable Date) as Date."""
    fields = fingerprint_fields(raw)
    if not re.fullmatch(r"<[!-;=?-~]+@[!-;=?-~]+>", message_content(raw).message_id):
        fields["message_id"] = "generated.by.exchange@example.invalid"
    if not fields["date"]:
        fields["date"] = received.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return fields


# --------------------------------------------------------------------------------------------------
# corpora


@cache
def corpus() -> list[tuple[str, bytes, frozenset[str], datetime]]:
    """Generated mail of every folder (with a 1-3 MB attachment), CPython's sample messages, the hostile set."""
    spec = CorpusSpec(messages_per_mailbox=6, large_attachments=1, include_cpython_samples=True, seed=7)
    found: list[tuple[str, bytes, frozenset[str], datetime]] = []
    for path, mails in generate_corpus(LabUser("alice", "secret"), spec).items():
        for n, mail in enumerate(mails):
            found.append((f"{'.'.join(path)}-{n}", mail.raw, frozenset(mail.flags), mail.date))
    found += [(f"hostile-{h.name}", h.raw, frozenset(h.flags), h.date) for h in hostile_messages()]
    return found


CORPUS_IDS = [name for name, *_ in corpus()]
SAMPLES = {path.name: path.read_bytes() for path in cpython_sample_paths()}


def _round_trip(raw: bytes, flags: frozenset[str], received: datetime) -> GraphImport:
    planned = to_graph_import(raw, flags, received, TAG)
    text = json.dumps(planned.message, ensure_ascii=False)  # no lone surrogates or other unencodable text
    text.encode("utf-8")
    assert len(json.dumps(planned.message).encode()) <= REQUEST_LIMIT - 64 * 1024
    # every leaf that is not the body is somewhere: in the request or in the uploads
    names = sorted([a["name"] for a in planned.message.get("attachments", [])] + [u.name for u in planned.uploads])
    assert names == sorted(a.name for a in message_content(raw).attachments)
    return planned


@pytest.mark.parametrize("name", CORPUS_IDS)
def test_corpus_imports_and_fingerprints_like_exchange_rendering(name: str) -> None:
    _, raw, flags, received = next(item for item in corpus() if item[0] == name)
    planned = _round_trip(raw, flags, received)
    assert fingerprint_fields(render(planned)) == expected_after_import(raw, received)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_cpython_samples_in_lf_form(name: str) -> None:
    raw = SAMPLES[name]  # as shipped: bare LF, the way an mbox or Maildir source serves them
    planned = _round_trip(raw, frozenset(), RECEIVED)
    assert fingerprint_fields(render(planned)) == expected_after_import(raw)


def test_well_formed_message_fingerprints_identically() -> None:
    raw = next(raw for name, raw, *_ in corpus() if name.startswith("INBOX-") and b"Message-ID" in raw
               and b"Date:" in raw and b"text/html" in raw)
    planned = to_graph_import(raw, frozenset({"\\Seen"}), RECEIVED, TAG)
    assert content_fingerprint(render(planned)) == content_fingerprint(raw)


# --------------------------------------------------------------------------------------------------
# size


def _message_with(attachments: list[tuple[str, bytes]], body: str = "see attached") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = "bob@example.net"
    msg["Subject"] = "files"
    msg["Date"] = "Thu, 04 Mar 2021 10:00:00 +0100"
    msg["Message-ID"] = "<files@example.com>"
    msg.set_content(body)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def test_ten_megabyte_attachment_goes_to_an_upload_session() -> None:
    big = bytes(range(256)) * (10 * 2**20 // 256)
    raw = _message_with([("small.txt", b"tiny"), ("big.bin", big), ("photo.jpg", b"\xff\xd8" * 50_000)])
    planned = to_graph_import(raw, frozenset(), RECEIVED, TAG)
    assert len(json.dumps(planned.message).encode()) < REQUEST_LIMIT
    assert [u.name for u in planned.uploads] == ["big.bin"]
    assert planned.uploads[0].data == big
    assert {a["name"] for a in planned.message["attachments"]} == {"small.txt", "photo.jpg"}
    assert fingerprint_fields(render(planned)) == fingerprint_fields(raw)


def test_attachments_fill_the_request_smallest_first_and_upload_largest_first() -> None:
    sizes = [900_000, 100_000, 1_500_000, 700_000, 2_000_000, 50_000]
    raw = _message_with([(f"f{n}-{size}.bin", bytes([n]) * size) for n, size in enumerate(sizes)])
    limit = 3 * 2**20
    planned = to_graph_import(raw, frozenset(), RECEIVED, TAG, request_limit=limit)
    assert len(json.dumps(planned.message).encode()) <= limit - limit // 16
    inline = [a["name"] for a in planned.message["attachments"]]
    uploaded = [len(u.data) for u in planned.uploads]
    assert uploaded == sorted(uploaded, reverse=True) and uploaded
    assert max(int(n.split("-")[1][:-4]) for n in inline) <= min(uploaded)  # the small ones travel inline
    assert len(inline) + len(uploaded) == len(sizes)
    assert fingerprint_fields(render(planned)) == fingerprint_fields(raw)


def test_huge_body_is_an_item_failure() -> None:
    raw = _message_with([], body="x" * (5 * 2**20))
    with pytest.raises(ItemFailed) as failed:
        to_graph_import(raw, frozenset(), RECEIVED, TAG)
    assert failed.value.reason == "too-large"


def test_thirty_megabyte_hostile_message_uploads_its_blob() -> None:
    big = next(h for h in hostile_messages() if h.name == "big-30mb")
    planned = to_graph_import(big.raw, frozenset(big.flags), big.date, TAG)
    assert [u.name for u in planned.uploads] == ["blob.bin"] and len(planned.uploads[0].data) == 22_500_000
    assert planned.message["body"] == {"contentType": "text", "content": "see attached"}


# --------------------------------------------------------------------------------------------------
# properties, flags and dates


def test_properties_of_a_read_answered_message() -> None:
    raw = _message_with([])
    planned = to_graph_import(raw, frozenset({"\\Seen", "\\Answered", "\\Flagged", "Work", "$label1"}),
                              RECEIVED, TAG)
    message = planned.message
    props = _props(message)
    assert props[FLAGS_PROPERTY] == "1"
    assert props[LAST_VERB_PROPERTY] == "102"
    assert props[DELIVERY_TIME_PROPERTY] == "2021-03-04T03:06:07Z"
    assert props[SUBMIT_TIME_PROPERTY] == "2021-03-04T09:00:00Z"
    assert props[TAG_PROPERTY] == TAG
    assert message["isRead"] is True
    assert message["flag"] == {"flagStatus": "flagged"}
    assert message["categories"] == ["$label1", "Work"]
    assert message["internetMessageId"] == "<files@example.com>"
    assert message["from"] == {"emailAddress": {"name": "Alice", "address": "alice@example.com"}}
    assert message["toRecipients"] == [{"emailAddress": {"name": "bob@example.net", "address": "bob@example.net"}}]


def test_unread_draft_without_answered() -> None:
    raw = b"From: me@example.org\r\nSubject: draft\r\n\r\nunfinished\r\n"
    planned = to_graph_import(raw, frozenset({"\\Draft"}), datetime(2020, 1, 1, 12, 0, 0), TAG)
    props = _props(planned.message)
    assert props[FLAGS_PROPERTY] == "8"
    assert LAST_VERB_PROPERTY not in props
    assert planned.message["isRead"] is False and planned.message["flag"] == {"flagStatus": "notFlagged"}
    assert "categories" not in planned.message
    # a naive received time is UTC; without a Date header the submit time is the received time
    assert props[DELIVERY_TIME_PROPERTY] == props[SUBMIT_TIME_PROPERTY] == "2020-01-01T12:00:00Z"
    assert "internetMessageId" not in planned.message


def test_read_draft_flags() -> None:
    planned = to_graph_import(b"Subject: x\r\n\r\ny\r\n", frozenset({"\\Draft", "\\Seen"}), RECEIVED, TAG)
    assert _props(planned.message)[FLAGS_PROPERTY] == "9"


@pytest.mark.parametrize(("header", "expected"), [
    ("Date: Thu, 04 Mar 2021 23:30:00 -0800", "2021-03-05T07:30:00Z"),
    ("Date: 4 Mar 2021 10:00 GMT", "2021-03-04T10:00:00Z"),
    ("Date: Thu, 04 Mar 2021 10:00:00 -0000", "2021-03-04T10:00:00Z"),
    ("Date: not a date at all", "2021-03-04T03:06:07Z"),
    ("Date: Thu, 99 Foo 2021 99:99:99 +9999", "2021-03-04T03:06:07Z"),
    ("Date: ", "2021-03-04T03:06:07Z"),
])
def test_sent_time_from_the_date_header(header: str, expected: str) -> None:
    raw = f"From: a@example.com\r\n{header}\r\nSubject: when\r\n\r\nbody\r\n".encode()
    planned = to_graph_import(raw, frozenset(), RECEIVED, TAG)
    assert _props(planned.message)[SUBMIT_TIME_PROPERTY] == expected


FLAG_SETS = [
    frozenset(),
    frozenset({"\\Seen"}),
    frozenset({"\\Seen", "\\Flagged", "\\Answered"}),
    frozenset({"\\Answered", "Work", "$Forwarded"}),
    frozenset({"\\Draft", "\\Seen", "$label1"}),
    frozenset({"\\Flagged", "Ünïcödé keyword"}),
]


def _graph_item(create: Mapping[str, Any], patch: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What Graph lists for an item made by `create` and then PATCHed with `patch`."""
    props = _props(create)
    item: dict[str, Any] = {"isRead": create["isRead"], "isDraft": bool(int(props[FLAGS_PROPERTY]) & 8),
                            "flag": create["flag"], "categories": create.get("categories", [])}
    verbs = {k: v for k, v in props.items() if k == LAST_VERB_PROPERTY}
    if patch:
        item.update({k: patch[k] for k in ("isRead", "flag", "categories")})
        verbs.update(_props(patch))
    item["singleValueExtendedProperties"] = [{"id": k.upper().replace("0X", "0x"), "value": v}
                                             for k, v in verbs.items()]
    return item


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: ",".join(sorted(f)) or "none")
def test_flags_round_trip_through_create(flags: frozenset[str]) -> None:
    planned = to_graph_import(_message_with([]), flags, RECEIVED, TAG)
    assert flags_from_graph(_graph_item(planned.message)) == flags


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: ",".join(sorted(f)) or "none")
def test_flag_update_is_the_inverse_of_flags_from_graph(flags: frozenset[str]) -> None:
    created = to_graph_import(_message_with([]), frozenset({"\\Seen", "\\Answered", "Old"}), RECEIVED, TAG)
    item = _graph_item(created.message, flag_update(flags))
    expected = flags - {"\\Draft"}  # a draft stays what the create made it
    assert flags_from_graph(item) == expected


def test_flags_from_graph_reads_reply_all_and_ignores_forward() -> None:
    def item(verb: str) -> dict[str, Any]:
        return {"isRead": False, "flag": {"flagStatus": "complete"},
                "singleValueExtendedProperties": [{"id": "Integer 0x1081", "value": verb}]}
    assert flags_from_graph(item("103")) == {"\\Answered"}
    assert flags_from_graph(item("104")) == frozenset()
    assert flags_from_graph(item("garbage")) == frozenset()
    assert flags_from_graph({}) == frozenset()


def test_update_drops_system_flags_exchange_has_no_place_for() -> None:
    patch = flag_update(frozenset({"\\Deleted", "\\Recent", "\\seen"}))
    assert patch["isRead"] is True and patch["categories"] == []
    assert _props(patch) == {LAST_VERB_PROPERTY: "0"}


# --------------------------------------------------------------------------------------------------
# awkward mail


def test_eight_bit_headers_are_decoded() -> None:
    raw = (b"From: Ren\xe9 M\xfcller <rene@old.example>\r\nTo: Zo\xc3\xab <zoe@example.de>\r\n"
           b"Subject: Caf\xe9 cr\xe8me \xff\r\n\r\nbody in latin-1: \xe0 bient\xf4t\r\n")
    message = to_graph_import(raw, frozenset(), RECEIVED, TAG).message
    assert message["subject"] == "Café crème ÿ"
    assert message["from"]["emailAddress"] == {"name": "René Müller", "address": "rene@old.example"}
    assert message["toRecipients"][0]["emailAddress"]["name"] == "Zoë"
    assert message["body"] == {"contentType": "text", "content": "body in latin-1: à bientôt\r\n"}


def test_missing_from_and_garbage_headers() -> None:
    raw = b"Subject: =?utf-8?q?unterminated\r\nDate: yesterday\r\nTo: , <>, nobody, @\r\n\r\n\x00body\x07\r\n"
    message = to_graph_import(raw, frozenset(), RECEIVED, TAG).message
    assert "from" not in message and "sender" not in message and "toRecipients" not in message
    assert message["body"]["content"] == "body\r\n"  # controls Exchange cannot store are dropped


def test_message_ids_are_sent_only_when_well_formed() -> None:
    def mid(value: str) -> str | None:
        raw = f"From: a@example.com\r\nMessage-ID: {value}\r\n\r\nx\r\n".encode()
        result = to_graph_import(raw, frozenset(), RECEIVED, TAG).message.get("internetMessageId")
        return str(result) if result else None
    assert mid("<abc.123@host.example>") == "<abc.123@host.example>"
    assert mid("  <abc@host.example>  ") == "<abc@host.example>"
    assert mid("abc@host.example") is None
    assert mid("<no-at-sign>") is None
    assert mid("<a@b@c>") is None


def test_threading_headers_travel_as_properties() -> None:
    raw = (b"From: a@example.com\r\nIn-Reply-To: <parent@example.com>\r\n"
           b"References: <root@example.com>\r\n <parent@example.com> garbage\r\n\r\nreply\r\n")
    props = _props(to_graph_import(raw, frozenset(), RECEIVED, TAG).message)
    assert props[IN_REPLY_TO_PROPERTY] == "<parent@example.com>"
    assert props[REFERENCES_PROPERTY] == "<root@example.com> <parent@example.com>"
    many = " ".join(f"<id{n}@example.com>" for n in range(100_000))  # 2 MB: keep the root and the latest
    raw = f"From: a@example.com\r\nReferences: {many}\r\n\r\nreply\r\n".encode()
    references = _props(to_graph_import(raw, frozenset(), RECEIVED, TAG).message)[REFERENCES_PROPERTY]
    assert len(references) <= 32_000 and references.startswith("<id0@example.com> <id9")
    assert references.endswith(" <id99999@example.com>")


def test_inline_image_of_an_html_body() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["Subject"] = "picture"
    msg.set_content("<p>look: <img src='cid:logo@x'></p>", subtype="html")
    msg.add_related(b"\x89PNG....", maintype="image", subtype="png", cid="<logo@x>")
    msg.add_related(b"GIF89a", maintype="image", subtype="gif", cid="<unused@x>")
    msg.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="doc.pdf")
    raw = msg.as_bytes()
    planned = to_graph_import(raw, frozenset(), RECEIVED, TAG)
    attachments = {a["name"]: a for a in planned.message["attachments"]}
    assert attachments["attachment-1.png"]["isInline"] is True
    assert attachments["attachment-1.png"]["contentId"] == "logo@x"
    # inline only if the html shows it: Outlook hides inline attachments the body does not reference
    assert attachments["attachment-2.gif"]["isInline"] is False
    assert attachments["attachment-2.gif"]["contentId"] == "unused@x"
    assert attachments["doc.pdf"]["isInline"] is False and "contentId" not in attachments["doc.pdf"]
    assert attachments["doc.pdf"]["@odata.type"] == "#microsoft.graph.fileAttachment"
    assert base64.b64decode(attachments["doc.pdf"]["contentBytes"]) == b"%PDF"
    assert planned.message["body"]["contentType"] == "html"
    assert fingerprint_fields(render(planned)) == expected_after_import(raw)


def test_attached_message_becomes_an_eml_file() -> None:
    inner = b"From: x@example.com\r\nSubject: inner\r\nMessage-ID: <inner@x>\r\n\r\ninner body\r\n"
    outer = EmailMessage()
    outer["From"] = "a@example.com"
    outer["Message-ID"] = "<outer@x>"
    outer.set_content("forwarding")
    outer.add_attachment(message_from_bytes(inner, policy=email_policy.default))
    planned = to_graph_import(outer.as_bytes(), frozenset(), RECEIVED, TAG)
    (attachment,) = planned.message["attachments"]
    assert attachment["name"] == "attachment-1.eml" and attachment["contentType"] == "message/rfc822"
    assert base64.b64decode(attachment["contentBytes"]).replace(b"\r\n", b"\n") == inner.replace(b"\r\n", b"\n")


def test_unparseable_nesting_keeps_the_raw_message() -> None:
    inner = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for level in range(3000, 0, -1):
        boundary = f"b{level}".encode()
        inner = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n"
                 + inner + b"\r\n--" + boundary + b"--\r\n")
    raw = b"From: deep@old.example\r\nSubject: too deep\r\nMessage-ID: <deep@old.example>\r\n" + inner
    planned = to_graph_import(raw, frozenset(), RECEIVED, TAG)
    assert planned.message["subject"] == "too deep"
    (attachment,) = planned.message["attachments"]
    assert attachment["name"] == "message.eml" and base64.b64decode(attachment["contentBytes"]) == raw
    assert fingerprint_fields(render(planned)) == expected_after_import(raw)
