"""`migrator status`: where every job stands, from the state store alone (no endpoint is contacted)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from migrator.cli.common import config_option, emit_json, human_size, open_session
from migrator.store import inventory, work
from migrator.store.db import reading


@click.command("status")
@config_option
@click.option("--plan", "plan_name", default=None, help="Only this plan.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--watch", is_flag=True, help="Refresh every 2 seconds until interrupted.")
@click.option("--checkpoints", "show_checkpoints", is_flag=True, help="List every pass's checkpoint (for rollback).")
def status_command(config_path: Path, plan_name: str | None, as_json: bool, watch: bool,
                   show_checkpoints: bool) -> int:
    """Jobs per plan, batch and stage, with copied and failed counts and the time they waited for throttling."""
    session = open_session(config_path)
    while True:
        with reading(session.engine) as conn:
            names = {m.id: m.source for m in inventory.list_mailboxes(conn)}
            jobs = work.job_statuses(conn, plan_name)
            checkpoints = work.checkpoint_rows(conn, plan_name)
        if as_json:
            emit_json({"jobs": [{"plan": j.plan, "batch": j.batch, "stage": j.stage, "mailbox": names[j.mailbox_id],
                                 "state": j.state, "attempts": j.attempts, "copied": j.copied,
                                 "copied_bytes": j.copied_bytes, "failed_items": j.failed,
                                 "throttled_seconds": round(j.throttled_seconds, 1), "error_kind": j.error_kind,
                                 "error": j.error, "updated_at": j.updated_at.isoformat()} for j in jobs],
                       "checkpoints": [c | {"mailbox": names[c.pop("mailbox_id")]} for c in checkpoints]})
            return 0
        _render(jobs, names)
        if show_checkpoints:
            for c in checkpoints:
                click.echo(f"checkpoint {c['id']:>6}  {c['batch']:<6} {c['stage']:<9} {names[c['mailbox_id']]:<32} "
                           f"{c['started_at']}  copied {c['copied']}  {c['outcome'] or 'open'}")
        if not watch:
            return 1 if any(j.state == work.JOB_FAILED or j.failed for j in jobs) else 0
        time.sleep(2)
        click.clear()


def _render(jobs: list[work.JobStatus], names: dict[int, str]) -> None:
    if not jobs:
        click.echo("no jobs yet: run a plan with `migrator run plans/NAME.yaml --stage prestage`")
        return
    click.echo(f"{'plan':<12} {'batch':<6} {'stage':<9} {'mailbox':<32} {'state':<8} {'copied':>8} "
               f"{'bytes':>10} {'failed':>6} {'throttled':>9}")
    for j in jobs:
        error = f"  {j.error_kind}: {j.error}" if j.error else ""
        click.echo(f"{j.plan:<12} {j.batch:<6} {j.stage:<9} {names[j.mailbox_id]:<32} {j.state:<8} {j.copied:>8} "
                   f"{human_size(j.copied_bytes):>10} {j.failed:>6} {_seconds(j.throttled_seconds):>9}{error}")
    waited = sum(j.throttled_seconds for j in jobs)
    if waited:
        click.echo(f"{_seconds(waited)} waited for the servers' throttling or the configured limits (not failures)")


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value else "-"
