"""A realistic, reproducible mailbox to migrate, loaded into a lab server over plain IMAP.

Why: a migrator's bugs hide in the awkward mail, not the average one — non-ASCII folder names and
subjects, nested folders, empty folders, keywords, drafts, multi-megabyte attachments, messages
without a Message-ID or without any header, shared Message-IDs and byte-identical duplicates that a
header-based tool would silently skip.  Everything is derived from ``CorpusSpec.seed`` so a failing
test can be rerun on exactly the same mail, and it is loaded through IMAP (not by writing files) so
the server assigns UIDs, INTERNALDATEs and flags the way it does for real mail.

Within a folder mail is appended in INTERNALDATE order, so UIDs ascend with dates as on a real
server.  MIME boundaries are drawn from the seed too (the email package would use the global random).

``mailbox_snapshot`` is the yardstick for a migration: per folder, the multiset of (body hash,
flags, INTERNALDATE) — which is what a faithful copy must preserve, independent of UIDs.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

from imapclient import IMAPClient  # type: ignore[import-untyped, unused-ignore]

from migrator.lab.dovecot import LabUser

__all__ = [
    "CORPUS_FOLDERS",
    "CorpusMessage",
    "CorpusSpec",
    "CorpusSummary",
    "cpython_sample_paths",
    "generate_corpus",
    "load_corpus",
    "mailbox_snapshot",
]

# Folder paths (hierarchy components); joined with the server's separator at load time.
CORPUS_FOLDERS: tuple[tuple[str, ...], ...] = (
    ("INBOX",),
    ("Sent",),
    ("Drafts",),
    ("Trash",),
    ("Projects",),
    ("Projects", "2026"),
    ("Projects", "2026", "Q3"),
    ("Références",),
    ("Привет мир",),
    ("Empty folder",),
)
_EMPTY_FOLDERS = {("Empty folder",)}
_UNSUBSCRIBED = {("Empty folder",)}

# Chunking for MULTIAPPEND: one command commits one batch; keep each under a few MB.
_CHUNK_MESSAGES = 100
_CHUNK_BYTES = 8 * 1024 * 1024
_FETCH_CHUNK = 200


@dataclass(frozen=True)
class CorpusSpec:
    """What to generate.  Each non-empty folder gets between half and 1.5 times
    ``messages_per_mailbox`` generated messages (drawn from ``seed``); INBOX also gets the duplicate
    pair and, if enabled, CPython's sample messages; ``large_attachments`` messages with a 1-3 MB
    attachment land in seed-chosen folders.  ``CorpusSummary.counts`` has the exact numbers."""

    messages_per_mailbox: int = 60
    large_attachments: int = 2
    include_cpython_samples: bool = True
    seed: int = 1


@dataclass(frozen=True)
class CorpusSummary:
    """What ``load_corpus`` appended: totals, folder names as on the server, per-folder counts and
    the sha256 of the byte-identical pair in INBOX."""

    messages: int
    bytes: int
    folders: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    duplicate_sha256: str = ""


@dataclass(frozen=True)
class CorpusMessage:
    """One message as it is APPENDed: exact bytes, flags and INTERNALDATE (timezone-aware)."""

    raw: bytes
    flags: tuple[str, ...]
    date: datetime


# --------------------------------------------------------------------------------------------------
# public API


def cpython_sample_paths() -> list[Path]:
    """CPython's real-world test messages (``test/test_email/data/msg_*.txt``), sorted by name."""
    data = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
    return sorted(data.glob("msg_*.txt"))


def generate_corpus(user: LabUser, spec: CorpusSpec) -> dict[tuple[str, ...], list[CorpusMessage]]:
    """What ``load_corpus`` appends, per folder path (see ``CORPUS_FOLDERS``), in APPEND order."""
    return _plan(spec, user)[0]


