"""The batch planner: a pure function from inventory and policy to a Plan.

Mailboxes that share a `group` (mailboxes.csv), or are linked by a delegate or shared-mailbox
dependency, always move in the same batch (a delegate who moves before the owner loses access).
Higher priority goes first, then larger groups (first-fit decreasing: big items are not left for a
tail batch), then by address for a deterministic result. Batches are filled first-fit under the
mailbox-count and size caps and, with a maintenance window, under the window's length at the
estimated rate. With a start date each batch gets the next occurrence of the window, and its stages
suggested times: prestage a week before, a delta the day before, the final pass in the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from migrator.config import ThrottleConfig
from migrator.errors import UserError
from migrator.model import Stage
from migrator.planning.windows import parse_window, zone
from migrator.store.records import MailboxRecord

# Used for estimates when [throttle.target] sets no rate: what one connection reaches on a typical IMAP
# target (see TESTING.md); a plan says which it used.
DEFAULT_MESSAGES_PER_SECOND = 100.0
DEFAULT_BYTES_PER_SECOND = 10_000_000
# Dependencies that bind mailboxes into one batch; a forward does not (it survives the move either way).
LINKING_KINDS = ("delegate", "shared-mailbox")


@dataclass(frozen=True)
class PlannedMailbox:
    source: str
    target: str
    messages: int
    size: int
    group: str | None


@dataclass(frozen=True)
class Estimate:
    messages: int
    size: int
    seconds: int


@dataclass(frozen=True)
class PlannedBatch:
    id: str
    window: str | None
    mailboxes: tuple[PlannedMailbox, ...]
    estimate: Estimate
    schedule: dict[str, str] | None = None
    fits_window: bool = True


@dataclass(frozen=True)
class Policy:
    max_mailboxes: int
    max_size: int | None
    window: str | None
    allow_split: bool = False
    start: date | None = None
    timezone: str = "UTC"


@dataclass(frozen=True)
class Plan:
    name: str
    source: str
    target: str
    stages: tuple[str, ...]
    policy: Policy
    rate: tuple[float, int]
    batches: tuple[PlannedBatch, ...]
    rate_basis: str = "default"

    def batch(self, batch_id: str) -> PlannedBatch:
        for item in self.batches:
            if item.id == batch_id:
                return item
        raise UserError(f"plan {self.name}: no batch {batch_id!r} (batches: {', '.join(b.id for b in self.batches)})")


def estimate_rate(throttle: ThrottleConfig, measured: tuple[float, float] | None = None) -> tuple[float, int, str]:
    """(messages/s, bytes/s, basis) that estimates assume: what earlier runs measured when there are any
    (never above a configured limit), else the target's configured rates, else the defaults."""
    if measured and measured[0] > 0 and measured[1] > 0:
        return (min(measured[0], throttle.messages_per_second or measured[0]),
                int(min(measured[1], throttle.bytes_per_second or measured[1])), "measured by earlier runs")
    basis = "configured" if throttle.messages_per_second or throttle.bytes_per_second else "default"
    return (throttle.messages_per_second or DEFAULT_MESSAGES_PER_SECOND,
            throttle.bytes_per_second or DEFAULT_BYTES_PER_SECOND, basis)


def estimate(mailboxes: Sequence[PlannedMailbox], rate: tuple[float, int]) -> Estimate:
    messages = sum(m.messages for m in mailboxes)
    size = sum(m.size for m in mailboxes)
    return Estimate(messages, size, math.ceil(max(messages / rate[0], size / rate[1])))


def _groups(mailboxes: Sequence[MailboxRecord], links: Sequence[tuple[str, str]]) -> list[list[MailboxRecord]]:
    """Mailboxes that must move together: same `group`, or linked, transitively (union-find)."""
    parent = {m.source: m.source for m in mailboxes}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    first_of_group: dict[str, str] = {}
    for record in mailboxes:
        if record.group:
            parent[root(record.source)] = root(first_of_group.setdefault(record.group, record.source))
    for left, right in links:
        if left in parent and right in parent:
            parent[root(left)] = root(right)
    grouped: dict[str, list[MailboxRecord]] = {}
    for record in mailboxes:
        grouped.setdefault(root(record.source), []).append(record)
    groups = [sorted(members, key=lambda m: m.source) for members in grouped.values()]
    return sorted(groups, key=lambda members: (-max(m.priority for m in members),
                                               -sum(m.size for m in members), members[0].source))


