"""Discovery depth, preflight DNS against a real dnsmasq, reports and planner inputs, through the CLI."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import pytest

from migrator.lab.corpus import mailbox_snapshot
from migrator.lab.dnsmasq import DnsServer
from tests.imap_fixtures import Lab, store_dump


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(mx=[("old.example", "mx1.old.example", 10)], txt=[("old.example", "v=spf1 mx -all")],
                   cname=[("autodiscover.old.example", "autodiscover.outlook.com")], ttl=86400) as server:
        yield server


def dns_config(server: DnsServer) -> str:
    return (f'[dns]\nnameservers = ["{server.host}"]\nport = {server.port}\ntimeout = 2\n'
            f'target_mx = ["mail.protection.outlook.com"]\ntarget_spf = ["spf.protection.outlook.com"]\n')


def test_check_discover_and_reports(lab: Lab, dns_server: DnsServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    lab.write_config(dns_config(dns_server))
    lab.write_mailboxes()
    lab.migrator("init", ".")
    check = lab.migrator("check")
    assert "dns old.example: MX 10 mx1.old.example (TTL 86400)" in check.stdout
    assert "lower the MX TTL" in check.stdout and "include:spf.protection.outlook.com" in check.stdout
    (lab.project / "deps.csv").write_text("kind,source,target\ndelegate,alice@old.example,bob@old.example\n")
    target_user = lab.pairs[0][1]
    target_before = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    lab.migrator("discover", "--mailboxes", "mailboxes.csv", "--dependencies", "deps.csv")
    plan = lab.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "1", expect=2)
    assert "linked mailboxes alice@old.example" in plan.stderr  # the delegate pins both into one batch
    lab.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "5", "--window", "Sat 22:00-Sun 06:00",
                 "--start", "2027-01-04", "--timezone", "Europe/Paris")
    plan_text = (lab.project / "plans" / "wave1.yaml").read_text()
    assert "window_start: '2027-01-09T22:00:00+01:00'" in plan_text
    assert "migrator rollback plans/wave1.yaml --batch B01 --yes" in plan_text
    outputs = {}
    for fmt in ("json", "csv", "html"):
        out = lab.project / f"discovery.{fmt}"
        lab.migrator("report", "discovery", "--format", fmt, "--out", str(out), "--plan", "plans/wave1.yaml",
                     "--target-limit", "1MB")
        outputs[fmt] = out.read_text(encoding="utf-8")
    data = json.loads(outputs["json"])
    sources = [m["source"] for m in data["mailboxes"]]
    assert sources == ["alice@old.example", "bob@old.example"]
    assert data["totals"]["messages"] == sum(m["messages"] for m in data["mailboxes"]) > 100
    assert data["totals"]["oversize"] >= 2, "each mailbox has a 1-3 MB attachment over the 1 MB limit"
    assert "Empty folder" in data["mailboxes"][0]["empty_folders"]
    assert {"kind": "delegate", "source": "alice@old.example", "target": "bob@old.example"} in data["dependencies"]
    assert any("lower the MX TTL" in w for w in data["warnings"])
    assert data["batches"][0]["start"] == "2027-01-09T22:00:00+01:00"
    assert sum(y["messages"] for y in data["years"]) == data["totals"]["messages"]
    rows = list(csv.DictReader(outputs["csv"].splitlines()))
    assert [r["source"] for r in rows] == sources
    assert "<svg" in outputs["html"] and "https://" not in outputs["html"] and "http://" not in outputs["html"]
    after = mailbox_snapshot(lab.target.host, lab.target.port, target_user.name, target_user.password)
    assert after == target_before, "discovery and reports never write to the target"


@pytest.mark.parametrize(("args", "message"), [
    (["plan", "create", "--name", "w", "--window", "Sat 22-Sun 6"], "is not a window"),
    (["plan", "create", "--name", "w", "--timezone", "Mars/Olympus"], "unknown time zone"),
])
def test_bad_planner_input_is_exit_2(lab: Lab, args: list[str], message: str) -> None:
    lab.prepare()
    before = store_dump(lab.project)
    result = lab.migrator(*args, expect=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert store_dump(lab.project) == before


def test_unknown_mailbox_in_dependency_file_is_exit_2(lab: Lab) -> None:
    lab.prepare()
    before = store_dump(lab.project)
    (lab.project / "deps.json").write_text('[{"kind": "delegate", "source": "carol@old.example", '
                                           '"target": "alice@old.example"}]')
    result = lab.migrator("discover", "--mailboxes", "mailboxes.csv", "--dependencies", "deps.json", expect=2)
    assert "deps.json: item 1: mailbox 'carol@old.example' is not in the mailbox list" in result.stderr
    assert store_dump(lab.project) == before
