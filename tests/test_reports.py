"""The discovery report renderers: JSON round-trips, CSV rows, a self-contained escaped HTML page, bad data."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from html import escape
from html.parser import HTMLParser
from typing import Any

import pytest

from migrator.errors import UserError
from migrator.reports import human_count, human_datetime, human_duration, human_size
from migrator.reports.discovery import CSV_COLUMNS, SCHEMA, render_csv, render_html, render_json, window_seconds
from migrator.reports.svg import nice_ticks

MB = 10**6
GB = 10**9
LIMIT = 36_700_160
SCRIPT_FOLDER = '<script>alert("x")</script>'


def mailbox(source: str, target: str, *, group: str | None = None, priority: int = 0, messages: int = 0,
            size: int = 0, folders: int = 1, oldest: str | None = None, newest: str | None = None,
            largest: list[dict[str, Any]] | None = None, unsupported: list[dict[str, str]] | None = None,
            empty: list[str] | None = None, seconds: int = 0) -> dict[str, Any]:
    largest = largest or []
    return {"source": source, "target": target, "group": group, "priority": priority, "messages": messages,
            "bytes": size, "folders": folders, "oldest": oldest, "newest": newest,
            "oversize": sum(1 for item in largest if item["bytes"] > LIMIT), "largest": largest,
            "unsupported_folders": unsupported or [], "empty_folders": empty or [], "estimated_seconds": seconds}


def big(folder: str, uid: int, size: int, date: str) -> dict[str, Any]:
    return {"folder": folder, "id": f"{folder}:1700000000:{uid}", "bytes": size, "date": date}


def fixture() -> dict[str, Any]:
    """A realistic discovery: five mailboxes (one empty, non-ASCII names, a hostile folder name), 18 years,
    six size bands, three batches (one longer than its window, one without a window), two domains."""
    mailboxes = [
        mailbox("alice@old.example", "alice@new.example", group="finance", priority=10, messages=48_210,
                size=6_214_000_000, folders=42, oldest="2009-03-14T08:12:00+00:00", newest="2026-11-27T17:55:02+00:00",
                largest=[big("INBOX", 48_211, 52_428_800, "2024-02-02T10:00:00+00:00"),
                         big("Archive/2019", 913, 41_000_000, "2019-06-30T09:30:00+00:00"),
                         big("Sent", 77, 30_100_000, "2023-01-15T12:00:00+00:00")],
                unsupported=[{"folder": "Calendar", "reason": "not a mail folder (calendar items)"}],
                empty=["Drafts.old"], seconds=6_215),
        mailbox("björn.müller@old.example", "bjorn.muller@new.example", group="finance", priority=10,
                messages=12_004, size=1_830_500_000, folders=17, oldest="2015-01-02T00:00:00+01:00",
                newest="2026-11-28T09:14:00+01:00",
                largest=[big("Entwürfe", 12, 12_500_000, "2021-12-24T18:00:00+01:00")],
                unsupported=[{"folder": SCRIPT_FOLDER, "reason": "name contains characters the target refuses: < >"}],
                empty=["Projekte/Überblick", "Notizen & Ideen"], seconds=1_831),
        mailbox("archive@old.example", "archive@new.example", priority=1, messages=90_000, size=31_000_000_000,
                folders=120, oldest="2003-07-01T00:00:00+00:00", newest="2026-11-28T06:00:00+00:00",
                largest=[big("2011", 4, 18_000_000, "2011-04-01T00:00:00+00:00")], seconds=31_000),
        mailbox("zhang.wei@old.example", "张伟@new.example", messages=3_301, size=402_000_000, folders=9,
                oldest="2020-05-05T02:00:00+08:00", newest="2026-11-20T11:00:00+08:00",
                largest=[big("收件箱/项目", 5, 9_800_000, "2022-08-08T08:08:00+08:00")], seconds=403),
        mailbox("shared-sales@old.example", "sales@new.example", priority=-1, folders=1, seconds=1),
    ]
    years = [{"year": y, "messages": 500 * (y - 2002) ** 2, "bytes": 90 * MB * (y - 2002) ** 2}
             for y in range(2003, 2027)]
    labels = ["<10 KB", "10-100 KB", "100 KB-1 MB", "1-10 MB", "10-35 MB", ">35 MB"]
    counts = [61_000, 70_250, 19_800, 2_400, 63, 2]
    sizes = [310 * MB, 3_290 * MB, 13_600 * MB, 21_950 * MB, 202 * MB, 93 * MB]
    buckets = [{"label": la, "messages": c, "bytes": s} for la, c, s in zip(labels, counts, sizes, strict=True)]
    largest = sorted(({"mailbox": m["source"], **item} for m in mailboxes for item in m["largest"]),
                     key=lambda item: -item["bytes"])
    plan = [("B01", "Sat 22:00-Sun 06:00", "2026-12-05T22:00:00+01:00", mailboxes[:2]),
            ("B02", "Sat 22:00-Sun 06:00", "2026-12-12T22:00:00+01:00", mailboxes[2:3]),
            ("B03", None, None, mailboxes[3:])]
    batches = [{"id": id_, "window": window, "start": start, "mailboxes": len(members),
                "messages": sum(m["messages"] for m in members), "bytes": sum(m["bytes"] for m in members),
                "seconds": sum(m["estimated_seconds"] for m in members)} for id_, window, start, members in plan]
    return {
        "schema": SCHEMA,
        "generated_at": "2026-11-28T18:00:00+00:00",
        "source": "imap://imap.old.example:993",
        "target": "imap://imap.new.example:993",
        "target_max_message_size": LIMIT,
        "totals": {"mailboxes": len(mailboxes), "folders": sum(m["folders"] for m in mailboxes),
                   "messages": sum(m["messages"] for m in mailboxes), "bytes": sum(m["bytes"] for m in mailboxes),
                   "oversize": sum(m["oversize"] for m in mailboxes),
                   "unsupported_folders": sum(len(m["unsupported_folders"]) for m in mailboxes),
                   "empty_folders": sum(len(m["empty_folders"]) for m in mailboxes)},
        "mailboxes": mailboxes,
        "years": years,
        "size_buckets": buckets,
        "largest": largest,
        "dependencies": [
            {"kind": "group", "source": "alice@old.example", "target": "björn.müller@old.example"},
            {"kind": "delegate", "source": "zhang.wei@old.example", "target": "alice@old.example"},
            {"kind": "shared-mailbox", "source": "shared-sales@old.example", "target": "alice@old.example"},
            {"kind": "forward", "source": "björn.müller@old.example", "target": "b.mueller@elsewhere.example"},
        ],
        "auto_replies": [{"mailbox": "zhang.wei@old.example",
                          "note": "automatic replies are on; they keep answering from the source until cutover"}],
        "batches": batches,
        "dns": [
            {"domain": "old.example", "mx": [[10, "mx1.old.example"], [20, "mx2.old.example"]], "mx_ttl": 3600,
             "spf": "v=spf1 mx include:_spf.old.example -all",
             "autodiscover": "https://autodiscover.old.example/autodiscover/autodiscover.xml",
             "findings": [{"level": "ok", "message": "MX points at the source system"},
                          {"level": "warn", "message": "MX TTL is 1 h: lower it to 5 min two days before cutover"}]},
            {"domain": "new.example", "mx": [], "mx_ttl": None, "spf": None, "autodiscover": None,
             "findings": [{"level": "error", "message": "no MX record: mail to new.example bounces"}]},
        ],
        "warnings": ["2 messages are larger than the target's limit (36.7 MB) and will not be copied",
                     "alice@old.example: folder 'Calendar' is not a mail folder and is skipped",
                     "Tom & Jerry <ops@old.example> has no password in mailboxes.csv"],
    }


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


class TagBalance(HTMLParser):
    """Records the tags and checks that every element but the void ones is closed, in order."""

    VOID = frozenset({"meta", "br"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")


def parse(page: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(page)
    parser.close()
    return parser


# --- JSON ------------------------------------------------------------------------------------------------

def test_json_round_trips_sorted_and_deterministic() -> None:
    data = fixture()
    text = render_json(data)
    assert json.loads(text) == data
    assert text.endswith("}\n") and '\n  "batches": [' in text
    top = [line.split('"')[1] for line in text.splitlines() if re.match(r'^  "', line)]
    assert top == sorted(data)
    assert "björn.müller@old.example" in text and "张伟@new.example" in text  # UTF-8, not \\u escapes
    shuffled = dict(reversed(list(copy.deepcopy(data).items())))
    shuffled["totals"] = dict(reversed(list(shuffled["totals"].items())))
    assert render_json(shuffled) == text


# --- CSV -------------------------------------------------------------------------------------------------

def test_csv_has_a_header_and_one_row_per_mailbox() -> None:
    data = fixture()
    rows = list(csv.reader(io.StringIO(render_csv(data), newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == 1 + len(data["mailboxes"])
    parsed = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["source"] for r in parsed] == [m["source"] for m in data["mailboxes"]]
    bjorn = parsed[1]
    assert bjorn["target"] == "bjorn.muller@new.example" and bjorn["group"] == "finance"
    assert (bjorn["messages"], bjorn["bytes"], bjorn["folders"]) == ("12004", "1830500000", "17")
    assert (bjorn["unsupported_folders"], bjorn["empty_folders"], bjorn["estimated_seconds"]) == ("1", "2", "1831")
    assert parsed[0]["oversize"] == "2" and parsed[0]["oldest"] == "2009-03-14T08:12:00+00:00"
    empty = parsed[4]
    assert (empty["group"], empty["oldest"], empty["newest"], empty["priority"]) == ("", "", "", "-1")
    assert parsed[3]["target"] == "张伟@new.example"


def test_csv_of_no_mailboxes_is_just_the_header() -> None:
    data = fixture() | {"mailboxes": []}
    assert render_csv(data) == ",".join(CSV_COLUMNS) + "\r\n"


# --- HTML ------------------------------------------------------------------------------------------------

def test_html_has_charts_tables_and_figures() -> None:
    data = fixture()
    page = render_html(data)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 5  # messages and volume by size band and by year, the batch timeline
    for title in ("Messages by message size", "Volume by message size", "Messages per year", "Volume per year",
                  "Batch timeline"):
        assert f'aria-label="{title}' in page
    for section in ("warnings", "charts", "mailboxes", "largest", "issues", "dependencies", "auto-replies", "dns",
                    "batches"):
        assert f'<section id="{section}"' in page
    assert page.count("<table") == 7
    assert "imap://imap.old.example:993" in page and "2026-11-28 18:00 UTC" in page
    assert human_size(data["totals"]["bytes"]) == "39.4 GB" and "39.4 GB" in page
    assert human_count(data["totals"]["messages"]) in page
    assert "1 h 44 min" in page and "10 h 58 min" in page  # alice's estimate, the total
    assert "Warnings (3)" in page
    # B02 is estimated at 8 h 37 min in an 8 h window: flagged in the timeline and the table
    assert "over the window by 37 min" in page and "over by 37 min" in page
    assert "2026-12-06 00:14 +01:00" in page  # B01's ETA: start + 2 h 14 min
    for level in ("ok", "warn", "error"):
        assert f'<span class="badge {level}">{level}</span>' in page
    assert '<br><span class="nowrap">20 mx2.old.example</span>' in page
    assert "over limit" in page  # the 52 MB message in the largest table


def test_html_escapes_every_piece_of_user_data() -> None:
    data = fixture()
    page = render_html(data)
    assert "<script" not in page.lower()
    assert escape(SCRIPT_FOLDER) in page
    assert "Tom &amp; Jerry &lt;ops@old.example&gt;" in page
    assert "Notizen &amp; Ideen" in page
    assert "&lt;10 KB" in page and "&gt;35 MB" in page
    for text in strings(data):
        assert escape(text) in page or re.match(r"\d{4}-\d\d-\d\dT", text), text  # dates are shown reformatted
    for name in ("björn.müller@old.example", "张伟@new.example", "收件箱/项目", "Projekte/Überblick"):
        assert name in page
    balance = parse(page)
    assert balance.errors == [] and balance.stack == []
    assert "script" not in balance.tags


def test_html_is_self_contained() -> None:
    data = fixture()
    page = render_html(data)
    for text in sorted(strings(data), key=len, reverse=True):  # user data may hold URLs: take it out first
        page = page.replace(escape(text), "")
    lowered = page.lower()
    for needle in ("http://", "https://", "//cdn", "src=", "href=", "url(", "@import", "<link", "<script",
                   "xmlns", "<img", "<iframe"):
        assert needle not in lowered, needle


def test_html_without_plan_or_data_still_renders() -> None:
    data = fixture() | {"mailboxes": [], "years": [], "size_buckets": [], "largest": [], "dependencies": [],
                        "auto_replies": [], "batches": [], "dns": [], "warnings": [], "target_max_message_size": None}
    data["totals"] = dict.fromkeys(data["totals"], 0)
    page = render_html(data)
    assert page.count("<svg") == 4 and "Batch timeline" not in page
    assert page.count("No data") == 4
    assert "No warnings." in page and "No plan was given" in page and "not reported" in page
    assert "<table" not in page
    balance = parse(page)
    assert balance.errors == [] and balance.stack == []


def test_renderers_do_not_change_their_input() -> None:
    data = fixture()
    before = copy.deepcopy(data)
    render_html(data), render_csv(data), render_json(data)
    assert data == before
    assert render_html(data) == render_html(copy.deepcopy(data))


# --- bad data --------------------------------------------------------------------------------------------

def _without(key: str) -> dict[str, Any]:
    data = fixture()
    del data[key]
    return data


def _bad_mailbox() -> dict[str, Any]:
    data = fixture()
    del data["mailboxes"][2]["bytes"]
    return data


BAD = [
    pytest.param(_without("totals"), "missing totals", id="missing-key"),
    pytest.param(_without("schema"), "missing schema", id="missing-schema"),
    pytest.param(fixture() | {"schema": "migrator.discovery/1"}, "schema 'migrator.discovery/1'", id="wrong-schema"),
    pytest.param(fixture() | {"extra": 1}, "unknown keys extra", id="unknown-key"),
    pytest.param(fixture() | {"mailboxes": {"a": 1}}, "mailboxes must be a list", id="not-a-list"),
    pytest.param(_bad_mailbox(), "mailboxes[2] is missing bytes", id="entry-missing-key"),
    pytest.param(fixture() | {"totals": {"mailboxes": 1}}, "totals is missing folders", id="short-totals"),
    pytest.param([1, 2], "must be a mapping, not list", id="not-a-mapping"),
]


@pytest.mark.parametrize("render", [render_json, render_csv, render_html], ids=["json", "csv", "html"])
@pytest.mark.parametrize(("data", "message"), BAD)
def test_malformed_data_is_a_user_error(render: Any, data: Any, message: str) -> None:
    with pytest.raises(UserError) as caught:
        render(data)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# --- formatting ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (LIMIT, "36.7 MB"),
                                            (999_960, "1.0 MB"), (6_214_000_000, "6.2 GB"), (2 * 10**12, "2.0 TB")])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (45, "45 s"), (60, "1 min"), (3599, "1 h 00 min"),
                                               (3600, "1 h 00 min"), (7500, "2 h 05 min"),
                                               (100_000, "1 d 03 h 47 min")])
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_human_datetime() -> None:
    assert human_datetime("2026-11-28T18:00:00+00:00") == "2026-11-28 18:00 UTC"
    assert human_datetime("2026-11-28T18:00:00+05:30") == "2026-11-28 18:00 +05:30"
    assert human_datetime("2026-11-28T18:00:00") == "2026-11-28 18:00"
    assert human_datetime("2026-11-28T18:00:00Z", with_time=False) == "2026-11-28"
    assert human_datetime("next Saturday") == "next Saturday"
    assert human_datetime(None) == "\u2014"


@pytest.mark.parametrize(("window", "seconds"), [("Sat 22:00-Sun 06:00", 8 * 3600), ("22:00-06:00", 8 * 3600),
                                                 ("Fri 18:00 - Mon 07:30", (61 * 60 + 30) * 60),
                                                 ("09:00-17:00", 8 * 3600), ("Sunday 00:00-Sunday 00:00", 7 * 86400),
                                                 ("whenever", None), ("25:00-26:00", None), (None, None),
                                                 ("Xyz 10:00-Sun 11:00", None)])
def test_window_seconds(window: str | None, seconds: int | None) -> None:
    assert window_seconds(window) == seconds


def test_nice_ticks() -> None:
    assert nice_ticks(93) == [0, 25, 50, 75, 100]
    assert nice_ticks(8_044_500_000)[-1] >= 8_044_500_000
    assert nice_ticks(31_000, 6, [60, 3600, 7200])[-1] == 36_000
    assert nice_ticks(0) == [0.0, 1.0]
