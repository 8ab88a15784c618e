"""Benchmark: how fast migrator copies, against what the servers can do, measured in one run on one corpus.

What it does (everything under bench-run/, servers on 127.0.0.1 only, stopped by pid whatever happens):

0. Mounts a new ext4 filesystem (a sparse image on a loop device) on bench-run/ for the run, unless
   ``--storage dir``; it stays mounted with the logs and JSON until the next run.  ext4 passes over inodes
   freed in the last minutes when it allocates new ones (fs/ext4/ialloc.c, recently_deleted), and a bench run
   deletes hundreds of thousands of files: right after one, the target server spent 10 CPU-seconds instead of
   2-4 on the same 50,000 APPENDs, and every measurement depended on how long ago the last run ended.
1. Starts a private Dovecot pair from migrator.lab (source: Maildir, "." separator; target: sdbox, "/",
   Exchange-style folder names) with ``mail_fsync`` as given: by default ``optimized``, Dovecot's own default
   and what a production target runs (a saved message is on disk before the server says OK); ``never``, the
   test lab's setting, leaves the servers nothing to wait for, and on two cores shared by both servers and
   the client their CPU is then the limit of every copy path.
2. Generates a corpus from the parameters (its own generator: sizes follow ``--size-mix``) and loads it into
   the source with MULTIAPPEND.  Generating and loading are not part of any measurement.
3. Measures, with the same number of parallel connections as migrator's ``--workers``:
   (b)  the source's raw FETCH rate: ``UID FETCH 1:* BODY.PEEK[]`` of every folder, bytes kept in memory;
   (a)  the target's raw APPEND ceiling: MULTIAPPEND (LITERAL+) of those bytes into empty target users, in
        migrator's batches (CHUNK_MESSAGES / CHUNK_BYTES from migrator.engine.worker);
   (a1) for comparison, one APPEND per message (a round trip each) on a sample of the corpus;
   (b2), (a2) the same fetch and MULTIAPPEND through migrator's own IMAP connector (imapclient), from memory:
        the client side of migrator's path without its engine (ledger, hashing, listing);
   (c)  a migrator pass (``init``/``discover``/``plan create`` untimed, then ``run --stage prestage``
        timed as the wall clock of the subprocess; the run's own msg/s line is parsed too);
   (d)  a no-op delta right after (c), timed like (c) (a delta's wall clock is mostly the fixed start-up, so
        the run's own engine time is reported beside it, and the start-up alone: ``migrator --help``);
   (c') Dovecot's own path, ``doveadm backup -R -u USER imapc:`` into other empty target users, N at a time
        (doveadm reads the source over IMAP and writes the target's storage itself, not through IMAP APPEND,
        so it can beat (a));
   (e)  a delta after adding 1 % new messages to the source;
   (f)  peak RSS of each migrator run: the sum of the high-water marks (VmHWM) of the run process and the
        worker processes it forks, read from /proc every 50 ms (PSS beside it: pages a fork shares count
        once; see HwmPoller).  Not ru_maxrss: Linux carries the high-water mark of the pre-exec address space
        (a fork or vfork of this process, which holds the whole corpus) into the child's ru_maxrss, so
        wait4's and RUSAGE_CHILDREN's figure is max(this process, migrator); it is kept in the JSON as an
        upper bound.
   Every step starts after a sync (untimed): with mail_fsync = never the dirty pages of one step were
   written back during the next, and whichever step met the kernel's writeback stalled (a no-op delta after
   the large corpus's full pass took 2.7 s instead of 0.7 s).
   With ``--rounds N``, (a), (c), (d) and (c') are measured N times in turn, each round into emptied target
   users with migrator's store as (c) first found it, and each is reported as its median round: a disk
   that fsyncs swings from one minute to the next (the same (a) took 21 s and 36 s in two runs). The
   order turns by one step a round (Bench.measure_round).
4. Verifies that the migrator target equals the source (per folder: SHA-256 of the bytes, flags,
   INTERNALDATE, like tests/imap_fixtures.py Lab.assert_exact_copy) and that the reference copies (a) and
   (c') hold every message; exits 1 when not.

Prints a table and writes the same as JSON (``--json-out``, default bench-run/bench-results.json).
"""

from __future__ import annotations

import argparse
import base64
import compileall
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

from imapclient import IMAPClient, imap_utf7
from imapclient.datetime_util import datetime_to_INTERNALDATE

from migrator.config import load_config
from migrator.connectors.base import open_mailbox
from migrator.connectors.registry import make_endpoint
from migrator.engine.worker import CHUNK_BYTES, CHUNK_MESSAGES
from migrator.lab.corpus import mailbox_snapshot
from migrator.lab.dovecot import (
    CONDSTORE_ONLY_CAPABILITIES,
    DOVEADM,
    DOVECOT,
    DovecotServer,
    LabUser,
    ensure_dovecot_installed,
)
from migrator.model import Login, MessageRef, RawMessage, Secret

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "bench-run"
IMAGE = REPO / "bench-run.img"  # the filesystem mounted on ROOT (step 0)
SOURCE_PASSWORD = "bench-source-pw"  # one for every source user: imapc_password is one setting for all users
TARGET_PASSWORD = "bench-target-pw"

# Source folders (Maildir++, "." separator) in creation order (parents first); --folders N takes the first N.
SOURCE_FOLDERS = ("INBOX", "Sent", "Trash", "Projects", "Projects.2026", "Clients", "Références", "Newsletters",
                  "Receipts", "Travel", "Clients.ACME", "Projects.2026.Q3")
FOLDER_WEIGHTS = {"INBOX": 6, "Sent": 3, "Trash": 1}  # others: 2
# The target's names for the source's special folders (as tests/imap_fixtures.py expects them).
ROLE_NAMES = {"Sent": "Sent Items", "Trash": "Deleted Items", "Junk": "Junk Email"}
SIZE_MIXES = {
    # name: (share of big messages, normal range, big range), bytes, drawn log-uniformly
    "small": (0.0, (1_500, 10_000), (1_500, 10_000)),
    "mixed": (0.03, (2_000, 50_000), (200_000, 2_000_000)),
    "large": (0.30, (50_000, 200_000), (200_000, 2_000_000)),
}
# What Dovecot's migration documentation recommends for imapc sources (used by (c') only).
DSYNC_TUNING = "imapc_features = rfc822.size fetch-headers\nmail_prefetch_count = 20\n"
SINGLE_APPEND_SAMPLE = 600  # about this many messages for (a1)
ROUND_STEPS = ("a", "c", "d", "c_prime")  # measured again in each round (--rounds)
ROUND_PAUSE_SECONDS = 61  # after emptying the target users: see Bench.start_round
T = TypeVar("T")
R = TypeVar("R")


def target_folder(source_folder: str) -> str:
    parts = source_folder.split(".")
    parts[0] = ROLE_NAMES.get(parts[0], parts[0])
    return "/".join(parts)


def source_folders(count: int) -> list[str]:
    names = list(SOURCE_FOLDERS[:count])
    names += [f"Folder {i:02d}" for i in range(len(names) + 1, count + 1)]
    return names


# --------------------------------------------------------------------------------------------------
# corpus


@dataclass
class Message:
    raw: bytes
    flags: tuple[str, ...]
    date: datetime


Mailbox = dict[str, list[Message]]  # source folder name -> messages in APPEND (= UID) order
_PEOPLE = (("Alice Martin", "alice.martin@example.com"), ("Zoë Müller", "zoe.mueller@example.de"),
           ("José Núñez", "jose@example.es"), ("李雷", "li.lei@example.cn"), ("Project Bot", "bot@build.example.com"),
           ("Chloé Dubois", "chloe.dubois@example.fr"), ("", "noreply@notifications.example.org"))
_SUBJECTS = ("Quarterly report {n}", "Réunion de lundi, ordre du jour", "Invoice #{n} from ACME Corp",
             "[project-x] Build {n} failed", "Grüße aus München", "日本語の件名 {n}", "Lunch on Friday?")
