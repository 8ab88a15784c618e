"""What a message *says*, independent of how its MIME is written: the content fingerprint verify compares.

Why: Exchange does not keep the bytes it is given. It stores properties (subject, recipients, body,
attachments) and writes new MIME whenever the message is read back, so a copy's bytes never equal the
source's. ``verify --deep`` against Exchange therefore compares a SHA-256 over the content both sides
must agree on (``content_fingerprint``), computed the same way from the source bytes and from the target's
re-rendering.

Compared (see ``fingerprint_fields``):

- ``message_id``: the first Message-ID header, whitespace and angle brackets removed ("" if none or not
  of the form <local@domain>: Exchange replaces such an id with its own);
- ``subject``: RFC 2047-decoded, whitespace runs collapsed to one space, stripped;
- ``from``: the first valid From address; ``to`` / ``cc``: every valid address of the To / Cc headers,
  sorted. Addresses are lower-cased addr-specs ("local@domain"); display names are not compared
  (Exchange replaces them from its directory), unparseable or domain-less entries are dropped;
- ``date``: the Date header as UTC "YYYY-MM-DDTHH:MM:SS" ("" if absent or unparseable);
- ``body``: the text of the body. If the message has an html body part (a text/html leaf without a
  filename whose disposition is not "attachment") it is the text content of every such part (tags,
  <script>, <style> and <head> dropped, entities decoded); otherwise the content of every text/plain body
  part. Decoded with the part's charset (undecodable bytes replaced), every whitespace run collapsed to one
  space, stripped;
- ``attachments``: sorted [name, digest] of every other leaf part, except a text/plain body part that is
  the alternative of an html body part in the same multipart/alternative (Exchange regenerates that one
  from the html) and, beside an html body, a text/plain body part holding only whitespace. ``name`` is the
  decoded filename, or the name the Graph import gives a nameless part ("attachment-3.bin"); ``digest``
  is the SHA-256 of the decoded bytes with line ends normalised to LF (so re-encoding text parts between
  CRLF and LF does not matter); an attached message (message/rfc822) is one leaf whose digest is the
  fingerprint of that message ("rfc822:<hex>"), because Exchange re-renders attached messages too.

Unchanged by what Exchange does to MIME: header order and folding, RFC 2047 re-encoding, Content-Transfer-
Encoding (7bit, 8bit, quoted-printable, base64), boundaries, CRLF or LF, headers added or dropped,
html wrapped in <html><head><meta ...></head><body>, a text/plain alternative added to an html-only body,
multipart/related instead of multipart/mixed around inline parts.

Not compared (lost or rewritten on import, or not content): Bcc, Sender, Reply-To, Received and every
other trace header, In-Reply-To, References, custom X- headers, display names, the text/plain alternative
of an html body, Content-ID / inline-ness of attachments, MIME structure, the charset a part was written in.

Malformed input never raises: a multipart without a usable boundary is read as text; a message the
email package cannot parse at all (e.g. thousands of nesting levels) is treated as headers plus one
attachment "message.eml" holding the raw bytes, which is also how the Graph import carries it.
``message_content`` is the parse both this module and the Graph import (``connectors.graph.mime``) use,
so the fingerprint of a source message equals the fingerprint of Exchange's rendering of its import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import json
import quopri
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.header import decode_header
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html import unescape
from typing import Any
from urllib.parse import unquote

__all__ = [
    "FINGERPRINT_METHOD",
    "Attachment",
    "MessageContent",
    "Person",
    "clean_text",
    "collapse",
    "content_fingerprint",
    "fingerprint_fields",
    "html_text",
    "message_content",
    "well_formed_message_id",
]

FINGERPRINT_METHOD = (
    "content fingerprint v1: SHA-256 of Message-ID, subject, From/To/Cc addr-specs, Date (UTC, seconds), "
    "body text (text of the html body if there is one, else the plain text; whitespace collapsed) and "
    "attachment names with the SHA-256 of their decoded bytes (line ends normalised); "
    "Bcc, Received, custom and other headers are not compared"
)

RAW_ATTACHMENT_NAME = "message.eml"  # the whole message, when it cannot be parsed into parts
_POLICY = email_policy.compat32  # never raises while parsing; headers are decoded here, by hand
_BYTES_POLICY = email_policy.compat32.clone(linesep="\r\n")
_REGISTRY = HeaderRegistry()
_MODERN_PARSE_LIMIT = 16 * 1024  # characters of a header value given to the (slow on hostile input) parser
# Newer Pythons make getaddresses give up on a whole header with one odd entry unless strict=False.
_LENIENT: dict[str, bool] = {"strict": False} if "strict" in inspect.signature(getaddresses).parameters else {}
_PARAMETERS_LIMIT = 8 * 1024  # characters of Content-Type / Content-Disposition read; real ones are short
_MAX_EMBEDDED_DEPTH = 16  # attached messages inside attached messages: deeper ones are hashed as bytes
_CID_REFERENCE = re.compile(r"""cid:([^\s"'<>()]+)""", re.IGNORECASE)
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/>]*)")
_TAG_STOP = re.compile(r"""[>"']""")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
_EXTENSIONS = {
    "text/plain": ".txt", "text/html": ".html", "text/calendar": ".ics", "text/csv": ".csv",
    "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "application/pdf": ".pdf",
    "message/rfc822": ".eml", "message/delivery-status": ".txt", "message/disposition-notification": ".txt",
}


