"""Microsoft Graph faults, each proven against what the simulated tenant holds: nothing lost, nothing duplicated.

What an engineer sees (exit codes, one-line errors, `status --json`, `verify`) runs through the real `migrator`
command against the Graph and identity simulators; what only the connector decides (which refusals it retries
itself, what it never sends twice) runs through `GraphEndpoint` directly, where a fault can be aimed at one
request. The IMAP source is one Dovecot shared by the module (a copy only reads it), and so is the result of
init, discover and plan create, which never contact the target: each test copies that project and points it at
its own tenant.

What the simulator cannot do, and what the tests do instead:
- It counts every 429 in one `throttled` counter; the throttling test tells concurrency refusals from the others
  by wrapping the simulator's `_admit` (the one place that refuses) and reading each refusal's message.
- It has no call to change a mailbox's quota; the quota test raises it on the simulator's own mailbox object.
- Its injected 502 and 504 carry no Retry-After (it adds one to 429 and 503 only), so the client's default wait
  applies to them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from migrator.connectors.base import open_mailbox
from migrator.connectors.graph import GraphEndpoint
from migrator.connectors.graph import client as graph_client
from migrator.connectors.graph.native import FORMAT, MailboxTransfer
from migrator.errors import FolderFailed, ItemFailed, Transient
from migrator.lab.corpus import CorpusSpec, generate_corpus, load_corpus
from migrator.lab.dovecot import DovecotServer, LabUser
from migrator.model import CopyTag, Login, MessageRef, RawMessage
from migrator.planning.planfile import read_plan
from tests.contract import content_key
from tests.graph_fixtures import ONE_MAILBOX as ADDRESS
from tests.graph_fixtures import Cloud, OneMailbox, Tenant, graph_contents, imap_contents
from tests.imap_fixtures import store_dump
from tests.mssim.graph import GraphSimulator
from tests.test_bad_input import one_line_error
from tests.test_graph_e2e import GraphProject, imap_block, non_empty

USERS = [LabUser("alice", "alice-pw"), LabUser("bob", "bob-pw")]
SPEC = CorpusSpec(messages_per_mailbox=8, large_attachments=1, include_cpython_samples=False)
CREATE = "POST /users/{u}/mailFolders/{f}/messages"  # the simulator's request counter key for a create


def spec_for(index: int) -> CorpusSpec:
    return CorpusSpec(SPEC.messages_per_mailbox, SPEC.large_attachments, SPEC.include_cpython_samples,
                      SPEC.seed + index)


def target_of(user: LabUser) -> str:
    return f"{user.name}@new.example"


@pytest.fixture(scope="module")
def source(dovecot: None) -> Iterator[DovecotServer]:
    """Both users' corpora (144 messages, one 2.3 MB message each) in one Dovecot for the whole module."""
    root = Path(tempfile.mkdtemp(prefix="migrator-lab-"))
    root.chmod(0o755)  # Dovecot's unprivileged processes must traverse it (see imap_fixtures.lab_root)
    try:
        with DovecotServer(root=root / "source", name="source", layout="source", users=USERS) as server:
            for index, user in enumerate(USERS):
                load_corpus(server.host, server.port, user, spec_for(index))
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def source_messages(source: DovecotServer) -> int:
    return sum(sum(messages.values()) for user in USERS for messages in imap_contents(source, user).values())


