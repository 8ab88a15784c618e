"""The `migrator` command: a click group, one module per verb, exit codes mapped here and only here.

Exit codes (PRODUCT.md): 0 all done; 1 finished with failed items or differences; 2 bad usage or input,
nothing changed; 3 an endpoint could not be reached or refused the login, nothing changed;
130 stopped by SIGINT/SIGTERM at a clean point (re-run to resume).
"""

from __future__ import annotations

import logging
import sys

import click

from migrator import __version__
from migrator.cli.inventory import check_command, discover_command
from migrator.cli.plans import plan_group
from migrator.cli.report import report_group
from migrator.cli.rollback import rollback_command
from migrator.cli.run import run_command
from migrator.cli.setup import db_group, init_command
from migrator.cli.status import status_command
from migrator.cli.verify import verify_command
from migrator.errors import MigratorError


@click.group()
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


for command in (init_command, db_group, check_command, discover_command, plan_group, run_command, status_command,
                verify_command, rollback_command, report_group):
    cli.add_command(command)


def main() -> None:
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