@dataclass(frozen=True)
class Person:
    """One address: a display name (possibly "") and an addr-spec as written (compare it lower-cased)."""

    name: str
    address: str


@dataclass(frozen=True)
class Attachment:
    """A leaf part that is not the body: what the Graph import uploads and what the fingerprint hashes."""

    name: str
    content_type: str
    data: bytes = field(repr=False)
    is_inline: bool
    content_id: str | None
    digest: str


@dataclass(frozen=True)
class MessageContent:
    """A message as content. Header strings are decoded (8-bit bytes as UTF-8, else Windows-1252) and free
    of characters XML cannot carry; ``body_parts`` are html sources if ``html`` else plain texts."""

    message_id: str = ""  # the header value without whitespace, e.g. "<a@b>"; "" if none
    subject: str = ""
    from_: tuple[Person, ...] = ()
    sender: tuple[Person, ...] = ()
    to: tuple[Person, ...] = ()
    cc: tuple[Person, ...] = ()
    bcc: tuple[Person, ...] = ()
    reply_to: tuple[Person, ...] = ()
    date: datetime | None = None  # aware, UTC
    in_reply_to: str = ""
    references: str = ""
    importance: str | None = None  # "high" or "low" when the headers say so
    html: bool = False
    body_parts: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()

    def body_text(self) -> str:
        """The body as the fingerprint compares it: text only, whitespace collapsed."""
        texts = [html_text(part) for part in self.body_parts] if self.html else list(self.body_parts)
        return collapse(clean_text(" ".join(texts)))


def content_fingerprint(message: bytes) -> str:
    """Hex SHA-256 of the canonical JSON of ``fingerprint_fields(message)``; never raises on bad MIME."""
    return _hash(fingerprint_fields(message))


def fingerprint_fields(message: bytes) -> dict[str, Any]:
    """The compared fields (see the module docstring), as plain JSON values; useful to explain a mismatch."""
    return _fields(message_content(message))


def message_content(message: bytes) -> MessageContent:
    """Parse ``message`` into content; never raises (see the module docstring for the fallbacks)."""
    try:
        parsed = BytesParser(policy=_POLICY).parsebytes(message)
        return _content(parsed, 0)
    except Exception:  # RecursionError on absurd nesting, or an email package bug: keep every byte anyway
        return _raw_content(message)


def clean_text(text: str) -> str:
    """``text`` without the characters XML 1.0 (and so Exchange) cannot store: C0 controls but tab, LF, CR;
    DEL, U+FFFE/U+FFFF and lone surrogates."""
    return _XML_INVALID.sub("", text)


def collapse(text: str) -> str:
    """Every run of (Unicode) whitespace as one space, stripped."""
    return " ".join(text.split())


