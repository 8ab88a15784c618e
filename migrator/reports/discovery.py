"""The discovery report (`migrator report discovery --format html|json|csv`): pure renderers of its data.

The data is a plain dict of schema `migrator.discovery/2`, documented field by field in
docs/report-discovery.md. Every renderer checks its shape first and raises UserError (one line) when it
is wrong, so that a bad collector or a hand-edited file never yields a half-written report.

- `render_json`: the data itself, pretty and key-sorted, so that two runs on the same source diff cleanly.
- `render_csv`: one row per mailbox, for spreadsheets.
- `render_html`: one self-contained page (inline CSS and SVG, no scripts, no external resources) that a
  migration engineer can hand to a customer or print.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from html import escape
from typing import Any

from migrator.errors import UserError
from migrator.planning.windows import parse_window
from migrator.reports import human_count, human_datetime, human_duration, human_size, parse_datetime
from migrator.reports.svg import BarPoint, TimelineRow, bar_chart, timeline

__all__ = ["CSV_COLUMNS", "SCHEMA", "render_csv", "render_html", "render_json", "validate", "window_seconds"]

SCHEMA = "migrator.discovery/2"

TOTAL_KEYS = ("mailboxes", "folders", "messages", "bytes", "oversize", "unsupported_folders", "empty_folders")
# Top-level key -> the keys every entry of that list (or the mapping itself, for totals) must have.
SHAPE: dict[str, tuple[str, ...] | None] = {
    "schema": None, "generated_at": None, "source": None, "target": None, "target_max_message_size": None,
    "totals": TOTAL_KEYS,
    "mailboxes": ("source", "target", "group", "priority", "messages", "bytes", "folders", "oldest", "newest",
                  "oversize", "largest", "unsupported_folders", "empty_folders", "estimated_seconds"),
    "years": ("year", "messages", "bytes"),
    "size_buckets": ("label", "messages", "bytes"),
    "largest": ("mailbox", "folder", "id", "bytes", "date"),
    "dependencies": ("kind", "source", "target"),
    "auto_replies": ("mailbox", "note"),
    "batches": ("id", "window", "start", "mailboxes", "messages", "bytes", "seconds"),
    "dns": ("domain", "mx", "mx_ttl", "spf", "autodiscover", "findings"),
    "warnings": (),
}

CSV_COLUMNS = ("source", "target", "group", "priority", "messages", "bytes", "folders", "oldest", "newest",
               "oversize", "unsupported_folders", "empty_folders", "estimated_seconds")

MESSAGES_COLOUR, BYTES_COLOUR, BATCH_COLOUR, OVER_COLOUR = "#2f6fca", "#138a7f", "#2f6fca", "#c0392b"
DASH = "\u2014"


def validate(data: Any) -> None:
    """Raise UserError (one line) unless `data` has exactly the top-level keys of the schema, the right
    schema string, a totals mapping and lists whose entries have their keys."""
    if not isinstance(data, Mapping):
        raise UserError(f"discovery report data must be a mapping, not {type(data).__name__}")
    if "schema" in data and data["schema"] != SCHEMA:
        raise UserError(f"discovery report data has schema {data['schema']!r}; this migrator renders {SCHEMA!r}")
    missing, unknown = sorted(set(SHAPE) - set(data)), sorted(str(k) for k in set(data) - set(SHAPE))
    if missing:
        raise UserError(f"discovery report data is missing {', '.join(missing)} (schema {SCHEMA})")
    if unknown:
        raise UserError(f"discovery report data has unknown keys {', '.join(unknown)} (schema {SCHEMA})")
    for key, keys in SHAPE.items():
        if keys is None:
            continue
        if key == "totals":
            entries: Iterable[tuple[str, Any]] = [("totals", data[key])]
        elif isinstance(data[key], list | tuple):
            entries = ((f"{key}[{i}]", entry) for i, entry in enumerate(data[key]))
        else:
            raise UserError(f"discovery report data: {key} must be a list, not {type(data[key]).__name__}")
        for where, entry in entries:
            if not keys:
                continue
            if not isinstance(entry, Mapping):
                raise UserError(f"discovery report data: {where} must be a mapping, not {type(entry).__name__}")
            absent = [k for k in keys if k not in entry]
            if absent:
                raise UserError(f"discovery report data: {where} is missing {', '.join(absent)}")


def render_json(data: Mapping[str, Any]) -> str:
    """The data as pretty, key-sorted JSON (UTF-8 text, not ASCII-escaped), ending with a newline."""
    validate(data)
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_csv(data: Mapping[str, Any]) -> str:
    """One row per mailbox under a header row (CSV_COLUMNS); folder lists become counts, nulls empty cells."""
    validate(data)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for box in data["mailboxes"]:
        row = {key: box[key] for key in CSV_COLUMNS}
        row["unsupported_folders"] = len(box["unsupported_folders"])
        row["empty_folders"] = len(box["empty_folders"])
        writer.writerow("" if row[key] is None else row[key] for key in CSV_COLUMNS)
    return out.getvalue()


# --- batch windows ---------------------------------------------------------------------------------------



def window_seconds(window: str | None) -> int | None:
    """The length of a batch window such as `Sat 22:00-Sun 06:00` (8 h) or `22:00-06:00`; None if unparsable."""
    try:
        return parse_window(window).seconds if window else None
    except UserError:
        return None


# --- HTML ------------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    """Any value as escaped text; None as an em dash."""
    return DASH if value is None else escape(str(value))


def _nowrap(value: Any) -> str:
    return f'<span class="nowrap">{_e(value)}</span>'


def _n(value: int) -> str:
    return escape(human_count(value))


def _short_count(value: float) -> str:
    if value < 10_000:
        return f"{value:,.0f}"
    if value < 1_000_000:
        return f"{value / 1000:.1f}".removesuffix(".0") + "k"
    return f"{value / 1_000_000:.1f}".removesuffix(".0") + "M"


def _short_size(value: float) -> str:
    return human_size(value).replace(".0 ", " ")


def _axis_duration(seconds: float) -> str:
    if not seconds:
        return "0"
    if seconds % 86400 == 0:
        return f"{seconds / 86400:.0f} d"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    return human_duration(seconds)


def _badge(level: str, text: str | None = None) -> str:
    css = level if level in ("ok", "warn", "error") else "info"
    return f'<span class="badge {css}">{_e(level if text is None else text)}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str, css: str = "",
           foot: Sequence[str] | None = None) -> str:
    """A table of already-escaped cells; a header starting with '#' is a right-aligned number column."""
    if not rows:
        return f'<p class="none">{escape(empty)}</p>'
    nums = [h.startswith("#") for h in headers]
    def cells(values: Sequence[str], tag: str) -> str:
        return "".join(f'<{tag} class="num">{v}</{tag}>' if num else f"<{tag}>{v}</{tag}>"
                       for v, num in zip(values, nums, strict=True))
    head = cells([escape(h.removeprefix("#")) for h in headers], "th")
    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    tail = f"<tfoot><tr>{cells(foot, 'td')}</tr></tfoot>" if foot else ""
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>{tail}</table>'


def _section(anchor: str, title: str, body: str, note: str = "") -> str:
    lead = f'<p class="lead">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{lead}{body}</section>'


def _header(data: Mapping[str, Any]) -> str:
    limit = data["target_max_message_size"]
    meta = [("Source", _e(data["source"])), ("Target", _e(data["target"])),
            ("Generated", _e(human_datetime(data["generated_at"]))),
            ("Target message size limit", _e(human_size(limit)) if limit is not None else "not reported")]
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)
    return ('<header class="report"><p class="kicker">Mail migration &middot; pre-migration assessment</p>'
            '<h1>Discovery report</h1><p class="subtitle">A dry run: the source was read, the target was only '
            f'asked for its limits, and nothing was written to it.</p><dl class="meta">{rows}</dl></header>')


def _totals(data: Mapping[str, Any]) -> str:
    t = data["totals"]
    seconds = sum(b["seconds"] for b in data["batches"]) or sum(m["estimated_seconds"] for m in data["mailboxes"])
    cards = [("Mailboxes", _n(t["mailboxes"]), False), ("Folders", _n(t["folders"]), False),
             ("Messages", _n(t["messages"]), False), ("Volume", _e(human_size(t["bytes"])), False),
             ("Oversize messages", _n(t["oversize"]), t["oversize"] > 0),
             ("Unsupported folders", _n(t["unsupported_folders"]), t["unsupported_folders"] > 0),
             ("Empty folders", _n(t["empty_folders"]), False),
             ("Estimated copy time", _e(human_duration(seconds)), False)]
    items = "".join(f'<li class="{"attn" if attn else ""}"><span class="n">{value}</span>'
                    f'<span class="k">{label}</span></li>' for label, value, attn in cards)
    return f'<ul class="totals" aria-label="Totals">{items}</ul>'


def _warnings(data: Mapping[str, Any]) -> str:
    warnings = data["warnings"]
    if not warnings:
        return '<section id="warnings" class="callout ok"><h2>Warnings</h2><p>No warnings.</p></section>'
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return (f'<section id="warnings" class="callout warn"><h2>Warnings ({len(warnings)})</h2>'
            f'<p>Read these before planning the migration.</p><ul>{items}</ul></section>')


def _charts(data: Mapping[str, Any]) -> str:
    def pair(points: Sequence[Mapping[str, Any]], label_key: str, what: str) -> str:
        messages = [BarPoint(str(p[label_key]), p["messages"]) for p in points]
        volume = [BarPoint(str(p[label_key]), p["bytes"]) for p in points]
        return (bar_chart(messages, title=f"Messages {what}", fmt=_short_count, exact=lambda v: human_count(int(v)),
                          color=MESSAGES_COLOUR, width=520)
                + bar_chart(volume, title=f"Volume {what}", fmt=_short_size, exact=human_size, color=BYTES_COLOUR,
                            width=520))
    out = [f'<figure><div class="pair">{pair(data["size_buckets"], "label", "by message size")}</div>'
           '<figcaption>Size distribution: how many messages fall in each size band, and how much volume '
           'they carry.</figcaption></figure>',
           f'<figure><div class="pair">{pair(data["years"], "year", "per year")}</div>'
           '<figcaption>Volume per year, by the messages&rsquo; dates.</figcaption></figure>']
    if data["batches"]:
        rows = []
        for batch in data["batches"]:
            limit = window_seconds(batch["window"])
            text = human_duration(batch["seconds"]) + (f" \u00b7 {batch['window']}" if batch["window"] else "")
            if limit is not None and batch["seconds"] > limit:
                text += f" \u00b7 over the window by {human_duration(batch['seconds'] - limit)}"
            rows.append(TimelineRow(str(batch["id"]), batch["seconds"], text, limit,
                                    f"{batch['id']}: {human_count(batch['mailboxes'])} mailboxes, "
                                    f"{human_size(batch['bytes'])}, {human_duration(batch['seconds'])}"))
        chart = timeline(rows, title="Batch timeline (estimated duration)", fmt_axis=_axis_duration,
                         color=BATCH_COLOUR, over_color=OVER_COLOUR, width=1100)
        legend = (" A dashed line marks the length of the batch&rsquo;s window; a red bar does not fit in it."
                  if any(r.limit_seconds is not None for r in rows) else "")
        out.append(f"<figure>{chart}<figcaption>Each bar is one batch of the plan, its length the estimated "
                   f"copy time at the configured throttle.{legend}</figcaption></figure>")
    return _section("charts", "Overview", "".join(out))


def _mailboxes(data: Mapping[str, Any]) -> str:
    rows = []
    for m in data["mailboxes"]:
        dates = (f'<span class="nowrap">{_e(human_datetime(m["oldest"], with_time=False))} &ndash;</span> '
                 f'<span class="nowrap">{_e(human_datetime(m["newest"], with_time=False))}</span>'
                 if m["oldest"] or m["newest"] else DASH)
        names = f'<span class="src">{_e(m["source"])}</span><span class="tgt">&rarr;&nbsp;{_e(m["target"])}</span>'
        rows.append([names, _e(m["group"]), _n(m["priority"]), _n(m["messages"]),
                     _e(human_size(m["bytes"])), _n(m["folders"]), dates,
                     _n(m["oversize"]), _n(len(m["unsupported_folders"])), _n(len(m["empty_folders"])),
                     _e(human_duration(m["estimated_seconds"]))])
    t = data["totals"]
    foot = [_nowrap(f"Total ({len(rows)})"), "", "", _n(t["messages"]), _e(human_size(t["bytes"])),
            _n(t["folders"]), "", _n(t["oversize"]), _n(t["unsupported_folders"]), _n(t["empty_folders"]),
            _e(human_duration(sum(m["estimated_seconds"] for m in data["mailboxes"])))]
    headers = ["Source \u2192 target", "Group", "#Priority", "#Messages", "#Size", "#Folders", "Dates", "#Oversize",
               "#Unsupported", "#Empty", "#Est. time"]
    return _section("mailboxes", f"Mailboxes ({len(rows)})",
                    _table(headers, rows, empty="No mailboxes.", css="addr mailboxes", foot=foot if rows else None))


def _largest(data: Mapping[str, Any]) -> str:
    limit = data["target_max_message_size"]
    rows = []
    for rank, item in enumerate(data["largest"], start=1):
        over = limit is not None and item["bytes"] > limit
        size = _e(human_size(item["bytes"])) + (' <span class="badge error">over limit</span>' if over else "")
        rows.append([_n(rank), _e(item["mailbox"]), _e(item["folder"]), size,
                     _e(human_datetime(item["date"], with_time=False)), f'<code>{_e(item["id"])}</code>'])
    note = f"Messages above the target&rsquo;s limit of {_e(human_size(limit))} cannot be copied." if limit else ""
    return _section("largest", "Largest messages",
                    _table(["##", "Mailbox", "Folder", "#Size", "Date", "Message id"], rows, empty="No messages.",
                           css="addr"), note)


def _issues(data: Mapping[str, Any]) -> str:
    limit = data["target_max_message_size"]
    rows = []
    for m in data["mailboxes"]:
        if m["oversize"]:
            rows.append([_e(m["source"]), _badge("error") + " Oversize", DASH,
                         f"{_n(m['oversize'])} messages above {_e(human_size(limit)) if limit else 'the limit'}"])
            for item in m["largest"]:
                if limit is not None and item["bytes"] > limit:
                    rows.append([_e(m["source"]), "Oversize message", _e(item["folder"]),
                                 f"{_e(human_size(item['bytes']))}, "
                                 f"{_e(human_datetime(item['date'], with_time=False))}, "
                                 f"id <code>{_e(item['id'])}</code>"])
        for folder in m["unsupported_folders"]:
            rows.append([_e(m["source"]), _badge("warn") + " Unsupported folder", _e(folder["folder"]),
                         _e(folder["reason"])])
        for name in m["empty_folders"]:
            rows.append([_e(m["source"]), _badge("info") + " Empty folder", _e(name), "no messages"])
    return _section("issues", "Oversize messages and folder issues",
                    _table(["Mailbox", "Issue", "Folder", "Detail"], rows, empty="None found.", css="addr"))


def _dependencies(data: Mapping[str, Any]) -> str:
    rows = [[_badge(str(d["kind"])), _e(d["source"]), _e(d["target"])] for d in data["dependencies"]]
    note = ("Mailboxes linked by a group, a delegation or a shared mailbox move together; a forward does not bind "
            "(forwards come from the dependency file and, where the source can tell, from its inbox rules).")
    return _section("dependencies", "Dependencies",
                    _table(["Kind", "Source", "Target"], rows, empty="No dependencies found.", css="addr"),
                    note if rows else "")


def _auto_replies(data: Mapping[str, Any]) -> str:
    rows = [[_e(a["mailbox"]), _e(a["note"])] for a in data["auto_replies"]]
    note = ("Automatic replies read from the source mailboxes: they keep answering there until cutover; set "
            "them again on the target.")
    return _section("auto-replies", "Automatic replies",
                    _table(["Mailbox", "Note"], rows, empty="None found (an IMAP source cannot tell).", css="addr"),
                    note if rows else "")


def _dns(data: Mapping[str, Any]) -> str:
    rows = []
    for d in data["dns"]:
        mx = "<br>".join(f'<span class="nowrap">{_e(pref)} {_e(host)}</span>' for pref, host in d["mx"]) or DASH
        ttl = _e(human_duration(d["mx_ttl"])) if d["mx_ttl"] is not None else DASH
        findings = "".join(f'<li>{_badge(str(f["level"]))} {_e(f["message"])}</li>' for f in d["findings"])
        rows.append([f"<strong>{_e(d['domain'])}</strong>", mx, ttl, f'<code class="long">{_e(d["spf"])}</code>'
                     if d["spf"] else DASH, f'<span class="long">{_e(d["autodiscover"])}</span>',
                     f'<ul class="findings">{findings}</ul>' if findings else DASH])
    return _section("dns", "DNS", _table(["Domain", "MX", "#MX TTL", "SPF", "Autodiscover", "Findings"], rows,
                                          empty="No domains checked.", css="addr dns"))


def _batches(data: Mapping[str, Any]) -> str:
    rows = []
    for b in data["batches"]:
        start, limit = parse_datetime(b["start"]), window_seconds(b["window"])
        eta = DASH if start is None else _nowrap(human_datetime((start + timedelta(seconds=b["seconds"])).isoformat()))
        fits = DASH if limit is None else (_badge("ok", "yes") if b["seconds"] <= limit else _badge("error", "no")
                                           + f" over by {_e(human_duration(b['seconds'] - limit))}")
        rows.append([f"<strong>{_e(b['id'])}</strong>", _nowrap(b["window"]),
                     _nowrap(human_datetime(b["start"])),
                     _n(b["mailboxes"]), _n(b["messages"]), _e(human_size(b["bytes"])),
                     _e(human_duration(b["seconds"])), eta, fits])
    batches = data["batches"]
    foot = [_nowrap(f"Total ({len(rows)})"), "", "", _n(sum(b["mailboxes"] for b in batches)),
            _n(sum(b["messages"] for b in batches)), _e(human_size(sum(b["bytes"] for b in batches))),
            _e(human_duration(sum(b["seconds"] for b in batches))), "", ""]
    headers = ["Batch", "Window", "Start", "#Mailboxes", "#Messages", "#Size", "#Duration", "ETA (finish)",
               "Fits window"]
    return _section("batches", "Batches", _table(headers, rows, empty="No plan was given: no batches.",
                                                 foot=foot if rows else None),
                    "Estimated at the configured throttle; the ETA is the start plus the estimate." if rows else "")


CSS = """
:root{--ink:#18212d;--muted:#5a6574;--line:#dce1e7;--soft:#f3f5f8;--accent:#2f6fca;--warn:#8f5600;
--warn-bg:#fff5de;--warn-line:#efc46b;--err:#b42318;--err-bg:#fde9e7;--ok:#137333;--ok-bg:#e4f4e8;
--info:#3d4b5c;--info-bg:#e9edf2}
*{box-sizing:border-box}
html{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{margin:0;background:#fff;color:var(--ink);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:36px 40px 48px}
header.report{border-bottom:3px solid var(--accent);padding-bottom:18px;margin-bottom:22px}
.kicker{margin:0;color:var(--accent);font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.08em}
h1{font-size:28px;line-height:1.2;margin:2px 0 4px;letter-spacing:-.01em}
.subtitle{margin:0 0 14px;color:var(--muted)}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:0}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;font-weight:600;overflow-wrap:anywhere}
h2{font-size:19px;margin:34px 0 10px;padding-bottom:5px;border-bottom:1px solid var(--line)}
.lead{margin:-4px 0 10px;color:var(--muted)}
.totals{display:grid;grid-template-columns:repeat(auto-fit,minmax(128px,1fr));gap:10px;margin:0;padding:0;
list-style:none}
.totals li{background:var(--soft);border-left:4px solid var(--accent);border-radius:6px;padding:10px 14px}
.totals li.attn{background:var(--warn-bg);border-left-color:var(--warn)}
.totals .n{display:block;font-size:22px;font-weight:650;font-variant-numeric:tabular-nums;white-space:nowrap}
.totals .k{color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.05em}
.callout{margin:22px 0 0;padding:12px 18px;border-radius:6px}
.callout h2{margin:0 0 4px;padding:0;border:0;font-size:17px}
.callout p{margin:0 0 4px}.callout ul{margin:6px 0 2px;padding-left:20px}.callout li{margin:3px 0}
.callout.warn{background:var(--warn-bg);border:1px solid var(--warn-line);border-left:6px solid var(--warn)}
.callout.warn h2{color:var(--warn)}
.callout.ok{background:var(--ok-bg);border-left:6px solid var(--ok)}.callout.ok h2{color:var(--ok)}
figure{margin:0 0 22px}
figure .pair{display:flex;flex-wrap:wrap;gap:8px 36px}
figcaption{color:var(--muted);font-size:12.5px;margin-top:4px}
svg.chart{max-width:100%;height:auto;font-size:11px;font-family:inherit;overflow:visible}
svg .chart-title{font-size:13px;font-weight:600;fill:var(--ink)}
svg .tick,svg .category,svg .note{fill:var(--muted)}
svg .value{fill:var(--ink);paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
svg .grid{stroke:#e7eaef}svg .axis{stroke:#98a2ae}
svg .limit{stroke:var(--err);stroke-width:1.5;stroke-dasharray:3 3}
table{width:100%;border-collapse:collapse;font-size:13px}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:var(--soft);border-bottom:2px solid var(--line);color:var(--muted);font-size:11.5px;
font-weight:600;text-transform:uppercase;letter-spacing:.04em;vertical-align:bottom}
tbody tr:nth-child(even){background:#fafbfc}
tfoot td{border-top:2px solid var(--line);border-bottom:0;font-weight:650}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.addr td{overflow-wrap:break-word}
table.mailboxes .src,table.mailboxes .tgt{display:block}table.mailboxes .tgt{color:var(--muted);font-size:12px}
.long{overflow-wrap:anywhere}table.dns td:last-child{min-width:300px}
.nowrap{white-space:nowrap}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12px}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:10.5px;font-weight:700;line-height:17px;
text-transform:uppercase;letter-spacing:.04em;white-space:nowrap;vertical-align:1px}
.badge.ok{color:var(--ok);background:var(--ok-bg)}.badge.warn{color:var(--warn);background:var(--warn-bg)}
.badge.error{color:var(--err);background:var(--err-bg)}.badge.info{color:var(--info);background:var(--info-bg)}
ul.findings{margin:0;padding:0;list-style:none}ul.findings li{margin:0 0 3px}
.none{color:var(--muted);font-style:italic}
footer{margin-top:40px;padding-top:10px;border-top:1px solid var(--line);color:var(--muted);font-size:12px}
@page{margin:12mm}
@media print{body{font-size:10pt}main{max-width:none;padding:0}h2{break-after:avoid}
tr,figure,.callout,.totals li{break-inside:avoid}thead{display:table-header-group}
tbody tr:nth-child(even){background:none}}
"""


def render_html(data: Mapping[str, Any]) -> str:
    """One self-contained HTML page: header, totals, warnings, charts, then the tables."""
    validate(data)
    title = f"Discovery report \u00b7 {data['source']} \u2192 {data['target']}"
    body = "".join([_header(data), _totals(data), _warnings(data), _charts(data), _mailboxes(data),
                    _largest(data), _issues(data), _dependencies(data), _auto_replies(data), _dns(data),
                    _batches(data)])
    footer = (f"<footer>Generated by migrator on {_e(human_datetime(data['generated_at']))} &middot; schema "
              f"<code>{_e(data['schema'])}</code> &middot; sizes in decimal units (1 MB = 1,000,000 bytes)</footer>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>{body}{footer}</main></body></html>\n")
