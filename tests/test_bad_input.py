"""Bad input gets a one-line error, the documented exit code, and leaves the state store untouched."""

from __future__ import annotations

import pytest

from migrator.lab.dovecot import free_port
from tests.imap_fixtures import Lab, store_dump


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith("migrator: error: ")
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def planned(lab: Lab) -> Lab:
    lab.prepare()
    return lab


def test_wrong_password_is_exit_3_and_changes_nothing(planned: Lab) -> None:
    before = store_dump(planned.project)
    planned.write_mailboxes(wrong_password_for="bob")
    check = planned.migrator("check", "--all", expect=3)
    assert "login refused" in one_line_error(check.stderr) and "bob" in check.stderr
    discover = planned.migrator("discover", "--mailboxes", "mailboxes.csv", expect=3)
    assert "bob" in one_line_error(discover.stderr)
    assert "wrong" not in check.stderr + discover.stderr + check.stdout + discover.stdout
    assert store_dump(planned.project) == before


def test_wrong_password_during_run_fails_that_mailbox_only(planned: Lab) -> None:
    planned.write_mailboxes(wrong_password_for="bob")
    result = planned.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=1)
    assert "1 mailboxes done, 1 failed" in result.stdout
    assert "login refused" in result.stderr
    status = planned.migrator("status", expect=1).stdout
    assert "authfailed" in status and "wrong" not in status


@pytest.mark.parametrize("command", [["check"], ["run", "plans/wave1.yaml", "--stage", "prestage"]])
def test_unreachable_endpoint_is_exit_3_and_changes_nothing(planned: Lab, command: list[str]) -> None:
    before = store_dump(planned.project)
    planned.write_config(target_port=free_port())
    result = planned.migrator(*command, expect=3)
    assert "cannot connect" in one_line_error(result.stderr)
    assert store_dump(planned.project) == before


@pytest.mark.parametrize(("csv_text", "expected"), [
    ("source\nalice@old.example\n", "mailboxes.csv:2: no target for alice@old.example"),
    ("source,target,mailbox_size\na@old.example,a@new.example,3\n", "unknown column 'mailbox_size'"),
    ("source,target\nnot-an-address,a@new.example\n", "mailboxes.csv:2: column 'source'"),
    ("source,target\na@old.example,a@new.example\na@old.example,b@new.example\n", "listed twice"),
])
def test_malformed_csv_is_exit_2_and_changes_nothing(planned: Lab, csv_text: str, expected: str) -> None:
    before = store_dump(planned.project)
    (planned.project / "mailboxes.csv").write_text(csv_text, encoding="utf-8")
    result = planned.migrator("discover", "--mailboxes", "mailboxes.csv", expect=2)
    assert expected in one_line_error(result.stderr)
    assert store_dump(planned.project) == before


@pytest.mark.parametrize(("extra", "expected"), [
    ("[throttle.target]\nmax_conections = 3\n", "throttle.target.max_conections: unknown key"),
    ("[filters]\nexclude_folder = ['Junk']\n", "filters.exclude_folder: unknown key"),
    ("[target2]\nkind = 'imap'\n", "migrator.toml: target2: unknown key"),
])
def test_mistyped_config_key_is_exit_2(planned: Lab, extra: str, expected: str) -> None:
    before = store_dump(planned.project)
    planned.write_config(extra)
    for command in (["check"], ["run", "plans/wave1.yaml", "--stage", "prestage"], ["status"]):
        result = planned.migrator(*command, expect=2)
        assert expected in one_line_error(result.stderr) and "migrator.toml" in result.stderr
    assert store_dump(planned.project) == before


def test_edited_plan_is_refused_unless_accepted(planned: Lab) -> None:
    plan = planned.project / "plans" / "wave1.yaml"
    plan.write_text(plan.read_text(encoding="utf-8").replace("alice2@new.example", "mallory@new.example"),
                    encoding="utf-8")
    before = store_dump(planned.project)
    result = planned.migrator("run", "plans/wave1.yaml", "--stage", "prestage", expect=2)
    assert "edited after creation" in one_line_error(result.stderr)
    assert store_dump(planned.project) == before
    planned.migrator("plan", "create", "--name", "wave1", "--max-mailboxes", "1")
    planned.migrator("run", "plans/wave1.yaml", "--stage", "prestage")


def test_plan_naming_an_unknown_mailbox_is_exit_2(planned: Lab) -> None:
    plan = planned.project / "plans" / "wave1.yaml"
    plan.write_text(plan.read_text(encoding="utf-8").replace("source: alice@old.example",
                                                             "source: carol@old.example"), encoding="utf-8")
    before = store_dump(planned.project)
    result = planned.migrator("run", "plans/wave1.yaml", "--stage", "prestage", "--accept-edits", expect=2)
    assert "carol@old.example is not in the inventory" in one_line_error(result.stderr)
    assert store_dump(planned.project) == before
