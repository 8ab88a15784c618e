"""What every command shares: the --config option, loading config/store/mailboxes, and rendering."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine

from migrator.config import Config, load_config, load_mailboxes
from migrator.connectors.base import Endpoint
from migrator.connectors.registry import make_endpoint
from migrator.model import MailboxEntry
from migrator.store.db import open_store

F = TypeVar("F", bound=Callable[..., Any])


def config_option(command: F) -> F:
    return click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("migrator.toml"),
                        show_default=True, help="Path of migrator.toml.")(command)


def mailboxes_option(command: F) -> F:
    return click.option("--mailboxes", "mailboxes_path", type=click.Path(path_type=Path), default=None,
                        help="mailboxes.csv with per-user logins (default: mailboxes.csv beside the config, if any).")(
        command)


@dataclass(frozen=True)
class Session:
    config: Config
    engine: Engine

    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return make_endpoint(self.config.source), make_endpoint(self.config.target)


def open_session(config_path: Path) -> Session:
    config = load_config(config_path)
    return Session(config, open_store(config.state_url, config.state_busy_timeout_ms))


def credentials(config: Config, mailboxes_path: Path | None) -> dict[str, MailboxEntry]:
    """Per-user logins for this command only; they are never written anywhere."""
    path = mailboxes_path or config.base_dir / "mailboxes.csv"
    if mailboxes_path is None and not path.is_file():
        return {}
    return {entry.source: entry for entry in load_mailboxes(path, config.mapping)}


def emit_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def install_stop_handlers(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: finish the batch in flight, record it, exit 130. Second: exit at once."""
    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()
        click.echo("stopping after the batch in flight (send the signal again to stop at once)", err=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
