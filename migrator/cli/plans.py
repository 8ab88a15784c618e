"""`migrator plan create` and `migrator plan show`."""

from __future__ import annotations

from pathlib import Path

import click

from migrator.cli.common import config_option, human_size, open_session
from migrator.config import parse_size
from migrator.planning.planfile import read_plan, write_plan
from migrator.planning.planner import Policy, create_plan
from migrator.store import inventory
from migrator.store.db import translate_db_errors


@click.group("plan")
def plan_group() -> None:
    """Batched cutover plans (plans/NAME.yaml)."""


@plan_group.command("create")
@config_option
@click.option("--name", required=True, help="Plan name; the file is plans/NAME.yaml.")
@click.option("--max-mailboxes", type=int, default=50, show_default=True, help="Mailboxes per batch at most.")
@click.option("--max-size", default=None, help="Bytes per batch at most, e.g. 200GB.")
@click.option("--window", default=None, help='Maintenance window of each batch, e.g. "Sat 22:00-Sun 06:00".')
@click.option("--allow-split", is_flag=True, help="Split a group that is larger than one batch.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where to write (default plans/NAME.yaml).")
def plan_create(config_path: Path, name: str, max_mailboxes: int, max_size: str | None, window: str | None,
                allow_split: bool, out: Path | None) -> int:
    """Turn the inventory into batches and write them for review."""
    session = open_session(config_path)
    with translate_db_errors(), session.engine.connect() as conn:
        mailboxes = inventory.list_mailboxes(conn)
    policy = Policy(max_mailboxes, parse_size(max_size, "--max-size") if max_size else None, window, allow_split)
    cfg = session.config
    plan = create_plan(name, cfg.source.describe(), cfg.target.describe(), mailboxes, policy, cfg.target_throttle)
    path = out or cfg.base_dir / "plans" / f"{name}.yaml"
    write_plan(plan, path)
    click.echo(f"wrote {path}: {len(plan.batches)} batches, {sum(len(b.mailboxes) for b in plan.batches)} mailboxes")
    return 0


@plan_group.command("show")
@click.argument("plan_path", type=click.Path(path_type=Path))
def plan_show(plan_path: Path) -> int:
    """Summarise a plan file, batch by batch."""
    plan, fingerprint, edited = read_plan(plan_path, accept_edits=True)
    click.echo(f"plan {plan.name} ({fingerprint}{', EDITED since creation' if edited else ''})")
    for batch in plan.batches:
        e = batch.estimate
        click.echo(f"  {batch.id}  {len(batch.mailboxes):>5} mailboxes  {e.messages:>9} messages  "
                   f"{human_size(e.size):>10}  ~{e.seconds}s  window: {batch.window or '-'}")
    return 0
