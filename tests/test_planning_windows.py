"""Maintenance windows, schedules, linked mailboxes and discovery statistics (pure parts of issue 4)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.config import ThrottleConfig, load_dependencies
from migrator.discovery.stats import folder_stats, unsupported_reason
from migrator.errors import UserError
from migrator.model import FolderInfo, MessageRef
from migrator.planning.planner import Policy, create_plan
from migrator.planning.windows import parse_window
from migrator.store.records import MailboxRecord


def record(n: int, size: int = 1_000_000, messages: int = 100, group: str | None = None) -> MailboxRecord:
    return MailboxRecord(n, f"u{n:03d}@old.example", f"u{n:03d}@new.example", None, None, group, 0, messages, size, 5)


@pytest.mark.parametrize(("text", "hours"), [("Sat 22:00-Sun 06:00", 8), ("22:00-06:00", 8),
                                             ("Fri 18:00-Mon 06:00", 60), ("sunday 01:00-sunday 05:30", 4.5),
                                             ("09:00-17:00", 8)])
def test_window_lengths(text: str, hours: float) -> None:
    assert parse_window(text).seconds == hours * 3600


@pytest.mark.parametrize("text", ["Sat 22-Sun 06", "Sat 25:00-Sun 06:00", "Xyz 22:00-Sun 06:00", "Sat 22:00-06:00",
                                  "whenever"])
def test_bad_windows_are_user_errors(text: str) -> None:
    with pytest.raises(UserError, match="--window"):
        parse_window(text)


def test_batches_fit_their_window_and_get_consecutive_occurrences() -> None:
    # 100 messages per mailbox at 1 message/s: 100 s per mailbox, a 1-hour window holds 36 of them
    mailboxes = [record(n) for n in range(80)]
    policy = Policy(50, None, "Sat 22:00-Sat 23:00", start=date(2026, 12, 1), timezone="Europe/Paris")
    plan = create_plan("w", "s", "t", mailboxes, policy, ThrottleConfig(1, 1.0, None))
    assert [len(b.mailboxes) for b in plan.batches] == [36, 36, 8]
    assert all(b.fits_window and b.estimate.seconds <= 3600 for b in plan.batches)
    starts = [datetime.fromisoformat(b.schedule["window_start"]) for b in plan.batches if b.schedule]
    assert starts[0] == datetime(2026, 12, 5, 22, 0, tzinfo=starts[0].tzinfo)
    assert [b - a for a, b in itertools.pairwise(starts)] == [timedelta(days=7)] * 2
    first = plan.batches[0].schedule or {}
    assert datetime.fromisoformat(first["prestage"]) == starts[0] - timedelta(days=7)
    assert starts[0].utcoffset() == timedelta(hours=1)


def test_a_mailbox_longer_than_the_window_is_flagged_alone() -> None:
    plan = create_plan("w", "s", "t", [record(1, messages=10_000), record(2)], Policy(10, None, "22:00-23:00"),
                       ThrottleConfig(1, 1.0, None))
    flagged = [b for b in plan.batches if not b.fits_window]
    assert len(flagged) == 1 and [m.source for m in flagged[0].mailboxes] == ["u001@old.example"]


def test_delegates_move_with_their_owner_and_a_too_large_link_is_refused() -> None:
    mailboxes = [record(n) for n in range(6)]
    links = [("u000@old.example", "u005@old.example"), ("u005@old.example", "u003@old.example")]
    plan = create_plan("w", "s", "t", mailboxes, Policy(3, None, None), ThrottleConfig(), links)
    batch_of = {m.source: b.id for b in plan.batches for m in b.mailboxes}
    assert batch_of["u000@old.example"] == batch_of["u003@old.example"] == batch_of["u005@old.example"]
    with pytest.raises(UserError, match=r"linked mailboxes u000@old\.example"):
        create_plan("w", "s", "t", mailboxes, Policy(2, None, None), ThrottleConfig(), links)


def test_folder_statistics_and_unsupported_names() -> None:
    when = datetime(2020, 5, 1, tzinfo=UTC)
    refs = [MessageRef(str(n), size, frozenset(), when + timedelta(days=400 * n))
            for n, size in enumerate([500, 50_000, 12_000_000, 2_000_000])]
    stats = folder_stats(refs)
    assert (stats.messages, stats.size) == (4, 14_050_500)
    assert stats.oldest == when and stats.newest == when + timedelta(days=1200)
    assert sorted(stats.years) == [2020, 2021, 2022, 2023]
    assert stats.buckets["10-25 MB"] == [1, 12_000_000] and stats.buckets["<10 KB"] == [1, 500]
    assert [i.id for i in stats.largest][:2] == ["2", "3"] and [i.id for i in stats.big] == ["2", "3"]
    assert unsupported_reason(FolderInfo("a" * 300, "."), "/") is not None
    assert "separator" in (unsupported_reason(FolderInfo("Clients.A/B", "."), "/") or "")
    assert unsupported_reason(FolderInfo("Clients.AB", "."), "/") is None


def test_dependency_files_are_validated(tmp_path: Path) -> None:
    known = ["a@old.example", "b@old.example"]
    good = tmp_path / "deps.csv"
    good.write_text("kind,source,target\ndelegate,a@old.example,b@old.example\nforward,b@old.example,x@else.example\n")
    assert [d.kind for d in load_dependencies(good, known)] == ["delegate", "forward"]
    json_file = tmp_path / "deps.json"
    json_file.write_text('[{"kind": "shared-mailbox", "source": "b@old.example", "target": "a@old.example"}]')
    assert load_dependencies(json_file, known)[0].kind == "shared-mailbox"
    for text, message in [("kind,source,target\ndelegate,c@old.example,a@old.example\n", "line 2: mailbox 'c@old"),
                          ("kind,source,target\nowner,a@old.example,b@old.example\n", "line 2: kind 'owner'"),
                          ("kind,source\ndelegate,a@old.example\n", ":1: the header"),
                          ("kind,source,target\ndelegate,a@old.example,z@old.example\n", "delegate target"),
                          ("kind,source,target\nforward,a@old.example,x@y.example\nforward,a@old.example,x@y.example\n",
                           "line 3: duplicate")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            load_dependencies(bad, known)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5_000), st.integers(0, 10**9), st.sampled_from([None, "g1", "g2", "g3"])),
                min_size=1, max_size=40),
       st.integers(1, 12), st.sampled_from(["22:00-23:00", "Sat 22:00-Sun 06:00", "00:00-00:30"]))
def test_every_batch_fits_its_window_or_is_flagged(rows: list[tuple[int, int, str | None]], cap: int,
                                                   window: str) -> None:
    mailboxes = [MailboxRecord(n, f"u{n:03d}@old.example", f"u{n:03d}@new.example", None, None, group, 0, messages,
                               size, 1) for n, (messages, size, group) in enumerate(rows)]
    policy = Policy(cap, None, window, allow_split=True)
    plan = create_plan("p", "s", "t", mailboxes, policy, ThrottleConfig(1, 2.0, 5_000_000))
    assert sorted(m.source for b in plan.batches for m in b.mailboxes) == sorted(m.source for m in mailboxes)
    for batch in plan.batches:
        assert len(batch.mailboxes) <= cap
        if batch.fits_window:
            assert batch.estimate.seconds <= parse_window(window).seconds
        else:
            assert len(batch.mailboxes) == 1, "only a mailbox that alone exceeds the window may overrun it"
