"""The content fingerprint: unchanged by everything Exchange does when it re-renders MIME, changed by any
change of content, and never raising on hostile mail.

Each invariance is a transformation of real messages (the generated corpus, CPython's sample messages and
a few handmade ones) with the email package, the way a re-rendering server would rewrite them.
"""

from __future__ import annotations

import base64
import quopri
import random
import re
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email import policy as email_policy
from email.charset import BASE64, QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr
from functools import cache

import pytest

from migrator.fingerprint import (
    FINGERPRINT_METHOD,
    content_fingerprint,
    fingerprint_fields,
    html_text,
    message_content,
)
from migrator.lab.corpus import CorpusSpec, cpython_sample_paths, generate_corpus
from migrator.lab.dovecot import LabUser
from tests.test_hostile_mail import hostile_messages

CRLF = email_policy.compat32.clone(linesep="\r\n")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# --------------------------------------------------------------------------------------------------
# messages


def _handmade() -> dict[str, bytes]:
    found: dict[str, bytes] = {}

    msg = EmailMessage()
    msg["From"] = "Zoë Müller <Zoe.Mueller@Example.DE>"
    msg["To"] = "Bob <bob@example.net>, alice@example.com"
    msg["Cc"] = "李雷 <li.lei@example.cn>, Carol <CAROL@example.org>"
    msg["Subject"] = "Grüße aus München — ordre du jour ✓ and a subject long enough to be folded twice over"
    msg["Date"] = "Thu, 04 Mar 2021 10:00:00 +0100"
    msg["Message-ID"] = "<alt-and-file@example.de>"
    msg.set_content("Hallo,\n\nanbei die Übersicht.\n\n-- \nZoë\n")
    msg.add_alternative("<html><body><p>Hallo,</p><p>anbei die <b>Übersicht</b>&nbsp;&amp; mehr.</p></body></html>",
                        subtype="html")
    msg.add_attachment(b"a;b\r\n1;2\r\n", maintype="text", subtype="csv", filename="Übersicht Q3.csv")
    msg.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="pdf", filename="résumé.pdf")
    found["alternative-with-files"] = msg.as_bytes()

    msg = EmailMessage()
    msg["From"] = "news@example.com"
    msg["To"] = "reader@example.org"
    msg["Subject"] = "html only, with a picture"
    msg["Date"] = "Fri, 05 Mar 2021 08:00:00 -0500"
    msg["Message-ID"] = "<html-only@example.com>"
    msg.set_content("<p>Today&#39;s picture:</p><img src=\"cid:pic@example.com\"><script>var x = 1;</script>",
                    subtype="html")
    msg.add_related(PNG, maintype="image", subtype="png", cid="<pic@example.com>")
    msg.add_attachment(PNG[::-1], maintype="application", subtype="octet-stream")  # nameless
    found["html-related"] = msg.as_bytes()

    inner = EmailMessage()
    inner["From"] = "original@example.net"
    inner["To"] = "someone@example.com"
    inner["Subject"] = "the original"
    inner["Message-ID"] = "<original@example.net>"
    inner.set_content("original text ä\n")
    outer = EmailMessage()
    outer["From"] = "forwarder@example.com"
    outer["To"] = "you@example.org"
    outer["Subject"] = "Fwd: the original"
    outer["Message-ID"] = "<forward@example.com>"
    outer.set_content("see below\n")
    outer.add_attachment(inner)
    found["forwarded"] = outer.as_bytes()

    found["eight-bit"] = ("From: René <rene@old.example>\r\nTo: a@example.com\r\nSubject: Café crème\r\n"
                          "Date: Sat, 06 Mar 2021 12:00:00 +0000\r\nMessage-ID: <8bit@old.example>\r\n"
                          "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                          "Content-Transfer-Encoding: 8bit\r\n\r\nà bientôt\r\n").encode()
    return found


@cache
def messages() -> dict[str, bytes]:
    """Well-formed mail every transformation applies to."""
    spec = CorpusSpec(messages_per_mailbox=4, large_attachments=0, include_cpython_samples=False, seed=3)
    found = {f"{'.'.join(path)}-{n}": mail.raw
             for path, mails in generate_corpus(LabUser("alice", "secret"), spec).items()
             for n, mail in enumerate(mails)}
    found.update(_handmade())
    return found


SAMPLES = {path.name: path.read_bytes() for path in cpython_sample_paths()}


# --------------------------------------------------------------------------------------------------
# transformations a re-rendering server makes


def _parse(raw: bytes) -> Message:
    return message_from_bytes(raw, policy=email_policy.compat32)


def _walk(msg: Message) -> Iterator[tuple[Message | None, Message]]:
    """(parent, part) for every part below message/* boundaries."""
    stack: list[tuple[Message | None, Message]] = [(None, msg)]
    while stack:
        parent, part = stack.pop()
        yield parent, part
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            stack.extend((part, child) for child in part.get_payload())


def _leaves(msg: Message) -> Iterator[Message]:
    for _parent, part in _walk(msg):
        if not part.is_multipart():
            yield part


def _is_html_body(part: Message) -> bool:
    return (part.get_content_type() == "text/html" and not part.get_filename()
            and part.get_content_disposition() != "attachment")


def regenerate(raw: bytes) -> bytes:
    return _parse(raw).as_bytes(policy=CRLF)


def reorder_headers(raw: bytes) -> bytes:
    msg = _parse(raw)
    for _parent, part in _walk(msg):
        pairs = list(part.raw_items())
        for name in {name.lower() for name, _ in pairs}:
            del part[name]
        for name, value in reversed(pairs):
            part[name] = value
    return msg.as_bytes(policy=CRLF)


def refold(raw: bytes) -> bytes:
    msg = message_from_bytes(raw, policy=email_policy.default)
    return msg.as_bytes(policy=email_policy.default.clone(refold_source="all", max_line_length=38, linesep="\r\n"))


def _reencode(raw: bytes, encoding: int) -> bytes:
    msg = _parse(raw)
    content = message_content(raw)
    charset = Charset("utf-8")
    charset.header_encoding = encoding
    del msg["Subject"]
    msg["Subject"] = Header(content.subject, charset).encode()
    for name, people in (("From", content.from_), ("To", content.to), ("Cc", content.cc)):
        if people:
            del msg[name]
            msg[name] = ", ".join(formataddr((p.name, p.address), charset=charset) for p in people)
    return msg.as_bytes(policy=CRLF)


def rfc2047_base64(raw: bytes) -> bytes:
    return _reencode(raw, BASE64)


def rfc2047_q(raw: bytes) -> bytes:
    return _reencode(raw, QP)


def _recode(raw: bytes, cte: str) -> bytes:
    msg = _parse(raw)
    for part in _leaves(msg):
        if part.get_content_maintype() in ("message", "multipart"):
            continue
        data = part.get_payload(decode=True)
        del part["Content-Transfer-Encoding"]
        if cte == "base64":
            part.set_payload(base64.encodebytes(data).decode("ascii"))
        elif cte == "quoted-printable":
            part.set_payload(quopri.encodestring(data).decode("ascii"))
        elif part.get_content_maintype() == "text":
            part.set_payload(data.decode("ascii", "surrogateescape"))
        else:
            part.set_payload(base64.encodebytes(data).decode("ascii"))
            cte = "base64"
        part["Content-Transfer-Encoding"] = cte
    return msg.as_bytes(policy=CRLF)


def cte_base64(raw: bytes) -> bytes:
    return _recode(raw, "base64")


def cte_quoted_printable(raw: bytes) -> bytes:
    return _recode(raw, "quoted-printable")


def cte_8bit(raw: bytes) -> bytes:
    return _recode(raw, "8bit")


def new_boundaries(raw: bytes) -> bytes:
    msg = _parse(raw)
    for n, (_parent, part) in enumerate(_walk(msg)):
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            part.set_boundary(f"=_exchange_{n}_boundary")
    return msg.as_bytes(policy=CRLF)


def bare_lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def extra_headers(raw: bytes) -> bytes:
    msg = _parse(raw)
    for part in _leaves(msg):
        part["Content-Description"] = "added by a server"
    trace = (b"Received: from mx.example.net (mx.example.net [192.0.2.1])\r\n\tby exchange.example;"
             b" Thu, 4 Mar 2021 10:00:00 +0000\r\nReturn-Path: <bounce@example.net>\r\n"
             b"X-MS-Exchange-Organization-SCL: -1\r\nBcc: hidden@example.com\r\n"
             b"DKIM-Signature: v=1; a=rsa-sha256; d=example.net; b=AAAA\r\n")
    return trace + msg.as_bytes(policy=CRLF)


def wrap_html(raw: bytes) -> bytes:
    msg = _parse(raw)
    for part in _leaves(msg):
        if _is_html_body(part):
            html = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8", "replace")
            wrapped = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
                       "<title>not content</title><style>p {margin:0}</style></head><body dir=\"ltr\">"
                       f"\r\n<div>{html}</div>\r\n</body></html>")
            del part["Content-Transfer-Encoding"]
            part.set_payload(base64.encodebytes(wrapped.encode("utf-8")).decode("ascii"))
            part["Content-Transfer-Encoding"] = "base64"
            part.set_param("charset", "utf-8")
    return msg.as_bytes(policy=CRLF)


