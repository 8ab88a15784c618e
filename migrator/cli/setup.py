"""`migrator init` and `migrator db upgrade`."""

from __future__ import annotations

from pathlib import Path

import click

from migrator.cli.common import config_option
from migrator.config import load_config
from migrator.store.db import create_store_engine, schema_status, upgrade

TEMPLATE = """\
# migrator configuration: see README.md for every key. Secrets never go in this file:
# only the names of environment variables or files that hold them.

[state]
url = "sqlite:///migrator.db"            # relative to this file; or postgresql+psycopg://user@host/db

[source]
kind = "imap"
host = "imap.old.example"
port = 993
security = "tls"                          # tls | starttls | none (none only for loopback)
# admin_user = "migration-admin"          # log in on behalf of every user (e.g. a Dovecot master user)
# admin_password_env = "SOURCE_ADMIN_PASSWORD"

[target]
kind = "imap"
host = "imap.new.example"
port = 993
security = "tls"

[throttle.target]
max_connections = 4

[mapping]
folders = {}                              # e.g. { "INBOX.Archives" = "Archive" }

[filters]
exclude_folders = []                      # e.g. ["Junk", "Trash"]
"""


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("."))
def init_command(directory: Path) -> int:
    """Create DIRECTORY/migrator.toml (never overwritten), plans/ and the state store."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plans").mkdir(exist_ok=True)
    config_path = directory / "migrator.toml"
    if config_path.exists():
        click.echo(f"{config_path} exists: kept as it is")
    else:
        config_path.write_text(TEMPLATE, encoding="utf-8")
        click.echo(f"wrote {config_path}: set your source and target")
    config = load_config(config_path)
    upgrade(create_store_engine(config.state_url, config.state_busy_timeout_ms))
    click.echo(f"state store ready at schema head ({config.state_url.split('://')[0]})")
    return 0


@click.group("db")
def db_group() -> None:
    """State store maintenance."""


@db_group.command("upgrade")
@config_option
def db_upgrade(config_path: Path) -> int:
    """Bring the state store to the current schema (idempotent)."""
    config = load_config(config_path)
    engine = create_store_engine(config.state_url, config.state_busy_timeout_ms)
    before, head = schema_status(engine)
    upgrade(engine)
    click.echo(f"state store at {head}" + (f" (was {before or 'empty'})" if before != head else " (already current)"))
    return 0
