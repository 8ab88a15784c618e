"""The pure planner (caps, groups, priority, determinism) and plan files (fingerprint, edits, bad files)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.config import ThrottleConfig
from migrator.errors import UserError
from migrator.planning.planfile import fingerprint, plan_to_data, read_plan, render_plan, write_plan
from migrator.planning.planner import Plan, Policy, create_plan
from migrator.store.records import MailboxRecord

GB = 10**9


def mbox(name: str, size: int = GB, *, group: str | None = None, priority: int = 0, messages: int = 1000,
         id_: int = 0) -> MailboxRecord:
    return MailboxRecord(id_, f"{name}@old.example", f"{name}@new.example", None, None, group, priority, messages,
                         size, 3)


def plan_of(mailboxes: list[MailboxRecord], max_mailboxes: int = 50, max_size: int | None = None,
            allow_split: bool = False, window: str | None = "Sat 22:00-Sun 06:00",
            throttle: ThrottleConfig | None = None) -> Plan:
    return create_plan("wave1", "source imap://imap.old.example:993", "target imap://imap.new.example:993",
                       mailboxes, Policy(max_mailboxes, max_size, window, allow_split), throttle or ThrottleConfig())


def layout(plan: Plan) -> list[list[str]]:
    return [[m.source.split("@")[0] for m in b.mailboxes] for b in plan.batches]


# --- planner ------------------------------------------------------------------------------------------------


def test_max_mailboxes_cap() -> None:
    plan = plan_of([mbox(n) for n in "abcde"], max_mailboxes=2)
    assert [b.id for b in plan.batches] == ["B01", "B02", "B03"]
    assert sorted(n for batch in layout(plan) for n in batch) == list("abcde")
    assert [len(b.mailboxes) for b in plan.batches] == [2, 2, 1]
    assert all(b.window == "Sat 22:00-Sun 06:00" for b in plan.batches)
    assert plan.stages == ("prestage", "delta", "final")


def test_max_size_cap() -> None:
    plan = plan_of([mbox("a", 6 * GB), mbox("b", 5 * GB), mbox("c", 4 * GB), mbox("d", 1 * GB)], max_size=10 * GB)
    assert layout(plan) == [["a", "c"], ["b", "d"]]
    assert all(sum(m.size for m in b.mailboxes) <= 10 * GB for b in plan.batches)


def test_a_mailbox_larger_than_the_size_cap_sits_alone() -> None:
    plan = plan_of([mbox("huge", 50 * GB), mbox("a"), mbox("b")], max_size=10 * GB)
    assert layout(plan) == [["huge"], ["a", "b"]]


def test_groups_are_never_split() -> None:
    mailboxes = [mbox("a1", group="sales"), mbox("x"), mbox("a2", group="sales"), mbox("y"), mbox("a3", group="sales")]
    plan = plan_of(mailboxes, max_mailboxes=3)
    (sales,) = [b for b in layout(plan) if "a1" in b]
    assert {"a1", "a2", "a3"} <= set(sales)
    assert [m.group for b in plan.batches for m in b.mailboxes if m.source.startswith("a")] == ["sales"] * 3


def test_group_too_large_names_the_group() -> None:
    mailboxes = [mbox("a1", group="legal"), mbox("a2", group="legal"), mbox("a3", group="legal"), mbox("x")]
    with pytest.raises(UserError, match="legal") as info:
        plan_of(mailboxes, max_mailboxes=2)
    assert "--allow-split" in str(info.value)
    with pytest.raises(UserError, match="'legal'"):
        plan_of([mbox("b1", 6 * GB, group="legal"), mbox("b2", 6 * GB, group="legal")], max_size=10 * GB)


def test_group_too_large_is_split_when_allowed() -> None:
    mailboxes = [mbox("a1", group="legal"), mbox("a2", group="legal"), mbox("a3", group="legal"), mbox("x")]
    plan = plan_of(mailboxes, max_mailboxes=2, allow_split=True)
    assert all(len(b.mailboxes) <= 2 for b in plan.batches)
    assert sorted(n for b in layout(plan) for n in b) == ["a1", "a2", "a3", "x"]


def test_priority_order() -> None:
    mailboxes = [mbox("low", 9 * GB, priority=0), mbox("high", GB, priority=10), mbox("mid", 5 * GB, priority=5),
                 mbox("grp1", group="vip", priority=1), mbox("grp2", group="vip", priority=7)]
    plan = plan_of(mailboxes, max_mailboxes=2)
    # first fit in priority order; a group ranks by its highest member
    assert layout(plan) == [["high", "mid"], ["grp1", "grp2"], ["low"]]
    singles = [mbox("p0", priority=0), mbox("p3", priority=3), mbox("p1-small", GB, priority=1),
               mbox("p1-big-b", 2 * GB, priority=1), mbox("p1-big-a", 2 * GB, priority=1)]
    assert layout(plan_of(singles, max_mailboxes=1)) == [["p3"], ["p1-big-a"], ["p1-big-b"], ["p1-small"], ["p0"]]


def test_estimates_use_the_throttle() -> None:
    mailboxes = [mbox("a", 2_000_000, messages=500), mbox("b", 3_000_000, messages=100)]
    (batch,) = plan_of(mailboxes, throttle=ThrottleConfig(messages_per_second=10, bytes_per_second=1_000_000)).batches
    assert (batch.estimate.messages, batch.estimate.size) == (600, 5_000_000)
    assert batch.estimate.seconds == 60  # 600 messages at 10/s dominates 5 s of bytes (rounded up, not padded)


def test_bad_policy_and_empty_inventory() -> None:
    with pytest.raises(UserError, match="--max-mailboxes"):
        plan_of([mbox("a")], max_mailboxes=0)
    with pytest.raises(UserError, match="migrator discover"):
        plan_of([])


# --- plan files ---------------------------------------------------------------------------------------------

INVENTORY = [mbox("alice", 3 * GB, group="sales", priority=1), mbox("bob", 2 * GB, group="sales"),
             mbox("carol", 7 * GB), mbox("dave", 1 * GB), mbox("erin", 4 * GB), mbox("jörg", 500)]


def test_render_is_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "plans" / "wave1.yaml"
    first = render_plan(plan_of(INVENTORY, max_mailboxes=2, max_size=8 * GB), path)
    second = render_plan(plan_of(list(INVENTORY), max_mailboxes=2, max_size=8 * GB), path)
    assert first.encode() == second.encode()
    assert "jörg@old.example" in first, "non-ASCII kept readable"
    write_plan(plan_of(INVENTORY, max_mailboxes=2, max_size=8 * GB), path)
    assert path.read_bytes() == first.encode()


def test_plan_does_not_depend_on_inventory_order(tmp_path: Path) -> None:
    path = tmp_path / "wave1.yaml"
    expected = render_plan(plan_of(INVENTORY, max_mailboxes=2, max_size=8 * GB), path)
    shuffled = list(INVENTORY)
    random.Random(7).shuffle(shuffled)
    assert render_plan(plan_of(shuffled, max_mailboxes=2, max_size=8 * GB), path) == expected


def test_tied_groups_do_not_depend_on_inventory_order(tmp_path: Path) -> None:
    forward = [mbox("a", 10, group="g1"), mbox("z", 10, group="g1"), mbox("m", 20, group="g2")]
    backward = [forward[1], forward[0], forward[2]]
    path = tmp_path / "wave1.yaml"
    assert render_plan(plan_of(forward, max_mailboxes=2), path) == render_plan(plan_of(backward, max_mailboxes=2),
                                                                                  path)


def written(tmp_path: Path) -> tuple[Path, Plan]:
    plan = plan_of(INVENTORY, max_mailboxes=2, max_size=8 * GB)
    path = tmp_path / "plans" / "wave1.yaml"
    write_plan(plan, path)
    return path, plan


def test_write_read_round_trip(tmp_path: Path) -> None:
    path, plan = written(tmp_path)
    read, digest, edited = read_plan(path)
    assert read == plan
    assert not edited
    assert digest == fingerprint(plan_to_data(plan))
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["fingerprint"] == digest


@pytest.mark.parametrize(("old", "new"), [
    ("source: carol@old.example", "source: mallory@old.example"),
    ("target: dave@new.example", "target: eve@new.example"),
    ("max_mailboxes: 2", "max_mailboxes: 3"),
    ("id: B02", "id: B09"),
])
def test_edited_plan_is_refused_unless_accepted(tmp_path: Path, old: str, new: str) -> None:
    path, plan = written(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_plan(path)
    assert str(path) in str(info.value) and "--accept-edits" in str(info.value)
    read, digest, edited = read_plan(path, accept_edits=True)
    assert edited and read != plan
    assert digest != fingerprint(plan_to_data(plan))


def test_edited_number_is_an_edit(tmp_path: Path) -> None:
    path, _plan = written(tmp_path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["batches"][0]["mailboxes"][0]["bytes"] += 1
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(UserError, match="--accept-edits"):
        read_plan(path)
    read, _digest, edited = read_plan(path, accept_edits=True)
    assert edited and read.batches[0].mailboxes[0].size == data["batches"][0]["mailboxes"][0]["bytes"]


def test_comments_and_whitespace_are_not_edits(tmp_path: Path) -> None:
    path, plan = written(tmp_path)
    text = path.read_text(encoding="utf-8")
    reformatted = "# reviewed by ops, ok for Saturday\n\n" + text.replace("\n  - id:", "\n\n  # next batch\n  - id:")
    reformatted = reformatted.replace("plan: wave1", "plan:    wave1   # the first wave")
    path.write_text(reformatted + "\n\n# end\n", encoding="utf-8")
    read, digest, edited = read_plan(path)
    assert not edited and read == plan and digest == fingerprint(plan_to_data(plan))
    # reordering keys and flow style are formatting too
    data = yaml.safe_load(text)
    path.write_text(yaml.safe_dump(data, sort_keys=True, default_flow_style=True), encoding="utf-8")
    assert read_plan(path)[2] is False


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("plan: wave1\nbatches: [\n  - id: B01\n", encoding="utf-8")
    with pytest.raises(UserError, match="not valid YAML") as info:
        read_plan(path)
    assert str(path) in str(info.value)
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(str(path))):
        read_plan(path)
    with pytest.raises(UserError, match="no such plan file"):
        read_plan(tmp_path / "absent.yaml")


def rewrite(path: Path, change: Any) -> None:
    """Change the content and re-sign it, as if a (different) planner had written it."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.pop("fingerprint")
    change(data)
    path.write_text(yaml.safe_dump({"fingerprint": fingerprint(data), **data}, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("batches"), "missing key 'batches'"),
    (lambda d: d.pop("plan"), "missing key 'plan'"),
    (lambda d: d.pop("stages"), "missing key 'stages'"),
    (lambda d: d["batches"][0].pop("mailboxes"), "missing key 'mailboxes'"),
    (lambda d: d["batches"][1]["mailboxes"][0].pop("source"), "missing key 'source'"),
    (lambda d: d["batches"].__setitem__(0, "B01"), "must be a mapping"),
    (lambda d: d.__setitem__("batches", {"B01": []}), "'batches' must be a list"),
    (lambda d: d["batches"][1].__setitem__("id", "B01"), "batch id appears twice"),
    (lambda d: d["batches"][1]["mailboxes"].append(dict(d["batches"][0]["mailboxes"][0])),
     "more than one batch"),
])
def test_missing_keys_and_bad_structure_name_the_file(tmp_path: Path, change: Any, message: str) -> None:
    path, _plan = written(tmp_path)
    rewrite(path, change)
    with pytest.raises(UserError, match=message) as info:
        read_plan(path)
    assert str(path) in str(info.value)


