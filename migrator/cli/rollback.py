"""`migrator rollback PLAN --batch B01 [--checkpoint ID] [--dry-run] --yes`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from migrator.cli.common import Session, config_option, emit_json, mailboxes_option, open_session
from migrator.cli.run import EXIT_INTERRUPTED, work_context
from migrator.engine.rollback import preview, rollback_pass
from migrator.engine.scheduler import plan_mailboxes, queue_plan, run_queue
from migrator.engine.worker import PassOptions
from migrator.errors import UserError
from migrator.planning.planfile import read_plan
from migrator.planning.planner import Plan
from migrator.store import inventory, work
from migrator.store.db import translate_db_errors

ROLLBACK_STAGE = "rollback"


@click.command("rollback")
@click.argument("plan_path", type=click.Path(path_type=Path))
@click.option("--batch", "batch_id", required=True, help="The batch to undo on the target.")
@click.option("--checkpoint", type=int, default=None, help="Undo only what was copied after this checkpoint.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: one JSON document on stdout.")
@click.option("--yes", is_flag=True, help="Confirm: remove the batch's copies from the target.")
@config_option
@mailboxes_option
def rollback_command(plan_path: Path, batch_id: str, checkpoint: int | None, dry_run: bool, as_json: bool,
                     yes: bool, config_path: Path, mailboxes_path: Path | None) -> int:
    """Remove from the target exactly the messages (and empty folders) migrator created in a batch."""
    session = open_session(config_path)
    plan, fingerprint, edited = read_plan(plan_path, accept_edits=True)
    plan.batch(batch_id)
    with translate_db_errors(), session.engine.connect() as conn:
        scope = work.batch_checkpoints(conn, plan.name, batch_id, checkpoint)
        busy = work.busy_jobs(conn, plan.name, [batch_id])
        names = {m.id: m.source for m in inventory.list_mailboxes(conn)}
    if busy:
        stage, mailbox_id = busy[0]
        raise UserError(f"batch {batch_id} has a {stage} pass running on {names[mailbox_id]}: stop it before rolling "
                        f"back")
    if dry_run:
        return _dry_run(session, plan, batch_id, scope, as_json)
    if not yes:
        raise UserError("rollback deletes messages from the target: add --yes (or look first with --dry-run)")
    ctx = work_context(session, plan, [batch_id], mailboxes_path, PassOptions(), need_source=False)
    queue_plan(session.engine, plan, plan_path, fingerprint, edited, ROLLBACK_STAGE, [batch_id])
    summary = run_queue(ctx, plan, ROLLBACK_STAGE, [batch_id], 1, rollback_pass(scope))
    for problem in summary.problems:
        click.echo(f"  problem: {problem}", err=True)
    click.echo(f"rollback of {batch_id}: {summary.jobs_done} mailboxes rolled back, {summary.jobs_failed} with "
               f"problems")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 1 if summary.jobs_failed else 0


def _dry_run(session: Session, plan: Plan, batch_id: str, scope: set[int], as_json: bool) -> int:
    records = plan_mailboxes(session.engine, plan, [batch_id])
    previews = [preview(session.engine, records[m.source], scope) for m in plan.batch(batch_id).mailboxes]
    if as_json:
        emit_json({"plan": plan.name, "batch": batch_id, "mailboxes": [asdict(p) for p in previews]})
        return 0
    for p in previews:
        total = sum(p.messages.values())
        click.echo(f"{p.mailbox}: would remove {total} messages"
                   + (f" (+ copies of {p.open_intents} open intents, if found)" if p.open_intents else "")
                   + (f" and folders {', '.join(repr(f) for f in p.folders)} if empty" if p.folders else ""))
        for folder, count in sorted(p.messages.items()):
            click.echo(f"    {folder!r}: {count}")
    return 0