_PARAGRAPHS = (
    "Thanks for the update. I had a look at the numbers and they seem fine to me.",
    "Could you send me the latest version of the document before the meeting?",
    "Ci-joint le compte rendu de la réunion. N'hésitez pas à me faire part de vos remarques.",
    "Die Präsentation ist fertig; bitte bis Donnerstag prüfen.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "From the moment the build went red, nobody touched the deploy script.",
    "会議は午後3時に始まります。",
)
_OFFSETS_MIN = (0, 60, 120, -300, -480, 330, 540, -210, 780)
_START = datetime(2019, 1, 1, tzinfo=UTC)
_SPAN = int((datetime(2026, 6, 30, tzinfo=UTC) - _START).total_seconds())


class Generator:
    """Seeded mail: headers, a UTF-8 text part and, above a few KB, a base64 attachment of random bytes."""

    def __init__(self, seed: int, mailbox: int, user: str, mix: str) -> None:
        self.rng = random.Random(seed * 100_003 + mailbox)
        self.mailbox = mailbox
        self.user = user
        self.mix = SIZE_MIXES[mix]
        self.count = 0

    def size(self) -> int:
        share, normal, big = self.mix
        low, high = big if self.rng.random() < share else normal
        return int(math.exp(self.rng.uniform(math.log(low), math.log(high))))

    def flags(self, folder: str) -> tuple[str, ...]:
        r = self.rng.random
        if folder == "Sent":
            return ("\\Seen",)
        flags = [f for f, p in (("\\Seen", 0.75), ("\\Answered", 0.15), ("\\Flagged", 0.05), ("$Forwarded", 0.05),
                                ("Work", 0.05)) if r() < p]
        return tuple(flags)

    def date(self, start: datetime = _START, span: int = _SPAN) -> datetime:
        tz = timezone(timedelta(minutes=self.rng.choice(_OFFSETS_MIN)))
        return (start + timedelta(seconds=self.rng.randrange(span))).astimezone(tz)

    def message(self, folder: str, date: datetime) -> Message:
        rng = self.rng
        self.count += 1
        n = self.count
        size = self.size()
        me = f"Bench User <{self.user}@example.org>"
        name, addr = rng.choice(_PEOPLE)
        other = f"{name} <{addr}>" if name else addr
        sender, to = (me, other) if folder == "Sent" else (other, me)
        head = (f"From: {sender}\r\nTo: {to}\r\nSubject: {rng.choice(_SUBJECTS).format(n=n)}\r\n"
                f"Date: {format_datetime(date)}\r\n"
                f"Message-ID: <{self.mailbox}.{n}.{rng.getrandbits(48):012x}@bench.example>\r\nMIME-Version: 1.0\r\n")
        text_budget = size - len(head.encode()) - 120
        attach = size > 6_000
        if attach:
            text_budget = rng.randint(800, 3_000)
        paragraphs: list[str] = []
        length = 0
        while length < text_budget:
            p = rng.choice(_PARAGRAPHS)
            paragraphs.append(p)
            length += len(p.encode()) + 4
        text = "\r\n\r\n".join(paragraphs).encode() + b"\r\n"
        text_headers = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        if not attach:
            raw = head.encode() + text_headers + b"\r\n" + text
        else:
            boundary = f"=_bench_{rng.getrandbits(64):016x}".encode()
            prefix = (head.encode() + b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
                      + b"--" + boundary + b"\r\n" + text_headers + b"\r\n" + text
                      + b"--" + boundary + b"\r\nContent-Type: application/octet-stream; name=\"data-"
                      + str(n).encode() + b'.bin"\r\nContent-Disposition: attachment; filename="data-'
                      + str(n).encode() + b'.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n')
            suffix = b"--" + boundary + b"--\r\n"
            encoded_budget = max(76, size - len(prefix) - len(suffix))
            blob = rng.randbytes(encoded_budget * 57 // 78)
            raw = prefix + base64.encodebytes(blob).replace(b"\n", b"\r\n") + suffix
        return Message(raw, self.flags(folder), date)

    def mailbox_content(self, folders: Sequence[str], messages: int) -> Mailbox:
        weights = [FOLDER_WEIGHTS.get(f, 2) for f in folders]
        counts = Counter(self.rng.choices(list(folders), weights, k=messages))
        content: Mailbox = {}
        for folder in folders:
            dates = sorted((self.date() for _ in range(counts[folder])), key=lambda d: d.astimezone(UTC))
            content[folder] = [self.message(folder, d) for d in dates]  # UIDs ascend with dates
        return content


def corpus_stats(corpus: dict[str, Mailbox]) -> dict[str, Any]:
    sizes = sorted(len(m.raw) for box in corpus.values() for msgs in box.values() for m in msgs)
    return {"messages": len(sizes), "bytes": sum(sizes), "mean_bytes": round(sum(sizes) / max(1, len(sizes))),
            "median_bytes": sizes[len(sizes) // 2] if sizes else 0, "max_bytes": sizes[-1] if sizes else 0,
            "over_200KB": sum(1 for s in sizes if s >= 200_000)}


# --------------------------------------------------------------------------------------------------
# a minimal IMAP client: literals out with LITERAL+ and no round trip per message, literals in straight
# from a buffered socket.  Used for loading the corpus and for the raw measurements (a), (a1) and (b).


class ImapError(RuntimeError):
    pass


@dataclass(frozen=True)
class Literal:
    data: bytes


_LITERAL_AT_END = re.compile(rb"\{(\d+)\}\r\n$")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
Unit = tuple[list[bytes], list[bytes]]  # text segments, literals of one response


def quoted(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def mailbox_name(name: str) -> bytes:
    return quoted(imap_utf7.encode(name).decode("ascii"))


class RawImap:
    def __init__(self, host: str, port: int, user: str, password: str, timeout: float = 600.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb", buffering=1 << 20)
        self.counter = 0
        self.capabilities: set[str] = set()
        if not self.reader.readline().startswith(b"* OK"):
            raise ImapError(f"127.0.0.1:{port} did not greet")
        self.command(b"LOGIN", quoted(user), quoted(password))
        for texts, _ in self.command(b"CAPABILITY"):
            if texts[0].startswith(b"* CAPABILITY "):
                self.capabilities = set(texts[0][13:].decode().upper().split())

    def close(self) -> None:
        with contextlib.suppress(OSError, ImapError):
            self.command(b"LOGOUT")
        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()

    def __enter__(self) -> RawImap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_unit(self) -> Unit:
        texts: list[bytes] = []
        literals: list[bytes] = []
        while True:
            line = self.reader.readline()
            if not line:
                raise ImapError("connection closed by the server")
            match = _LITERAL_AT_END.search(line)
            if match is None:
                texts.append(line.rstrip(b"\r\n"))
                return texts, literals
            texts.append(line[: match.start()])
            size = int(match.group(1))
            data = self.reader.read(size)
            if len(data) != size:
                raise ImapError("connection closed inside a literal")
            literals.append(data)

    def command(self, *parts: bytes | Literal, allow_no: bool = False) -> list[Unit]:
        """Send one command; return its untagged responses. LITERAL+ when offered: the command goes out whole."""
        self.counter += 1
        tag = b"b%d" % self.counter
        sync = "LITERAL+" not in self.capabilities
        out: list[bytes] = [tag]
        for part in parts:
            out.append(b" ")
            if isinstance(part, Literal):
                out.append(b"{%d}\r\n" % len(part.data) if sync else b"{%d+}\r\n" % len(part.data))
                if sync:  # wait for the continuation before every literal
                    self.sock.sendall(b"".join(out))
                    out = []
                    texts, _ = self._read_unit()
                    if not texts[0].startswith(b"+"):
                        raise ImapError(texts[0].decode(errors="replace"))
                out.append(part.data)
            else:
                out.append(part)
        out.append(b"\r\n")
        self.sock.sendall(b"".join(out))
        untagged: list[Unit] = []
        while True:
            unit = self._read_unit()
            first = unit[0][0]
            if first.startswith(tag + b" "):
                status = first[len(tag) + 1:].split(b" ", 1)[0]
                if status == b"OK" or (allow_no and status == b"NO"):
                    return untagged
                raise ImapError(f"{parts[0].decode() if isinstance(parts[0], bytes) else parts[0]}: "
                                f"{first.decode(errors='replace')}")
            if first.startswith(b"*"):
                untagged.append(unit)

    def create(self, folder: str) -> None:
        self.command(b"CREATE", mailbox_name(folder), allow_no=True)  # NO [ALREADYEXISTS] is fine

    def append(self, folder: str, messages: Sequence[Message]) -> None:
        if len(messages) > 1 and "MULTIAPPEND" not in self.capabilities:
            raise ImapError("the server does not offer MULTIAPPEND")
        parts: list[bytes | Literal] = [b"APPEND", mailbox_name(folder)]
        for m in messages:
            parts += [b"(" + " ".join(m.flags).encode() + b")", quoted(datetime_to_INTERNALDATE(m.date)),
                      Literal(m.raw)]
        self.command(*parts)

    def fetch_all(self, folder: str) -> list[bytes]:
        """Every message body of a folder in UID order, in one UID FETCH 1:* BODY.PEEK[]."""
        exists = 0
        for texts, _ in self.command(b"EXAMINE", mailbox_name(folder)):
            match = re.match(rb"\* (\d+) EXISTS", texts[0])
            if match:
                exists = int(match.group(1))
        if not exists:
            return []
        bodies: list[tuple[int, bytes]] = []
        for texts, literals in self.command(b"UID", b"FETCH", b"1:*", b"(BODY.PEEK[])"):
            uid = _FETCH_UID.search(b" ".join(texts))
            if literals and uid:
                bodies.append((int(uid.group(1)), literals[0]))
        return [body for _uid, body in sorted(bodies)]


def chunks(messages: Sequence[Message], max_count: int = CHUNK_MESSAGES,
           max_bytes: int = CHUNK_BYTES) -> Iterator[list[Message]]:
    """Batches as migrator makes them (migrator.engine.diff.chunk_refs): bounded by count and bytes."""
    current: list[Message] = []
    size = 0
    for m in messages:
        if current and (len(current) >= max_count or size + len(m.raw) > max_bytes):
            yield current
            current, size = [], 0
        current.append(m)
        size += len(m.raw)
    if current:
        yield current


# --------------------------------------------------------------------------------------------------
# measurements


@dataclass
class Step:
    key: str
    label: str
    messages: int
    bytes: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def msg_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "messages": self.messages, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "messages_per_second": round(self.msg_s, 1),
                "mb_per_second": round(self.mb_s, 2), **self.extra}


_RUN_LINE = re.compile(r"copied (\d+) messages \(([\d.]+) MB\) in ([\d.]+)s \((\d+) msg/s, ([\d.]+) MB/s\)")


class HwmPoller(threading.Thread):
    """Peak memory of a `migrator run` and the worker processes it forks, polled from /proc: the run's own
    VmHWM (the kernel's high-water mark: exact), the sum over the process tree of each process's VmHWM
    (pages a fork shares with its parent count once per process, and the peaks need not coincide: an upper
    bound, and exact for one process), and the highest sum of PSS seen (shared pages split between their
    users: the actual footprint, sampled).

    The poll must not slow what it measures (the ceiling and dsync run unpolled): PSS needs
    /proc/PID/smaps_rollup, which walks every page table under the process's mmap lock, and read for the
    tree every 20 ms it made the run it measured slower (default corpus, six alternating runs each, median
    wall: 3.29 s polled so, 3.08 s not polled). VmHWM comes from /proc/PID/status (the kernel's counters, no
    page walk), read every 50 ms, and PSS every half second."""

    POLL_SECONDS = 0.05
    PSS_EVERY = 10  # polls

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.hwm_kb: dict[int, int] = {}  # by process, the last VmHWM read before it ended
        self.tree_pss_kb = 0
        self.done = threading.Event()

    @property
    def peak_kb(self) -> int:
        return self.hwm_kb.get(self.pid, 0)

    @property
    def tree_rss_kb(self) -> int:
        return sum(self.hwm_kb.values())

    def run(self) -> None:
        polls = 0
        while not self.done.is_set():
            tree = [self.pid, *_children(self.pid)]
            for pid in tree:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), _status_kb(pid, "VmHWM:"))
            if polls % self.PSS_EVERY == 0:
                self.tree_pss_kb = max(self.tree_pss_kb, sum(_pss_kb(pid) for pid in tree))
            polls += 1
            self.done.wait(self.POLL_SECONDS)


def _pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _status_kb(pid: int, field_name: str) -> int:
    """A field of /proc/PID/status in KB; 0 for a process that has gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workers: int = args.workers
        self.servers: list[DovecotServer] = []
        self.children: list[subprocess.Popen[bytes]] = []
        self.pools: list[ThreadPoolExecutor] = []
        self.steps: dict[str, Step] = {}
        self.rounds: list[dict[str, Step]] = []  # (a), (c), (d), (c') of each round (--rounds)
        self.rss: dict[str, dict[str, float]] = {}
        self.problems: list[str] = []
        self.notes: dict[str, Any] = {}
        self.names = [f"box{i + 1:02d}" for i in range(args.mailboxes)]
        self._cpu_at_start: dict[str, float] = {}
        self.cpu_used: dict[str, float] = {}  # by party, over the last timed step (stop_clock)
        self.logs = ROOT / "logs"
        self.project = ROOT / "project"

    # ---------------------------------------------------------------------------------- plumbing

    def say(self, text: str) -> None:
        print(text, flush=True)

    def parallel(self, items: Sequence[T], fn: Callable[[T], R], workers: int | None = None) -> list[R]:
        """fn over items with `workers` threads (default: --workers); the first failure is raised."""
        pool = ThreadPoolExecutor(max_workers=workers or self.workers, thread_name_prefix="bench")
        self.pools.append(pool)
        try:
            futures = [pool.submit(fn, item) for item in items]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def start_child(self, cmd: Sequence[str], log: Path, cwd: Path | None = None,
                    env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.children.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.children:
            if proc.returncode is None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()  # by the master's pid (and its process group)
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        if not self.args.keep_data:
            for sub in ("source", "target"):
                shutil.rmtree(ROOT / sub / "home", ignore_errors=True)

    # ---------------------------------------------------------------------------------- set-up

    def fresh_filesystem(self) -> None:
        """Step 0 of the module docstring: bench-run/ on a new ext4, or, with --storage dir or where it cannot be
        mounted (no root, no loop device), the directory as it is, said in the output and the JSON. The
        filesystem stays mounted after the run, with the logs and the JSON; the next run replaces it."""
        while subprocess.run(["umount", str(ROOT)], capture_output=True, check=False).returncode == 0:
            pass  # an interrupted or concurrent run can leave mounts stacked on it
        IMAGE.unlink(missing_ok=True)  # one file: deleting it frees no inodes the next allocations would skip
        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir(parents=True)
        self.notes["storage"] = "directory on the machine's filesystem"
        if self.args.storage == "dir":
            return
        steps = [["truncate", "-s", "64G", str(IMAGE)],  # sparse: only what is written takes space
                 ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(IMAGE)],
                 ["mount", "-o", "loop", str(IMAGE), str(ROOT)]]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                IMAGE.unlink(missing_ok=True)
                self.say(f"bench: cannot make a fresh filesystem ({' '.join(step[:2])}: "
                         f"{(result.stderr or result.stdout).strip()}); measuring on the directory as it is")
                return
        os.chmod(ROOT, 0o755)
        self.notes["storage"] = f"a new ext4 filesystem made for this run ({IMAGE.name}, sparse, on a loop device)"
        self.say(f"storage: {self.notes['storage']}")

    def start_servers(self) -> None:
        fsync = f"mail_fsync = {self.args.mail_fsync}\n"
        capabilities = CONDSTORE_ONLY_CAPABILITIES if self.args.source_condstore_only else None
        self.source = DovecotServer(root=ROOT / "source", name="bench-source", layout="source",
                                    users=[LabUser(n, SOURCE_PASSWORD) for n in self.names], extra_config=fsync,
                                    capabilities=capabilities)
        self.servers.append(self.source)
        self.source.start()
        # One target server for every copy, so all of them write to the same storage with the same settings:
        # raw-boxNN (a), one-boxNN (a1), con-boxNN (a2), mig-boxNN (c, d, e) and boxNN (c'): dsync's
        # imapc_user = %u must be the source user's name.
        target_users = [LabUser(f"{prefix}{n}", TARGET_PASSWORD) for prefix in ("raw-", "one-", "con-", "mig-", "")
                        for n in self.names]
        imapc = (f"imapc_host = 127.0.0.1\nimapc_port = {self.source.port}\nimapc_user = %u\n"
                 f"imapc_password = {SOURCE_PASSWORD}\n{DSYNC_TUNING}")
        self.target = DovecotServer(root=ROOT / "target", name="bench-target", layout="target", users=target_users,
                                    extra_config=fsync + imapc)
        self.servers.append(self.target)
        self.target.start()
        self.say(f"source: Dovecot {self.notes['dovecot']} on 127.0.0.1:{self.source.port} (Maildir, '.')"
                 + (", advertising CONDSTORE without QRESYNC" if capabilities else ""))
        self.say(f"target: Dovecot on 127.0.0.1:{self.target.port} (sdbox, '/', Exchange-style names)")
        self.say(f"dsync (c'): target config has imapc_host/port/user = %u/password, "
                 f"{DSYNC_TUNING.strip().replace(chr(10), ', ')}")
        self.say(f"mail_fsync = {self.args.mail_fsync} on both servers"
                 + (" (the lab's default: the servers do not fsync)" if self.args.mail_fsync == "never" else ""))

    def generate(self) -> None:
        started = time.perf_counter()
        folders = source_folders(self.args.folders)
        self.generators = {name: Generator(self.args.seed, i, name, self.args.size_mix)
                           for i, name in enumerate(self.names)}
        self.corpus = {name: gen.mailbox_content(folders, self.args.messages) for name, gen in self.generators.items()}
        self.folders = folders
        stats = corpus_stats(self.corpus)
        self.notes["corpus"] = {**stats, "folders": folders, "size_mix": self.args.size_mix,
                                "generate_seconds": round(time.perf_counter() - started, 2)}
        self.say(f"corpus: {len(self.names)} mailboxes x {self.args.messages} messages in {len(folders)} folders, "
                 f"{stats['bytes'] / 1e6:.1f} MB ({self.args.size_mix}: mean {stats['mean_bytes'] / 1e3:.1f} KB, "
                 f"median {stats['median_bytes'] / 1e3:.1f} KB, {stats['over_200KB']} of 200 KB or more, largest "
                 f"{stats['max_bytes'] / 1e6:.2f} MB), generated in {time.perf_counter() - started:.1f}s")

    def load_source(self) -> None:
        started = time.perf_counter()

        def load(name: str) -> None:
            with RawImap(self.source.host, self.source.port, name, SOURCE_PASSWORD) as imap:
                for folder in self.folders:
                    imap.create(folder)
                    for chunk in chunks(self.corpus[name][folder]):
                        imap.append(folder, chunk)

        self.parallel(self.names, load)
        self.notes["corpus"]["load_seconds"] = round(time.perf_counter() - started, 2)
        self.say(f"loaded the source in {time.perf_counter() - started:.1f}s (not measured)")

    # ---------------------------------------------------------------------------------- raw paths

    def measure_fetch(self) -> None:
        """(b): UID FETCH 1:* BODY.PEEK[] of every folder; the bytes replace the generated ones (checked equal)."""
        def fetch(name: str) -> dict[str, list[bytes]]:
            with RawImap(self.source.host, self.source.port, name, SOURCE_PASSWORD) as imap:
                return {folder: imap.fetch_all(folder) for folder in self.folders}

        started = self.start_clock()
        fetched = self.parallel(self.names, fetch)
        seconds = self.stop_clock(started)
        count = size = 0
        for name, folders in zip(self.names, fetched, strict=True):
            for folder, bodies in folders.items():
                generated = self.corpus[name][folder]
                if [m.raw for m in generated] != bodies:
                    raise SystemExit(f"bench: the source's {name} {folder!r} does not hold the generated messages")
                for message, body in zip(generated, bodies, strict=True):
                    message.raw = body  # keep one copy: the fetched bytes
                count += len(bodies)
                size += sum(len(b) for b in bodies)
        self.record(Step("b", "(b) source raw UID FETCH BODY.PEEK[]", count, size, seconds))

    def measure_append(self) -> None:
        """(a): MULTIAPPEND from memory in migrator's batches into empty users raw-boxNN."""
        self.prepare_target_folders("raw-")

        def append(name: str) -> None:
            with RawImap(self.target.host, self.target.port, f"raw-{name}", TARGET_PASSWORD) as imap:
                for folder in self.folders:
                    for chunk in chunks(self.corpus[name][folder]):
                        imap.append(target_folder(folder), chunk)

        count, size = self.totals()
        started = self.start_clock()
        self.parallel(self.names, append)
        seconds = self.stop_clock(started)
        batches = sum(1 for box in self.corpus.values() for msgs in box.values() for _ in chunks(msgs))
        self.record(Step("a", "(a) target raw MULTIAPPEND ceiling", count, size, seconds,
                         {"batches": batches, "batch_limits": [CHUNK_MESSAGES, CHUNK_BYTES]}))

    def measure_single_append(self) -> None:
        """(a1): one APPEND command per message (a round trip each) on an evenly spread sample."""
        total, _ = self.totals()
        stride = max(1, round(total / SINGLE_APPEND_SAMPLE))
        sample = {name: {f: msgs[::stride] for f, msgs in box.items()} for name, box in self.corpus.items()}
        self.prepare_target_folders("one-")

        def append(name: str) -> None:
            with RawImap(self.target.host, self.target.port, f"one-{name}", TARGET_PASSWORD) as imap:
                for folder in self.folders:
                    for message in sample[name][folder]:
                        imap.append(target_folder(folder), [message])

        count = sum(len(m) for box in sample.values() for m in box.values())
        size = sum(len(x.raw) for box in sample.values() for m in box.values() for x in m)
        started = self.start_clock()
        self.parallel(self.names, append)
        self.record(Step("a1", f"(a1) target single APPEND (1 in {stride})", count, size,
                         self.stop_clock(started), {"sample_stride": stride}))

    def measure_connector(self) -> None:
        """(a2), (b2): the same copies through migrator's own IMAP connector (imapclient), from memory.

        Isolates the client side of migrator's path from its engine (ledger, hashing, no overlap)."""
        config = load_config(self.project / "migrator.toml")
        source, target = make_endpoint(config.source), make_endpoint(config.target)

        def fetch(name: str) -> tuple[int, int]:
            count = size = 0
            login = Login(f"{name}@old.example", name, Secret(SOURCE_PASSWORD))
            with open_mailbox(source, login, write=False) as src:
                for folder in src.list_folders():
                    if not folder.selectable or not folder.messages:
                        continue
                    refs = src.list_messages(folder)
                    for start in range(0, len(refs), CHUNK_MESSAGES):
                        for message in src.fetch(folder, refs[start:start + CHUNK_MESSAGES]):
                            count += 1
                            size += len(message.body)
            return count, size

        started = self.start_clock()
        results = self.parallel(self.names, fetch)
        self.record(Step("b2", "(b2) migrator connector: list + FETCH", sum(r[0] for r in results),
                         sum(r[1] for r in results), self.stop_clock(started),
                         {"batch_messages": CHUNK_MESSAGES}))

        def raw(m: Message, i: int) -> RawMessage:
            return RawMessage(MessageRef(str(i), len(m.raw), frozenset(m.flags), m.date), m.raw)

        def prepare(name: str) -> dict[str, Any]:
            login = Login(f"con-{name}@new.example", f"con-{name}", Secret(TARGET_PASSWORD))
            with open_mailbox(target, login, write=True) as dst:
                return {f: dst.ensure_folder(target_folder(f), None)[0] for f in self.folders}

        folders = dict(zip(self.names, self.parallel(self.names, prepare), strict=True))

        def append(name: str) -> None:
            login = Login(f"con-{name}@new.example", f"con-{name}", Secret(TARGET_PASSWORD))
            with open_mailbox(target, login, write=True) as dst:
                for folder in self.folders:
                    for chunk in chunks(self.corpus[name][folder]):
                        dst.append(folders[name][folder], [raw(m, i) for i, m in enumerate(chunk)])

        count, size = self.totals()
        started = self.start_clock()
        self.parallel(self.names, append)
        self.record(Step("a2", "(a2) migrator connector: MULTIAPPEND", count, size, self.stop_clock(started)))

    def prepare_target_folders(self, prefix: str) -> None:
        def create(name: str) -> None:
            with RawImap(self.target.host, self.target.port, f"{prefix}{name}", TARGET_PASSWORD) as imap:
                for folder in self.folders:
                    imap.create(target_folder(folder))

        self.parallel(self.names, create)

    def totals(self) -> tuple[int, int]:
        msgs = [m for box in self.corpus.values() for ms in box.values() for m in ms]
        return len(msgs), sum(len(m.raw) for m in msgs)

    def start_clock(self) -> float:
        """perf_counter() as a timed step starts, noting the CPU time every party has used so far."""
        self._cpu_at_start = self.cpu_now()
        return time.perf_counter()

    def stop_clock(self, started: float) -> float:
        """Seconds since start_clock; the CPU each party used meanwhile goes with the step recorded next."""
        seconds = time.perf_counter() - started
        now = self.cpu_now()
        self.cpu_used = {party: round(now[party] - self._cpu_at_start[party], 2) for party in now}
        return seconds

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds used so far by each server's processes and by the client side: this process (the raw
        steps' threads) and the children it has waited for (migrator runs and their worker processes, dsync)."""
        times = os.times()
        return {"target": self.target.cpu_seconds(), "source": self.source.cpu_seconds(),
                "client": time.process_time() + times.children_user + times.children_system}

    def record(self, step: Step) -> None:
        self.steps[step.key] = step
        cpu = step.extra["cpu_seconds_by_party"] = self.cpu_used
        busy = sum(cpu.values()) / step.seconds if step.seconds > 0 else 0.0
        self.say(f"{step.label}: {step.messages} messages, {step.bytes / 1e6:.1f} MB in {step.seconds:.2f}s "
                 f"= {step.msg_s:.0f} msg/s, {step.mb_s:.1f} MB/s; CPU-seconds target {cpu['target']:.2f}, "
                 f"source {cpu['source']:.2f}, client {cpu['client']:.2f}: {busy:.2f} of {os.cpu_count()} CPUs busy")

    # ---------------------------------------------------------------------------------- rounds

    def measure_round(self, number: int) -> None:
        """(a), (c) with the no-op delta (d) right after it, and (c'), each into empty target users, each after
        a sync (docstring, 3.). The order turns by one step a round, so that over three rounds each of them
        runs first, second and third once: none always runs on the disk another's writes have just left."""
        before = self.totals()
        steps: list[Callable[[], object]] = [self.measure_append, lambda: self.measure_pass(before),
                                             self.measure_dsync]
        turn = (number - 1) % len(steps)
        for step in steps[turn:] + steps[:turn]:
            os.sync()
            step()
        self.rounds.append({key: self.steps[key] for key in ROUND_STEPS})

    def measure_pass(self, before: tuple[int, int]) -> None:
        """(c) and, right after it, (d)."""
        self.migrator_run("c", "(c) migrator run --stage prestage", "prestage", before)
        os.sync()
        self.migrator_run("d", "(d) migrator no-op delta", "delta")

    def start_round(self, number: int) -> None:
        """Empty the target users of (a), (c) and (c') and restore migrator's store as (c) first found it
        (untimed); then wait until ext4 no longer passes over the inodes just freed (step 0 of the docstring:
        fs/ext4/ialloc.c recently_deleted, 30 s after deletion, 60 s while the inode's block is dirty)."""
        self.say(f"round {number} of {self.args.rounds}: emptying the target users and migrator's store (not measured)")
        for name in self.names:
            for user in (f"raw-{name}", f"mig-{name}", name):
                shutil.rmtree(self.target.user_home(user), ignore_errors=True)
        for suffix in ("-wal", "-shm"):
            (self.project / f"migrator.db{suffix}").unlink(missing_ok=True)
        shutil.copy(ROOT / "store-before-c.db", self.project / "migrator.db")
        os.sync()
        time.sleep(ROUND_PAUSE_SECONDS)

    def keep_median_rounds(self) -> None:
        """Each of (a), (c), (d), (c') as its median round (by time); the ratios compare those, and every
        round's own ratios go into the JSON (disk-bound servers swing from one minute to the next)."""
        for key in ROUND_STEPS:
            ranked = sorted(self.rounds, key=lambda steps: steps[key].seconds)
            self.steps[key] = ranked[(len(ranked) - 1) // 2][key]

    # ---------------------------------------------------------------------------------- migrator

    def setup_project(self) -> None:
        self.project.mkdir(parents=True)
        (self.project / "migrator.toml").write_text(f"""\
[state]
url = "sqlite:///migrator.db"

[source]
kind = "imap"
host = "127.0.0.1"
port = {self.source.port}
security = "none"

[target]
kind = "imap"
host = "127.0.0.1"
port = {self.target.port}
security = "none"

[throttle.source]
max_connections = {self.workers}

[throttle.target]
max_connections = {self.workers}
""", encoding="utf-8")
        rows = [f"{n}@old.example,mig-{n}@new.example,{n},{SOURCE_PASSWORD},mig-{n},{TARGET_PASSWORD}"
                for n in self.names]
        (self.project / "mailboxes.csv").write_text(
            "source,target,source_login,source_password,target_login,target_password\n" + "\n".join(rows) + "\n",
            encoding="utf-8")
        for args in (["init", "."], ["discover", "--mailboxes", "mailboxes.csv"],
                     ["plan", "create", "--name", "bench", "--max-mailboxes", str(len(self.names))]):
            result = subprocess.run([sys.executable, "-m", "migrator", *args], cwd=self.project,
                                    capture_output=True, text=True, check=False)
            with (self.logs / "setup.log").open("a") as log:
                log.write(f"$ migrator {' '.join(args)}\n{result.stdout}{result.stderr}")
            if result.returncode != 0:
                raise SystemExit(f"bench: `migrator {' '.join(args)}` exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        self.say("migrator: init, discover, plan create done (not measured)")

    def migrator_run(self, key: str, label: str, stage: str, expected: tuple[int, int] = (0, 0)) -> Step:
        """Time `migrator run` as a subprocess; `expected` (messages, bytes) it should copy gives exact bytes."""
        log = self.logs / f"run-{key}.log"
        cmd = [sys.executable, "-m", "migrator", "run", "plans/bench.yaml", "--stage", stage,
               "--workers", str(self.workers), "--processes", str(self.args.processes)]
        earlier = log.stat().st_size if log.exists() else 0  # an earlier round's run of the same step
        started = self.start_clock()
        proc = self.start_child(cmd, log, cwd=self.project)
        poller = HwmPoller(proc.pid)
        poller.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = self.stop_clock(started)
        self.cpu_used["client"] = round(usage.ru_utime + usage.ru_stime, 2)  # migrator's own, not the poller's
        proc.returncode = os.waitstatus_to_exitcode(status)
        poller.done.set()
        poller.join()
        with log.open("rb") as out:
            out.seek(earlier)
            output = out.read().decode(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"bench: `migrator run --stage {stage}` exited {proc.returncode}; log {log}:\n"
                             + "\n".join(output.splitlines()[-20:]))
        match = _RUN_LINE.search(output)
        if match is None:
            raise SystemExit(f"bench: cannot find the summary line of `migrator run` in {log}")
        copied, mb, engine_s, msg_s, mb_s = match.groups()
        rss = {"vmhwm_mb": round(poller.peak_kb / 1024, 1), "tree_rss_mb": round(poller.tree_rss_kb / 1024, 1),
               "tree_pss_mb": round(poller.tree_pss_kb / 1024, 1),
               "ru_maxrss_upper_bound_mb": round(usage.ru_maxrss / 1024, 1)}
        if key not in self.rss or rss["tree_rss_mb"] > self.rss[key]["tree_rss_mb"]:
            self.rss[key] = rss  # the highest of the rounds: a peak is a bound, not a typical value
        if int(copied) != expected[0]:
            self.problems.append(f"{label}: copied {copied} messages, expected {expected[0]}")
        size = expected[1] if int(copied) == expected[0] else round(float(mb) * 1e6)
        step = Step(key, label, int(copied), size, seconds,
                    {"command": "migrator " + " ".join(cmd[3:]), "exit": proc.returncode,
                     "reported": {"messages": int(copied), "mb": float(mb), "seconds": float(engine_s),
                                  "messages_per_second": int(msg_s), "mb_per_second": float(mb_s)},
                     "peak_rss_mb": rss["tree_rss_mb"],
                     "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)})
        self.record(step)
        cpu = f"CPU {usage.ru_utime + usage.ru_stime:.2f} s (user {usage.ru_utime:.2f}, system {usage.ru_stime:.2f})"
        self.say(f"    migrator's own line: {match.group(0)}; peak RSS {rss['tree_rss_mb']:.1f} MB "
                 f"(worker processes included); {cpu}")
        return step

    # ---------------------------------------------------------------------------------- dsync

    def measure_dsync(self) -> None:
        """(c'): doveadm backup -R -u USER imapc: into the empty target users named like the source users."""
        env = dict(os.environ)

        def backup(name: str) -> tuple[int, float]:
            log = self.logs / f"dsync-{name}.log"
            start = time.perf_counter()
            proc = self.start_child([str(DOVEADM), "-c", str(self.target.conf_path), "backup", "-R", "-u", name,
                                     "imapc:"], log, env=env)
            return proc.wait(), time.perf_counter() - start

        count, size = self.totals()
        started = self.start_clock()
        results = self.parallel(self.names, backup)
        seconds = self.stop_clock(started)
        codes = {n: code for n, (code, _s) in zip(self.names, results, strict=True)}
        failed = {n: c for n, c in codes.items() if c != 0}
        if failed:
            self.problems.append(f"doveadm backup exited non-zero: {failed} (logs in {self.logs})")
        copied = self.count_messages(self.names)
        if copied != count:
            self.problems.append(f"(c') dsync target holds {copied} messages, the source {count}")
        command = f"doveadm -c TARGET_CONF backup -R -u USER imapc: ({self.workers} users at a time)"
        self.record(Step("c_prime", "(c') doveadm backup -R imapc: (dsync)", copied, size, seconds,
                         {"exit_codes": codes, "command": command}))

    def count_messages(self, users: Sequence[str]) -> int:
        def count(user: str) -> int:
            client = IMAPClient(self.target.host, self.target.port, ssl=False, timeout=120)
            try:
                client.login(user, TARGET_PASSWORD)
                total = 0
                for flags, _delim, name in client.list_folders():
                    if not {b"\\Noselect", b"\\NonExistent"} & set(flags):
                        total += client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"]
                client.logout()
                return total
            except BaseException:
                client.shutdown()
                raise

        return sum(self.parallel(list(users), count))

    # ---------------------------------------------------------------------------------- delta, verify

    def add_new_mail(self) -> int:
        total, _ = self.totals()
        new = max(1, round(total * 0.01))
        additions: dict[str, dict[str, list[Message]]] = {n: {} for n in self.names}
        recent = datetime(2026, 11, 1, tzinfo=UTC)
        for i in range(new):
            name = self.names[i % len(self.names)]
            gen = self.generators[name]
            weights = [FOLDER_WEIGHTS.get(f, 2) for f in self.folders]
            folder = gen.rng.choices(self.folders, weights)[0]
            additions[name].setdefault(folder, []).append(gen.message(folder, gen.date(recent, 20 * 86_400)))

        def load(name: str) -> None:
            with RawImap(self.source.host, self.source.port, name, SOURCE_PASSWORD) as imap:
                for folder, msgs in additions[name].items():
                    msgs.sort(key=lambda m: m.date.astimezone(UTC))
                    for chunk in chunks(msgs):
                        imap.append(folder, chunk)

        self.parallel(self.names, load)
        for name, folders in additions.items():  # the corpus is now what the source holds
            for folder, msgs in folders.items():
                self.corpus[name][folder].extend(msgs)
        self.notes["delta_new_messages"] = new
        self.say(f"added {new} new messages (1 %) to the source (not measured)")
        return new

    def verify(self) -> bool:
        """The migrator target equals the source: per mapped folder the same multiset of (sha256, flags, date)."""
        def compare(name: str) -> list[str]:
            source = mailbox_snapshot(self.source.host, self.source.port, name, SOURCE_PASSWORD)
            target = mailbox_snapshot(self.target.host, self.target.port, f"mig-{name}", TARGET_PASSWORD)
            problems = []
            for folder, messages in source.items():
                mapped = target_folder(folder)
                have, want = Counter(target.get(mapped, [])), Counter(messages)
                if have != want:
                    problems.append(f"{name}: {folder} -> {mapped}: {sum((want - have).values())} missing or "
                                    f"different, {sum((have - want).values())} extra")
            expected = {target_folder(f) for f in source}
            strays = {f: len(m) for f, m in target.items() if f not in expected and m}
            if strays:
                problems.append(f"{name}: messages in unexpected target folders: {strays}")
            return problems

        started = time.perf_counter()
        problems = [p for found in self.parallel(self.names, compare) for p in found]
        count, size = self.totals()
        for prefix, step in (("raw-", "(a)"), ("con-", "(a2)")):
            held = self.count_messages([f"{prefix}{n}" for n in self.names])
            if held != count - self.notes["delta_new_messages"]:
                problems.append(f"{step} target holds {held} messages, expected "
                                f"{count - self.notes['delta_new_messages']}")
        self.notes["verify_seconds"] = round(time.perf_counter() - started, 1)
        self.verification = {"exact_copy": not any(p.startswith("box") for p in problems), "problems": problems,
                             "compared_messages": count, "compared_bytes": size}
        for p in problems:
            self.say(f"VERIFY: {p}")
        return not problems

    # ---------------------------------------------------------------------------------- diagnostics

    def commit_latency(self) -> float:
        """Milliseconds per small SQLite commit in WAL with synchronous=FULL (as migrator's store), same disk."""
        path = self.project / "bench-commit.db"
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("CREATE TABLE t (x INTEGER)")
            rounds = 200
            started = time.perf_counter()
            for i in range(rounds):
                conn.execute("BEGIN")
                conn.execute("INSERT INTO t VALUES (?)", (i,))
                conn.execute("COMMIT")
            return (time.perf_counter() - started) / rounds * 1000
        finally:
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    def startup_seconds(self) -> float:
        """Best of three wall times of `migrator --help` in the project: interpreter start-up and imports,
        which every `migrator run` pays before its preflight and its first job."""
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "migrator", "--help"], cwd=self.project, capture_output=True,
                           check=False)
            best = min(best, time.perf_counter() - started)
        return best

    # ---------------------------------------------------------------------------------- the run

    def run(self) -> int:
        started = time.perf_counter()
        ensure_dovecot_installed()
        self.fresh_filesystem()
        self.logs.mkdir(parents=True)
        self.notes["dovecot"] = subprocess.run([str(DOVECOT), "--version"], capture_output=True, text=True,
                                               check=False).stdout.strip()
        self.notes["started_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.notes["loadavg_at_start"] = round(os.getloadavg()[0], 2)  # other work on the machine skews everything
        compile_bytecode()
        self.start_servers()
        self.generate()
        self.load_source()
        for measure in (self.measure_fetch, self.measure_single_append, self.setup_project, self.measure_connector):
            os.sync()  # each step starts with no other step's dirty pages to write back (docstring, 3.)
            measure()
        shutil.copy(self.project / "migrator.db", ROOT / "store-before-c.db")  # setup's last connection checkpointed
        for number in range(1, self.args.rounds + 1):
            if number > 1:
                self.start_round(number)
            self.measure_round(number)
        self.keep_median_rounds()
        before = self.totals()
        self.add_new_mail()
        after = self.totals()
        os.sync()
        self.migrator_run("e", "(e) migrator delta after +1 %", "delta", (after[0] - before[0], after[1] - before[1]))
        ok = self.verify()
        self.notes["commit_ms"] = round(self.commit_latency(), 2)
        self.notes["startup_s"] = round(self.startup_seconds(), 2)
        self.notes["total_seconds"] = round(time.perf_counter() - started, 1)
        report = self.report()
        self.print_table(report)
        out = Path(self.args.json_out).absolute() if self.args.json_out else ROOT / "bench-results.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        self.say(f"\nJSON: {out}")
        if not ok or self.problems:
            for p in self.problems:
                self.say(f"PROBLEM: {p}")
            self.say("bench: FAILED (see above)")
            return 1
        self.say(f"verified: the migrator target equals the source ({report['verification']['compared_messages']} "
                 f"messages); total {self.notes['total_seconds']:.0f}s")
        return 0

    def report(self) -> dict[str, Any]:
        s = self.steps
        a, b, c, cp, d, e = s["a"], s["b"], s["c"], s["c_prime"], s["d"], s["e"]
        first_a = self.rounds[0]["a"] if self.rounds else a
        engine_s = c.extra["reported"]["seconds"]
        batches = a.extra["batches"]
        # A pass that fetches a batch, then appends it, then commits, with no overlap: the raw times add up.
        serial_s = a.seconds + b.seconds
        commits = 2 * batches  # intent rows before, done rows after every batch
        ratios = {
            "c_over_a_throughput": round(c.msg_s / a.msg_s, 3) if a.msg_s else None,
            "c_engine_over_a_throughput": round(c.messages / engine_s / a.msg_s, 3) if a.msg_s and engine_s else None,
            "c_over_c_prime_throughput": round(c.msg_s / cp.msg_s, 3) if cp.msg_s else None,
            "c_engine_over_c_prime_throughput": round(c.messages / engine_s / cp.msg_s, 3)
            if cp.msg_s and engine_s else None,
            # dsync writes into the target's storage itself; every IMAP client's copy goes through the target
            # server's APPEND, whose own ceiling (a) may be below dsync's pace
            "a_over_c_prime_throughput": round(a.msg_s / cp.msg_s, 3) if cp.msg_s else None,
            "d_over_c_time": round(d.seconds / c.seconds, 3),
            "e_over_c_time": round(e.seconds / c.seconds, 3),
            # engine time as each run reports it: without the fixed start-up, which dominates a short delta
            "d_engine_over_c_engine_time": round(d.extra["reported"]["seconds"] / engine_s, 3) if engine_s else None,
            "e_engine_over_c_engine_time": round(e.extra["reported"]["seconds"] / engine_s, 3) if engine_s else None,
            "a1_over_a_throughput": round(s["a1"].msg_s / a.msg_s, 3) if a.msg_s else None,
            # against the first round's (a), measured right after it: a median round's may be minutes later,
            # and the target's disk swings by half from one minute to the next
            "a2_over_a_throughput": round(s["a2"].msg_s / first_a.msg_s, 3) if first_a.msg_s else None,
            "b2_over_b_throughput": round(s["b2"].msg_s / b.msg_s, 3) if b.msg_s else None,
        }
        return {
            "parameters": {"mailboxes": self.args.mailboxes, "messages_per_mailbox": self.args.messages,
                           "size_mix": self.args.size_mix, "folders": self.args.folders, "seed": self.args.seed,
                           "workers": self.workers, "processes": self.args.processes,
                           "mail_fsync": self.args.mail_fsync, "rounds": self.args.rounds},
            "environment": {"dovecot": self.notes["dovecot"], "python": platform.python_version(),
                            "cpus": os.cpu_count(), "host": "127.0.0.1", "started_utc": self.notes["started_utc"],
                            "loadavg_1min_at_start": self.notes["loadavg_at_start"],
                            "storage": self.notes["storage"],
                            "source_storage": "Maildir", "target_storage": "sdbox",
                            "dsync_settings": "imapc_host/imapc_port/imapc_user = %u/imapc_password, "
                                              + DSYNC_TUNING.strip().replace("\n", ", "),
                            "peak_rss_method": "the sum of the VmHWM of the migrator run process and the worker "
                                               "processes it forks (/proc/PID/status every 50 ms), and the highest "
                                               "sum of their PSS (smaps_rollup every 0.5 s); vmhwm_mb is the "
                                               "run process's own VmHWM; ru_maxrss from os.wait4 is an upper "
                                               "bound (Linux keeps the pre-exec high-water mark of the forking "
                                               "bench process in it)"},
            "corpus": self.notes["corpus"],
            "steps": {k: v.as_json() for k, v in s.items()},
            "ratios": ratios,
            "rounds": [{"seconds": {key: round(steps[key].seconds, 3) for key in ROUND_STEPS},
                        "c_over_a_throughput": round(steps["a"].seconds / steps["c"].seconds, 3),
                        "c_over_c_prime_throughput": round(steps["c_prime"].seconds / steps["c"].seconds, 3)}
                       for steps in self.rounds],
            "peak_rss_mb": self.rss,
            "diagnostics": {
                "serial_fetch_then_append_seconds": round(serial_s, 2),
                "serial_fetch_then_append_msg_s": round(c.messages / serial_s, 1) if serial_s else None,
                "serial_connector_seconds": round(s["a2"].seconds + s["b2"].seconds, 2),
                "serial_connector_msg_s": round(c.messages / (s["a2"].seconds + s["b2"].seconds), 1),
                "migrator_batches": batches,
                "sqlite_commit_ms": self.notes["commit_ms"],
                "ledger_commits_at_least": commits,
                "ledger_commit_seconds_estimate": round(commits * self.notes["commit_ms"] / 1000, 2),
                "migrator_engine_seconds": engine_s,
                "migrator_wall_minus_engine_seconds": round(c.seconds - engine_s, 2),
                "migrator_wall_minus_engine_seconds_d_e": [round(st.seconds - st.extra["reported"]["seconds"], 2)
                                                           for st in (d, e)],
                "migrator_startup_seconds": self.notes["startup_s"],
                "delta_new_messages": self.notes["delta_new_messages"],
            },
            "verification": self.verification,
            "total_seconds": self.notes["total_seconds"],
        }

    def print_table(self, report: dict[str, Any]) -> None:
        p = report["parameters"]
        corpus = report["corpus"]
        self.say(f"\n== bench: {p['mailboxes']} mailboxes x {p['messages_per_mailbox']} messages, {p['size_mix']}, "
                 f"{p['folders']} folders, seed {p['seed']}, {p['workers']} workers/connections, "
                 f"mail_fsync={p['mail_fsync']}, Dovecot {report['environment']['dovecot'].split()[0]}, "
                 f"{report['environment']['cpus']} CPUs, load average {self.notes['loadavg_at_start']:.2f} at start")
        self.say(f"   corpus {corpus['messages']} messages, {corpus['bytes'] / 1e6:.1f} MB "
                 f"(mean {corpus['mean_bytes'] / 1e3:.1f} KB, {corpus['over_200KB']} >= 200 KB)\n")
        self.say(f"{'step':<46}{'messages':>9}{'MB':>9}{'seconds':>9}{'msg/s':>9}{'MB/s':>8}")
        for key in ("a", "a1", "a2", "b", "b2", "c", "c_prime", "d", "e"):
            st = self.steps[key]
            self.say(f"{st.label:<46}{st.messages:>9}{st.bytes / 1e6:>9.1f}{st.seconds:>9.2f}{st.msg_s:>9.0f}"
                     f"{st.mb_s:>8.1f}")
            if key in ("c", "d", "e"):
                r = st.extra["reported"]
                self.say(f"{f'    ({key}) as migrator reports it (engine time)':<46}{r['messages']:>9}{r['mb']:>9.1f}"
                         f"{r['seconds']:>9.2f}{r['messages_per_second']:>9}{r['mb_per_second']:>8.1f}")
        r = report["ratios"]
        dg = report["diagnostics"]
        rss = report["peak_rss_mb"]
        self.say("")
        self.say(f"(c)/(a)   throughput  {r['c_over_a_throughput']:.2f}   (engine time: "
                 f"{r['c_engine_over_a_throughput']:.2f})")
        self.say(f"(c)/(c')  throughput  {r['c_over_c_prime_throughput']:.2f}   (engine time: "
                 f"{r['c_engine_over_c_prime_throughput']:.2f}; the ceiling (a) is "
                 f"{r['a_over_c_prime_throughput']:.2f} of dsync, which writes into the target's storage: an IMAP "
                 f"copy goes through (a)'s APPEND path)")
        if len(report["rounds"]) > 1:
            each = ", ".join(f"{one['c_over_a_throughput']:.2f} / {one['c_over_c_prime_throughput']:.2f}"
                             for one in report["rounds"])
            self.say(f"          (a), (c), (d), (c') are the median of {len(report['rounds'])} rounds; each round's "
                     f"(c)/(a) / (c)/(c'): {each}")
        self.say(f"(d)/(c)   time        {r['d_over_c_time']:.3f}   (no-op delta; engine time: "
                 f"{r['d_engine_over_c_engine_time']:.3f})")
        self.say(f"(e)/(c)   time        {r['e_over_c_time']:.3f}   (+{dg['delta_new_messages']} messages; "
                 f"engine time: {r['e_engine_over_c_engine_time']:.3f})")
        self.say(f"          wall time of every run includes {dg['migrator_startup_seconds']:.2f}s of start-up "
                 f"(`migrator --help`: interpreter and imports); engine time is the run's own line (0.1 s steps)")
        self.say(f"(a1)/(a)  throughput  {r['a1_over_a_throughput']:.2f}   (one APPEND per message vs MULTIAPPEND)")
        self.say(f"(a2)/(a)  throughput  {r['a2_over_a_throughput']:.2f}   (migrator's connector vs raw, append; "
                 f"against round 1's (a), measured next to it)")
        self.say(f"(b2)/(b)  throughput  {r['b2_over_b_throughput']:.2f}   (migrator's connector vs raw, fetch)")
        rounds = f" (the highest of {len(report['rounds'])} rounds)" if len(report["rounds"]) > 1 else ""
        self.say(f"(f) peak RSS of migrator run and its worker processes{rounds}: "
                 f"(c) {rss['c']['tree_rss_mb']:.1f} MB, (d) {rss['d']['tree_rss_mb']:.1f} MB, "
                 f"(e) {rss['e']['tree_rss_mb']:.1f} MB "
                 f"[sum of each process's VmHWM, shared pages counted in each process; PSS: (c) "
                 f"{rss['c']['tree_pss_mb']:.1f} MB; the run process alone, VmHWM: {rss['c']['vmhwm_mb']:.1f} MB]")
        for key in ("a", "c", "c_prime"):
            st = self.steps[key]
            cpu = st.extra["cpu_seconds_by_party"]
            floor = sum(cpu.values()) / (os.cpu_count() or 1)
            self.say(f"CPU {f'({key})':<6}   target {cpu['target']:.2f} + source {cpu['source']:.2f} + client "
                     f"{cpu['client']:.2f} CPU-seconds: no less than {floor:.2f}s on {os.cpu_count()} CPUs "
                     f"(took {st.seconds:.2f}s)")
        self.say(f"diagnostics: fetch (b) + append (a) back to back = {dg['serial_fetch_then_append_seconds']:.2f}s "
                 f"({dg['serial_fetch_then_append_msg_s']:.0f} msg/s); through migrator's connector (b2) + (a2) = "
                 f"{dg['serial_connector_seconds']:.2f}s ({dg['serial_connector_msg_s']:.0f} msg/s)")
        self.say(f"             {dg['migrator_batches']} batches -> at least "
                 f"{dg['ledger_commits_at_least']} ledger commits x {dg['sqlite_commit_ms']:.2f} ms = "
                 f"{dg['ledger_commit_seconds_estimate']:.2f}s; migrator wall - engine = "
                 f"{dg['migrator_wall_minus_engine_seconds']:.2f}s (start-up, preflight; (d) "
                 f"{dg['migrator_wall_minus_engine_seconds_d_e'][0]:.2f}s, (e) "
                 f"{dg['migrator_wall_minus_engine_seconds_d_e'][1]:.2f}s)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mailboxes", type=int, default=4, help="mailboxes (default 4)")
    parser.add_argument("--messages", type=int, default=1500, help="messages per mailbox (default 1500)")
    parser.add_argument("--size-mix", choices=sorted(SIZE_MIXES), default="mixed",
                        help="small: 1.5-10 KB; mixed: 97%% 2-50 KB, 3%% 200 KB-2 MB; large: 70%% 50-200 KB, "
                             "30%% 200 KB-2 MB (default mixed)")
    parser.add_argument("--folders", type=int, default=8, help="folders with mail per mailbox (default 8)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4,
                        help="migrator --workers and parallel connections of every measurement (default 4: what "
                             "migrator runs with when not told, [throttle.*] max_connections = 4)")
    parser.add_argument("--processes", type=int, default=1,
                        help="migrator --processes: worker processes the --workers are spread over (default 1)")
    parser.add_argument("--mail-fsync", choices=("never", "optimized", "always"), default="optimized",
                        help="Dovecot mail_fsync on both servers (default optimized, Dovecot's own default and a "
                             "production server's; never, as the test lab, makes the servers' CPU the limit)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure (a), (c), (d) and (c') this many times, alternating, and compare the median "
                             "rounds (default 1; a pause of a minute between rounds, see Bench.start_round)")
    parser.add_argument("--json-out", default=None, help="JSON results (default bench-run/bench-results.json)")
    parser.add_argument("--keep-data", action="store_true", help="keep the servers' mail under bench-run/ (and its "
                                                                 "filesystem mounted)")
    parser.add_argument("--source-condstore-only", action="store_true",
                        help="the source advertises CONDSTORE but not QRESYNC, as Gmail does: a delta pass is told "
                             "what changed, not what was expunged")
    parser.add_argument("--storage", choices=("fresh-ext4", "dir"), default="fresh-ext4",
                        help="where the servers keep mail: a new ext4 filesystem made for the run (default; needs "
                             "root and a loop device) or bench-run/ on the machine's filesystem as it is")
    args = parser.parse_args(argv)
    for name in ("mailboxes", "messages", "folders", "workers", "processes", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def compile_bytecode() -> None:
    """Byte-compile the package as an installed wheel is: with PYTHONDONTWRITEBYTECODE set (as in some CI
    and container images) or a fresh checkout, every measured run would otherwise compile the sources
    again, a start-up cost no installed migrator pays."""
    compileall.compile_dir(str(REPO / "migrator"), quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    try:
        return bench.run()
    except KeyboardInterrupt:
        print("bench: interrupted; stopping servers", file=sys.stderr, flush=True)
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
