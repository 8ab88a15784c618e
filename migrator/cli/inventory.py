"""`migrator check` and `migrator discover`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from migrator.cli.common import config_option, credentials, human_size, mailboxes_option, open_session
from migrator.cli.report import dns_results
from migrator.config import Config, load_config, load_dependencies, load_mailboxes
from migrator.connectors.base import MailboxLister, open_mailbox
from migrator.connectors.registry import make_endpoint
from migrator.discovery.inventory import Discovered, discover
from migrator.errors import StateError, UserError
from migrator.store import inventory
from migrator.store.db import open_store, reading


@click.command("check")
@config_option
@mailboxes_option
@click.option("--all", "check_all", is_flag=True, help="Log in to every mailbox of mailboxes.csv on both sides.")
def check_command(config_path: Path, mailboxes_path: Path | None, check_all: bool) -> int:
    """Preflight: reach and log in to both endpoints; report TLS, capabilities and target quotas against the
    discovered source sizes; check DNS of the mailboxes' domains when [dns] is configured. Exit 1 when a
    mailbox will not fit or DNS has errors."""
    config = load_config(config_path)
    entries = list(credentials(config, mailboxes_path).values())
    sizes = _discovered_sizes(config)
    short = 0
    for endpoint_config in (config.source, config.target):
        endpoint = make_endpoint(endpoint_config)
        logins = [e.source_access() if endpoint_config.role == "source" else e.target_access() for e in entries]
        probe = endpoint.probe(on_behalf_of=logins[0].user if logins else None)
        admin = f"admin login on behalf of {logins[0].user} ok" if probe.admin_login else "no admin login checked"
        click.echo(f"{endpoint_config.role}: {probe.address} reachable ({probe.security}), {admin}; "
                   f"capabilities: {' '.join(sorted(probe.capabilities))}")
        for entry, login in list(zip(entries, logins, strict=True))[:None if check_all else 1]:
            with open_mailbox(endpoint, login, write=False) as mailbox:
                caps = mailbox.capabilities()
                quota = mailbox.quota() if endpoint_config.role == "target" else None
            click.echo(f"{endpoint_config.role}: login as {login.user} ok (append returns ids: "
                       f"{_yes(caps.append_returns_ids)}, bulk append: {_yes(caps.bulk_append)})")
            if quota is not None:
                short += _report_quota(login.user, quota, sizes.get(entry.source))
    domains = sorted({e.source.rsplit("@", 1)[1] for e in entries})
    results = dns_results(config, domains)
    for result in results:
        mx = ", ".join(f"{pref} {host}" for pref, host in result.mx) or "none"
        click.echo(f"dns {result.domain}: MX {mx} (TTL {result.mx_ttl}); SPF {result.spf or 'none'}; "
                   f"autodiscover {result.autodiscover or 'none'}")
        for finding in result.findings:
            click.echo(f"  {finding.level}: {finding.message}")
    return 1 if short or any(f.level == "error" for r in results for f in r.findings) else 0


def _discovered_sizes(config: Config) -> dict[str, int]:
    """Source sizes from the last discovery, when there is a store to read (check may run before init)."""
    sqlite = "sqlite:///"
    if config.state_url.startswith(sqlite) and not Path(config.state_url[len(sqlite):]).exists():
        return {}
    try:
        engine = open_store(config.state_url, config.state_busy_timeout_ms)
    except StateError:
        return {}
    with reading(engine) as conn:
        return {m.source: m.size for m in inventory.list_mailboxes(conn)}


def _report_quota(user: str, quota: tuple[int, int], source_size: int | None) -> int:
    """Print the target quota of one mailbox; 1 if the discovered source size does not fit in what is free."""
    used, limit = quota
    line = f"target: {user}: quota {human_size(used)} used of {human_size(limit)}"
    if source_size is None:
        click.echo(line + " (run discover to compare with the source)")
        return 0
    fits = used + source_size <= limit
    click.echo(line + f"; source mailbox {human_size(source_size)}: " + ("fits" if fits else
               "DOES NOT FIT: raise the target quota before copying"))
    return 0 if fits else 1


def _yes(value: bool) -> str:
    return "yes" if value else "no"


@click.command("discover")
@config_option
@click.option("--mailboxes", "mailboxes_path", type=click.Path(path_type=Path), default=None,
              help="mailboxes.csv listing the mailboxes to inventory.")
@click.option("--export-mailboxes", "export_path", type=click.Path(path_type=Path), default=None,
              help="Instead: write a starting mailboxes.csv (source,target) from the source's list of mailboxes, "
                   "targets by [mapping].domains; never overwrites.")
@click.option("--dependencies", "dependencies_path", type=click.Path(path_type=Path), default=None,
              help="Dependencies exported from the source system: CSV kind,source,target or JSON (see README).")
def discover_command(config_path: Path, mailboxes_path: Path | None, export_path: Path | None,
                     dependencies_path: Path | None) -> int:
    """Inventory source mailboxes (folders, counts, sizes) into the state store; writes nothing anywhere else.
    With --export-mailboxes, only write a starting mailboxes.csv to review (endpoints that can list them)."""
    if (mailboxes_path is None) == (export_path is None):
        raise click.UsageError("give one of --mailboxes FILE (inventory) and --export-mailboxes FILE (write a "
                               "starting mailboxes.csv)")
    if export_path is not None:
        if dependencies_path is not None:
            raise click.UsageError("--dependencies goes with --mailboxes, not with --export-mailboxes")
        return _export_mailboxes(load_config(config_path), export_path)
    assert mailboxes_path is not None
    session = open_session(config_path)
    entries = load_mailboxes(mailboxes_path, session.config.mapping)
    dependencies = load_dependencies(dependencies_path, [e.source for e in entries]) if dependencies_path else []
    source, _target = session.endpoints()

    def show(item: Discovered) -> None:
        click.echo(f"{item.entry.source}: {len(item.folders)} folders, {item.messages} messages, "
                   f"{human_size(item.size)}")

    found = discover(session.config, session.engine, source, entries, dependencies, show)
    if not found:
        raise UserError(f"{mailboxes_path}: no mailboxes")
    click.echo(f"inventory: {len(found)} mailboxes, {sum(d.messages for d in found)} messages, "
               f"{human_size(sum(d.size for d in found))}")
    return 0


def _export_mailboxes(config: Config, path: Path) -> int:
    """Write `path` (source,target) from the source endpoint's list; refuses an existing file."""
    if path.exists():
        raise UserError(f"{path}: already exists; not overwritten (move it away or name another file)")
    endpoint = make_endpoint(config.source)
    if not isinstance(endpoint, MailboxLister):
        raise UserError(f"[source].kind = {config.source.kind!r} cannot list its mailboxes; "
                        f"write mailboxes.csv by hand")
    addresses = endpoint.list_mailboxes()
    rows = [(address, config.mapping.target_address(address) or "") for address in addresses]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("source", "target"))
    writer.writerows(rows)
    try:
        with path.open("x", encoding="utf-8", newline="") as file:
            file.write(out.getvalue())
    except FileExistsError:
        raise UserError(f"{path}: already exists; not overwritten (move it away or name another file)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from None
    unmapped = sum(1 for _source, target in rows if not target)
    note = (f"; {unmapped} without a target ([mapping].domains has no rule for their domain): fill them in"
            if unmapped else "")
    click.echo(f"{path}: {len(rows)} mailboxes written{note}; review it (shared mailboxes look like any "
               f"other) before discover --mailboxes")
    return 0
