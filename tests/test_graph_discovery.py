"""Discovery through Microsoft Graph, end to end through the real `migrator` command against the Graph and
identity simulators: the tenant's mailbox list exported as a starting mailboxes.csv, then folders (the
Exchange tree, nested), counts and sizes, forwarding inbox rules and automatic replies read into the state
store, the discovery report and a plan. Plus the refusals: an existing file, an IMAP source, both or
neither of --mailboxes and --export-mailboxes.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from migrator.connectors.base import MailboxLister
from migrator.connectors.graph import GraphEndpoint
from migrator.connectors.imap import ImapEndpoint
from migrator.discovery.inventory import AUTO_REPLY_NOTE, NOTE
from migrator.lab.corpus import CorpusSpec, generate_corpus
from migrator.lab.dovecot import LabUser
from migrator.model import FolderInfo, MailboxEntry
from migrator.store import inventory, work
from migrator.store.db import create_store_engine, open_store, upgrade
from tests.graph_fixtures import Cloud, Tenant, seed_graph
from tests.imap_fixtures import Project

SPEC = CorpusSpec(messages_per_mailbox=6, large_attachments=0, include_cpython_samples=False)
OLD, NEW = "contoso.test", "fabrikam.test"
FORWARD_TO = "alice.home@example.org"
HIDDEN = {"Clutter"}  # Graph lists hidden folders only when asked to (includeHiddenFolders); the connector does not
USERS: dict[str, dict[str, Any]] = {"alice": {"forwarding_to": FORWARD_TO}, "bob": {"auto_reply": True}, "carol": {}}


def project_for(lab_root: Path, source_block: str, target: Tenant, secrets: dict[str, str]) -> Project:
    project = Project(lab_root / "project", env=secrets)
    project.project.mkdir()
    (project.project / "migrator.toml").write_text(
        f'[state]\nurl = "sqlite:///migrator.db"\n\n{source_block}\n{target.config_block()}\n'
        f'[mapping]\ndomains = {{ "{OLD}" = "{NEW}" }}\n', encoding="utf-8")
    return project


@pytest.fixture
def tenants(cloud: Cloud) -> tuple[Tenant, Tenant]:
    source, target = cloud.tenant("source"), cloud.tenant("target")
    for index, (name, options) in enumerate(USERS.items()):
        corpus = generate_corpus(LabUser(name, "unused"), replace(SPEC, seed=index + 1))
        seed_graph(source.graph, f"{name}@{OLD}", corpus, **options)
    return source, target


@pytest.fixture
def project(tenants: tuple[Tenant, Tenant], lab_root: Path) -> Project:
    source, target = tenants
    return project_for(lab_root, source.config_block(), target,
                       {source.secret_env: source.secret, target.secret_env: target.secret})


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.reader(file))


def test_export_discover_report_and_plan(tenants: tuple[Tenant, Tenant], project: Project) -> None:
    source, _target = tenants
    exported = project.migrator("discover", "--export-mailboxes", "mailboxes.csv")  # no state store needed
    assert "mailboxes.csv: 3 mailboxes written" in exported.stdout
    assert read_csv(project.project / "mailboxes.csv") == [
        ["source", "target"], *[[f"{name}@{OLD}", f"{name}@{NEW}"] for name in sorted(USERS)]]

    project.migrator("init", ".")
    project.migrator("discover", "--mailboxes", "mailboxes.csv")
    project.migrator("discover", "--mailboxes", "mailboxes.csv")  # again: notes of the latest discovery only

    engine = open_store(f"sqlite:///{project.project / 'migrator.db'}")
    try:
        with engine.connect() as conn:
            records = {r.source: r for r in inventory.list_mailboxes(conn)}
            folders = {address: inventory.source_folders(conn, r.id) for address, r in records.items()}
            dependencies = inventory.list_dependencies(conn)
    finally:
        engine.dispose()
    assert sorted(records) == [f"{name}@{OLD}" for name in sorted(USERS)]
    for address, found in folders.items():
        expected = {path: (len(items), sum(m.size for m in items))
                    for path in source.graph.folders(address) if path not in HIDDEN
                    for items in [source.graph.messages(address, path)]}
        assert {f.path: (f.messages, f.size) for f in found} == expected, address
        by_path = {f.path: f for f in found}
        assert by_path["Projects/2026/Q3"].messages > 0, "nested folders keep their Exchange path"
        assert by_path["Inbox"].role == "inbox" and by_path["Sent Items"].role == "sent"
        assert records[address].messages == sum(c for c, _s in expected.values()) > 0
        assert records[address].size == sum(s for _c, s in expected.values())
        assert records[address].target == address.replace(OLD, NEW)
    assert ("forward", f"alice@{OLD}", FORWARD_TO) in dependencies
    assert [d for d in dependencies if d[0] == "forward"] == [("forward", f"alice@{OLD}", FORWARD_TO)]

    project.migrator("report", "discovery", "--format", "json", "--out", "discovery.json")
    data = json.loads((project.project / "discovery.json").read_text(encoding="utf-8"))
    assert data["schema"] == "migrator.discovery/2"
    assert {m["source"]: m["messages"] for m in data["mailboxes"]} == {a: r.messages for a, r in records.items()}
    assert {"kind": "forward", "source": f"alice@{OLD}", "target": FORWARD_TO} in data["dependencies"]
    assert data["auto_replies"] == [{"mailbox": f"bob@{OLD}", "note": AUTO_REPLY_NOTE}]
    project.migrator("report", "discovery", "--format", "html", "--out", "discovery.html")
    page = (project.project / "discovery.html").read_text(encoding="utf-8")
    assert '<section id="auto-replies"' in page and f"bob@{OLD}" in page and FORWARD_TO in page

    plan = project.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "2")
    plan_text = (project.project / "plans" / "wave1.yaml").read_text(encoding="utf-8")
    assert all(f"{name}@{OLD}" in plan_text for name in USERS), plan.stdout


def test_export_refuses_to_overwrite(project: Project) -> None:
    existing = project.project / "mailboxes.csv"
    existing.write_text("source,target\nkeep@contoso.test,keep@fabrikam.test\n", encoding="utf-8")
    result = project.migrator("discover", "--export-mailboxes", "mailboxes.csv", expect=2)
    assert "already exists; not overwritten" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert existing.read_text(encoding="utf-8") == "source,target\nkeep@contoso.test,keep@fabrikam.test\n"


@pytest.mark.parametrize("args", [[], ["--mailboxes", "mailboxes.csv", "--export-mailboxes", "new.csv"],
                                  ["--export-mailboxes", "new.csv", "--dependencies", "deps.csv"]],
                         ids=["neither", "both", "export-with-dependencies"])
def test_discover_takes_one_mailbox_option(project: Project, args: list[str]) -> None:
    result = project.migrator("discover", *args, expect=2)
    assert "--mailboxes" in result.stderr
    assert not (project.project / "new.csv").exists()


def test_imap_source_cannot_export(cloud: Cloud, lab_root: Path) -> None:
    target = cloud.tenant("target")
    imap = '[source]\nkind = "imap"\nhost = "127.0.0.1"\nport = 1\nsecurity = "none"\n'
    project = project_for(lab_root, imap, target, {target.secret_env: target.secret})
    result = project.migrator("discover", "--export-mailboxes", "mailboxes.csv", expect=2)
    assert result.stderr.strip() == ("migrator: error: [source].kind = 'imap' cannot list its mailboxes; "
                                     "write mailboxes.csv by hand")
    assert not (project.project / "mailboxes.csv").exists()


def test_export_follows_pages_of_users(cloud: Cloud, lab_root: Path) -> None:
    """More users than the largest page (999): the listing follows @odata.nextLink."""
    source, target = cloud.tenant("source"), cloud.tenant("target")
    names = [f"user{n:04}@{OLD}" for n in range(1003)]
    for name in names:
        source.graph.add_user(name)
    project = project_for(lab_root, source.config_block(), target, {source.secret_env: source.secret})
    project.migrator("discover", "--export-mailboxes", "all.csv")
    rows = read_csv(project.project / "all.csv")
    assert rows[1:] == [[name, name.replace(OLD, NEW)] for name in names]
    assert source.graph.requests["GET /users"] == 2


def test_target_column_empty_without_a_domain_rule(cloud: Cloud, lab_root: Path) -> None:
    source, target = cloud.tenant("source"), cloud.tenant("target")
    source.graph.add_user(f"dana@{OLD}")
    source.graph.add_user("erin@elsewhere.test")
    project = project_for(lab_root, source.config_block(), target, {source.secret_env: source.secret})
    result = project.migrator("discover", "--export-mailboxes", "mailboxes.csv")
    assert "2 mailboxes written; 1 without a target" in result.stdout
    assert read_csv(project.project / "mailboxes.csv") == [
        ["source", "target"], ["dana@contoso.test", "dana@fabrikam.test"], ["erin@elsewhere.test", ""]]


def test_list_mailboxes_skips_users_without_mail_and_guests(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the simulator cannot show: users without a mailbox (no `mail`) and guests (#EXT# in the UPN)."""
    users = [{"id": "1", "mail": "Zoe@contoso.test", "userPrincipalName": "zoe@contoso.test"},
             {"id": "2", "mail": None, "userPrincipalName": "no.mailbox@contoso.test"},
             {"id": "3", "userPrincipalName": "service@contoso.test"},
             {"id": "4", "mail": "guest@partner.example",
              "userPrincipalName": "guest_partner.example#EXT#@contoso.onmicrosoft.com"},
             {"id": "5", "mail": "adam@contoso.test", "userPrincipalName": "adam@contoso.test"},
             {"id": "6", "mail": "zoe@contoso.test", "userPrincipalName": "zoe2@contoso.test"}]
    requested: list[tuple[str, str]] = []

    def pages(url: str, mailbox: str) -> Iterator[dict[str, Any]]:
        requested.append((url, mailbox))
        yield from users

    endpoint = GraphEndpoint.__new__(GraphEndpoint)
    monkeypatch.setattr(endpoint, "client", type("Client", (), {"base_url": "https://graph.test/v1.0"})(),
                        raising=False)
    monkeypatch.setattr(endpoint.client, "pages", pages, raising=False)
    assert isinstance(endpoint, MailboxLister)
    assert endpoint.list_mailboxes() == ["adam@contoso.test", "Zoe@contoso.test"]
    assert requested == [("https://graph.test/v1.0/users?$select=id,mail,userPrincipalName&$top=999", "-")]
    assert not isinstance(ImapEndpoint.__new__(ImapEndpoint), MailboxLister)


def test_report_shows_auto_replies_of_the_latest_discovery_only(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    entry = MailboxEntry(source="bob@contoso.test", target="bob@fabrikam.test")
    folders = [FolderInfo("Inbox", "/", None, "k", 1, 10)]
    with engine.begin() as conn:
        mailbox_id = inventory.save_mailbox(conn, entry, folders)
        work.log_event(conn, NOTE, f"bob@contoso.test: {AUTO_REPLY_NOTE}", mailbox_id)
        work.log_event(conn, "discover-change", "bob@contoso.test: not a note", mailbox_id)
    with engine.connect() as conn:
        assert inventory.mailbox_notes(conn, NOTE) == [("bob@contoso.test", f"bob@contoso.test: {AUTO_REPLY_NOTE}")]
    with engine.begin() as conn:  # discovered again, replies now off: no note logged
        inventory.save_mailbox(conn, entry, folders)
    with engine.connect() as conn:
        assert inventory.mailbox_notes(conn, NOTE) == []
    engine.dispose()