def html_text(html: str) -> str:
    """The text content of an html document or fragment: tags, comments and declarations dropped (each
    separates words), the content of <script>, <style> and <head> dropped, entities decoded.

    A single forward scan, linear in the input: ``html.parser`` takes minutes on hostile html such as
    megabytes of unclosed "<!--". An unclosed comment, tag or quoted attribute runs to the end, as in a
    browser. Never raises.
    """
    chunks: list[str] = []
    size = len(html)
    i = 0
    in_head = False
    while i < size:
        lt = html.find("<", i)
        if lt < 0:
            lt = size
        if lt > i and not in_head:
            chunks.append(unescape(html[i:lt]))
        if lt >= size:
            break
        if html.startswith("<!--", lt):
            end = html.find("-->", lt + 4)
            i = size if end < 0 else end + 3
            continue
        if html.startswith(("<!", "<?"), lt):
            end = html.find(">", lt + 2)
            i = size if end < 0 else end + 1
            continue
        tag = _TAG.match(html, lt)
        if tag is None:  # a "<" that starts no tag is text
            if not in_head:
                chunks.append("<")
            i = lt + 1
            continue
        i = _tag_end(html, tag.end())
        name = tag.group(2).lower()
        closing = bool(tag.group(1))
        if name in ("script", "style") and not closing:
            end_tag = re.compile(rf"</{name}[\s/>]", re.IGNORECASE).search(html, i)
            i = size if end_tag is None else _tag_end(html, end_tag.end() - 1)
        elif name == "head":
            in_head = not closing
        elif name == "body":
            in_head = False
    return " ".join(chunks)


def _tag_end(html: str, i: int) -> int:
    """Where a tag whose attributes start at ``i`` ends: after its ">", skipping quoted attribute values."""
    size = len(html)
    while i < size:
        found = _TAG_STOP.search(html, i)
        if found is None:
            return size
        if found.group() == ">":
            return found.end()
        close = html.find(found.group(), found.end())
        if close < 0:
            return size
        i = close + 1
    return size


# --------------------------------------------------------------------------------------------------
# fields


def well_formed_message_id(value: str) -> bool:
    """``<local@domain>``, printable ASCII without spaces or nested brackets. Exchange replaces any other
    Message-ID with one of its own, so only a well-formed one is content both sides agree on."""
    if len(value) < 5 or not (value.startswith("<") and value.endswith(">")):
        return False
    inner = value[1:-1]
    local, at, domain = inner.partition("@")
    return bool(at and local and domain) and "@" not in domain and all(
        33 <= ord(c) <= 126 and c not in "<>" for c in inner)


def _fields(content: MessageContent) -> dict[str, Any]:
    return {
        "v": 1,
        "message_id": content.message_id.strip("<>") if well_formed_message_id(content.message_id) else "",
        "subject": collapse(content.subject),
        "from": content.from_[0].address.lower() if content.from_ else "",
        "to": sorted(p.address.lower() for p in content.to),
        "cc": sorted(p.address.lower() for p in content.cc),
        "date": content.date.strftime("%Y-%m-%dT%H:%M:%S") if content.date else "",
        "body": content.body_text(),
        "attachments": sorted([a.name, a.digest] for a in content.attachments),
    }