def add_text_alternative(raw: bytes) -> bytes:
    msg = _parse(raw)
    for parent, part in list(_walk(msg)):
        if not _is_html_body(part) or (parent is not None and parent.get_content_type() == "multipart/alternative"):
            continue
        html = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8", "replace")
        alternative = MIMEMultipart("alternative", _subparts=[
            MIMEText(re.sub(r"<[^>]*>", "", html) + "\n(generated)", "plain", "utf-8"),
            MIMEText(html, "html", "utf-8")])
        if parent is None:  # the whole message is the html part: keep its envelope headers on the new root
            for name, value in msg.raw_items():
                if not name.lower().startswith("content-") and name.lower() != "mime-version":
                    alternative[name] = value
            msg = alternative
        else:
            siblings = parent.get_payload()
            siblings[siblings.index(part)] = alternative
    return msg.as_bytes(policy=CRLF)


def related_as_mixed(raw: bytes) -> bytes:
    msg = _parse(raw)
    for _parent, part in _walk(msg):
        if part.get_content_type() == "multipart/related":
            part.set_type("multipart/mixed")
    return msg.as_bytes(policy=CRLF)


def mixed_as_related(raw: bytes) -> bytes:
    msg = _parse(raw)
    for _parent, part in _walk(msg):
        if part.get_content_type() == "multipart/mixed":
            part.set_type("multipart/related")
    return msg.as_bytes(policy=CRLF)


