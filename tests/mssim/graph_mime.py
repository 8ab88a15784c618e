"""MIME <-> item properties for the Microsoft Graph simulator.

Exchange does not keep the MIME of a message: it stores MAPI properties and renders MIME whenever a client asks for it
("Even though Outlook does not save messages in MIME format, you can now use a `$value` segment to get the MIME content
of an Outlook message", https://learn.microsoft.com/en-us/graph/outlook-get-mime-message). So an imported message read
back through `GET .../messages/{id}/$value` is not byte-identical to what was posted (TESTING.md, "Exchange re-renders
MIME"). This module does the same round trip:

* `parse_mime` turns posted/delivered MIME into the properties Exchange keeps (subject, addresses, sent date,
  Message-ID, the body -- html parts preferred to text/plain ones -- and the other leaf parts as attachments), by
  the content model migrator/fingerprint.py documents.
* `render_mime` renders those properties the way the documented `$value` example looks: Received/Thread-Topic/
  Thread-Index/Accept-Language/Content-Language/X-MS-* headers, `MIME-Version` after the headers, boundaries of the
  form `_000_<token>_` (alternative) and `_004_<token>_` (mixed), html wrapped in
  `<html><head><meta http-equiv="Content-Type" ...></head><body>`, quoted-printable text, base64 attachments with
  `Content-Description`/`size`/`creation-date`, CRLF line endings.

What the rendering keeps (a migration's content fingerprint may rely on exactly these): the Message-ID, the decoded
Subject, the From/To/Cc addresses, the sent Date to the second, the text of the body (tags stripped, whitespace
collapsed), every attachment's filename and decoded bytes. Rendering is deterministic: the same item gives the same
bytes every time (boundaries and Thread-Index derive from the item id).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.header import Header
from email.message import Message
from email.parser import BytesParser
from email.utils import format_datetime, formataddr, getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import NamedTuple
from urllib.parse import quote

Address = tuple[str, str]  # (display name, SMTP address)


class SimAttachment(NamedTuple):
    """A file attachment as Exchange stores it (fileAttachment: name, contentType, bytes, isInline, contentId)."""

    name: str | None
    content_type: str
    data: bytes
    is_inline: bool
    content_id: str | None


@dataclass
class ParsedMime:
    """The properties Exchange extracts from a MIME message."""

    subject: str = ""
    from_: Address | None = None
    sender: Address | None = None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    date: datetime | None = None
    message_id: str | None = None
    body_type: str = "text"
    body: str = ""
    attachments: list[SimAttachment] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------- parsing


def _addresses(msg: Message, name: str) -> list[Address]:
    try:
        values = [str(v) for v in msg.get_all(name, [])]
        return [(n, a) for n, a in getaddresses(values) if a and "@" in a]
    except Exception:  # a header the email package cannot even read: Exchange drops it too
        return []


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:
        return None
    return None if value is None else str(value)


def _decode_text(data: bytes, charset: str | None) -> str:
    """Bytes of a text part: its charset if known, else UTF-8 if valid, else Windows-1252."""
    if charset:
        try:
            return data.decode(charset, errors="replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


# Writes parsed headers back as they were received (no refolding), with CRLF line ends.
_VERBATIM = policy.SMTP.clone(refold_source="none")


@dataclass
class _Leaf:
    part: Message
    alternatives: tuple[int, ...]  # ids of the multipart/alternative ancestors, innermost last
    content_type: str
    kind: str = "attachment"  # "html" / "text" (body candidates), "attachment" or "dropped"


def _leaves(root: Message) -> list[_Leaf]:
    """Leaf parts in document order. message/* parts are leaves (an attached message is one attachment); a
    multipart whose boundary is unusable was kept as text by the parser and is read as text/plain."""
    leaves: list[_Leaf] = []
    stack: list[tuple[Message, tuple[int, ...]]] = [(root, ())]
    while stack:
        part, alternatives = stack.pop()
        ctype = part.get_content_type()
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            inner = (*alternatives, id(part)) if ctype == "multipart/alternative" else alternatives
            stack.extend((child, inner) for child in reversed(payload) if isinstance(child, Message))
            continue
        if part.get_content_maintype() == "multipart":
            ctype = "text/plain"
        leaves.append(_Leaf(part, alternatives, ctype))
    return leaves


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return str(name) if name else None


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def _leaf_bytes(leaf: _Leaf) -> bytes:
    """The decoded content of a leaf; an attached message as its CRLF bytes; other message/* parts (delivery
    status, external body) as the text after their own headers."""
    part = leaf.part
    if part.get_content_maintype() == "message":
        payload = part.get_payload()
        if part.get_content_type() == "message/rfc822" and isinstance(payload, list) and len(payload) == 1 \
                and isinstance(payload[0], Message):
            try:
                return payload[0].as_bytes(policy=_VERBATIM)
            except Exception:
                pass
        try:
            whole = part.as_bytes(policy=_VERBATIM)
        except Exception:
            return b""
        return whole.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in whole else b""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def parse_mime(raw: bytes) -> ParsedMime:
    """The properties Exchange keeps of a MIME message (the content model migrator/fingerprint.py documents):

    * the body: every html leaf that is not an attachment (no filename, disposition not "attachment"), else every
      such text/plain leaf; a text/plain alternative of an html body, or a blank one beside it, is dropped
      (Exchange regenerates the plain alternative from the html);
    * every other leaf is an attachment with its decoded bytes; an attached message (message/rfc822) is one
      attachment holding the embedded message's bytes.

    Raises ValueError only for empty input."""
    if not raw.strip():
        raise ValueError("empty MIME content")
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    out = ParsedMime(subject=" ".join((_header(msg, "Subject") or "").split()))
    froms = _addresses(msg, "From")
    out.from_ = froms[0] if froms else None
    senders = _addresses(msg, "Sender")
    out.sender = senders[0] if senders else out.from_
    out.to, out.cc, out.bcc = _addresses(msg, "To"), _addresses(msg, "Cc"), _addresses(msg, "Bcc")
    out.reply_to = _addresses(msg, "Reply-To")
    date = _header(msg, "Date")
    if date is not None:
        try:
            parsed = parsedate_to_datetime(date)
            out.date = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (TypeError, ValueError, IndexError):
            out.date = None
    mid = "".join((_header(msg, "Message-ID") or "").split())
    out.message_id = mid or None

    leaves = _leaves(msg)
    for leaf in leaves:
        if leaf.content_type in ("text/html", "text/plain") and not _filename(leaf.part) \
                and _disposition(leaf.part) != "attachment":
            leaf.kind = "html" if leaf.content_type == "text/html" else "text"
    texts = {id(leaf): _decode_text(_leaf_bytes(leaf), leaf.part.get_content_charset())
             for leaf in leaves if leaf.kind in ("html", "text")}
    htmls = [leaf for leaf in leaves if leaf.kind == "html"]
    if htmls:
        with_html = {alt for leaf in htmls for alt in leaf.alternatives}
        for leaf in leaves:
            if leaf.kind == "text":
                alternative = bool(leaf.alternatives) and leaf.alternatives[-1] in with_html
                leaf.kind = "dropped" if alternative or not texts[id(leaf)].strip() else "attachment"
        out.body_type = "html"
    body_kind = "html" if htmls else "text"
    out.body = "\r\n".join(texts[id(leaf)] for leaf in leaves if leaf.kind == body_kind)
    for leaf in leaves:
        if leaf.kind != "attachment":
            continue
        part = leaf.part
        cid = _header(part, "Content-ID")
        content_id = cid.strip().strip("<>") if cid and cid.strip() else None
        disposition = _disposition(part)
        inline = disposition == "inline" or (disposition is None and content_id is not None)
        ctype = leaf.content_type if "/" in leaf.content_type else "application/octet-stream"
        out.attachments.append(SimAttachment(_filename(part), ctype, _leaf_bytes(leaf), inline, content_id))
    return out


# ------------------------------------------------------------------------------------------------------ html <-> text


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote",
                        "pre", "hr", "ul", "ol"})
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag in self._BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(markup: str) -> str:
    """The text of an html body: tags removed, entities decoded, runs of blanks collapsed per line."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in "".join(parser.out).split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def text_to_html(text: str) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped.replace("\r\n", "\n").replace("\n", "<br>\r\n")


def collapse_ws(text: str) -> str:
    """Whitespace-collapsed text, for comparing body content across renderings."""
    return " ".join(text.split())


def html_document(markup: str) -> str:
    """An html body as Exchange stores it: a full document with a utf-8 meta tag (the `body.content` of the documented
    create-message response, https://learn.microsoft.com/en-us/graph/api/user-post-messages, has exactly this form)."""
    if re.search(r"<html[\s>]", markup, re.IGNORECASE):
        return markup
    return ('<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n</head>\r\n'
            f"<body>\r\n{markup}\r\n</body>\r\n</html>\r\n")


# -------------------------------------------------------------------------------------------------------- rendering


@dataclass
class RenderInput:
    """What `render_mime` needs of a stored item."""

    item_id: str
    subject: str
    from_: Address | None
    sender: Address | None
    to: list[Address]
    cc: list[Address]
    reply_to: list[Address]
    sent: datetime | None
    received: datetime
    internet_message_id: str
    body_type: str
    body: str
    attachments: list[SimAttachment]
    headers: list[tuple[str, str]]
    is_draft: bool
    importance: str = "normal"


def _fold(name: str, value: str) -> str:
    """`Name: value`, RFC 2047-encoded when not ASCII, folded at whitespace to lines of at most 78 characters."""
    if not value.isascii():
        return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=78)
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > 78 and line.strip() and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def _address_header(name: str, addresses: list[Address]) -> str:
    rendered = [formataddr((n, a), charset="utf-8") if n else a for n, a in addresses]
    one = f"{name}: " + ", ".join(rendered)
    if len(one) <= 78:
        return one
    return f"{name}: " + ",\r\n\t".join(rendered)


def _qp(text: str) -> str:
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).decode("ascii")
    encoded = encoded.replace("\n", "\r\n")
    return encoded if encoded.endswith("\r\n") else encoded + "\r\n"


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")


def _param(key: str, value: str) -> str:
    if value.isascii():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{key}="{escaped}"'
    return f"{key}*=utf-8''{quote(value, safe='')}"


def _rfc822_date(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC).replace(microsecond=0))


def _attachment_part(att: SimAttachment, when: datetime) -> list[str]:
    lines: list[str] = []
    stamp = when.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    if att.content_type.startswith("message/"):  # never base64 (RFC 2046): the message text as it is
        lines.append(f"Content-Type: {att.content_type}")
        disposition = "inline" if att.is_inline else "attachment"
        lines.append(f"Content-Disposition: {disposition}" + (f"; {_param('filename', att.name)}" if att.name else ""))
        lines.append("")
        text = att.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").decode("utf-8", errors="surrogateescape")
        lines.append(text if text.endswith("\r\n") else text + "\r\n")
        return lines
    ctype = att.content_type or "application/octet-stream"
    lines.append(f"Content-Type: {ctype}" + (f"; {_param('name', att.name)}" if att.name else ""))
    if att.name:
        lines.append(f"Content-Description: {att.name}" if att.name.isascii() else _fold("Content-Description",
                                                                                          att.name))
    disposition = "inline" if att.is_inline else "attachment"
    head = f"Content-Disposition: {disposition}" + (f"; {_param('filename', att.name)}" if att.name else "")
    lines.append(f'{head}; size={len(att.data)};\r\n\tcreation-date="{stamp}";\r\n\tmodification-date="{stamp}"')
    if att.content_id:
        lines.append(f"Content-ID: <{att.content_id}>")
    lines.append("Content-Transfer-Encoding: base64")
    lines.append("")
    lines.append(_b64(att.data))
    return lines


def _multipart(subtype: str, boundary: str, parts: list[list[str]], extra: str = "") -> list[str]:
    lines = [f'Content-Type: multipart/{subtype};\r\n\tboundary="{boundary}"{extra}', ""]
    for part in parts:
        lines.append(f"--{boundary}")
        lines.extend(part)
    lines.append(f"--{boundary}--")
    lines.append("")
    return lines


def render_mime(item: RenderInput) -> bytes:
    """The MIME Exchange would generate for `item` (see the module docstring for the documented shape)."""
    token = hashlib.sha1(item.item_id.encode()).hexdigest()[:32]
    content = (item.body + "".join(a.name or "" for a in item.attachments)).encode("utf-8", errors="replace")
    while token.encode() in content or any(token.encode() in a.data for a in item.attachments):
        token = hashlib.sha1(token.encode()).hexdigest()[:32]
    head: list[str] = []
    if not item.is_draft:
        when = _rfc822_date(item.received)
        head.append("Received: from SIM0PR01MB0001.namprd00.prod.outlook.com (2603:10b6:a03::1) by\r\n"
                    " SIM0PR01MB0001.namprd00.prod.outlook.com with HTTPS via Mailbox Transport;"
                    f"\r\n {when}")
    if item.from_:
        head.append(_address_header("From", [item.from_]))
    if item.sender and item.from_ and item.sender[1].lower() != item.from_[1].lower():
        head.append(_address_header("Sender", [item.sender]))
    if item.to:
        head.append(_address_header("To", item.to))
    if item.cc:
        head.append(_address_header("CC", item.cc))
    if item.reply_to:
        head.append(_address_header("Reply-To", item.reply_to))
    head.append(_fold("Subject", item.subject))
    head.append(_fold("Thread-Topic", re.sub(r"^(?:\s*(?:re|fw|fwd|aw|wg)\s*:\s*)+", "", item.subject,
                                             flags=re.IGNORECASE)))
    thread_index = base64.b64encode(hashlib.sha256(("thread:" + item.item_id).encode()).digest()[:22]).decode()
    head.append(f"Thread-Index: {thread_index}")
    head.append(f"Date: {_rfc822_date(item.sent or item.received)}")
    head.append(f"Message-ID: {item.internet_message_id}" if len(item.internet_message_id) < 66
                else f"Message-ID:\r\n\t{item.internet_message_id}")
    if item.importance.lower() in ("high", "low"):
        head.append(f"Importance: {item.importance.lower()}")
    head.append("Accept-Language: en-US")
    head.append("Content-Language: en-US")
    regular = [a for a in item.attachments if not (a.is_inline and a.content_id and item.body_type == "html")]
    related = [a for a in item.attachments if a not in regular]
    head.append("X-MS-Has-Attach: " + ("yes" if item.attachments else ""))
    head.append("X-MS-Exchange-Organization-SCL: -1")
    head.append("X-MS-TNEF-Correlator:")
    for name, value in item.headers:
        head.append(_fold(name, value))

    if item.body_type == "html":
        document = html_document(item.body)
        plain = ["Content-Type: text/plain; charset=\"utf-8\"", "Content-Transfer-Encoding: quoted-printable", "",
                 _qp(html_to_text(document))]
        rich = ["Content-Type: text/html; charset=\"utf-8\"", "Content-Transfer-Encoding: quoted-printable", "",
                _qp(document)]
        body_part = _multipart("alternative", f"_000_{token}_", [plain, rich])
    else:
        body_part = ["Content-Type: text/plain; charset=\"utf-8\"", "Content-Transfer-Encoding: quoted-printable", "",
                     _qp(item.body)]
    if related:
        body_part = _multipart("related", f"_003_{token}_",
                               [body_part, *(_attachment_part(a, item.received) for a in related)],
                               '; type="multipart/alternative"')
    if regular:
        body_part = _multipart("mixed", f"_004_{token}_",
                               [body_part, *(_attachment_part(a, item.received) for a in regular)])
    # The documented rendering puts MIME-Version right after the entity's Content-Type header.
    content_type, _, rest = "\r\n".join(body_part).partition("\r\n\r\n")
    text = "\r\n".join(head) + "\r\n" + content_type + "\r\nMIME-Version: 1.0\r\n\r\n" + rest
    return text.encode("utf-8", errors="surrogateescape")


def raw_size(body: str, attachments: list[SimAttachment]) -> int:
    """The size Exchange compares with the maximum message size: body plus attachment bytes."""
    return len(body.encode("utf-8")) + sum(len(a.data) for a in attachments)