def load_corpus(host: str, port: int, user: LabUser, spec: CorpusSpec) -> CorpusSummary:
    """Create the corpus folders on the server and APPEND the generated mail; return what was loaded.

    Meant for a *source*-layout lab server (Maildir++, "." separator); nested folders are joined with
    whatever separator the server reports, so it also works on the target layout.  Every corpus
    folder except "Empty folder" is subscribed.
    """
    plan, duplicate = _plan(spec, user)
    client = IMAPClient(host, port, ssl=False, timeout=60)
    try:
        client.login(user.name, user.password)
        sep = _separator(client)
        existing = {name for _flags, _delim, name in client.list_folders()}
        subscribed = {name for _flags, _delim, name in client.list_sub_folders()}
        names: dict[tuple[str, ...], str] = {}
        for path in CORPUS_FOLDERS:
            name = sep.join(path)
            names[path] = name
            if name not in existing:
                client.create_folder(name)
                existing.add(name)
            # Like real mailboxes, not every folder is subscribed.
            if path not in _UNSUBSCRIBED and name not in subscribed:
                client.subscribe_folder(name)
        multi = client.has_capability("MULTIAPPEND")
        total_bytes = 0
        counts: dict[str, int] = {}
        for path in CORPUS_FOLDERS:
            mails = plan.get(path, [])
            counts[names[path]] = len(mails)
            total_bytes += sum(len(m.raw) for m in mails)
            _append_all(client, names[path], mails, multi)
        with contextlib.suppress(Exception):  # best effort: the data is committed
            client.logout()
    except BaseException:
        client.shutdown()
        raise
    return CorpusSummary(
        messages=sum(counts.values()),
        bytes=total_bytes,
        folders=[names[p] for p in CORPUS_FOLDERS],
        counts=counts,
        duplicate_sha256=hashlib.sha256(duplicate).hexdigest(),
    )


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def mailbox_snapshot(
    host: str, port: int, user: str, password: str, digest: Callable[[bytes], str] = _sha256
) -> dict[str, list[tuple[str, frozenset[str], datetime]]]:
    """What a faithful copy must preserve, independent of UIDs and of the order of APPENDs.

    Per selectable folder (decoded name): sorted (`digest` of BODY[], by default its sha256 hex; flags without \\Recent,
    INTERNALDATE as an aware UTC datetime).  UTC because servers keep the instant, not the offset
    given at APPEND (Dovecot's Maildir stores a file mtime), so only the instant can be compared.
    """
    client = IMAPClient(host, port, ssl=False, timeout=60)
    client.normalise_times = False  # keep the server's offsets: aware datetimes
    snapshot: dict[str, list[tuple[str, frozenset[str], datetime]]] = {}
    try:
        client.login(user, password)
        for flags, _delim, name in client.list_folders():
            attrs = {_text(f).lower() for f in flags}
            if "\\noselect" in attrs or "\\nonexistent" in attrs:
                continue
            client.select_folder(name, readonly=True)
            uids: list[int] = list(client.search("ALL"))
            entries: list[tuple[str, frozenset[str], datetime]] = []
            for i in range(0, len(uids), _FETCH_CHUNK):
                fetched = client.fetch(uids[i : i + _FETCH_CHUNK], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
                for data in fetched.values():
                    body: bytes = data[b"BODY[]"]
                    msg_flags = frozenset(_text(f) for f in data[b"FLAGS"] if _text(f).lower() != "\\recent")
                    when: datetime = data[b"INTERNALDATE"]
                    if when.tzinfo is None:  # should not happen with normalise_times = False
                        when = when.astimezone()
                    entries.append((digest(body), msg_flags, when.astimezone(UTC)))
            entries.sort(key=lambda e: (e[0], sorted(e[1]), e[2]))
            snapshot[_text(name)] = entries
            if client.has_capability("UNSELECT"):
                client.unselect_folder()
            else:
                client.close_folder()
        client.logout()
    except BaseException:
        client.shutdown()
        raise
    return snapshot


# --------------------------------------------------------------------------------------------------
# IMAP helpers


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _separator(client: Any) -> str:
    ns = client.namespace()
    personal = ns.personal or [("", ".")]
    sep = personal[0][1]
    return _text(sep) if sep else "."


def _chunks(mails: Sequence[CorpusMessage]) -> Iterator[list[CorpusMessage]]:
    chunk: list[CorpusMessage] = []
    size = 0
    for m in mails:
        if chunk and (len(chunk) >= _CHUNK_MESSAGES or size + len(m.raw) > _CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(m)
        size += len(m.raw)
    if chunk:
        yield chunk


def _append_all(client: Any, folder: str, mails: Sequence[CorpusMessage], multi: bool) -> None:
    if not mails:
        return
    if not multi:
        for m in mails:
            client.append(folder, m.raw, flags=m.flags, msg_time=m.date)
        return
    for chunk in _chunks(mails):
        client.multiappend(folder, [{"msg": m.raw, "flags": m.flags, "date": m.date} for m in chunk])


# --------------------------------------------------------------------------------------------------
# generation

_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Alice Martin", "alice.martin@example.com"),
    ("Bob O'Neil", "bob@example.net"),
    ("Zoë Müller", "zoe.mueller@example.de"),
    ("José Ñúñez", "jose@example.es"),
    ("Иван Петров", "ivan@example.ru"),
    ("李雷", "li.lei@example.cn"),
    ("Søren Kierkegård", "soren@example.dk"),
    ("Fatima Zahra", "fatima@example.ma"),
    ("", "noreply@notifications.example.org"),
    ("Chloé Dubois", "chloe.dubois@example.fr"),
    ("Project Bot", "bot+ci@build.example.com"),
    ("Ngozi Okafor", "ngozi@example.ng"),
)
_SUBJECTS: tuple[str, ...] = (
    "Quarterly report {n}",
    "Lunch on Friday?",
    "Réunion de lundi — ordre du jour",
    "Привет! Отчёт за {n} неделю",
    "Grüße aus München",
    "日本語の件名 {n}",
    "Invoice #{n} from ACME Corp",
    "[project-x] Build {n} failed",
    "Meeting notes: roadmap 2026",
    "Ünïcödé everywhere ✓ {n}",
    "A very long subject line that keeps going and going so that it has to be folded by any decent "
    "mail generator because it is longer than seventy-eight characters ({n})",
    "",
)
_PARAGRAPHS: tuple[str, ...] = (
    "Thanks for the update. I had a look at the numbers and they seem fine to me.",
    "Could you send me the latest version of the document before the meeting?",
    "Ci-joint le compte rendu de la réunion. N'hésitez pas à me faire part de vos remarques.",
    "Во вложении отчёт. Дайте знать, если что-то непонятно.",  # noqa: RUF001
    "Die Präsentation ist fertig; bitte bis Donnerstag prüfen.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "From the moment the build went red, nobody touched the deploy script.",  # "From " at line start
    ".\nA line with a single dot above (SMTP dot-stuffing trap).",
    "Prices: 5 € / 4 £ / 600 ¥ — see the attached sheet.",
    "会議は午後3時に始まります。",
)
_OFFSETS_MIN = (0, 60, 120, -300, -480, 330, 540, -210, 780, -600, 345)
_ATTACHMENTS: tuple[tuple[str, str, str], ...] = (
    ("report.csv", "text", "csv"),
    ("scan.pdf", "application", "pdf"),
    ("photo.png", "image", "png"),
    ("notes.txt", "text", "plain"),
    ("Übersicht Q3.xlsx", "application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("résumé.docx", "application", "vnd.openxmlformats-officedocument.wordprocessingml.document"),
)
_START = datetime(2019, 1, 1, tzinfo=UTC)
_SPAN_SECONDS = int((datetime(2026, 6, 30, tzinfo=UTC) - _START).total_seconds())


def _plan(spec: CorpusSpec, user: LabUser) -> tuple[dict[tuple[str, ...], list[CorpusMessage]], bytes]:
    samples: list[Path] = []
    if spec.include_cpython_samples:
        samples = cpython_sample_paths()
        if not samples:
            raise RuntimeError(
                "CorpusSpec.include_cpython_samples is set but CPython's email test messages "
                f"(test/test_email/data/msg_*.txt under {sysconfig.get_paths()['stdlib']}) are missing; "
                "install the Python test suite (e.g. Debian's libpython3.11-testsuite) or set "
                "include_cpython_samples=False"
            )
    rng = random.Random(spec.seed)
    me = ("Lab User", f"{user.name}@example.org")
    gen = _Generator(rng, me)
    plan: dict[tuple[str, ...], list[CorpusMessage]] = {}
    filled = [p for p in CORPUS_FOLDERS if p not in _EMPTY_FOLDERS]
    m = spec.messages_per_mailbox
    for path in filled:
        n = rng.randint(max(1, m // 2), max(1, m + m // 2)) if m > 0 else 0
        plan[path] = [gen.message(path) for _ in range(n)]
    for _ in range(spec.large_attachments):
        path = rng.choice([p for p in filled if p != ("Drafts",)])
        plan[path].append(gen.message(path, large=True))
    # A real duplicate: the same bytes twice in one folder (a migrator must copy both).
    dup = gen.message(("INBOX",))
    plan[("INBOX",)] += [dup, CorpusMessage(dup.raw, dup.flags, dup.date)]
    for sample in samples:
        raw = sample.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        plan[("INBOX",)].append(CorpusMessage(raw, gen.flags(("INBOX",)), _sample_date(raw, gen)))
    for mails in plan.values():
        mails.sort(key=lambda x: x.date)  # stable: the duplicate pair stays adjacent
    return plan, dup.raw


def _sample_date(raw: bytes, gen: _Generator) -> datetime:
    fallback = gen.date()
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
    for line in head.split("\r\n"):
        if line.lower().startswith("date:"):
            try:
                when = parsedate_to_datetime(line[5:].strip())
            except (TypeError, ValueError, IndexError):
                return fallback
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when if when.year >= 1980 else fallback
    return fallback


class _Generator:
    def __init__(self, rng: random.Random, me: tuple[str, str]) -> None:
        self.rng = rng
        self.me = me
        self.count = 0
        self.message_ids: list[str] = []

    def date(self) -> datetime:
        offset = timezone(timedelta(minutes=self.rng.choice(_OFFSETS_MIN)))
        return (_START + timedelta(seconds=self.rng.randrange(_SPAN_SECONDS))).astimezone(offset)

    def flags(self, path: tuple[str, ...]) -> tuple[str, ...]:
        r = self.rng.random
        flags: list[str] = []
        folder = path[0]
        if folder == "Drafts":
            flags.append("\\Draft")
            if r() < 0.3:
                flags.append("\\Seen")
        elif folder == "Sent":
            flags.append("\\Seen")
            if r() < 0.1:
                flags.append("$Forwarded")
        else:
            if r() < 0.7:
                flags.append("\\Seen")
            if r() < 0.2:
                flags.append("\\Answered")
            if r() < 0.1:
                flags.append("\\Flagged")
            if r() < 0.1:
                flags.append("$Forwarded")
            if r() < 0.12:
                flags.append("Work")
            if r() < 0.06:
                flags.append("$label1")
        return tuple(flags)

    def _address(self, person: tuple[str, str]) -> Address:
        local, domain = person[1].split("@")
        return Address(person[0], local, domain)

    def message(self, path: tuple[str, ...], *, large: bool = False) -> CorpusMessage:
        rng = self.rng
        self.count += 1
        n = self.count
        sent = path[0] in ("Sent", "Drafts")
        others = rng.sample(_PEOPLE, k=rng.randint(1, 3))
        sender = self.me if sent else others[0]
        recipients = others if sent else [self.me, *others[1:]]
        when = self.date()

        msg = EmailMessage(policy=SMTP)
        msg["From"] = self._address(sender)
        msg["To"] = [self._address(p) for p in recipients[:2]]
        if len(recipients) > 2:
            msg["Cc"] = self._address(recipients[2])
        subject = rng.choice(_SUBJECTS).format(n=n)
        reply = bool(self.message_ids) and rng.random() < 0.25
        if reply:
            subject = ("Re: " if rng.random() < 0.8 else "Fwd: ") + subject
        msg["Subject"] = subject
        if not (path[0] == "Drafts" and rng.random() < 0.3):
            msg["Date"] = format_datetime(when)
        if rng.random() > 0.04:  # a few generated messages have no Message-ID either
            mid = f"<{rng.getrandbits(64):016x}.{n}@{sender[1].split('@')[1]}>"
            msg["Message-ID"] = mid
            self.message_ids.append(mid)
        if reply:
            parent = rng.choice(self.message_ids[:-1] or self.message_ids)
            msg["In-Reply-To"] = parent
            msg["References"] = parent
        if rng.random() < 0.2:
            msg["X-Mailer"] = rng.choice(
                ["Thunderbird 115.3", "Microsoft Outlook 16.0", "Apple Mail (2.3731)"]
            )

        text = (
            "\n\n".join(rng.sample(_PARAGRAPHS, k=rng.randint(1, 4))) + f"\n\n-- \n{sender[0] or 'Robot'}\n"
        )
        cte = rng.choice([None, None, "quoted-printable", "base64"])
        kind = rng.random()
        if cte is None:
            msg.set_content(text)  # 7bit or 8bit, as the text needs
        else:
            msg.set_content(text, cte=cte)
        if kind >= 0.4 or large:
            if kind < 0.75 or large:
                html = "<html><body>" + "".join(f"<p>{p}</p>" for p in text.split("\n\n")) + "</body></html>"
                msg.add_alternative(html, subtype="html")
            if kind >= 0.75 or large:
                name, maintype, subtype = rng.choice(_ATTACHMENTS)
                size = rng.randint(200, 40_000)
                if maintype == "text":
                    body = "\n".join(f"{i};{rng.randint(0, 10**6)};ligne {i}" for i in range(size // 20))
                    msg.add_attachment(body, subtype=subtype, filename=name)
                else:
                    msg.add_attachment(rng.randbytes(size), maintype=maintype, subtype=subtype, filename=name)
            if large:
                blob = rng.randbytes(rng.randint(1_000_000, 3_000_000))
                msg.add_attachment(
                    blob, maintype="application", subtype="octet-stream", filename=f"archive-{n}.bin"
                )
        # The email package draws MIME boundaries from the global random module: fix them from the seed.
        for part in msg.walk():
            if part.is_multipart():
                part.set_boundary(f"=_lab_{rng.getrandbits(64):016x}")
        raw = msg.as_bytes(policy=SMTP)
        # INTERNALDATE: delivery a little after the Date header, seen from another timezone.
        received = (when + timedelta(seconds=rng.randint(1, 900))).astimezone(
            timezone(timedelta(minutes=rng.choice(_OFFSETS_MIN)))
        )
        return CorpusMessage(raw, self.flags(path), received)
