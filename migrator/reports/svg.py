"""Chart primitives for the HTML reports: inline SVG strings, drawn here, with no scripts and no external resources.

Every function takes plain labels and numbers and returns one `<svg>` element (HTML5 inline SVG: no xmlns,
no links). Labels are escaped here; the page styles the text through the class names `chart-title`, `tick`,
`category`, `value` and `note`. Each bar carries a `<title>` so that a browser shows its exact value on hover.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["BarPoint", "TimelineRow", "bar_chart", "nice_ticks", "timeline"]

CHAR_WIDTH = 6.6  # average advance of a 11px sans-serif character, to keep labels from colliding


@dataclass(frozen=True)
class BarPoint:
    label: str
    value: float


@dataclass(frozen=True)
class TimelineRow:
    label: str
    seconds: float
    text: str  # shown after the bar (duration, window)
    limit_seconds: float | None = None  # a marker at this length (e.g. the batch window); a longer bar is flagged
    tooltip: str = ""


def _num(value: float) -> str:
    """Coordinates with at most one decimal, without a trailing `.0`, so the output stays small and stable."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def nice_ticks(maximum: float, count: int = 4, steps: Sequence[float] | None = None) -> list[float]:
    """Round tick values from 0 to at least `maximum`: about `count` steps of 1, 2 or 5 times a power of ten.

    With `steps` (ascending), the step is the first of them that needs at most `count` steps (for durations).
    """
    if maximum <= 0:
        return [0.0, 1.0]
    raw = maximum / count
    step = next((float(s) for s in steps if s >= raw), 0.0) if steps else 0.0
    if not step:
        power = 10 ** math.floor(math.log10(raw))
        step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    top = math.ceil(maximum / step - 1e-9)
    return [i * step for i in range(top + 1)]


def _two_lines(label: str) -> list[str]:
    """A label split at the space or hyphen nearest its middle (`100 KB-1 MB` -> `100 KB-`, `1 MB`)."""
    cuts = [i for i, char in enumerate(label) if char in " -\u2013" and 0 < i < len(label) - 1]
    if not cuts:
        return [label]
    cut = min(cuts, key=lambda i: abs(len(label) / 2 - i))
    keep = label[cut] != " "
    return [label[:cut + 1] if keep else label[:cut], label[cut + 1:]]


def bar_chart(points: Sequence[BarPoint], *, title: str, fmt: Callable[[float], str], color: str,
              exact: Callable[[float], str] | None = None, width: int = 440, height: int = 236,
              empty_text: str = "No data") -> str:
    """A vertical bar chart with a value axis from 0, grid lines, value labels (when they fit) and category labels.

    `fmt` writes the axis and the labels above the bars, `exact` (default `fmt`) the hover tooltips. A category
    label too wide for its bar goes on two lines; if that is still too wide, only every n-th label is shown.
    """
    left, right, top, bottom = 64, 10, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    label = escape(title)
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{label}"><title>{label}</title>',
           f'<text class="chart-title" x="0" y="14">{label}</text>']
    maximum = max((p.value for p in points), default=0)
    if not points or maximum <= 0:
        out.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}"/>')
        out.append(f'<text class="note" x="{_num(left + plot_w / 2)}" y="{_num(top + plot_h / 2)}" '
                   f'text-anchor="middle">{escape(empty_text)}</text></svg>')
        return "".join(out)
    ticks = nice_ticks(maximum)
    scale = plot_h / ticks[-1]
    for tick in ticks:
        y = top + plot_h - tick * scale
        css = "axis" if tick == 0 else "grid"
        out.append(f'<line class="{css}" x1="{left}" y1="{_num(y)}" x2="{width - right}" y2="{_num(y)}"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{_num(y + 4)}" text-anchor="end">{escape(fmt(tick))}</text>')
    slot = plot_w / len(points)
    bar_w = max(min(slot * 0.68, 56), 1.0)
    lines = [[p.label] for p in points]
    if max(len(p.label) for p in points) * CHAR_WIDTH + 6 > slot:
        lines = [_two_lines(p.label) for p in points]
    widest = max(len(line) for label in lines for line in label) * CHAR_WIDTH + 6
    every = max(1, math.ceil(widest / slot))
    show_values = slot >= max(len(fmt(p.value)) for p in points) * CHAR_WIDTH + 4
    for index, point in enumerate(points):
        x = left + slot * index + (slot - bar_w) / 2
        bar_h = point.value * scale
        y = top + plot_h - bar_h
        centre = _num(x + bar_w / 2)
        tip = escape(f"{point.label}: {(exact or fmt)(point.value)}")
        out.append(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w)}" height="{_num(bar_h)}" fill="{color}" '
                   f'rx="2"><title>{tip}</title></rect>')
        if show_values and point.value > 0:
            out.append(f'<text class="value" x="{centre}" y="{_num(y - 5)}" text-anchor="middle">'
                       f'{escape(fmt(point.value))}</text>')
        if index % every == 0:
            spans = "".join(f'<tspan x="{centre}" dy="{0 if n == 0 else 13}">{escape(line)}</tspan>'
                            for n, line in enumerate(lines[index]))
            out.append(f'<text class="category" y="{top + plot_h + 16}" text-anchor="middle">{spans}</text>')
    out.append("</svg>")
    return "".join(out)