@pytest.fixture(scope="module")
def planned(source: DovecotServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after init, discover and a one-mailbox-per-batch plan, made once: discover and plan read only
    the source (the [target] here is a placeholder never contacted), so every test starts from a copy of it
    with its own tenant as [target]."""
    project = GraphProject(tmp_path_factory.mktemp("graph-faults") / "project")
    project.project.mkdir()
    placeholder = ('[target]\nkind = "graph"\ntenant_id = "00000000-0000-0000-0000-000000000000"\n'
                   'client_id = "00000000-0000-0000-0000-000000000000"\nclient_secret_env = "NOT_USED"\n')
    project.setup(imap_block("source", source), placeholder,
                  ["source,target,source_login,source_password"]
                  + [f"{u.name}@old.example,{target_of(u)},{u.name},{u.password}" for u in USERS])
    return project.project


def make_project(lab_root: Path, source: DovecotServer, planned: Path, tenant: Tenant, *,
                 quotas: dict[str, int] | None = None, add_users: bool = True) -> GraphProject:
    """A copy of the planned project migrating into `tenant`, whose target users exist unless `add_users` is
    False."""
    project = GraphProject(lab_root / "project", env={tenant.secret_env: tenant.secret})
    shutil.copytree(planned, project.project)
    (project.project / "migrator.toml").write_text(
        f'[state]\nurl = "sqlite:///migrator.db"\n\n{imap_block("source", source)}\n{tenant.config_block()}\n',
        encoding="utf-8")
    if add_users:
        for user in USERS:
            tenant.graph.add_user(target_of(user), quota_bytes=(quotas or {}).get(user.name))
    return project


def assert_exact(source: DovecotServer, tenant: Tenant, users: Collection[LabUser] = tuple(USERS), *,
                 leave_out: Collection[str] = ()) -> None:
    """Every target mailbox holds its source exactly (content fingerprint, flags as Exchange keeps them,
    received time), folder by folder, nothing missing, nothing twice, nothing else; messages whose content
    key is in `leave_out` are expected absent."""
    for user in users:
        expected = {path: Counter({key: n for key, n in messages.items() if key[0] not in leave_out})
                    for path, messages in imap_contents(source, user).items()}
        actual = non_empty(graph_contents(tenant.graph, target_of(user)))
        expected = non_empty(expected)
        for path in sorted(set(expected) | set(actual)):
            want, have = expected.get(path, Counter()), actual.get(path, Counter())
            assert want == have, f"{user.name} {path}: missing {want - have}, extra {have - want}"


def jobs(project: GraphProject) -> dict[str, dict[str, Any]]:
    """`migrator status --json`, job by source mailbox (every test runs one stage)."""
    document = json.loads(project.migrator("status", "--json").stdout)
    return {job["mailbox"]: job for job in document["jobs"]}


def events(project: GraphProject, kind: str) -> list[str]:
    """The state store's event log of that kind (what `migrator -v` logs as it happens)."""
    with sqlite3.connect(project.project / "migrator.db") as conn:
        return [row[0] for row in conn.execute("SELECT message FROM event WHERE kind = ? ORDER BY id", (kind,))]


def faults_left(graph: GraphSimulator) -> int:
    """Injected faults not yet taken (the simulator has no public view of them)."""
    with graph._lock:
        return sum(fault.times for fault in graph._faults)


def count_refusals(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The simulator's 429s by the limit named in their message ("MailboxConcurrency", "request rate",
    "IncomingBytes"), counted where it decides them."""
    refusals: Counter[str] = Counter()
    admit = tenant.graph._admit

    def counted(key: tuple[str, str], upload_bytes: int) -> Any:
        refused = admit(key, upload_bytes)
        if refused is not None:
            message = json.loads(refused.body)["error"]["message"]
            refusals[message.removeprefix("Application is over its ").removesuffix(" limit.")] += 1
        return refused

    monkeypatch.setattr(tenant.graph, "_admit", counted)
    return refusals


# -- throttling --------------------------------------------------------------------------------------------


def test_throttled_run_completes_exactly_and_never_exceeds_mailbox_concurrency(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 requests per 2 s per mailbox (a copy needs about 100 per mailbox) and 5 ms of latency per request, so
    four requests are in flight at once: the run waits out every 429 (Retry-After), ends 0 with an exact copy,
    and the per-mailbox gate keeps the simulator from ever refusing a request for concurrency."""
    tenant = cloud.tenant("target", requests_per_window=40, request_window_seconds=2, retry_after_seconds=1,
                          latency_seconds=0.005)
    refusals = count_refusals(tenant, monkeypatch)
    project = make_project(lab_root, source, planned, tenant)
    out = project.run()
    assert f"copied {source_messages(source)} messages" in out, out
    assert tenant.graph.throttled > 0 and refusals["request rate"] > 0, "the budget was never reached"
    assert refusals["MailboxConcurrency"] == 0, refusals
    assert "waited for throttling (not a failure)" in out, "the waits are counted as throttled"
    assert_exact(source, tenant)
    assert {job["state"] for job in jobs(project).values()} == {"done"}
    assert all(job["failed_items"] == 0 and job["error"] is None for job in jobs(project).values())


# -- lost replies and 5xx -----------------------------------------------------------------------------------


def test_lost_create_replies_are_settled_by_tag_without_duplicates(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path) -> None:
    """Three creates are applied and their replies lost (the connection drops): the connector never sends a
    write twice blind, the engine retries the pass, settles the open intents by their tag and finds the three
    copies. One run suffices, and every message was created exactly once."""
    tenant = cloud.tenant("target")
    project = make_project(lab_root, source, planned, tenant)
    total = source_messages(source)
    tenant.graph.fail_next("POST", "/messages", 0, drop_connection=True, after=True, times=3)
    out = project.run()
    assert faults_left(tenant.graph) == 0
    assert f"copied {total} messages" in out, out  # found copies count as copied
    assert tenant.graph.requests[CREATE] == total, "a create was sent again for a copy that existed"
    assert events(project, "retry") and all("connection lost" in e for e in events(project, "retry"))
    found = [int(e.split(": ", 1)[1].split()[0]) for e in events(project, "settled")]
    assert sum(found) >= 3, events(project, "settled")
    assert_exact(source, tenant)


def test_5xx_on_reads_and_writes_through_the_cli_end_exact(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path) -> None:
    """503s (Retry-After 1) on listings and creates, a 502 on a folder read, and a 504 to a create that was
    applied: exit 0, exact; the two refused creates were sent again, the applied one never (its copy was found
    by its tag)."""
    tenant = cloud.tenant("target", retry_after_seconds=1)
    project = make_project(lab_root, source, planned, tenant)
    total = source_messages(source)
    graph = tenant.graph
    graph.fail_next("GET", "/messages", 503, times=2)
    graph.fail_next("GET", "/mailFolders", 502)
    graph.fail_next("POST", "/messages", 503, times=2)
    graph.fail_next("POST", "/messages", 504, after=True)
    out = project.run()
    assert faults_left(graph) == 0
    assert f"copied {total} messages" in out, out
    assert graph.requests[CREATE] == total + 2
    assert any("HTTP 504 to POST" in e for e in events(project, "retry")), events(project, "retry")
    assert_exact(source, tenant)


def mail(index: int, attachment: bytes = b"") -> RawMessage:
    message = EmailMessage()
    message["From"] = "a@example.org"
    message["To"] = ADDRESS
    message["Subject"] = f"fault {index}"
    message["Message-ID"] = f"<fault-{index}@example.org>"
    message["Date"] = "Thu, 04 Mar 2021 05:06:07 +0000"
    message.set_content(f"message {index}\n")
    if attachment:
        message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="big.bin")
    body = message.as_bytes(policy=SMTP)
    return RawMessage(MessageRef(str(index), len(body), frozenset({"\\Seen"}), datetime(2021, 3, 4, tzinfo=UTC)),
                      body)


