"""`migrator run PLAN --stage S`: preflight, queue, copy, and (for the final stage) verify."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import click

from migrator.accounting import Progress
from migrator.cli.common import (
    Session,
    config_option,
    credentials,
    install_stop_handlers,
    mailboxes_option,
    open_session,
)
from migrator.engine.checkpoint import CrashHook
from migrator.engine.scheduler import WorkerProcesses, plan_mailboxes, queue_plan, run_queue
from migrator.engine.worker import PassOptions, RunContext, logins_for
from migrator.model import Stage
from migrator.planning.planfile import read_plan
from migrator.planning.planner import Plan
from migrator.throttle import Pacer

EXIT_INTERRUPTED = 130


def work_context(session: Session, plan: Plan, codes: Sequence[str], mailboxes_path: Path | None,
                 options: PassOptions, *, need_source: bool) -> RunContext:
    """Everything a queue of jobs needs, after a preflight that reaches and logs in to the endpoints
    (as admin on behalf of the first mailbox where admin credentials are configured). Raises
    EndpointError before anything is written, and UserError for mailboxes the inventory lacks."""
    config = session.config
    source, target = session.endpoints()
    logins = credentials(config, mailboxes_path)
    first = plan_mailboxes(session.engine, plan, codes)[plan.batch(codes[0]).mailboxes[0].source]
    source_login, target_login = logins_for(logins, first)
    with ThreadPoolExecutor(1, thread_name_prefix="preflight") as pool:  # both servers' round trips at once
        target_checked = pool.submit(target.probe, on_behalf_of=target_login.user)
        if need_source:
            source.probe(on_behalf_of=source_login.user)  # the source's failure is the one reported first
        target_checked.result()
    stop = threading.Event()
    install_stop_handlers(stop)
    total = sum(m.messages for code in codes for m in plan.batch(code).mailboxes)
    # a pacer's waits (a server's hold can last minutes) end early when a stop is asked for
    source_pacer, target_pacer = (Pacer(throttle, sleep=stop.wait) for throttle in
                                  (config.source_throttle, config.target_throttle))
    return RunContext(config, session.engine, source, target, source_pacer, target_pacer,
                      Progress(total_messages=total), stop, CrashHook(), logins, options)


@click.command("run")
@click.argument("plan_path", type=click.Path(path_type=Path))
@click.option("--stage", type=click.Choice([s.value for s in Stage]), required=True)
@click.option("--batch", "batches", multiple=True, help="Only these batches (repeatable); default all.")
@click.option("--workers", type=int, default=None, help="Mailboxes in parallel (default: [throttle.target] "
                                                         "max_connections, at most 4).")
@click.option("--processes", type=click.IntRange(min=1), default=1, help="Spread the workers over this many "
              "processes (default 1), for a host with more cores than one Python interpreter can keep busy.")
@click.option("--accept-edits", is_flag=True, help="Run a plan that was edited after creation.")
@click.option("--dry-run", is_flag=True, help="Say what the pass would copy, change and delete; write nothing.")
@click.option("--sync-deletes", is_flag=True, help="Remove from the target the copies of messages deleted on the "
                                                    "source since the last pass.")
@click.option("--rematch-folder", "rematch", multiple=True, help="Source folder (as the source names it) whose "
              "UIDVALIDITY changed: pair its messages with earlier copies by content instead of stopping.")
@config_option
@mailboxes_option
def run_command(plan_path: Path, stage: str, batches: tuple[str, ...], workers: int | None, processes: int,
                accept_edits: bool, dry_run: bool, sync_deletes: bool, rematch: tuple[str, ...], config_path: Path,
                mailboxes_path: Path | None) -> int:
    """Copy the plan's mailboxes; re-running resumes and copies only what is missing."""
    session = open_session(config_path)
    plan, fingerprint, edited = read_plan(plan_path, accept_edits=accept_edits)
    codes = list(batches) or [b.id for b in plan.batches]
    for code in codes:
        plan.batch(code)
    ctx = work_context(session, plan, codes, mailboxes_path, PassOptions(sync_deletes, frozenset(rematch)),
                       need_source=True)
    if dry_run:
        return _dry_run(ctx, plan, codes)
    queue_plan(session.engine, plan, plan_path, fingerprint, edited, stage, codes)
    config = session.config
    connections = min(config.target_throttle.max_connections, config.source_throttle.max_connections)
    count = max(1, workers or min(4, connections))
    in_flight = max(1, min(count, sum(len(plan.batch(code).mailboxes) for code in codes)))
    ctx = replace(ctx, options=replace(ctx.options, connections=connections))
    summary = run_queue(ctx, plan, stage, codes, in_flight,
                        processes=WorkerProcesses(min(in_flight, processes), session.endpoints))
    ctx.progress.finish()
    progress, c = ctx.progress, ctx.progress.counters
    click.echo(f"{stage}: {summary.jobs_done} mailboxes done, {summary.jobs_failed} failed; copied {c.messages} "
               f"messages ({c.bytes / 1e6:.1f} MB) in {progress.elapsed():.1f}s "
               f"({c.messages / progress.elapsed():.0f} msg/s, {c.bytes / 1e6 / progress.elapsed():.1f} MB/s), "
               f"{c.flag_updates} flag updates, {c.deleted} deletions, {c.failed} items failed"
               + (f", {c.still_failed} failed in earlier passes" if c.still_failed else "")
               + (f"; {c.throttled_seconds:.1f}s waited for throttling (not a failure)" if c.throttled_seconds else ""))
    for problem in summary.problems:
        click.echo(f"  problem: {problem}", err=True)
    if summary.interrupted:
        click.echo("interrupted: re-run the same command to resume", err=True)
        return EXIT_INTERRUPTED
    trouble = summary.jobs_failed or summary.workers_lost or c.failed or c.still_failed
    if stage == Stage.FINAL and not trouble:
        from migrator.cli.verify import run_verify  # here: a delta's start-up is part of what it costs

        return run_verify(session, plan, codes, ctx.credentials, deep=False, as_json=False)
    return 1 if trouble else 0


def _dry_run(ctx: RunContext, plan: Plan, codes: Sequence[str]) -> int:
    from migrator.engine.dryrun import preview_mailbox  # here: a delta's start-up is part of what it costs

    records = plan_mailboxes(ctx.engine, plan, codes)
    totals = [0, 0]
    for code in codes:
        for planned in plan.batch(code).mailboxes:
            for f in preview_mailbox(ctx, records[planned.source]):
                totals[0] += f.copy
                totals[1] += f.copy_bytes
                if f.copy or f.flag_updates or f.deleted_on_source or f.open_intents or f.create:
                    click.echo(f"{code} {planned.source}: {f.source_folder!r} -> {f.target_folder!r}"
                               f"{' (new folder)' if f.create else ''}: copy {f.copy} ({f.copy_bytes} bytes), "
                               f"{f.flag_updates} flag updates, {f.deleted_on_source} deleted on the source, "
                               f"{f.open_intents} open intents to settle")
    click.echo(f"dry run: would copy {totals[0]} messages ({totals[1] / 1e6:.1f} MB); nothing was written")
    return 0