# Tick steps for a time axis, in seconds: 1, 5, 15, 30 min, 1, 2, 3, 4, 6, 12 h, 1, 2, 7 days.
TIME_STEPS = (60, 300, 900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400, 172800, 604800)


def timeline(rows: Sequence[TimelineRow], *, title: str, fmt_axis: Callable[[float], str],
             color: str, over_color: str, width: int = 960) -> str:
    """Horizontal bars, one per row, all starting at 0, length proportional to `seconds`.

    Each row is labelled on the left and followed by its `text`; a dashed marker shows `limit_seconds`
    and a bar longer than its limit is drawn in `over_color`.
    """
    label_w = max([len(r.label) for r in rows] + [3]) * CHAR_WIDTH + 16
    text_w = max([len(r.text) for r in rows] + [10]) * CHAR_WIDTH + 16
    left, right, top, row_h, axis_h = label_w, min(text_w, width * 0.45), 30, 28, 26
    plot_w = width - left - right
    height = int(top + row_h * max(len(rows), 1) + axis_h)
    name = escape(title)
    out = [f'<svg class="chart timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{name}"><title>{name}</title>',
           f'<text class="chart-title" x="0" y="14">{name}</text>']
    maximum = max([r.seconds for r in rows] + [r.limit_seconds or 0 for r in rows] + [0])
    ticks = nice_ticks(maximum, 6, TIME_STEPS)
    scale = plot_w / ticks[-1]
    bottom = top + row_h * len(rows)
    for tick in ticks:
        x = _num(left + tick * scale)
        out.append(f'<line class="{"axis" if tick == 0 else "grid"}" x1="{x}" y1="{top - 4}" x2="{x}" y2="{bottom}"/>')
        out.append(f'<text class="tick" x="{x}" y="{bottom + 16}" text-anchor="middle">{escape(fmt_axis(tick))}</text>')
    for index, row in enumerate(rows):
        y = top + row_h * index
        over = row.limit_seconds is not None and row.seconds > row.limit_seconds
        bar_w = max(row.seconds * scale, 2.0)
        tip = escape(row.tooltip or f"{row.label}: {row.text}")
        out.append(f'<text class="category" x="{_num(left - 8)}" y="{y + 18}" text-anchor="end">'
                   f'{escape(row.label)}</text>')
        out.append(f'<rect x="{_num(left)}" y="{y + 5}" width="{_num(bar_w)}" height="{row_h - 10}" rx="3" '
                   f'fill="{over_color if over else color}"><title>{tip}</title></rect>')
        if row.limit_seconds is not None:
            lx = _num(left + row.limit_seconds * scale)
            out.append(f'<line class="limit" x1="{lx}" y1="{y + 2}" x2="{lx}" y2="{y + row_h - 2}"/>')
        text_x = left + max(bar_w, (row.limit_seconds or 0) * scale) + 8
        out.append(f'<text class="value" x="{_num(text_x)}" y="{y + 18}">{escape(row.text)}</text>')
    out.append("</svg>")
    return "".join(out)