def _hash(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")).hexdigest()


def _raw_content(message: bytes) -> MessageContent:
    raw = Attachment(RAW_ATTACHMENT_NAME, "application/octet-stream", message, False, None, _digest(message))
    try:
        headers = BytesHeaderParser(policy=_POLICY).parsebytes(message)
        return _headers(headers, attachments=(raw,))
    except Exception:
        return MessageContent(attachments=(raw,))


# --------------------------------------------------------------------------------------------------
# headers


def _header_text(value: str) -> str:
    """A raw header value (8-bit bytes as surrogates) as text, unfolded; 8-bit as UTF-8, else Windows-1252."""
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        data = value.encode("ascii", "surrogateescape")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            value = data.decode("cp1252", "replace")
    return re.sub(r"\r\n|\r|\n", "", value).strip()


def _decoded(value: str) -> str:
    """An unstructured header value with RFC 2047 encoded words decoded. The email package's modern parser
    does it best but slows down badly on huge values, so those go through the simple decoder."""
    if len(value) <= _MODERN_PARSE_LIMIT:
        try:
            return str(_REGISTRY("subject", value))
        except Exception:
            pass
    try:
        parts = []
        for chunk, charset in decode_header(value):
            if isinstance(chunk, str):
                parts.append(chunk)
            elif charset is None:  # text between encoded words, given back as raw-unicode-escape bytes
                parts.append(chunk.decode("raw-unicode-escape", "replace"))
            else:
                try:
                    parts.append(chunk.decode(charset.split("*")[0], "replace"))
                except (LookupError, ValueError):
                    parts.append(chunk.decode("utf-8", "replace"))
        return "".join(parts)
    except Exception:
        return value


def _valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(c in domain for c in " \t<>()[],;:\\\"")


def _people(values: list[str]) -> tuple[Person, ...]:
    """The addresses of address headers. ``email.utils.getaddresses`` (linear time, unlike the modern
    parser on hostile input) works on the raw value, where an encoded display name cannot hide a comma."""
    found: list[Person] = []
    for value in values:
        try:
            pairs = getaddresses([value], **_LENIENT)
        except Exception:  # RecursionError on deeply nested comments
            continue
        for name, address in pairs:
            spec = clean_text(address).strip()
            if _valid_address(spec):
                found.append(Person(collapse(clean_text(_decoded(name))), spec))
    return tuple(found)


def _date(value: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    except Exception:  # TypeError, ValueError, IndexError, OverflowError on garbage
        return None
    return when if 1601 <= when.year <= 9999 else None


def _importance(headers: dict[str, list[str]]) -> str | None:
    for name, table in (("importance", {"high": "high", "low": "low"}),
                        ("priority", {"urgent": "high", "non-urgent": "low"}),
                        ("x-priority", {"1": "high", "2": "high", "4": "low", "5": "low"})):
        for value in headers.get(name, [])[:1]:
            words = value.strip().lower().split()
            if words and words[0] in table:
                return table[words[0]]
    return None


def _headers(message: Message, **body: Any) -> MessageContent:
    headers: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        headers.setdefault(str(name).strip().lower(), []).append(_header_text(str(value)))

    def first(name: str) -> str:
        return headers.get(name, [""])[0]

    message_id = re.sub(r"\s+", "", first("message-id"))
    references = collapse(clean_text(first("references")))
    in_reply_to = re.search(r"<[^<>]*>", re.sub(r"\s+", "", first("in-reply-to")))
    return MessageContent(
        message_id=clean_text(message_id),
        subject=clean_text(_decoded(first("subject"))),
        from_=_people(headers.get("from", [])),
        sender=_people(headers.get("sender", [])[:1]),
        to=_people(headers.get("to", [])),
        cc=_people(headers.get("cc", [])),
        bcc=_people(headers.get("bcc", [])),
        reply_to=_people(headers.get("reply-to", [])),
        date=_date(first("date")) if "date" in headers else None,
        in_reply_to=clean_text(in_reply_to.group()) if in_reply_to else "",
        references=references,
        importance=_importance(headers),
        **body,
    )


# --------------------------------------------------------------------------------------------------
# parts


@dataclass
class _Leaf:
    part: Message
    alternatives: tuple[int, ...]  # ids of the multipart/alternative ancestors, innermost last
    content_type: str
    kind: str = "attachment"  # "html", "text" (body candidates) or "attachment"


def _leaves(root: Message) -> list[_Leaf]:
    """Leaf parts in document order, without recursion (nesting depth is the sender's choice)."""
    leaves: list[_Leaf] = []
    stack: list[tuple[Message, tuple[int, ...]]] = [(root, ())]
    while stack:
        part, alternatives = stack.pop()
        for name in ("content-type", "content-disposition"):
            value = part.get(name)
            if value is not None and len(str(value)) > _PARAMETERS_LIMIT:  # parameter parsing is quadratic
                part.replace_header(name, str(value)[:_PARAMETERS_LIMIT])
        ctype = part.get_content_type()
        maintype = ctype.split("/")[0]
        payload = part.get_payload()
        if part.is_multipart() and maintype != "message" and isinstance(payload, list):
            inner = (*alternatives, id(part)) if ctype == "multipart/alternative" else alternatives
            stack.extend((child, inner) for child in reversed(payload) if isinstance(child, Message))
            continue
        if maintype == "multipart":  # no usable boundary: the parser kept the body as text, so do we
            ctype = "text/plain"
        leaves.append(_Leaf(part, alternatives, ctype))
    return leaves


def _filename(part: Message) -> str:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if not name:
        return ""
    return collapse(clean_text(_decoded(_header_text(str(name)))))


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _charset(part: Message) -> str | None:
    try:
        charset = part.get_content_charset()
    except Exception:
        return None
    return str(charset) if charset else None


def _cte(part: Message) -> str:
    """The Content-Transfer-Encoding, unfolded and lower-cased. The email package compares the raw value,
    so a folded or padded one is written back clean, or the part would not be decoded."""
    value = part.get("content-transfer-encoding")
    if value is None:
        return ""
    clean = collapse(_header_text(str(value))).lower()
    if clean != str(value):
        part.replace_header("content-transfer-encoding", clean)
    return clean


def _transfer_encoded(part: Message) -> bool:
    """A message/* part declared base64 or quoted-printable (not allowed, yet seen): the parser read the
    encoded text as a message, so its content has to be decoded from that text."""
    return _cte(part) in ("base64", "quoted-printable")


def _message_body(part: Message) -> bytes:
    """The body of a message/* part as the parser consumed it, written out again with CRLF."""
    whole = bytes(part.as_bytes(policy=_BYTES_POLICY))
    body = whole.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in whole else b""
    if not _transfer_encoded(part):
        return body
    if _cte(part) == "base64":
        try:
            return base64.b64decode(body.strip(), validate=False)
        except binascii.Error:  # bad padding: keep the text rather than lose it
            return body
    return quopri.decodestring(body.lstrip(b"\r\n"))


def _embedded(part: Message) -> Message | None:
    """The message inside a message/rfc822 part, if the parser found exactly one (or one is encoded in it)."""
    if part.get_content_type() != "message/rfc822":
        return None
    if _transfer_encoded(part):
        return BytesParser(policy=_POLICY).parsebytes(_message_body(part))
    payload = part.get_payload()
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], Message):
        return payload[0]
    return None


