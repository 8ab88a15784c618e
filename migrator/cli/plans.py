"""`migrator plan create` and `migrator plan show`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from migrator.cli.common import config_option, human_size, open_session
from migrator.config import parse_size
from migrator.planning.planfile import read_plan, write_plan
from migrator.planning.planner import LINKING_KINDS, Policy, create_plan
from migrator.planning.windows import zone
from migrator.store import inventory, work
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
@click.option("--start", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First day a batch may run (YYYY-MM-DD): batches get the window's occurrences from then on.")
@click.option("--timezone", "timezone", default="UTC", show_default=True, help="Time zone of the window (IANA name).")
@click.option("--allow-split", is_flag=True, help="Split a group that is larger than one batch.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where to write (default plans/NAME.yaml).")
def plan_create(config_path: Path, name: str, max_mailboxes: int, max_size: str | None, window: str | None,
                start: datetime | None, timezone: str, allow_split: bool, out: Path | None) -> int:
    """Turn the inventory into batches and write them for review."""
    session = open_session(config_path)
    with translate_db_errors(), session.engine.connect() as conn:
        mailboxes = inventory.list_mailboxes(conn)
        links = [(s, t) for kind, s, t in inventory.list_dependencies(conn) if kind in LINKING_KINDS]
        measured = work.measured_throughput(conn)
    zone(timezone)
    policy = Policy(max_mailboxes, parse_size(max_size, "--max-size") if max_size else None, window, allow_split,
                    start.date() if start else None, timezone)
    cfg = session.config
    plan = create_plan(name, cfg.source.describe(), cfg.target.describe(), mailboxes, policy, cfg.target_throttle,
                       links, measured)
    path = out or cfg.base_dir / "plans" / f"{name}.yaml"
    write_plan(plan, path)
    click.echo(f"wrote {path}: {len(plan.batches)} batches, {sum(len(b.mailboxes) for b in plan.batches)} mailboxes")
    for batch in plan.batches:
        if not batch.fits_window:
            click.echo(f"warning: {batch.id} needs ~{batch.estimate.seconds} s, longer than the window "
                       f"{batch.window!r}: a mailbox alone exceeds it; plan an extra window or raise the rate",
                       err=True)
    return 0


@plan_group.command("show")
@click.argument("plan_path", type=click.Path(path_type=Path))
def plan_show(plan_path: Path) -> int:
    """Summarise a plan file, batch by batch."""
    plan, fingerprint, edited = read_plan(plan_path, accept_edits=True)
    click.echo(f"plan {plan.name} ({fingerprint}{', EDITED since creation' if edited else ''})")
    for batch in plan.batches:
        e = batch.estimate
        when = f"{batch.schedule['window_start']} .. {batch.schedule['window_end']}" if batch.schedule else \
            (batch.window or "-")
        flag = "" if batch.fits_window else "  (LONGER THAN THE WINDOW)"
        click.echo(f"  {batch.id}  {len(batch.mailboxes):>5} mailboxes  {e.messages:>9} messages  "
                   f"{human_size(e.size):>10}  ~{e.seconds}s  window: {when}{flag}")
    return 0
