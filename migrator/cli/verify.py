"""`migrator verify PLAN`: compare source and target of every mailbox in the plan's batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import click

from migrator.cli.common import Session, config_option, credentials, emit_json, mailboxes_option, open_session
from migrator.engine.scheduler import plan_mailboxes
from migrator.engine.verify import MailboxCheck, verify_mailbox
from migrator.engine.worker import logins_for
from migrator.errors import EndpointError, FolderFailed, Transient
from migrator.model import MailboxEntry
from migrator.planning.planfile import read_plan
from migrator.planning.planner import Plan
from migrator.store import ledger
from migrator.store.db import translate_db_errors


def run_verify(session: Session, plan: Plan, codes: Sequence[str], logins: Mapping[str, MailboxEntry],
               deep: bool, as_json: bool) -> int:
    records = plan_mailboxes(session.engine, plan, codes)
    source, target = session.endpoints()
    checks: list[MailboxCheck] = []
    for code in codes:
        for planned in plan.batch(code).mailboxes:
            record = records[planned.source]
            with translate_db_errors(), session.engine.connect() as conn:
                entries = ledger.mailbox_entries(conn, record.id)
            try:
                check = verify_mailbox(session.config, source, target, logins_for(logins, record), entries, deep)
            except (EndpointError, Transient, FolderFailed) as exc:  # one mailbox's trouble; the others go on
                check = MailboxCheck(record.source, record.target, error=str(exc))
            checks.append(check)
            if not as_json:
                _render(check)
    ok = all(check.ok for check in checks)
    method = "; ".join(sorted({c.deep_method for c in checks if c.deep_method})) or None
    if as_json:
        emit_json({"plan": plan.name, "batches": list(codes), "deep": deep,
                   "deep_method": method, "ok": ok,
                   "mailboxes": [asdict(c) | {"ok": c.ok} for c in checks]})
    else:
        verified = sum(f.verified for c in checks for f in c.folders)
        total = sum(f.source_messages for c in checks for f in c.folders)
        click.echo(f"verify: {verified}/{total} source messages verified on the target"
                   f"{' (deep: ' + method + ')' if method else ''}; "
                   f"{sum(1 for c in checks if not c.ok)} of {len(checks)} mailboxes have differences")
    return 0 if ok else 1


def _render(check: MailboxCheck) -> None:
    if check.error:
        click.echo(f"{check.source}: ERROR {check.error}")
        return
    for f in check.folders:
        status = "ok" if f.ok else "DIFFERENCES"
        click.echo(f"{check.source}: {f.source_folder!r} -> {f.target_folder!r}: {f.verified}/{f.source_messages} "
                   f"verified, {len(f.missing)} missing, {len(f.differs)} differ, {f.extra} extra on target: {status}")
        for line in (f.missing + f.differs)[:20]:
            click.echo(f"    {line}")


@click.command("verify")
@click.argument("plan_path", type=click.Path(path_type=Path))
@click.option("--batch", "batches", multiple=True, help="Only these batches (repeatable); default all.")
@click.option("--deep", is_flag=True, help="Also compare a content hash of every message.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@config_option
@mailboxes_option
def verify_command(plan_path: Path, batches: tuple[str, ...], deep: bool, as_json: bool, config_path: Path,
                   mailboxes_path: Path | None) -> int:
    """Prove what was copied: counts, sizes, flags, dates, and with --deep the content of every message."""
    session = open_session(config_path)
    plan, _fingerprint, _edited = read_plan(plan_path, accept_edits=True)
    codes = list(batches) or [b.id for b in plan.batches]
    return run_verify(session, plan, codes, credentials(session.config, mailboxes_path), deep, as_json)
