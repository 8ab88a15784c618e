"""`migrator report discovery --format html|json|csv --out FILE`: the dry-run inventory report."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from migrator.cli.common import Session, config_option, open_session
from migrator.config import Config, parse_size
from migrator.discovery import report as discovery_report
from migrator.planning.planfile import read_plan
from migrator.planning.planner import estimate_rate
from migrator.reports.discovery import render_csv, render_html, render_json
from migrator.store import inventory, work
from migrator.store.db import reading

if TYPE_CHECKING:
    from migrator.discovery.dns import DomainDns

RENDERERS = {"html": render_html, "json": render_json, "csv": render_csv}


def dns_results(config: Config, domains: list[str]) -> list[DomainDns]:
    """DNS checks for these domains through [dns]'s resolver; none when [dns] is not configured."""
    if config.dns is None:
        return []
    from migrator.discovery.dns import ResolverConfig, check_domains  # dnspython: a tenth of every command's start-up

    resolver = ResolverConfig(config.dns.nameservers, config.dns.port, config.dns.timeout)
    return check_domains(domains, resolver, target_mx_suffixes=config.dns.target_mx,
                         target_spf_includes=config.dns.target_spf)


def source_domains(session: Session) -> list[str]:
    with reading(session.engine) as conn:
        return sorted({m.source.rsplit("@", 1)[1] for m in inventory.list_mailboxes(conn)})


@click.group("report")
def report_group() -> None:
    """Reports: discovery (a dry run that writes nothing but the report file)."""


@report_group.command("discovery")
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default="html", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), default=None,
              help="A plan file whose batches (and their timeline) the report shows.")
@click.option("--target-limit", default=None, help="The target's largest accepted message, e.g. 35MB.")
@config_option
def report_discovery(fmt: str, out: Path, plan_path: Path | None, target_limit: str | None, config_path: Path) -> int:
    """Sizes, dates, largest and over-limit messages, folder names the target cannot take, dependencies,
    DNS advice and batch ETAs, from the inventory (run `discover` first)."""
    session = open_session(config_path)
    batches: list[dict[str, Any]] = []
    if plan_path:
        plan, _fingerprint, _edited = read_plan(plan_path, accept_edits=True)
        batches = [{"id": b.id, "window": b.window, "start": (b.schedule or {}).get("window_start"),
                    "mailboxes": len(b.mailboxes), "messages": b.estimate.messages, "bytes": b.estimate.size,
                    "seconds": b.estimate.seconds} for b in plan.batches]
    dns = [asdict(result) for result in dns_results(session.config, source_domains(session))]
    with reading(session.engine) as conn:
        measured = work.measured_throughput(conn)
    messages_rate, bytes_rate, _basis = estimate_rate(session.config.target_throttle, measured)
    data = discovery_report.build(session.config, session.engine, (messages_rate, bytes_rate),
                                  batches=batches, dns=dns,
                                  target_limit=parse_size(target_limit, "--target-limit") if target_limit else None)
    text = RENDERERS[fmt](data)
    out.write_text(text, encoding="utf-8", newline="" if fmt == "csv" else None)
    totals = data["totals"]
    click.echo(f"wrote {out} ({fmt}): {totals['mailboxes']} mailboxes, {totals['messages']} messages, "
               f"{len(data['warnings'])} warnings")
    return 0