LOGIN = Login(ADDRESS, ADDRESS)


def test_request_budget_is_kept_by_pacing_not_by_429s(one_mailbox_tenant: OneMailbox,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate spends a window's budget at once and then paces at the window's rate: with the budget
    scaled down to 20 requests per 2 s on both sides, 60 creates take about 4 s and draw no 429."""
    monkeypatch.setattr(graph_client, "REQUESTS_PER_WINDOW", 20)
    monkeypatch.setattr(graph_client, "REQUEST_WINDOW", 2)
    endpoint, graph = one_mailbox_tenant(requests_per_window=20, request_window_seconds=2.0)
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Paced", None)
        ids = mailbox.append(folder, [mail(i) for i in range(60)])
        assert all(isinstance(i, str) for i in ids)
        assert len(mailbox.list_messages(folder)) == 60
    assert graph.throttled == 0, "the budget was kept by pacing, not discovered through 429s"


def test_a_stage_of_folders_is_created_at_once_not_folder_after_folder(one_mailbox_tenant: OneMailbox) -> None:
    """A delta brings a message or two into many folders; append_folders sends every folder's creates at once
    over the mailbox's request slots (4 per app and mailbox). With 0.3 s of latency held per request, creates
    sent folder after folder never overlap; here they do, and each lands in its own folder."""
    endpoint, graph = one_mailbox_tenant(latency_seconds=0.3)
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folders = [mailbox.ensure_folder(f"Stage {n}", None)[0] for n in range(4)]
        graph.peak_inflight = 0
        outcomes = mailbox.append_folders([(folder, [mail(n)]) for n, folder in enumerate(folders)])
        assert graph.peak_inflight >= 2, "the folders' creates were sent one after the other"
        assert all(not isinstance(ids, Exception) and len(ids) == 1 for ids in outcomes)
        assert [len(mailbox.list_messages(folder)) for folder in folders] == [1, 1, 1, 1]


def test_a_mailbox_s_folders_are_created_a_level_at_a_time_not_one_after_the_other(
        one_mailbox_tenant: OneMailbox) -> None:
    """A first pass asks for all of a mailbox's folders at once (ensure_folders): each level of the tree is
    created over the mailbox's request slots, parents before children. With 0.3 s held per request, folders
    created one after the other never overlap; here they do, and the tree is the one asked for. A folder
    whose parent the service refuses is refused with it; its siblings go on."""
    endpoint, graph = one_mailbox_tenant(latency_seconds=0.3)
    paths = ["Archive 2024/Q1", "Archive 2024", "Archive 2024/Q2", "Clients", "Clients/Acme", "Clients/Umbrella"]
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        mailbox.list_folders(sizes=False)
        graph.peak_inflight = 0
        outcomes = mailbox.ensure_folders([(path, None) for path in paths])
        peak = graph.peak_inflight
        listed = {f.path: f.key for f in mailbox.list_folders(sizes=False)}
        graph.fail_next("POST", "/childFolders", 400, times=1)
        refused = mailbox.ensure_folders([("Clients/Bad", None), ("Clients/Bad/Deeper", None), ("Solo", None)])
    assert peak >= 2, "the folders were created one after the other"
    assert [(o[0].path, o[1], listed[o[0].path] == o[0].key) for o in outcomes if not isinstance(o, Exception)] \
        == [(path, True, True) for path in paths]
    assert [type(o).__name__ if isinstance(o, Exception) else o[1] for o in refused] == \
        ["FolderFailed", "FolderFailed", True]


def test_503_and_502_are_retried_by_the_client_on_reads_and_writes(one_mailbox_tenant: OneMailbox) -> None:
    """503 (Retry-After 1) on creates, a listing and $value, 502 on $value: retried inside the client, so the
    caller sees none of them; the refused creates were not applied and every message is there once."""
    endpoint, graph = one_mailbox_tenant(retry_after_seconds=1)
    sent = [mail(i) for i in range(6)]
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Faults", None)
        graph.fail_next("POST", "/messages", 503, times=3)
        ids = mailbox.append(folder, sent)
        graph.fail_next("GET", "/messages", 503)
        listing = mailbox.list_messages(folder)
        graph.fail_next("GET", "/$value", 503)
        graph.fail_next("GET", "/$value", 502)
        fetched = list(mailbox.fetch(folder, listing))
    assert graph.requests[CREATE] == len(sent) + 3
    assert sorted(map(str, ids)) == sorted(ref.id for ref in listing) and len(set(ids)) == len(sent)
    assert Counter(content_key(m.body) for m in sent) == Counter(content_key(m.body) for m in fetched)


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_error_after_a_create_is_never_resent_blind(one_mailbox_tenant: OneMailbox, status: int) -> None:
    """A 502 or 504 to a create says nothing about whether the create was applied (the gateway lost the
    backend's answer): resending it could make a second copy. The connector reports it as Transient, and the
    tag settles it: exactly one copy of every message."""
    endpoint, graph = one_mailbox_tenant()
    sent = [mail(i) for i in range(4)]
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Faults", None)
        graph.fail_next("POST", "/messages", status, after=True)
        with pytest.raises(Transient):
            mailbox.append(folder, sent)
        found = mailbox.find_tagged(folder, [CopyTag(m.digest, len(m.body)) for m in sent], None)
        assert sorted(len(ids) for ids in found.values()) == [1] * len(sent)
        assert len(mailbox.list_messages(folder)) == len(sent)
    assert graph.requests[CREATE] == len(sent)


# -- native copies (mailbox import/export API) --------------------------------------------------------------

EXPORTER = "dave@example.org"
IMPORT = "POST /api/gv1.0/Mailboxes({box})/importItem"
SESSION = "POST /admin/exchange/mailboxes/{box}/createImportSession"


def exported(endpoint: GraphEndpoint, graph: GraphSimulator, count: int) -> list[RawMessage]:
    """`count` messages delivered to a second mailbox of the tenant, exported as native streams."""
    graph.add_user(EXPORTER)
    for index in range(count):
        graph.add_message(EXPORTER, "Inbox", mail(index).body, is_read=index % 2 == 0, categories=[f"c{index}"])
    with open_mailbox(endpoint, Login(EXPORTER, EXPORTER), write=False) as source:
        assert source.capabilities().native_formats == {FORMAT}
        inbox = next(f for f in source.list_folders(sizes=False) if f.path == "Inbox")
        messages = list(source.fetch(inbox, source.list_messages(inbox), native=FORMAT))
    assert [m.format for m in messages] == [FORMAT] * count
    return messages


def test_expired_import_session_is_renewed_and_nothing_is_imported_twice(one_mailbox_tenant: OneMailbox) -> None:
    """The import URL expires (its token embedded, https://learn.microsoft.com/en-us/graph/import-exchange-mailbox-
    item): the refused import created nothing, so the connector renews the session once and imports again."""
    endpoint, graph = one_mailbox_tenant()
    sent = exported(endpoint, graph, 3)
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Imported", None)
        assert all(isinstance(i, str) for i in mailbox.append(folder, sent[:1]))
        graph.expire_import_sessions()
        ids = mailbox.append(folder, sent[1:])
        assert all(isinstance(i, str) for i in ids)
        assert len(mailbox.list_messages(folder)) == 3
    assert graph.requests[SESSION] == 2, "one session at the probe, one renewal for both imports refused"
    assert graph.requests[IMPORT] in (4, 5), "three imports, and one or both of the two then in flight refused"
    assert sorted(m.is_read for m in graph.messages(ADDRESS, "Imported")) == [False, True, True]


def test_imports_whose_changekey_the_mail_api_words_otherwise_are_found_by_fingerprint(
        one_mailbox_tenant: OneMailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the import answer a changeKey the mail API does not show, each staged item is still claimed once, by
    its fingerprint among the staging folder's unclaimed items: every message placed once, nothing left behind."""
    endpoint, graph = one_mailbox_tenant()
    sent = exported(endpoint, graph, 3)
    imported = MailboxTransfer.import_item
    monkeypatch.setattr(MailboxTransfer, "import_item", lambda self, folder, data: "x" + imported(self, folder, data))
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Imported", None)
        ids = mailbox.append(folder, sent)
        assert len(set(ids)) == 3 and all(isinstance(i, str) for i in ids)
        assert len(mailbox.list_messages(folder)) == 3
    assert not graph.messages(ADDRESS, "Migrator staging")


@pytest.mark.parametrize("lost", ["import", "tag", "move"])
def test_native_copy_interrupted_at_each_step_settles_to_exactly_one_copy(one_mailbox_tenant: OneMailbox,
                                                                          lost: str) -> None:
    """A native copy is import (into the staging folder), PATCH of the tag, move. The import's reply lost, the tag
    refused, the move's reply lost: the append fails, and settling then finds the moved copy by its tag, or removes
    what is left in the staging folder so the message is copied again; never a second copy, never a leftover."""
    endpoint, graph = one_mailbox_tenant()
    sent = exported(endpoint, graph, 3)
    tags = [CopyTag(m.digest, len(m.body)) for m in sent]
    fault = {"import": ("POST", "importItem", 502, True), "tag": ("PATCH", "/messages/", 400, False),
             "move": ("POST", "/move", 504, True)}[lost]
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Imported", None)
        graph.fail_next(fault[0], fault[1], fault[2], after=fault[3])
        with pytest.raises((Transient, FolderFailed)):
            mailbox.append(folder, sent)
        found = mailbox.find_tagged(folder, tags, None)
        assert not graph.messages(ADDRESS, "Migrator staging"), "settling removes every staged leftover"
        placed = {tag: ids for tag, ids in found.items() if ids}
        again = mailbox.append(folder, [m for m, tag in zip(sent, tags, strict=True) if tag not in placed])
        assert all(isinstance(i, str) for i in again)
        assert sorted(len(ids) for ids in mailbox.find_tagged(folder, tags, None).values()) == [1, 1, 1]
        assert len(mailbox.list_messages(folder)) == 3


# -- tokens -------------------------------------------------------------------------------------------------


def test_tokens_expiring_mid_run_are_refreshed(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path) -> None:
    """Every token the run holds is revoked three times while it copies (after 10, 50 and 90 creates): each
    refusal (401 InvalidAuthenticationToken) gets a new token from the identity platform, the run ends 0 and
    the copy is exact."""
    tenant = cloud.tenant("target", latency_seconds=0.005)
    project = make_project(lab_root, source, planned, tenant)
    total = source_messages(source)
    marks, expired_at = [10, 50, 90], []
    done = threading.Event()

    def expire() -> None:
        while marks and not done.is_set():
            if tenant.graph.requests[CREATE] >= marks[0]:
                tenant.graph.expire_tokens()
                expired_at.append(tenant.graph.requests[CREATE])
                marks.pop(0)
            time.sleep(0.005)

    issued = cloud.identity.tokens_issued
    thread = threading.Thread(target=expire, daemon=True)
    thread.start()
    try:
        out = project.run()
    finally:
        done.set()
        thread.join()
    assert len(expired_at) == 3 and expired_at[-1] < total, f"expiries did not land mid-run: {expired_at}"
    assert cloud.identity.tokens_issued - issued >= 4, "a new token after every expiry"
    assert f"copied {total} messages" in out
    assert_exact(source, tenant)


# -- too large ----------------------------------------------------------------------------------------------


def large_keys(limit: int) -> set[str]:
    """Content keys of the corpus messages over `limit` bytes (one per user)."""
    return {content_key(mail.raw) for index, user in enumerate(USERS)
            for messages in generate_corpus(user, spec_for(index)).values() for mail in messages
            if len(mail.raw) > limit}


def test_too_large_items_fail_alone_are_listed_by_verify_and_never_retried(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path) -> None:
    """A tenant whose largest message is 1 MB refuses each user's 2.3 MB message (400 ErrorMessageSizeExceeded):
    those two are recorded failed `too-large`, the run exits 1, verify lists them, everything else is exact,
    and a rerun neither sends them again nor anything else."""
    limit = 2**20
    tenant = cloud.tenant("target", max_message_size=limit)
    project = make_project(lab_root, source, planned, tenant)
    too_large = large_keys(limit)
    assert len(too_large) == len(USERS)
    out = project.run(expect=1)
    assert f"copied {source_messages(source) - 2} messages" in out and "2 items failed" in out, out
    status = jobs(project)
    assert [job["failed_items"] for job in status.values()] == [1, 1], status
    verify = project.migrator("verify", "plans/wave1.yaml", expect=1)
    assert verify.stdout.count("not copied (too-large)") == 2, verify.stdout
    assert_exact(source, tenant, leave_out=too_large)
    creates = tenant.graph.requests[CREATE]
    again = project.run(expect=1)
    assert "copied 0 messages" in again and "0 items failed, 2 failed in earlier passes" in again, again
    assert tenant.graph.requests[CREATE] == creates
    assert_exact(source, tenant, leave_out=too_large)


def test_too_large_attachment_upload_leaves_no_partial_copy(one_mailbox_tenant: OneMailbox) -> None:
    """A 3.5 MB attachment goes through an upload session after the create; the tenant refuses it as too large.
    The item fails `too-large`, and the half-made message must not stay behind."""
    endpoint, _graph = one_mailbox_tenant(max_message_size=2**20)
    big = mail(1, os.urandom(3_500_000))
    with open_mailbox(endpoint, LOGIN, write=True) as mailbox:
        folder, _ = mailbox.ensure_folder("Faults", None)
        (result,) = mailbox.append(folder, [big])
        assert isinstance(result, ItemFailed) and result.reason == "too-large"
        assert mailbox.list_messages(folder) == []


# -- quota --------------------------------------------------------------------------------------------------


def test_full_mailbox_stops_that_mailbox_only_and_resumes_exactly_after_the_quota_is_raised(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path) -> None:
    """alice's target takes 150 kB: her job stops with reason quota (403 ErrorQuotaExceeded) while bob's
    completes; once her quota is raised a rerun settles what was in flight and ends exact, nothing twice."""
    tenant = cloud.tenant("target")
    project = make_project(lab_root, source, planned, tenant, quotas={"alice": 150_000})
    out = project.run(expect=1)
    assert "1 mailboxes done, 1 failed" in out, out
    status = jobs(project)
    assert status["alice@old.example"]["state"] == "failed"
    assert status["alice@old.example"]["error_kind"] == "quota", status
    assert status["bob@old.example"]["state"] == "done"
    assert_exact(source, tenant, [USERS[1]])
    alice = graph_contents(tenant.graph, target_of(USERS[0]))
    assert 0 < sum(sum(messages.values()) for messages in alice.values()) < 50, "alice stopped early"
    # The simulator has no call for it: raise the quota on its mailbox object, as an admin would in Exchange.
    tenant.graph._mailbox_by_address(target_of(USERS[0])).quota_bytes = None
    project.run()
    assert_exact(source, tenant)
    assert {job["state"] for job in jobs(project).values()} == {"done"}


# -- credentials and mailboxes ------------------------------------------------------------------------------


def test_wrong_client_secret_is_exit_3_in_one_line_without_the_secret_and_changes_nothing(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path) -> None:
    tenant = cloud.tenant("target")
    project = make_project(lab_root, source, planned, tenant)
    wrong = "wrong-" + tenant.secret[::-1]
    project.env[tenant.secret_env] = wrong
    before = store_dump(project.project)
    for command in (["check"], ["run", "plans/wave1.yaml", "--stage", "prestage"]):
        result = project.migrator(*command, expect=3)
        line = one_line_error(result.stderr)
        assert "invalid_client" in line and "AADSTS7000215" in line, line
        assert wrong not in result.stdout + result.stderr and tenant.secret not in result.stdout + result.stderr
    assert store_dump(project.project) == before
    assert not any(graph_contents(tenant.graph, target_of(user)).get("Inbox") for user in USERS)


def test_unknown_target_mailbox_fails_that_mailbox_only(
        source: DovecotServer, planned: Path, cloud: Cloud, lab_root: Path) -> None:
    """The target of the plan's second mailbox is no user of the tenant: that job fails, naming the address and
    saying there is no such mailbox; the other mailbox is copied exactly. (The preflight probes the first
    mailbox of the first batch, so the missing one is put second: first, the whole run would exit 3.)"""
    tenant = cloud.tenant("target")
    project = make_project(lab_root, source, planned, tenant, add_users=False)
    plan, _fingerprint, _edited = read_plan(project.project / "plans" / "wave1.yaml", accept_edits=True)
    first = plan.batches[0].mailboxes[0].source
    present = next(u for u in USERS if f"{u.name}@old.example" == first)
    missing = next(u for u in USERS if u is not present)
    tenant.graph.add_user(target_of(present))
    result = project.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2", expect=1)
    assert "1 mailboxes done, 1 failed" in result.stdout, result.stdout
    problems = [line for line in result.stderr.splitlines() if target_of(missing) in line]
    assert len(problems) == 1 and "no such mailbox" in problems[0], result.stderr
    status = jobs(project)
    assert status[f"{missing.name}@old.example"]["state"] == "failed"
    assert status[f"{missing.name}@old.example"]["error_kind"] == "authfailed"
    assert status[first]["state"] == "done"
    assert_exact(source, tenant, [present])