def test_non_numeric_value_in_accepted_edit_is_a_user_error(tmp_path: Path) -> None:
    path, _plan = written(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("bytes: 500\n", "bytes: half a kilobyte\n", 1), encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(str(path))):
        read_plan(path, accept_edits=True)


# --- property: random inventories -----------------------------------------------------------------------------


@st.composite
def inventories(draw: st.DrawFn) -> list[MailboxRecord]:
    count = draw(st.integers(min_value=1, max_value=30))
    groups = draw(st.lists(st.sampled_from(["g1", "g2", "g3", "g4"]) | st.none(), min_size=count, max_size=count))
    sizes = draw(st.lists(st.integers(min_value=0, max_value=100), min_size=count, max_size=count))
    priorities = draw(st.lists(st.integers(min_value=0, max_value=3), min_size=count, max_size=count))
    return [mbox(f"m{i:02d}", sizes[i], group=groups[i], priority=priorities[i], id_=i) for i in range(count)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), st.integers(min_value=1, max_value=6), st.none() | st.integers(min_value=1, max_value=250),
       st.booleans())
def test_planner_properties(mailboxes: list[MailboxRecord], max_mailboxes: int, max_size: int | None,
                            allow_split: bool) -> None:
    groups: dict[str, list[MailboxRecord]] = {}
    for record in mailboxes:
        if record.group:
            groups.setdefault(record.group, []).append(record)

    def too_big(members: list[MailboxRecord]) -> bool:
        return len(members) > max_mailboxes or (max_size is not None and sum(m.size for m in members) > max_size)

    oversized = {name for name, members in groups.items() if too_big(members)}
    try:
        plan = plan_of(mailboxes, max_mailboxes, max_size, allow_split)
    except UserError as exc:
        assert not allow_split and oversized, "refused although every group fits"
        assert any(repr(name) in str(exc) for name in oversized)
        return
    assert allow_split or not oversized
    planned = [m.source for b in plan.batches for m in b.mailboxes]
    assert sorted(planned) == sorted(m.source for m in mailboxes), "every mailbox exactly once"
    assert [b.id for b in plan.batches] == [f"B{i:02d}" for i in range(1, len(plan.batches) + 1)]
    batch_of = {m.source: b.id for b in plan.batches for m in b.mailboxes}
    for name, members in groups.items():
        if name not in oversized:
            assert len({batch_of[m.source] for m in members}) == 1, f"group {name} split"
    for batch in plan.batches:
        assert batch.mailboxes, "no empty batch"
        assert len(batch.mailboxes) <= max_mailboxes
        size = sum(m.size for m in batch.mailboxes)
        if max_size is not None and size > max_size:
            assert len(batch.mailboxes) == 1 and batch.mailboxes[0].size > max_size, (
                "over the size cap only as a single mailbox that alone exceeds it")
        assert batch.estimate.size == size
        assert batch.estimate.messages == sum(m.messages for m in batch.mailboxes)