TRANSFORMS: list[Callable[[bytes], bytes]] = [
    regenerate, reorder_headers, refold, rfc2047_base64, rfc2047_q, cte_base64, cte_quoted_printable, cte_8bit,
    new_boundaries, bare_lf, crlf, extra_headers, wrap_html, add_text_alternative, related_as_mixed,
    mixed_as_related,
]


# --------------------------------------------------------------------------------------------------
# invariance


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.__name__)
def test_unchanged_by_rerendering(transform: Callable[[bytes], bytes]) -> None:
    changed_some = False
    for name, raw in messages().items():
        changed = transform(raw)
        changed_some = changed_some or changed != raw
        assert fingerprint_fields(changed) == fingerprint_fields(raw), name
    assert changed_some or transform is crlf  # the corpus is CRLF already


# refolding and RFC 2047 re-encoding with the modern policy need headers it can parse; the rest apply to all
SAMPLE_TRANSFORMS = [t for t in TRANSFORMS if t not in (refold, rfc2047_base64, rfc2047_q)]


@pytest.mark.parametrize("transform", SAMPLE_TRANSFORMS, ids=lambda t: t.__name__)
def test_cpython_samples_unchanged_by_rerendering(transform: Callable[[bytes], bytes]) -> None:
    for name, raw in SAMPLES.items():
        assert fingerprint_fields(transform(raw)) == fingerprint_fields(raw), name