def _label(members: Sequence[MailboxRecord]) -> str:
    names = sorted({m.group for m in members if m.group})
    return f"group {names[0]!r}" if names else f"linked mailboxes {members[0].source} (+{len(members) - 1})"


@dataclass
class _Bin:
    members: list[MailboxRecord]
    size: int = 0
    messages: int = 0

    def fits(self, members: Sequence[MailboxRecord], policy: Policy, rate: tuple[float, int],
             max_seconds: int | None) -> bool:
        size = self.size + sum(m.size for m in members)
        messages = self.messages + sum(m.messages for m in members)
        return (len(self.members) + len(members) <= policy.max_mailboxes
                and (policy.max_size is None or size <= policy.max_size)
                and (max_seconds is None or max(messages / rate[0], size / rate[1]) <= max_seconds))

    def add(self, members: Sequence[MailboxRecord]) -> None:
        self.members.extend(members)
        self.size += sum(m.size for m in members)
        self.messages += sum(m.messages for m in members)


def create_plan(name: str, source: str, target: str, mailboxes: Sequence[MailboxRecord], policy: Policy,
                throttle: ThrottleConfig, links: Sequence[tuple[str, str]] = (),
                measured: tuple[float, float] | None = None) -> Plan:
    """Batches under the policy's caps; raises UserError when a group cannot fit in one batch.
    `measured` is the (messages/s, bytes/s) earlier runs achieved, which estimates prefer."""
    if policy.max_mailboxes < 1:
        raise UserError("--max-mailboxes must be at least 1")
    if not mailboxes:
        raise UserError("the inventory is empty: run `migrator discover --mailboxes mailboxes.csv` first")
    messages_rate, bytes_rate, basis = estimate_rate(throttle, measured)
    rate = (messages_rate, bytes_rate)
    window = parse_window(policy.window) if policy.window else None
    max_seconds = window.seconds if window else None
    bins: list[_Bin] = []
    open_bins: list[_Bin] = []
    for members in _groups(mailboxes, links):
        size = sum(m.size for m in members)
        seconds = _seconds(members, rate)
        too_many = len(members) > policy.max_mailboxes
        too_big = policy.max_size is not None and size > policy.max_size
        too_long = max_seconds is not None and seconds > max_seconds
        if (too_many or too_big or too_long) and (len(members) > 1 or members[0].group) and not policy.allow_split:
            raise UserError(f"{_label(members)} ({len(members)} mailboxes, {size} bytes, ~{int(seconds)} s) does not "
                            f"fit in one batch under --max-mailboxes/--max-size/--window; raise the caps or pass "
                            f"--allow-split")
        for part in ([[m] for m in members] if (too_many or too_big or too_long) else [members]):
            _place(bins, open_bins, part, policy, rate, max_seconds)
    occurrences = window.occurrences(policy.start, zone(policy.timezone)) if window and policy.start else None
    planned = []
    for index, bin_ in enumerate(bins, start=1):
        items = tuple(PlannedMailbox(m.source, m.target, m.messages, m.size, m.group)
                      for m in sorted(bin_.members, key=lambda m: m.source))
        est = estimate(items, rate)
        schedule = _schedule(next(occurrences)) if occurrences else None
        planned.append(PlannedBatch(f"B{index:02d}", policy.window, items, est, schedule,
                                    max_seconds is None or est.seconds <= max_seconds))
    return Plan(name, source, target, tuple(s.value for s in Stage), policy, rate, tuple(planned), basis)


def _seconds(members: Sequence[MailboxRecord], rate: tuple[float, int]) -> float:
    return max(sum(m.messages for m in members) / rate[0], sum(m.size for m in members) / rate[1])


def _schedule(occurrence: tuple[datetime, datetime]) -> dict[str, str]:
    begin, end = occurrence
    return {"window_start": begin.isoformat(), "window_end": end.isoformat(),
            "prestage": (begin - timedelta(days=7)).isoformat(), "delta": (begin - timedelta(days=1)).isoformat(),
            "final": begin.isoformat()}


def _place(bins: list[_Bin], open_bins: list[_Bin], members: list[MailboxRecord], policy: Policy,
           rate: tuple[float, int], max_seconds: int | None) -> None:
    """First fit among the batches that still have room for a mailbox (full ones are dropped from
    `open_bins`, which keeps planning 50,000 mailboxes fast)."""
    target = next((b for b in open_bins if b.fits(members, policy, rate, max_seconds)), None)
    if target is None:
        target = _Bin([])
        bins.append(target)
        open_bins.append(target)
    target.add(members)
    if len(target.members) >= policy.max_mailboxes:
        open_bins.remove(target)
