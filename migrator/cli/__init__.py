"""The `migrator` command: a click group, one module per verb, exit codes mapped here and only here.

Exit codes (PRODUCT.md): 0 all done; 1 finished with failed items or differences; 2 bad usage or input,
nothing changed; 3 an endpoint could not be reached or refused the login, nothing changed;
130 stopped by SIGINT/SIGTERM at a clean point (re-run to resume).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import cast

import click

from migrator import __version__
from migrator.errors import MigratorError
from migrator.memory import imports_frozen, limit_malloc_arenas

# Each verb's module, imported only when that verb runs (or --help lists them all): `migrator run` then
# does not import discovery, reports and rollback, a tenth of every start-up.
_VERBS = {"init": "setup:init_command", "db": "setup:db_group", "check": "inventory:check_command",
          "discover": "inventory:discover_command", "plan": "plans:plan_group", "run": "run:run_command",
          "status": "status:status_command", "verify": "verify:verify_command",
          "rollback": "rollback:rollback_command", "report": "report:report_group"}


class _Verbs(click.Group):
    """The verbs of _VERBS, loaded when asked for (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _VERBS:
            return None
        module, name = _VERBS[cmd_name].split(":")
        with imports_frozen():
            return cast(click.Command, getattr(importlib.import_module(f"migrator.cli.{module}"), name))


@click.group(cls=_Verbs)
@click.version_option(__version__, prog_name="migrator")
@click.option("-v", "--verbose", is_flag=True, help="Log protocol-level details to stderr.")
def cli(verbose: bool) -> None:
    """Crash-safe email migration: discover, plan, run, verify."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Never below INFO for these: imapclient's debug log shows AUTHENTICATE payloads (passwords, XOAUTH2
    # tokens), urllib3's shows request URLs (Graph upload URLs carry an auth token), msal's token traffic.
    for name in ("imapclient", "urllib3", "msal"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def main() -> None:
    limit_malloc_arenas()  # before any thread allocates
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("migrator: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except MigratorError as exc:
        click.echo(f"migrator: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the top-level boundary: a bug gets one line here and a traceback with -v
        logging.getLogger("migrator").debug("internal error", exc_info=True)
        click.echo(f"migrator: internal error: {type(exc).__name__}: {exc} (re-run with -v for details)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