def test_transformations_compose() -> None:
    for name, raw in messages().items():
        changed = raw
        for transform in (add_text_alternative, wrap_html, cte_base64, new_boundaries, reorder_headers,
                          rfc2047_q, extra_headers, bare_lf):
            changed = transform(changed)
        assert content_fingerprint(changed) == content_fingerprint(raw), name


# --------------------------------------------------------------------------------------------------
# sensitivity


def _edit(raw: bytes, edit: Callable[[Message], None]) -> bytes:
    msg = _parse(raw)
    edit(msg)
    return msg.as_bytes(policy=CRLF)


def _flip_attachment_byte(msg: Message) -> None:
    part = next(p for p in _leaves(msg) if p.get_filename() == "résumé.pdf")
    data = bytearray(part.get_payload(decode=True))
    data[1000] ^= 0x01
    part.set_payload(base64.encodebytes(bytes(data)).decode("ascii"))


def _replace_in_leaves(old: bytes, new: bytes) -> Callable[[Message], None]:
    def edit(msg: Message) -> None:
        for part in _leaves(msg):
            if part.get_content_maintype() == "text" and not part.get_filename():
                data = part.get_payload(decode=True).replace(old, new)
                del part["Content-Transfer-Encoding"]
                part.set_payload(base64.encodebytes(data).decode("ascii"))
                part["Content-Transfer-Encoding"] = "base64"
    return edit


def _replace_header(name: str, value: str) -> Callable[[Message], None]:
    def edit(msg: Message) -> None:
        del msg[name]
        msg[name] = value
    return edit


