"""IMAP into Graph: a Dovecot source with a generated corpus, and a project that copies it into a simulated
tenant (shared by the Graph end-to-end tests and the worker-process tests; a pytest plugin, see conftest)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrator.lab.corpus import CorpusSpec, load_corpus
from migrator.lab.dovecot import DovecotServer, LabUser
from tests.graph_fixtures import Tenant, graph_contents, imap_contents
from tests.imap_fixtures import Project

USERS = [LabUser("alice", "alice-pw"), LabUser("bob", "bob-pw")]
SPEC = CorpusSpec(messages_per_mailbox=12, large_attachments=1, include_cpython_samples=True)


@dataclass
class GraphProject(Project):
    """A project whose endpoints are given as TOML blocks."""

    def setup(self, source_block: str, target_block: str, rows: list[str], extra: str = "") -> None:
        (self.project / "migrator.toml").write_text(
            f'[state]\nurl = "sqlite:///migrator.db"\n\n{source_block}\n{target_block}\n{extra}\n', encoding="utf-8")
        (self.project / "mailboxes.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        self.migrator("init", ".")
        self.migrator("discover", "--mailboxes", "mailboxes.csv")
        self.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "1")

    def run(self, stage: str = "prestage", *extra: str, expect: int = 0) -> str:
        return self.migrator("run", "plans/wave1.yaml", "--stage", stage, "--workers", "2", *extra,
                             expect=expect).stdout


def imap_block(role: str, server: DovecotServer) -> str:
    return f'[{role}]\nkind = "imap"\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\n'


@pytest.fixture
def imap_source(dovecot: None, lab_root: Path) -> Iterator[DovecotServer]:
    with DovecotServer(root=lab_root / "source", name="source", layout="source", users=USERS) as server:
        for index, user in enumerate(USERS):
            load_corpus(server.host, server.port, user, CorpusSpec(SPEC.messages_per_mailbox, SPEC.large_attachments,
                                                                   SPEC.include_cpython_samples, SPEC.seed + index))
        yield server


def to_graph_project(lab_root: Path, source: DovecotServer, tenant: Tenant) -> GraphProject:
    project = GraphProject(lab_root / "project", env={tenant.secret_env: tenant.secret})
    project.project.mkdir()
    for user in USERS:
        tenant.graph.add_user(f"{user.name}@new.example")
    project.setup(imap_block("source", source), tenant.config_block(),
                  ["source,target,source_login,source_password"]
                  + [f"{u.name}@old.example,{u.name}@new.example,{u.name},{u.password}" for u in USERS])
    return project


def assert_graph_holds_source(source: DovecotServer, tenant: Tenant, *, exact: bool = True) -> None:
    """Every source message once in its mapped folder (content, flags as Exchange keeps them, received
    time); with `exact`, nothing else; without, only that nothing is there twice."""
    for user in USERS:
        expected = imap_contents(source, user)
        actual = graph_contents(tenant.graph, f"{user.name}@new.example")
        for path, messages in expected.items():
            have = actual.get(path, Counter())
            if exact:
                assert have == messages, f"{user.name} {path}: missing {messages - have}, extra {have - messages}"
            else:
                assert not have - messages, f"{user.name} {path}: duplicated or foreign {have - messages}"