def _payload_bytes(part: Message) -> bytes:
    """The decoded content of a leaf: transfer encoding undone; an attached message as CRLF bytes."""
    if part.get_content_maintype() == "message" and part.is_multipart():
        inner = _embedded(part)
        if inner is not None and not _transfer_encoded(part):
            return bytes(inner.as_bytes(policy=_BYTES_POLICY))
        return _message_body(part)
    _cte(part)
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("ascii", "surrogateescape") if isinstance(raw, str) else b""


def _text(data: bytes, charset: str | None) -> str:
    """Bytes of a text part as str: its charset if Python knows it, else UTF-8 if valid, else Windows-1252."""
    if charset:
        try:
            return clean_text(data.decode(charset, "replace"))
        except Exception:  # LookupError, or a codec that is not a text encoding ("base64")
            pass
    try:
        return clean_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        return clean_text(data.decode("cp1252", "replace"))


def _name(index: int, content_type: str) -> str:
    return f"attachment-{index}{_EXTENSIONS.get(content_type, '.bin')}"


def _content(message: Message, depth: int) -> MessageContent:
    leaves = _leaves(message)
    for leaf in leaves:
        if leaf.content_type in ("text/html", "text/plain") and not _filename(leaf.part) \
                and _disposition(leaf.part) != "attachment":
            leaf.kind = "html" if leaf.content_type == "text/html" else "text"
    htmls = [leaf for leaf in leaves if leaf.kind == "html"]
    if htmls:
        # A text/plain part inside a multipart/alternative that also holds an html body is the html's
        # alternative: Exchange regenerates it, so it is neither body nor attachment.
        with_html = {alt for leaf in htmls for alt in leaf.alternatives}
        body_kind = "html"
        for leaf in leaves:
            if leaf.kind == "text":
                alternative = bool(leaf.alternatives) and leaf.alternatives[-1] in with_html
                empty = not _text(_payload_bytes(leaf.part), _charset(leaf.part)).strip()
                leaf.kind = "alternative" if alternative or empty else "attachment"
    else:
        body_kind = "text"
    body = [_text(_payload_bytes(leaf.part), _charset(leaf.part)) for leaf in leaves if leaf.kind == body_kind]
    referenced = {unquote(m).lower() for m in _CID_REFERENCE.findall(" ".join(body))} if htmls else set()
    attachments: list[Attachment] = []
    for leaf in leaves:
        if leaf.kind == "attachment":
            attachment = _attachment(leaf, _payload_bytes(leaf.part), len(attachments) + 1, depth, referenced)
            attachments.append(attachment)
    return _headers(message, html=bool(htmls), body_parts=tuple(body), attachments=tuple(attachments))


def _attachment(leaf: _Leaf, data: bytes, index: int, depth: int, referenced: set[str]) -> Attachment:
    """An attachment leaf; it is inline when the html body shows it (an img src="cid:...")."""
    ctype = leaf.content_type
    name = _filename(leaf.part) or _name(index, ctype)
    cid = re.sub(r"\s+", "", _header_text(str(leaf.part.get("content-id", "")))).strip("<>")
    content_id = clean_text(cid) or None
    is_inline = content_id is not None and content_id.lower() in referenced
    embedded = _embedded(leaf.part)
    if embedded is not None and depth < _MAX_EMBEDDED_DEPTH:
        digest = "rfc822:" + _hash(_fields(_content(embedded, depth + 1)))
    else:
        digest = _digest(data)
    return Attachment(name, ctype, data, is_inline, content_id, digest)
