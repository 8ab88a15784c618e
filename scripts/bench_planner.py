"""Planner benchmark: 50,000 mailboxes in 5,000 dependency groups plus delegate links, timed in-process.

Usage: .venv/bin/python scripts/bench_planner.py [--mailboxes 50000] [--groups 5000] [--seed 1]
Prints the wall time of create_plan and of rendering the plan file (the figure issue 4 asks for).
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import date
from pathlib import Path

from migrator.config import ThrottleConfig
from migrator.planning.planfile import render_plan
from migrator.planning.planner import Policy, create_plan
from migrator.store.records import MailboxRecord


def inventory(count: int, groups: int, seed: int) -> tuple[list[MailboxRecord], list[tuple[str, str]]]:
    rng = random.Random(seed)
    records = []
    for index in range(count):
        group = f"team-{rng.randrange(groups)}" if rng.random() < 0.5 else None
        size = int(rng.lognormvariate(20, 1.2))
        records.append(MailboxRecord(index, f"user{index:05d}@old.example", f"user{index:05d}@new.example", None,
                                     None, group, rng.choice((0, 0, 0, 1, 2)), size // 75_000, size, 20))
    links = [(records[rng.randrange(count)].source, records[rng.randrange(count)].source) for _ in range(count // 50)]
    return records, links


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailboxes", type=int, default=50_000)
    parser.add_argument("--groups", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    records, links = inventory(args.mailboxes, args.groups, args.seed)
    policy = Policy(200, 2_000_000_000_000, "Sat 22:00-Sun 06:00", True, date(2027, 1, 1), "Europe/Paris")
    started = time.perf_counter()
    plan = create_plan("bench", "imap://old", "imap://new", records, policy, ThrottleConfig(8, 400.0, 80_000_000),
                       links)
    planned = time.perf_counter()
    text = render_plan(plan, Path("plans/bench.yaml"))
    rendered = time.perf_counter()
    print(f"{args.mailboxes} mailboxes, {args.groups} groups, {len(links)} delegate links -> {len(plan.batches)} "
          f"batches; planning {planned - started:.2f} s, rendering {rendered - planned:.2f} s "
          f"({len(text) / 1e6:.1f} MB of YAML)")


if __name__ == "__main__":
    main()
