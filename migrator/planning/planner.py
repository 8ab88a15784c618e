"""The batch planner: a pure function from inventory and policy to a Plan.

Mailboxes that share a `group` (mailboxes.csv) always move in the same batch. Higher priority goes
first, then larger groups (so that big items are not left for a tail batch), then by address for a
deterministic result. Batches are filled first-fit under the mailbox-count and size caps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migrator.config import ThrottleConfig
from migrator.errors import UserError
from migrator.model import Stage
from migrator.store.records import MailboxRecord

# Used for estimates when [throttle.target] sets no rate: what one connection reaches on a typical IMAP
# target (see TESTING.md); a plan says which it used.
DEFAULT_MESSAGES_PER_SECOND = 100.0
DEFAULT_BYTES_PER_SECOND = 10_000_000


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


@dataclass(frozen=True)
class Policy:
    max_mailboxes: int
    max_size: int | None
    window: str | None
    allow_split: bool = False


@dataclass(frozen=True)
class Plan:
    name: str
    source: str
    target: str
    stages: tuple[str, ...]
    policy: Policy
    rate: tuple[float, int]
    batches: tuple[PlannedBatch, ...]

    def batch(self, batch_id: str) -> PlannedBatch:
        for item in self.batches:
            if item.id == batch_id:
                return item
        raise UserError(f"plan {self.name}: no batch {batch_id!r} (batches: {', '.join(b.id for b in self.batches)})")


def estimate(mailboxes: Sequence[PlannedMailbox], rate: tuple[float, int]) -> Estimate:
    messages = sum(m.messages for m in mailboxes)
    size = sum(m.size for m in mailboxes)
    return Estimate(messages, size, int(max(messages / rate[0], size / rate[1])) + 1)


def _groups(mailboxes: Sequence[MailboxRecord]) -> list[list[MailboxRecord]]:
    grouped: dict[str, list[MailboxRecord]] = {}
    for record in mailboxes:
        grouped.setdefault(f"g:{record.group}" if record.group else f"m:{record.source}", []).append(record)
    groups = [sorted(members, key=lambda m: m.source) for members in grouped.values()]
    return sorted(groups, key=lambda members: (-max(m.priority for m in members),
                                               -sum(m.size for m in members), members[0].source))


def create_plan(name: str, source: str, target: str, mailboxes: Sequence[MailboxRecord], policy: Policy,
                throttle: ThrottleConfig) -> Plan:
    """Batches under the policy's caps; raises UserError when a group cannot fit in one batch."""
    if policy.max_mailboxes < 1:
        raise UserError("--max-mailboxes must be at least 1")
    if not mailboxes:
        raise UserError("the inventory is empty: run `migrator discover --mailboxes mailboxes.csv` first")
    rate = (throttle.messages_per_second or DEFAULT_MESSAGES_PER_SECOND,
            throttle.bytes_per_second or DEFAULT_BYTES_PER_SECOND)
    batches: list[list[MailboxRecord]] = []
    for members in _groups(mailboxes):
        size = sum(m.size for m in members)
        too_many = len(members) > policy.max_mailboxes
        too_big = policy.max_size is not None and size > policy.max_size
        if (too_many or too_big) and members[0].group and not policy.allow_split:
            raise UserError(f"group {members[0].group!r} ({len(members)} mailboxes, {size} bytes) does not fit in "
                            f"one batch under --max-mailboxes/--max-size; raise the caps or pass --allow-split")
        for record in members if (too_many or too_big) else [None]:
            _place(batches, [record] if record else members, policy)
    planned = []
    for index, members in enumerate(batches, start=1):
        items = tuple(PlannedMailbox(m.source, m.target, m.messages, m.size, m.group)
                      for m in sorted(members, key=lambda m: m.source))
        planned.append(PlannedBatch(f"B{index:02d}", policy.window, items, estimate(items, rate)))
    return Plan(name, source, target, tuple(s.value for s in Stage), policy, rate, tuple(planned))


def _place(batches: list[list[MailboxRecord]], members: list[MailboxRecord], policy: Policy) -> None:
    size = sum(m.size for m in members)
    for current in batches:
        fits_count = len(current) + len(members) <= policy.max_mailboxes
        fits_size = policy.max_size is None or sum(m.size for m in current) + size <= policy.max_size
        if fits_count and fits_size:
            current.extend(members)
            return
    batches.append(list(members))
