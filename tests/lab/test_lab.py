"""The test lab itself, against real Dovecot servers: layouts, master users, corpus, TLS, limits."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from imapclient import IMAPClient  # type: ignore[import-untyped, unused-ignore]
from imapclient.exceptions import IMAPClientError, LoginError  # type: ignore[import-untyped, unused-ignore]

from migrator.lab.corpus import (
    CorpusSpec,
    CorpusSummary,
    cpython_sample_paths,
    generate_corpus,
    load_corpus,
    mailbox_snapshot,
)
from migrator.lab.dovecot import DovecotServer, LabUser, ensure_dovecot_installed, free_port

ALICE = LabUser("alice", "alice-pw")
BOB = LabUser("bob", "bob-pw")
ADMIN = LabUser("admin", "admin-pw")


@pytest.fixture(scope="module")
def lab_root() -> Iterator[Path]:
    """Outside pytest's tmp tree, whose root another pytest session resets to mode 0700 (see
    tests/imap_fixtures.lab_root): Dovecot's unprivileged processes must traverse it."""
    ensure_dovecot_installed()
    root = Path(tempfile.mkdtemp(prefix="migrator-lab-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def source(lab_root: Path) -> Iterator[DovecotServer]:
    with DovecotServer(
        root=lab_root / "source", name="source", layout="source", users=[ALICE, BOB], master=ADMIN
    ) as server:
        yield server


@pytest.fixture(scope="module")
def target(lab_root: Path) -> Iterator[DovecotServer]:
    with DovecotServer(
        root=lab_root / "target", name="target", layout="target", users=[ALICE, BOB], master=ADMIN
    ) as server:
        yield server


@pytest.fixture(scope="module")
def corpus(source: DovecotServer) -> CorpusSummary:
    return load_corpus(source.host, source.port, ALICE, CorpusSpec())


def connect(server: DovecotServer, user: LabUser | None = None) -> IMAPClient:
    client = IMAPClient(server.host, server.port, ssl=False, timeout=10)
    if user is not None:
        client.login(user.name, user.password)
    return client


def folders(client: IMAPClient) -> dict[str, tuple[set[str], str]]:
    return {
        name: ({f.decode() for f in flags}, delim.decode()) for flags, delim, name in client.list_folders()
    }


def live_group_members(pgid: int) -> list[int]:
    """Pids of the non-zombie processes in a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
            if state != "Z" and int(group) == pgid:
                pids.append(int(entry.name))
    return pids


# ------------------------------------------------------------------------------------------ layouts


def test_source_layout(source: DovecotServer) -> None:
    assert source.separator == "."
    with connect(source, BOB) as client:
        listed = folders(client)
        assert client.has_capability("SPECIAL-USE")
        client.select_folder("Sent")  # Dovecot creates auto folders on disk when first opened
    assert set(listed) == {"INBOX", "Sent", "Drafts", "Trash", "Junk"}
    assert {delim for _flags, delim in listed.values()} == {"."}
    special = {
        name: flags & {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"}
        for name, (flags, _) in listed.items()
    }
    assert special == {
        "INBOX": set(),
        "Sent": {"\\Sent"},
        "Drafts": {"\\Drafts"},
        "Trash": {"\\Trash"},
        "Junk": {"\\Junk"},
    }
    assert source.user_mail_dir(BOB).is_dir()
    assert (source.user_mail_dir(BOB) / ".Sent" / "cur").is_dir()  # Maildir++


def test_target_layout(target: DovecotServer) -> None:
    assert target.separator == "/"
    with connect(target, BOB) as client:
        listed = folders(client)
        # sdbox with "/" as separator: a dot is an ordinary character in a folder name
        client.create_folder("Projects.2026")
        client.create_folder("Clients/ACME")
        after = folders(client)
    assert set(listed) == {"INBOX", "Sent Items", "Drafts", "Deleted Items", "Junk Email", "Archive"}
    assert {delim for _flags, delim in listed.values()} == {"/"}
    special = {
        name: flags & {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"}
        for name, (flags, _) in listed.items()
    }
    assert special == {
        "INBOX": set(),
        "Sent Items": {"\\Sent"},
        "Drafts": {"\\Drafts"},
        "Deleted Items": {"\\Trash"},
        "Junk Email": {"\\Junk"},
        "Archive": {"\\Archive"},
    }
    assert "\\HasNoChildren" in after["Projects.2026"][0]
    assert "\\HasChildren" in after["Clients"][0]
    assert "Clients/ACME" in after


def test_master_user_logs_in_on_behalf_of_user(source: DovecotServer, corpus: CorpusSummary) -> None:
    with connect(source) as client:
        client.plain_login(ADMIN.name, ADMIN.password, authorization_identity=ALICE.name)
        assert "Références" in folders(client)  # alice's mailbox, not an admin one
    with connect(source) as client:
        client.login(f"{BOB.name}*{ADMIN.name}", ADMIN.password)  # the separator form
        assert "Références" not in folders(client)
    with connect(source) as client, pytest.raises(LoginError):
        client.plain_login(ADMIN.name, "wrong", authorization_identity=ALICE.name)
    with connect(source) as client, pytest.raises(LoginError):
        # an ordinary user is not a master user
        client.plain_login(BOB.name, BOB.password, authorization_identity=ALICE.name)


# ------------------------------------------------------------------------------------------ corpus


def test_corpus_snapshot(source: DovecotServer, corpus: CorpusSummary) -> None:
    assert corpus.folders == [
        "INBOX",
        "Sent",
        "Drafts",
        "Trash",
        "Projects",
        "Projects.2026",
        "Projects.2026.Q3",
        "Références",
        "Привет мир",
        "Empty folder",
    ]
    snap = mailbox_snapshot(source.host, source.port, ALICE.name, ALICE.password)
    assert set(snap) == {*corpus.folders, "Junk"}
    with connect(source, ALICE) as client:
        subscribed = {name for _flags, _delim, name in client.list_sub_folders()}
    assert subscribed == {*corpus.folders, "Junk"} - {"Empty folder"}
    assert {name: len(entries) for name, entries in snap.items() if name != "Junk"} == corpus.counts
    assert corpus.messages == sum(corpus.counts.values())
    assert snap["Empty folder"] == [] and snap["Junk"] == []
    assert all(corpus.counts[f] > 0 for f in corpus.folders if f != "Empty folder")

    inbox_hashes = Counter(h for h, _flags, _date in snap["INBOX"])
    assert inbox_hashes[corpus.duplicate_sha256] == 2  # a real byte-identical duplicate

    samples = cpython_sample_paths()
    assert len(samples) >= 40
    for sample in samples:  # stored byte for byte, apart from CRLF line ends
        raw = sample.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert inbox_hashes[hashlib.sha256(raw).hexdigest()] == 1, sample.name

    # what the server holds is exactly what was generated: bytes, flags and INTERNALDATE (to the second)
    plan = generate_corpus(ALICE, CorpusSpec())
    for path, messages in plan.items():
        name = ".".join(path)
        expected = sorted(
            (hashlib.sha256(m.raw).hexdigest(), sorted(m.flags), m.date.astimezone(UTC)) for m in messages
        )
        assert sorted((h, sorted(f), d) for h, f, d in snap[name]) == expected, name

    all_flags = Counter(f for entries in snap.values() for _h, flags, _d in entries for f in flags)
    for flag in ("\\Seen", "\\Answered", "\\Flagged", "\\Draft", "$Forwarded", "Work", "$label1"):
        assert all_flags[flag] > 0, flag
    assert all("\\Draft" in flags for _h, flags, _d in snap["Drafts"])
    assert all("\\Draft" not in flags for _h, flags, _d in snap["INBOX"])
    years = {d.year for entries in snap.values() for _h, _f, d in entries}
    assert len(years) >= 5
    assert all(d.tzinfo is UTC for entries in snap.values() for _h, _f, d in entries)

    big = [m for messages in plan.values() for m in messages if len(m.raw) > 1_000_000]
    assert len(big) == 2
    raws = [m.raw for messages in plan.values() for m in messages]
    assert any(b"=?utf-8?" in r.split(b"\r\n\r\n", 1)[0].lower() for r in raws)  # RFC 2047 headers
    assert all(b"\n" not in r.replace(b"\r\n", b"") for r in raws)  # CRLF only
    assert generate_corpus(ALICE, CorpusSpec(seed=2)) != plan


def test_corpus_without_multiappend_or_uidplus(lab_root: Path) -> None:
    caps = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT SPECIAL-USE"
    with DovecotServer(
        root=lab_root / "nocaps", name="nocaps", layout="source", users=[ALICE], capabilities=caps
    ) as server:
        with connect(server, ALICE) as client:
            assert not client.has_capability("UIDPLUS")
            assert not client.has_capability("MULTIAPPEND")
            assert client.has_capability("SPECIAL-USE")
        spec = CorpusSpec(messages_per_mailbox=2, large_attachments=0, include_cpython_samples=False, seed=7)
        summary = load_corpus(server.host, server.port, ALICE, spec)  # falls back to one APPEND each
        snap = mailbox_snapshot(server.host, server.port, ALICE.name, ALICE.password)
    assert summary.messages == sum(len(v) for k, v in snap.items() if k != "Junk") > 0


# ------------------------------------------------------------------------------------------ TLS and limits


def test_tls_starttls_and_implicit(lab_root: Path) -> None:
    with DovecotServer(root=lab_root / "tls", name="tls", layout="target", users=[ALICE], tls=True) as server:
        assert server.tls_port is not None and server.tls_port != server.port
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        with connect(server) as client:
            assert client.has_capability("STARTTLS")
            client.starttls(ctx)  # verifies the certificate against IP:127.0.0.1
            client.login(ALICE.name, ALICE.password)
            assert "Sent Items" in folders(client)
        for host in ("127.0.0.1", "localhost"):
            with IMAPClient(host, server.tls_port, ssl=True, ssl_context=ctx, timeout=10) as client:
                client.login(ALICE.name, ALICE.password)
                assert isinstance(client.socket(), ssl.SSLSocket)
        untrusted = ssl.create_default_context(cafile=str(server.ca_file.with_name("server.pem")))
        with pytest.raises(ssl.SSLError):
            IMAPClient(server.host, server.tls_port, ssl=True, ssl_context=untrusted, timeout=10)


def test_quota_and_max_mail_size(lab_root: Path) -> None:
    with (
        DovecotServer(
            root=lab_root / "quota",
            name="quota",
            layout="target",
            users=[ALICE],
            quota="200K",
            max_mail_size="100K",
        ) as server,
        connect(server, ALICE) as client,
    ):
        with pytest.raises(IMAPClientError, match=r"\[LIMIT\]"):
            client.append("INBOX", b"Subject: too big\r\n\r\n" + b"x" * 150_000)
        message = b"Subject: filler\r\n\r\n" + b"y" * 60_000
        for _ in range(3):
            client.append("INBOX", message)
        with pytest.raises(IMAPClientError, match=r"\[OVERQUOTA\]"):
            client.append("INBOX", message)
        assert client.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 3


def test_userip_connection_limit(lab_root: Path) -> None:
    with DovecotServer(
        root=lab_root / "limit", name="limit", layout="source", users=[ALICE], max_userip_connections=2
    ) as server:
        first, second = connect(server, ALICE), connect(server, ALICE)
        try:
            with connect(server) as third, pytest.raises(LoginError, match="Maximum number of connections"):
                third.login(ALICE.name, ALICE.password)
        finally:
            first.logout()
            second.logout()


def test_cpu_seconds_count_sessions_that_ended(lab_root: Path) -> None:
    """scripts/bench reads a server's CPU time around each step: an imap process's time counts whether it
    still runs, has ended or was reaped by its parent, and the total never goes backwards."""
    with DovecotServer(root=lab_root / "cpu", name="cpu", layout="target", users=[ALICE]) as server:
        before = after = server.cpu_seconds()
        body = b"Subject: cpu\r\n\r\n" + b"x" * 20_000 + b"\r\n"
        # The kernel charges CPU time in clock ticks (10 ms) to whichever process a tick finds running: with
        # two test processes on two CPUs, the short bursts of one session's 300 APPENDs once drew no tick.
        # Sessions go on until one has been charged (each ends before it is counted).
        for _session in range(5):
            with connect(server, ALICE) as client:
                for _ in range(300):
                    client.append("INBOX", body)
                client.select_folder("INBOX")
                assert len(client.fetch(client.search(), ["BODY.PEEK[]"])) % 300 == 0
            after = server.cpu_seconds()  # the imap process, live, ended or reaped, counts
            if after > before:
                break
        assert after > before >= 0  # a server just started may not have used a clock tick (10 ms) yet
        assert server.cpu_seconds() >= after


def test_doveadm_uidvalidity_and_kick(source: DovecotServer, corpus: CorpusSummary) -> None:
    with connect(source, ALICE) as client:
        before = client.select_folder("Projects.2026", readonly=True)[b"UIDVALIDITY"]
    source.set_uidvalidity(ALICE, "Projects.2026", before + 1000)
    with connect(source, ALICE) as client:  # a new session sees the change (an open one may not)
        assert client.select_folder("Projects.2026", readonly=True)[b"UIDVALIDITY"] == before + 1000
        source.kick(ALICE)
        with pytest.raises((IMAPClientError, OSError)):
            client.noop()
        client.shutdown()
    source.kick(ALICE)  # nobody connected: not an error
    assert "Projects.2026" in source.doveadm("mailbox", "list", "-u", ALICE.name).stdout


# ------------------------------------------------------------------------------------------ lifecycle


def test_parallel_servers_start_fast_and_stop_clean(lab_root: Path) -> None:
    deep = lab_root / ("a-rather-long-directory-name-" * 4) / "x"  # base_dir must move to a short path
    servers = [
        DovecotServer(
            root=(deep if i == 0 else lab_root) / f"par{i}",
            name=f"par{i}",
            layout="source" if i % 2 == 0 else "target",
            users=[ALICE],
        )
        for i in range(4)
    ]
    durations: list[float] = []
    pids: list[int] = []
    errors: list[BaseException] = []

    def start(server: DovecotServer) -> None:
        try:
            t0 = time.monotonic()
            server.start()
            durations.append(time.monotonic() - t0)
            spec = CorpusSpec(messages_per_mailbox=3, large_attachments=0, include_cpython_samples=False)
            load_corpus(server.host, server.port, ALICE, spec)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len({s.port for s in servers}) == 4
        assert max(durations) < 2.0, durations
        pids += [s._proc.pid for s in servers if s._proc is not None]
        assert len(pids) == 4 and all(live_group_members(pid) for pid in pids)
        with connect(servers[1], ALICE):  # a live session while stopping
            t0 = time.monotonic()
            servers[1].stop()
            assert time.monotonic() - t0 < 2.0
    finally:
        for s in servers:
            s.stop()
            s.stop()  # idempotent
    for pgid in pids:
        assert live_group_members(pgid) == []  # master and every child are gone
    for s in servers:
        assert not s.running
        with pytest.raises(OSError):
            IMAPClient(s.host, s.port, ssl=False, timeout=2)


def test_restart_keeps_mail(lab_root: Path) -> None:
    deep = lab_root / ("another-long-directory-name-" * 4)
    server = DovecotServer(root=deep / "restart", name="restart", layout="target", users=[ALICE])
    with server, connect(server, ALICE) as client:
        client.append("INBOX", b"Subject: kept\r\n\r\nbody\r\n", flags=["\\Seen"])
    assert not server.running
    with server:  # same port, same mail
        snap = mailbox_snapshot(server.host, server.port, ALICE.name, ALICE.password)
    assert [flags for _h, flags, _d in snap["INBOX"]] == [frozenset({"\\Seen"})]


def test_start_failure_reports_log(lab_root: Path) -> None:
    port = free_port()
    server = DovecotServer(
        root=lab_root / "broken",
        name="broken",
        layout="source",
        users=[ALICE],
        port=port,
        extra_config="this_setting_does_not_exist = 1\n",
    )
    with pytest.raises(RuntimeError, match="this_setting_does_not_exist"):
        server.start()
    assert not server.running