CHANGES: dict[str, Callable[[Message], None]] = {
    "one attachment byte": _flip_attachment_byte,
    "one body word": _replace_in_leaves(b"anbei", b"hier"),
    "subject": _replace_header("Subject", "Grüsse aus München"),
    "to": _replace_header("To", "Bob <bob@example.com>, alice@example.com"),
    "one more cc": lambda msg: msg.replace_header("Cc", str(msg["Cc"]) + ", dave@example.org"),
    "from": _replace_header("From", "Zoë Müller <zoe@example.de>"),
    "date": _replace_header("Date", "Thu, 04 Mar 2021 10:00:01 +0100"),
    "message-id": _replace_header("Message-ID", "<other@example.de>"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_changed_by_a_content_change(change: str) -> None:
    raw = _handmade()["alternative-with-files"]
    assert content_fingerprint(_edit(raw, CHANGES[change])) != content_fingerprint(raw)


def test_html_body_change_is_seen_even_with_an_unchanged_text_alternative() -> None:
    raw = _handmade()["alternative-with-files"]
    changed = _edit(raw, _replace_in_leaves(b"<b>", b"<b>nicht die "))
    assert fingerprint_fields(changed)["body"] != fingerprint_fields(raw)["body"]


NOT_COMPARED: dict[str, Callable[[Message], None]] = {
    "bcc": _replace_header("Bcc", "secret@example.com"),
    "display name": _replace_header("From", "Someone Else <Zoe.Mueller@example.de>"),
    "custom header": _replace_header("X-Mailer", "Outlook"),
    "reply-to": _replace_header("Reply-To", "list@example.org"),
    "recipient order": _replace_header("Cc", "carol@example.org, Li <li.lei@EXAMPLE.cn>"),
}


@pytest.mark.parametrize("change", sorted(NOT_COMPARED))
def test_not_changed_by_what_is_not_compared(change: str) -> None:
    raw = _handmade()["alternative-with-files"]
    assert content_fingerprint(_edit(raw, NOT_COMPARED[change])) == content_fingerprint(raw)


# --------------------------------------------------------------------------------------------------
# fields


def test_fields_of_a_message() -> None:
    fields = fingerprint_fields(_handmade()["alternative-with-files"])
    assert fields["message_id"] == "alt-and-file@example.de"
    assert fields["subject"] == "Grüße aus München — ordre du jour ✓ and a subject long enough to be folded twice over"
    assert fields["from"] == "zoe.mueller@example.de"
    assert fields["to"] == ["alice@example.com", "bob@example.net"]
    assert fields["cc"] == ["carol@example.org", "li.lei@example.cn"]
    assert fields["date"] == "2021-03-04T09:00:00"
    assert fields["body"] == "Hallo, anbei die Übersicht & mehr."
    assert [name for name, _ in fields["attachments"]] == ["résumé.pdf", "Übersicht Q3.csv"]


def test_html_only_message_fields() -> None:
    fields = fingerprint_fields(_handmade()["html-related"])
    assert fields["body"] == "Today's picture:"  # the script is not text
    assert [name for name, _ in fields["attachments"]] == ["attachment-1.png", "attachment-2.bin"]


def test_attached_message_is_one_leaf_fingerprinted_by_content() -> None:
    raw = _handmade()["forwarded"]
    ((name, digest),) = fingerprint_fields(raw)["attachments"]
    assert name == "attachment-1.eml" and digest.startswith("rfc822:")
    assert fingerprint_fields(raw)["body"] == "see below"
    # the attached message is compared by its content: re-encoding it does not matter
    msg = _parse(raw)
    attached = next(p for _parent, p in _walk(msg) if p.get_content_type() == "message/rfc822")
    inner = attached.get_payload(0)
    inner.replace_header("Subject", "=?utf-8?b?dGhlIG9yaWdpbmFs?=")
    assert content_fingerprint(msg.as_bytes(policy=CRLF)) == content_fingerprint(raw)
    # but a change inside it does
    inner.replace_header("Subject", "not the original")
    assert content_fingerprint(msg.as_bytes(policy=CRLF)) != content_fingerprint(raw)


def test_base64_encoded_attached_message_is_read_as_a_message() -> None:
    raw = _handmade()["forwarded"]
    inner = b"From: original@example.net\r\nTo: someone@example.com\r\nSubject: the original\r\n" \
            b"Message-ID: <original@example.net>\r\nContent-Type: text/plain; charset=utf-8\r\n" \
            b"Content-Transfer-Encoding: 8bit\r\nMIME-Version: 1.0\r\n\r\noriginal text \xc3\xa4\r\n"
    encoded = (b"From: forwarder@example.com\r\nTo: you@example.org\r\nSubject: Fwd: the original\r\n"
               b"Message-ID: <forward@example.com>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
               b"see below\r\n--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n"
               b"Content-Disposition: attachment\r\n\r\n" + base64.encodebytes(inner).replace(b"\n", b"\r\n")
               + b"--b--\r\n")
    assert fingerprint_fields(encoded) == fingerprint_fields(raw)


@pytest.mark.parametrize(("html", "text"), [
    ("<p>a</p><p>b</p>", "a b"),
    ("<html><head><title>t</title><style>x{}</style></head><body>body</body></html>", "body"),
    ("<head><title>unclosed head</title><body>text", "text"),
    ("x&nbsp;&amp;&lt;y&#62;&eacute;", "x\xa0&<y>é"),
    ("<script>document.write('no')</script>yes<style>p{}</style>", "yes"),
    ("<b>unclosed <i>tags", "unclosed  tags"),
    ("<img alt='a > b' src=x>after<!-- a comment -->", "after"),
    ("<SCRIPT type=x>if (a<b) {}</Script >y<!DOCTYPE html><?xml ?>z", "y z"),
    ("a < b", "a  <  b"),
    ("text<!-- unclosed comment", "text"),
    ("", ""),
])
def test_html_text(html: str, text: str) -> None:
    assert html_text(html) == text


def test_dates_and_ids() -> None:
    raw = (b"Message-ID:\r\n  <  id.1@host  >\r\nDate: Sun, 31 Dec 2000 23:59:59 -0100\r\n"
           b"Subject: =?iso-8859-1?q?caf=E9?=   =?utf-8?b?4pyT?=\r\n   folded\r\n\r\nx\r\n")
    fields = fingerprint_fields(raw)
    assert fields["message_id"] == "id.1@host"
    assert fields["date"] == "2001-01-01T00:59:59"
    assert fields["subject"] == "café✓ folded"
    assert fingerprint_fields(b"Date: garbage\r\n\r\nx")["date"] == ""
    assert fingerprint_fields(b"Date: Mon, 1 Jan 1500 00:00:00 +0000\r\n\r\nx")["date"] == ""


def test_method_says_what_is_compared() -> None:
    for word in ("Message-ID", "subject", "From/To/Cc", "Date", "body", "attachment", "Bcc"):
        assert word in FINGERPRINT_METHOD


# --------------------------------------------------------------------------------------------------
# robustness


@cache
def hostile() -> dict[str, bytes]:
    found = {f"hostile-{h.name}": h.raw for h in hostile_messages()}
    found.update({f"sample-{name}": raw for name, raw in SAMPLES.items()})
    return found


def test_never_raises_on_hostile_mail() -> None:
    for name, raw in hostile().items():
        assert re.fullmatch(r"[0-9a-f]{64}", content_fingerprint(raw)), name


def test_never_raises_on_damaged_mail() -> None:
    rng = random.Random(5)
    sources = [*messages().values(), *SAMPLES.values()]
    for n in range(400):
        raw = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 20)):
            if not raw:
                break
            position = rng.randrange(len(raw))
            choice = rng.random()
            if choice < 0.4:
                raw[position] = rng.randrange(256)
            elif choice < 0.7:
                del raw[position:position + rng.randint(1, 200)]
            else:
                raw[position:position] = rng.choice([b"\r\n--", b"\r\n\r\n", b"=?utf-8?b?", b"Content-Type: ",
                                                     b"multipart/mixed; boundary=", b"\x00", b"\xff\xfe"])
        if n % 50 == 0:
            raw = raw[: rng.randrange(len(raw) + 1)]
        assert len(content_fingerprint(bytes(raw))) == 64


