"""Pure engine decisions without I/O: folder routing, settling open intents, planning a folder, chunking."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.config import FilterConfig, ThrottleConfig
from migrator.engine.diff import chunk_refs, plan_folder, settle
from migrator.engine.mapping import FolderRoute, effective_role, is_excluded, route_folders
from migrator.engine.worker import (
    CHUNK_BYTES,
    CHUNK_MESSAGES,
    CHUNK_MESSAGES_ONE_BY_ONE,
    FolderJob,
    batch_bounds,
    folder_groups,
)
from migrator.model import Capabilities, CopyTag, FolderInfo, MessageRef, Role
from migrator.store.ledger import DONE, FAILED, INTENT
from migrator.store.records import LedgerEntry
from migrator.throttle import Pacer

# --- folder routing -----------------------------------------------------------------------------------------


def src(path: str, role: Role | None = None, selectable: bool = True) -> FolderInfo:
    return FolderInfo(path, ".", role, "1", selectable=selectable)


def dst(path: str, role: Role | None = None) -> FolderInfo:
    return FolderInfo(path, "/", role, "7")


SOURCE = [
    src("INBOX"), src("Sent", Role.SENT), src("Sent.2019"), src("Drafts", Role.DRAFTS), src("Trash", Role.TRASH),
    src("Junk", Role.JUNK), src("Projects"), src("Projects.2026"), src("Réunions"), src("Réunions.Été"),
    src("INBOX.Clients"), src("INBOX.Archives"), src("INBOX.Archives.2020"),
    src("a/b"), src("Projects.x/y"),
]
TARGET = [
    dst("INBOX", Role.INBOX), dst("Sent Items", Role.SENT), dst("Drafts", Role.DRAFTS),
    dst("Deleted Items", Role.TRASH), dst("Junk Email", Role.JUNK), dst("Archive", Role.ARCHIVE),
]


def routes_by_path(routes: list[FolderRoute]) -> dict[str, str]:
    return {route.source.path: route.target_path for route in routes}


def test_routes_by_role_and_by_name() -> None:
    routes = route_folders(SOURCE, TARGET, "/", {}, [])
    assert [r.source.path for r in routes] == [f.path for f in SOURCE], "one route per folder, in source order"
    got = routes_by_path(routes)
    assert got["INBOX"] == "INBOX"
    assert got["Sent"] == "Sent Items"
    assert got["Sent.2019"] == "Sent Items/2019"
    assert got["Drafts"] == "Drafts"
    assert got["Trash"] == "Deleted Items"
    assert got["Junk"] == "Junk Email"
    assert got["Projects"] == "Projects"
    assert got["Projects.2026"] == "Projects/2026"
    assert got["Réunions"] == "Réunions"
    assert got["Réunions.Été"] == "Réunions/Été"
    assert got["INBOX.Clients"] == "INBOX/Clients"
    assert got["INBOX.Archives"] == "Archive", "Courier-style INBOX.<well-known name> has that role"
    assert got["INBOX.Archives.2020"] == "Archive/2020"


def test_route_roles() -> None:
    roles = {r.source.path: r.role for r in route_folders(SOURCE, TARGET, "/", {}, [])}
    assert roles["INBOX"] is Role.INBOX and roles["Sent"] is Role.SENT and roles["Trash"] is Role.TRASH
    assert roles["Sent.2019"] is None and roles["Projects"] is None


def test_target_separator_inside_a_source_name_becomes_underscore() -> None:
    got = routes_by_path(route_folders(SOURCE, TARGET, "/", {}, []))
    assert got["a/b"] == "a_b"
    assert got["Projects.x/y"] == "Projects/x_y"


def test_explicit_rename_wins_and_children_follow() -> None:
    renames = {"INBOX.Archives": "Archive/Legacy", "Projects": "Work/Projects", "Sent": "Old Sent"}
    got = routes_by_path(route_folders(SOURCE, TARGET, "/", renames, []))
    assert got["INBOX.Archives"] == "Archive/Legacy"
    assert got["INBOX.Archives.2020"] == "Archive/Legacy/2020"
    assert got["INBOX.Clients"] == "INBOX/Clients" and got["Trash"] == "Deleted Items"
    assert got["Projects"] == "Work/Projects"
    assert got["Projects.2026"] == "Work/Projects/2026"
    assert got["Projects.x/y"] == "Work/Projects/x_y"
    assert got["Sent"] == "Old Sent", "a rename beats the special-use role"
    assert got["Sent.2019"] == "Old Sent/2019"


def test_rename_of_a_child_beats_its_parent_role() -> None:
    got = routes_by_path(route_folders(SOURCE, TARGET, "/", {"Sent.2019": "Archive/Sent 2019"}, []))
    assert got["Sent"] == "Sent Items" and got["Sent.2019"] == "Archive/Sent 2019"


def test_exclude_drops_folder_and_children() -> None:
    source = [*SOURCE, src("Junk.old"), src("Junkyard")]
    got = routes_by_path(route_folders(source, TARGET, "/", {}, ["Junk", "Projects"]))
    assert "Junk" not in got and "Junk.old" not in got
    assert "Projects" not in got and "Projects.2026" not in got and "Projects.x/y" not in got
    assert got["Junkyard"] == "Junkyard", "a sibling that merely starts with the name stays"
    assert got["Sent.2019"] == "Sent Items/2019"
    assert is_excluded(src("Junk.old.deep"), ["Junk"]) and not is_excluded(src("Junkyard"), ["Junk"])


def test_non_selectable_folders_get_no_route_but_children_do() -> None:
    source = [src("Lists", selectable=False), src("Lists.python")]
    got = routes_by_path(route_folders(source, TARGET, "/", {}, []))
    assert got == {"Lists.python": "Lists/python"}


def test_well_known_names_when_server_reports_no_roles() -> None:
    source = [src("INBOX"), src("Sent"), src("Sent.2019"), src("Drafts"), src("Trash"), src("Spam"),
              src("INBOX.Sent Messages")]
    target = [dst("INBOX"), dst("Sent Items"), dst("Drafts"), dst("Deleted Items"), dst("Junk Email"),
              dst("Archive")]
    got = routes_by_path(route_folders(source, target, "/", {}, []))
    assert got == {
        "INBOX": "INBOX", "Sent": "Sent Items", "Sent.2019": "Sent Items/2019", "Drafts": "Drafts",
        "Trash": "Deleted Items", "Spam": "Junk Email", "INBOX.Sent Messages": "Sent Items",
    }


def test_role_missing_on_target_uses_default_name() -> None:
    got = routes_by_path(route_folders([src("Junk", Role.JUNK)], [dst("INBOX", Role.INBOX)], "/", {}, []))
    assert got == {"Junk": "Junk"}


def test_server_role_wins_over_name_on_target() -> None:
    target = [dst("Sent", None), dst("Gesendete Objekte", Role.SENT)]
    assert routes_by_path(route_folders([src("Sent", Role.SENT)], target, "/", {}, [])) == {
        "Sent": "Gesendete Objekte"}


def test_effective_role() -> None:
    assert effective_role(src("Sent Items")) is Role.SENT
    assert effective_role(src("INBOX.Trash")) is Role.TRASH
    assert effective_role(src("Projects.Sent")) is None
    assert effective_role(src("Whatever", Role.ARCHIVE)) is Role.ARCHIVE


# --- settle -------------------------------------------------------------------------------------------------

D1, D2 = "a" * 64, "b" * 64


def entry(id_: int, *, digest: str = D1, size: int = 100, watermark: str | None = "100", state: str = INTENT,
          source_id: str | None = None, target_id: str | None = None,
          flags: frozenset[str] = frozenset()) -> LedgerEntry:
    return LedgerEntry(id_, "INBOX", "1", source_id or str(id_), digest, size, flags, "2025-01-01T00:00:00",
                       "INBOX", "7", watermark, target_id, state, None)


def test_intent_found_is_done() -> None:
    result = settle([entry(1)], {CopyTag(D1, 100): ["105"]}, set())
    assert result.done == {1: "105"} and result.dropped == []


def test_intent_not_found_is_dropped() -> None:
    result = settle([entry(1), entry(2, digest=D2)], {CopyTag(D1, 100): ["105"], CopyTag(D2, 999): ["106"]}, set())
    assert result.done == {1: "105"} and result.dropped == [2], "same digest but another size is another tag"


def test_identical_tags_get_distinct_target_ids() -> None:
    result = settle([entry(2), entry(1)], {CopyTag(D1, 100): ["101", "102"]}, set())
    assert result.done == {1: "101", 2: "102"} and result.dropped == []


def test_one_copy_never_settles_two_intents() -> None:
    result = settle([entry(1), entry(2)], {CopyTag(D1, 100): ["101"]}, set())
    assert result.done == {1: "101"} and result.dropped == [2]


def test_claimed_id_is_never_reused() -> None:
    result = settle([entry(1)], {CopyTag(D1, 100): ["101", "102"]}, {"101"})
    assert result.done == {1: "102"}
    result = settle([entry(1)], {CopyTag(D1, 100): ["101"]}, {"101"})
    assert result.done == {} and result.dropped == [1]


def test_candidates_below_the_watermark_are_ignored() -> None:
    result = settle([entry(1, watermark="100")], {CopyTag(D1, 100): ["42", "99"]}, set())
    assert result.done == {} and result.dropped == [1]
    result = settle([entry(1, watermark="100")], {CopyTag(D1, 100): ["99", "100"]}, set())
    assert result.done == {1: "100"}, "the watermark is the first id the copy could get"


def test_no_watermark_or_opaque_ids_accept_any_candidate() -> None:
    assert settle([entry(1, watermark=None)], {CopyTag(D1, 100): ["3"]}, set()).done == {1: "3"}
    assert settle([entry(1, watermark="100")], {CopyTag(D1, 100): ["AAMkAD="]}, set()).done == {1: "AAMkAD="}


@given(st.lists(st.sampled_from([D1, D2]), min_size=0, max_size=8),
       st.lists(st.integers(min_value=90, max_value=120), max_size=10, unique=True),
       st.sets(st.integers(min_value=90, max_value=120).map(str), max_size=4))
def test_settle_property(digests: list[str], found_ids: list[int], claimed: set[str]) -> None:
    intents = [entry(i + 1, digest=d) for i, d in enumerate(digests)]
    found = {CopyTag(D1, 100): [str(x) for x in found_ids if x % 2], CopyTag(D2, 100): [str(x) for x in found_ids
                                                                                         if not x % 2]}
    result = settle(intents, found, claimed)
    assert sorted([*result.done, *result.dropped]) == [e.id for e in intents]
    assert len(set(result.done.values())) == len(result.done)
    assert not set(result.done.values()) & claimed
    for ledger_id, target_id in result.done.items():
        assert target_id in found[CopyTag(intents[ledger_id - 1].digest, 100)] and int(target_id) >= 100


# --- plan_folder --------------------------------------------------------------------------------------------


def ref(id_: str, *, day: date = date(2025, 6, 1), flags: frozenset[str] = frozenset(), size: int = 100) -> MessageRef:
    return MessageRef(id_, size, flags, datetime(day.year, day.month, day.day, 12, 0))


def test_plan_folder_copies_what_the_ledger_lacks() -> None:
    seen = frozenset({"\\Seen"})
    listing = [ref("1"), ref("2", flags=seen), ref("3"), ref("4"), ref("5")]
    entries = [entry(10, source_id="1", state=DONE, target_id="501"),
               entry(11, source_id="2", state=DONE, target_id="502", flags=seen),
               entry(12, source_id="3", state=FAILED),
               entry(13, source_id="gone", state=DONE, target_id="503")]
    actions = plan_folder(listing, entries, FilterConfig())
    assert [r.id for r in actions.copy] == ["4", "5"]
    assert actions.already_copied == 2 and actions.failed_before == 1
    assert actions.flag_updates == {}


def test_plan_folder_flag_change_is_an_update() -> None:
    listing = [ref("1", flags=frozenset({"\\Seen", "\\Flagged"})), ref("2", flags=frozenset())]
    entries = [entry(10, source_id="1", state=DONE, target_id="501", flags=frozenset({"\\Seen"})),
               entry(11, source_id="2", state=DONE, target_id="502", flags=frozenset({"\\Seen"}))]
    actions = plan_folder(listing, entries, FilterConfig())
    assert actions.copy == []
    assert actions.flag_updates == {10: ("501", frozenset({"\\Seen", "\\Flagged"})), 11: ("502", frozenset())}


def test_plan_folder_refuses_open_intents() -> None:
    with pytest.raises(ValueError, match="settle"):
        plan_folder([ref("1")], [entry(1, source_id="1")], FilterConfig())


def test_plan_folder_filters_before_and_after() -> None:
    listing = [ref("old", day=date(2024, 12, 31)), ref("edge-after", day=date(2025, 1, 1)),
               ref("mid", day=date(2025, 6, 1)), ref("edge-before", day=date(2026, 1, 1)),
               ref("new", day=date(2026, 3, 1))]

    def ids(filters: FilterConfig) -> list[str]:
        return [r.id for r in plan_folder(listing, [], filters).copy]

    assert ids(FilterConfig()) == ["old", "edge-after", "mid", "edge-before", "new"]
    assert ids(FilterConfig(before=date(2026, 1, 1))) == ["old", "edge-after", "mid"]
    assert ids(FilterConfig(after=date(2025, 1, 1))) == ["edge-after", "mid", "edge-before", "new"]
    assert ids(FilterConfig(before=date(2026, 1, 1), after=date(2025, 1, 1))) == ["edge-after", "mid"]


def test_filters_do_not_hide_copied_messages() -> None:
    listing = [ref("1", day=date(2026, 3, 1), flags=frozenset({"\\Seen"}))]
    entries = [entry(10, source_id="1", state=DONE, target_id="501")]
    actions = plan_folder(listing, entries, FilterConfig(before=date(2026, 1, 1)))
    assert actions.already_copied == 1 and actions.flag_updates == {10: ("501", frozenset({"\\Seen"}))}


# --- chunk_refs ---------------------------------------------------------------------------------------------


def test_chunk_refs_bounds() -> None:
    refs = [ref(str(i), size=s) for i, s in enumerate([10, 10, 10, 60, 50, 200, 10, 10])]
    chunks = chunk_refs(refs, max_count=3, max_bytes=100)
    assert [[r.size for r in c] for c in chunks] == [[10, 10, 10], [60], [50], [200], [10, 10]]
    assert chunk_refs([], 3, 100) == []
    assert [[r.id for r in c] for c in chunk_refs(refs[:3], 1, 1000)] == [["0"], ["1"], ["2"]]


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=40), st.integers(min_value=1, max_value=6),
       st.integers(min_value=1, max_value=400))
def test_chunk_refs_property(sizes: list[int], max_count: int, max_bytes: int) -> None:
    refs = [ref(str(i), size=s) for i, s in enumerate(sizes)]
    chunks = chunk_refs(refs, max_count, max_bytes)
    assert [r for c in chunks for r in c] == refs, "every message once, in order"
    for chunk in chunks:
        assert chunk and len(chunk) <= max_count
        assert sum(r.size for r in chunk) <= max_bytes or len(chunk) == 1


def test_folders_that_share_a_target_folder_are_one_work_item_largest_first() -> None:
    """Two source folders mapped into one target folder never run on two session pairs at once."""
    def job(source: str, messages: int, target: str) -> FolderJob:
        return FolderJob(FolderRoute(FolderInfo(source, "/", messages=messages), target, None),
                         FolderInfo(target, "/"), None)

    jobs = [job("A", 10, "Inbox"), job("B", 300, "B"), job("C", 200, "Inbox"), job("D", 5, "D")]
    groups = folder_groups(jobs, largest_first=True)
    assert [[job.route.source.path for job in group] for group in groups] == [["B"], ["A", "C"], ["D"]]
    unsorted = folder_groups(jobs, largest_first=False)
    assert [[job.route.source.path for job in group] for group in unsorted] == [["A", "C"], ["B"], ["D"]]


def test_batches_are_large_where_one_command_carries_them_and_cut_to_the_pacers() -> None:
    free = Pacer(ThrottleConfig())
    assert batch_bounds(free, free, Capabilities(bulk_append=True)) == (CHUNK_MESSAGES, CHUNK_BYTES)
    assert batch_bounds(free, free, Capabilities(bulk_append=False)) == (CHUNK_MESSAGES_ONE_BY_ONE, CHUNK_BYTES)
    slow_source = Pacer(ThrottleConfig(bytes_per_second=1_000_000))
    slow_target = Pacer(ThrottleConfig(messages_per_second=20))
    assert batch_bounds(slow_source, slow_target, Capabilities(bulk_append=True)) == (20, 1_000_000)
    assert batch_bounds(slow_target, free, Capabilities(bulk_append=False)) == (20, CHUNK_BYTES)
