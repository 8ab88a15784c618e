"""The command group: every verb loads when asked for (they are imported lazily, see migrator/cli)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from migrator.cli import cli


def test_every_verb_loads_under_its_name_and_help_lists_them_all() -> None:
    context = click.Context(cli)
    verbs = cli.list_commands(context)
    assert verbs == ["check", "db", "discover", "init", "plan", "report", "rollback", "run", "status", "verify"]
    for verb in verbs:
        command = cli.get_command(context, verb)
        assert isinstance(command, click.Command) and command.name == verb
    assert cli.get_command(context, "nonsense") is None
    listed = CliRunner().invoke(cli, ["--help"])
    assert listed.exit_code == 0 and all(f"  {verb} " in listed.output for verb in verbs)
