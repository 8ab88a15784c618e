"""End to end through Microsoft Graph: Dovecot -> Graph, Graph -> Dovecot and Graph -> Graph between two
tenants, each through the real `migrator` command against the Graph simulator and a real identity platform
simulator (msal runs for real), with verify --deep, delta, rollback and kill -9 resume.

Exchange re-renders MIME, so copies into Graph are compared by content fingerprint (migrator.fingerprint),
flags as Exchange keeps them, and received time; copies out of Graph into IMAP are compared byte for byte
with what Graph serves.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from imapclient import IMAPClient

from migrator.connectors.graph.mime import LAST_VERB_PROPERTY, TAG_PROPERTY
from migrator.lab.corpus import CorpusSpec, generate_corpus, load_corpus, mailbox_snapshot
from migrator.lab.dovecot import DovecotServer, LabUser
from migrator.model import Capabilities
from tests.graph_fixtures import (
    EXCHANGE_FLAGS,
    Cloud,
    Tenant,
    graph_contents,
    graph_flags,
    imap_contents,
    request_counts,
    reset_counts,
    seed_graph,
)
from tests.imap_to_graph import (
    SPEC,
    USERS,
    GraphProject,
    assert_graph_holds_source,
    imap_block,
    to_graph_project,
)
from tests.mssim.graph import GraphSimulator, SimMessage

T = TypeVar("T")
IMAP_FLAGS = Capabilities()
UPDATE = "PATCH /users/{u}/messages/{m}"  # the simulator's request counter keys
DELETE = "DELETE /users/{u}/messages/{m}"


def non_empty(contents: dict[str, Counter[T]]) -> dict[str, Counter[T]]:
    return {path: messages for path, messages in contents.items() if messages}


def test_imap_to_graph_copies_verifies_and_rolls_back(imap_source: DovecotServer, cloud: Cloud,
                                                              lab_root: Path) -> None:
    """A copy into Graph, verified deep, a no-op pass, a delta of flag changes and a rollback; the flag changes
    and the rollback's deletions travel in JSON batches (`$batch`), each message's request counted once."""
    tenant = cloud.tenant("target")
    project = to_graph_project(lab_root, imap_source, tenant)
    out = project.run()
    copy_requests = request_counts(tenant.graph)
    assert_graph_holds_source(imap_source, tenant)
    for user in USERS:
        drafts = [m for path in tenant.graph.folders(f"{user.name}@new.example") if path != "Drafts"
                  for m in tenant.graph.messages(f"{user.name}@new.example", path) if m.is_draft]
        assert not drafts, "imported mail must not be drafts"
    verify = project.migrator("verify", "plans/wave1.yaml", "--deep")
    assert "content fingerprint" in verify.stdout
    again = project.run()
    assert "copied 0 messages" in again, again
    verbose = project.migrator("-v", "run", "plans/wave1.yaml", "--stage", "delta")
    dump = (project.project / "migrator.db").read_bytes() + out.encode() + verify.stdout.encode()
    dump += (verbose.stdout + verbose.stderr).encode()
    assert tenant.secret.encode() not in dump
    assert b"Bearer" not in dump and b"eyJ" not in dump, "no access token in the store or the -v log"
    messages = sum(sum(c.values()) for u in USERS for c in imap_contents(imap_source, u).values())
    print(f"Graph requests per migrated message: {per_message(copy_requests, messages)} for the copy, "
          f"{per_message(request_counts(tenant.graph), messages)} with a no-op pass and verify --deep; "
          f"{dict(tenant.graph.requests.most_common(6))}")

    toggled = sum(toggle_seen_in_inbox(imap_source, user) for user in USERS)
    reset_counts(tenant.graph)
    assert f"{toggled} flag updates" in project.run("delta")
    assert_graph_holds_source(imap_source, tenant)
    assert tenant.graph.requests[UPDATE] == toggled, "one PATCH per changed message"
    assert tenant.graph.sub_requests[UPDATE] >= toggled - len(USERS), "batched, but for a lone last one per Inbox"
    print(f"Graph requests per flag change: {per_message(request_counts(tenant.graph), toggled)} for the delta")

    reset_counts(tenant.graph)
    project.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--yes")
    project.migrator("rollback", "plans/wave1.yaml", "--batch", "B02", "--yes")
    folders = sum(1 for u in USERS for c in imap_contents(imap_source, u).values() if c)
    assert tenant.graph.requests[DELETE] == messages, "one DELETE per copy"
    assert tenant.graph.sub_requests[DELETE] >= messages - folders, "batched, but for a lone last one per folder"
    print(f"Graph requests per rolled back message: {per_message(request_counts(tenant.graph), messages)}")
    for user in USERS:
        address = f"{user.name}@new.example"
        left = {path: len(tenant.graph.messages(address, path)) for path in tenant.graph.folders(address)}
        assert not any(left.values()), f"rollback left messages: {left}"
        assert "Projects" not in tenant.graph.folders(address), "folders we created must go"
        assert "Inbox" in tenant.graph.folders(address), "folders that were there stay"


def per_message(counts: tuple[int, int], messages: int) -> str:
    return f"{counts[0] / messages:.2f} HTTP ({counts[1] / messages:.2f} against the budget)"


def toggle_seen_in_inbox(server: DovecotServer, user: LabUser) -> int:
    """Every INBOX message of `user` read becomes unread and the other way round; returns how many."""
    with IMAPClient(server.host, server.port, ssl=False) as client:
        client.login(user.name, user.password)
        client.select_folder("INBOX")
        seen, unseen = client.search("SEEN"), client.search("UNSEEN")
        if seen:
            client.remove_flags(seen, [b"\\Seen"])
        if unseen:
            client.add_flags(unseen, [b"\\Seen"])
    return len(seen) + len(unseen)


def test_graph_to_imap_keeps_what_graph_serves_byte_for_byte(dovecot: None, lab_root: Path, cloud: Cloud) -> None:
    tenant = cloud.tenant("source")
    for index, user in enumerate(USERS):
        corpus = generate_corpus(user, CorpusSpec(SPEC.messages_per_mailbox, SPEC.large_attachments,
                                                  SPEC.include_cpython_samples, SPEC.seed + index))
        seed_graph(tenant.graph, f"{user.name}@old.example", corpus)
    with DovecotServer(root=lab_root / "target", name="target", layout="target", users=USERS) as target:
        project = GraphProject(lab_root / "project", env={tenant.secret_env: tenant.secret})
        project.project.mkdir()
        project.setup(tenant.config_block(), imap_block("target", target),
                      ["source,target,target_login,target_password"]
                      + [f"{u.name}@old.example,{u.name}@new.example,{u.name},{u.password}" for u in USERS])
        project.run()
        for user in USERS:
            address = f"{user.name}@old.example"
            served = {path: Counter(hashlib.sha256(tenant.graph.mime(address, m.id)).hexdigest()
                                    for m in tenant.graph.messages(address, path))
                      for path in tenant.graph.folders(address)}
            copied = {path.replace("INBOX", "Inbox", 1) if path.startswith("INBOX") else path:
                      Counter(sha for sha, _flags, _date in messages)
                      for path, messages in mailbox_snapshot(target.host, target.port, user.name,
                                                             user.password).items()}
            for path, messages in served.items():
                assert copied.get(path, Counter()) == messages, f"{address} {path}"
            assert non_empty(graph_contents(tenant.graph, address)) == non_empty(imap_contents(target, user))
        project.migrator("verify", "plans/wave1.yaml", "--deep")
        assert "copied 0 messages" in project.run()


def tenant_pair(lab_root: Path, cloud: Cloud, spec: CorpusSpec, **target_options: Any
                ) -> tuple[Tenant, Tenant, GraphProject]:
    """Two tenants, the source seeded with a corpus per user, and a project that maps them by domain rewrite."""
    source, target = cloud.tenant("source"), cloud.tenant("target", **target_options)
    for index, user in enumerate(USERS):
        corpus = generate_corpus(user, CorpusSpec(spec.messages_per_mailbox, spec.large_attachments,
                                                  spec.include_cpython_samples, spec.seed + index))
        seed_graph(source.graph, f"{user.name}@old.example", corpus)
        target.graph.add_user(f"{user.name}@new.example")
    project = GraphProject(lab_root / "project", env={source.secret_env: source.secret,
                                                      target.secret_env: target.secret})
    project.project.mkdir()
    project.setup(source.config_block(), target.config_block(), ["source"] + [f"{u.name}@old.example" for u in USERS],
                  extra='[mapping]\ndomains = { "old.example" = "new.example" }\n')  # targets by domain rewrite
    return source, target, project


def test_graph_to_graph_falls_back_to_mime_when_the_target_tenant_refuses_import(lab_root: Path, cloud: Cloud) -> None:
    """A target tenant whose app lacks MailboxItem.ImportExport.All: the run says so in one line and copies
    everything through MIME (no export, no import), exactly, verified deep."""
    source, target, project = tenant_pair(lab_root, cloud, CorpusSpec(SPEC.messages_per_mailbox, 0, False, SPEC.seed),
                                          import_export=False)
    result = project.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--workers", "2")
    print_requests_per_message("MIME (the target refused the import/export API)", source, target)
    refusals = [line for line in result.stderr.splitlines() if "import/export API is refused" in line]
    assert len(refusals) == 1 and "MailboxItem.ImportExport.All" in refusals[0], result.stderr
    assert source.secret not in result.stderr and target.secret not in result.stderr
    assert not [key for key in source.graph.requests if "exportItems" in key], "no export once the target refused"
    for user in USERS:
        assert non_empty(graph_contents(source.graph, f"{user.name}@old.example")) == non_empty(
            graph_contents(target.graph, f"{user.name}@new.example"))
    project.migrator("verify", "plans/wave1.yaml", "--deep")
    assert "copied 0 messages" in project.run()


def print_requests_per_message(mode: str, source: Tenant, target: Tenant) -> None:
    """Requests both tenants saw so far per message of the source mailboxes (print with -s)."""
    messages = sum(len(source.graph.messages(f"{u.name}@old.example", p)) for u in USERS
                   for p in source.graph.folders(f"{u.name}@old.example"))
    print(f"Graph requests per migrated message, {mode}: "
          f"{per_message(request_counts(source.graph, target.graph), messages)} for the copy "
          f"(source {per_message(request_counts(source.graph), messages)}, "
          f"target {per_message(request_counts(target.graph), messages)}); "
          f"{dict((source.graph.requests + target.graph.requests).most_common(8))}")


def stored(graph: GraphSimulator, address: str) -> dict[str, Counter[tuple[Any, ...]]]:
    """Per folder, every item as Exchange stores it: properties, state, dates, extended properties (our tag
    left out), attachments with their bytes, and the MIME it came from."""
    def item(m: SimMessage) -> tuple[Any, ...]:
        extended = tuple(sorted((k.lower(), v) for k, v in m.extended.items() if k.lower() != TAG_PROPERTY.lower()))
        return (m.subject, m.is_draft, m.is_read, m.flag_status, tuple(m.categories), m.received, m.sent,
                m.internet_message_id, m.body_type, m.body, tuple(m.attachments), tuple(m.headers), m.from_,
                tuple(m.to), tuple(m.cc), m.importance, extended, m.raw)
    return {path: Counter(item(m) for m in graph.messages(address, path)) for path in graph.folders(address)}


def test_graph_to_graph_native_full_fidelity_verify_and_rollback(lab_root: Path, cloud: Cloud) -> None:
    """Both tenants offer the mailbox import/export API: every item arrives exactly as stored (state, dates,
    categories, extended properties, attachments byte for byte), nothing through MIME, no drafts, nothing left in
    the staging folder; verify --deep passes, a rerun copies nothing, and rollback removes exactly our copies: mail
    the target already had, an identical twin of a copied message included, stays."""
    source, target, project = tenant_pair(lab_root, cloud, CorpusSpec(SPEC.messages_per_mailbox, 1, False, SPEC.seed))
    alice_old, alice_new = f"{USERS[0].name}@old.example", f"{USERS[0].name}@new.example"
    inbox = source.graph.messages(alice_old, "Inbox")
    source.graph.update_message(alice_old, inbox[0].id, categories=["Red category", "Projekt Ä"], flagged=True,
                                extended={LAST_VERB_PROPERTY: "102"})
    twin = inbox[1]  # the customer already has this very message in the target's Inbox
    target.graph.add_message(alice_new, "Inbox", source.graph.mime(alice_old, twin.id), received=twin.received)
    before = {user.name: stored(target.graph, f"{user.name}@new.example") for user in USERS}
    reset_counts(source.graph)
    reset_counts(target.graph)
    project.run()
    requests = source.graph.requests + target.graph.requests
    assert not [key for key in requests if key.endswith("/$value")], "native mode reads no MIME"
    for user in USERS:
        old, new = f"{user.name}@old.example", f"{user.name}@new.example"
        copied = {path: items - before[user.name].get(path, Counter())
                  for path, items in stored(target.graph, new).items()}
        assert non_empty(copied) == non_empty(stored(source.graph, old)), f"{user.name}: not stored alike"
        assert not target.graph.messages(new, "Migrator staging"), "nothing may stay in the staging folder"
    print_requests_per_message("native", source, target)
    verify = project.migrator("verify", "plans/wave1.yaml", "--deep")
    assert "content fingerprint" in verify.stdout
    assert "copied 0 messages" in project.run()
    project.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--yes")
    project.migrator("rollback", "plans/wave1.yaml", "--batch", "B02", "--yes")
    for user in USERS:
        after = stored(target.graph, f"{user.name}@new.example")
        assert non_empty(after) == non_empty(before[user.name]), f"{user.name}: rollback must leave what was there"


@dataclass
class Direction:
    """One migration direction set up for the kill test: the project and views of both sides."""

    project: GraphProject
    source_view: Callable[[], dict[str, Counter[Any]]]
    target_view: Callable[[], dict[str, Counter[Any]]]

    def assert_no_duplicates(self) -> None:
        source, target = self.source_view(), self.target_view()
        for path, messages in source.items():
            extra = target.get(path, Counter()) - messages
            assert not extra, f"{path}: {sum(extra.values())} duplicated or foreign messages on the target"

    def assert_exact(self) -> None:
        assert non_empty(self.target_view()) == non_empty(self.source_view())


@pytest.fixture(params=["imap-to-graph", "graph-to-imap", "graph-to-graph", "graph-to-graph-native"])
def direction(request: pytest.FixtureRequest, dovecot: None, lab_root: Path, cloud: Cloud) -> Iterator[Direction]:
    user = USERS[0]
    spec = CorpusSpec(messages_per_mailbox=25, large_attachments=1, include_cpython_samples=False)
    old, new = f"{user.name}@old.example", f"{user.name}@new.example"
    project = GraphProject(lab_root / "project")
    project.project.mkdir()
    with ExitStack() as stack:
        if request.param == "imap-to-graph":
            source = stack.enter_context(DovecotServer(root=lab_root / "source", name="source", layout="source",
                                                       users=[user]))
            load_corpus(source.host, source.port, user, spec)
            target = cloud.tenant("target", latency_seconds=0.01)
            target.graph.add_user(new)
            project.env[target.secret_env] = target.secret
            project.setup(imap_block("source", source), target.config_block(),
                          ["source,target,source_login,source_password", f"{old},{new},{user.name},{user.password}"])
            yield Direction(project, lambda: imap_contents(source, user), lambda: graph_contents(target.graph, new))
        elif request.param == "graph-to-imap":
            tenant = cloud.tenant("source", latency_seconds=0.005)
            seed_graph(tenant.graph, old, generate_corpus(user, spec))
            imap = stack.enter_context(DovecotServer(root=lab_root / "target", name="target", layout="target",
                                                     users=[user]))
            project.env[tenant.secret_env] = tenant.secret
            project.setup(tenant.config_block(), imap_block("target", imap),
                          ["source,target,target_login,target_password", f"{old},{new},{user.name},{user.password}"])
            yield Direction(project, lambda: graph_contents(tenant.graph, old, IMAP_FLAGS),
                            lambda: imap_contents(imap, user))
        else:
            # plain graph-to-graph: a target tenant without the import/export API, so copies go through MIME
            source_tenant = cloud.tenant("source")
            target_tenant = cloud.tenant("target", latency_seconds=0.01,
                                         import_export=request.param == "graph-to-graph-native")
            seed_graph(source_tenant.graph, old, generate_corpus(user, spec))
            target_tenant.graph.add_user(new)
            project.env |= {source_tenant.secret_env: source_tenant.secret,
                            target_tenant.secret_env: target_tenant.secret}
            project.setup(source_tenant.config_block(), target_tenant.config_block(), ["source", old],
                          extra='[mapping]\ndomains = { "old.example" = "new.example" }\n')
            yield Direction(project, lambda: graph_contents(source_tenant.graph, old),
                            lambda: graph_contents(target_tenant.graph, new))


def test_kill_9_at_random_moments_then_rollback(direction: Direction) -> None:
    """Each direction through Graph: SIGKILL mid-copy, never a duplicate, exact in the end, verify --deep,
    a rerun copies nothing, and rollback leaves the target as it was."""
    seed = int(os.environ.get("MIGRATOR_KILL_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"graph kill test seed: {seed} (replay with MIGRATOR_KILL_SEED={seed})")
    rng = random.Random(seed)
    project = direction.project
    before = non_empty(direction.target_view())
    kills = 0
    for _ in range(10):
        process = subprocess.Popen(project.command("run", "plans/wave1.yaml", "--stage", "prestage"),
                                   cwd=project.project, env={**os.environ, **project.env},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.4, 1.6))
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        direction.assert_no_duplicates()
    assert kills >= 3, f"only {kills} kills landed before the copy finished (seed {seed})"
    project.run()
    direction.assert_exact()
    project.migrator("verify", "plans/wave1.yaml", "--deep")
    assert "copied 0 messages" in project.run()
    project.migrator("rollback", "plans/wave1.yaml", "--batch", "B01", "--yes")
    assert non_empty(direction.target_view()) == before


def test_graph_source_delta_reads_only_what_changed(dovecot: None, lab_root: Path, cloud: Cloud) -> None:
    """After the first pass each folder keeps its deltaLink: a delta pass asks Graph only for changes (no
    message listing), and new mail, flag changes and deletions (with --sync-deletes) all arrive."""
    tenant = cloud.tenant("source")
    user = USERS[0]
    address = f"{user.name}@old.example"
    seed_graph(tenant.graph, address, generate_corpus(user, CorpusSpec(8, 0, False, 3)))
    with DovecotServer(root=lab_root / "target", name="target", layout="target", users=[user]) as target:
        project = GraphProject(lab_root / "project", env={tenant.secret_env: tenant.secret})
        project.project.mkdir()
        project.setup(tenant.config_block(), imap_block("target", target),
                      ["source,target,target_login,target_password",
                       f"{address},{user.name}@new.example,{user.name},{user.password}"])
        project.run()
        tenant.graph.requests.clear()
        assert "copied 0 messages" in project.run("delta")
        listings = {key: n for key, n in tenant.graph.requests.items() if key.startswith("GET") and
                    key.endswith("/messages")}
        assert not listings, f"a delta pass listed folders: {listings}"
        assert any(key.endswith("/messages/delta") for key in tenant.graph.requests)

        inbox = tenant.graph.messages(address, "Inbox")
        tenant.graph.update_message(address, inbox[0].id, is_read=not inbox[0].is_read, flagged=True)
        tenant.graph.delete_message(address, inbox[1].id)
        tenant.graph.add_message(address, "Inbox", b"From: a@x.example\r\nTo: b@y.example\r\nSubject: new\r\n"
                                 b"Message-ID: <new@x.example>\r\n\r\narrived after the prestage\r\n")
        project.run("delta", "--sync-deletes")
        served = Counter((hashlib.sha256(tenant.graph.mime(address, m.id)).hexdigest(), graph_flags(m))
                         for m in tenant.graph.messages(address, "Inbox"))
        snapshot = mailbox_snapshot(target.host, target.port, user.name, user.password)
        copied = Counter((sha, EXCHANGE_FLAGS.storable_flags(flags)) for sha, flags, _date in snapshot["INBOX"])
        assert copied == served