def test_absurd_nesting_falls_back_to_the_raw_bytes() -> None:
    inner = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for level in range(2000, 0, -1):
        boundary = f"b{level}".encode()
        inner = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n"
                 + inner + b"\r\n--" + boundary + b"--\r\n")
    raw = b"From: deep@old.example\r\nSubject: too deep\r\n" + inner
    fields = fingerprint_fields(raw)
    assert fields["subject"] == "too deep" and fields["from"] == "deep@old.example"
    assert [name for name, _ in fields["attachments"]] == ["message.eml"]
    assert fields == fingerprint_fields(raw.replace(b"\r\n", b"\n"))


def test_hostile_sizes_take_linear_time() -> None:
    """Inputs on which the email package's and html.parser's own parsers take minutes."""
    started = time.monotonic()
    semicolons = ";" * 200_000
    raw = (f"Content-Type: text/html; charset=\"{semicolons}\"\r\nFrom: {'(' * 100_000}\r\n"
           f"To: {', '.join(f'u{i}@example.com' for i in range(20_000))}\r\nSubject: {'=?utf-8?q?x?= ' * 20_000}\r\n"
           f"\r\n{'<!--' * 500_000}").encode()
    fields = fingerprint_fields(raw)
    assert len(fields["to"]) == 20_000 and fields["body"] == ""
    assert html_text("<" * 2_000_000).split() == ["<"] * 2_000_000
    assert time.monotonic() - started < 20  # each of these took from a minute to hours before
