"""Report renderers: pure functions from a report's data (a plain dict) to the text of a file.

Nothing here reads the state store, the network or the disk: the commands collect the data, these modules
only render it (`discovery`: html, json, csv; `svg`: the chart primitives the HTML reports draw with).
The formatting helpers below are shared by every report so that sizes and durations read the same
everywhere: sizes are decimal (1 KB = 1000 bytes), as in migrator.toml.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["human_count", "human_datetime", "human_duration", "human_size", "parse_datetime"]

_SIZE_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_size(size: float) -> str:
    """`36700160` -> `36.7 MB` (decimal units; whole bytes below 1 KB)."""
    value = float(size)
    for unit in _SIZE_UNITS:
        if abs(value) < 999.95 or unit == _SIZE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """`7500` -> `2 h 05 min`; `45` -> `45 s`; `100000` -> `1 d 03 h 47 min` (rounded to the minute from 1 min)."""
    total = round(seconds)
    if total < 60:
        return f"{max(total, 0)} s"
    minutes = round(total / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h {minutes:02d} min"


def human_count(count: int) -> str:
    """`1234567` -> `1,234,567`."""
    return f"{count:,}"


def parse_datetime(text: str | None) -> datetime | None:
    """An ISO 8601 string as a datetime, or None when it is missing or not ISO 8601."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def human_datetime(text: str | None, *, with_time: bool = True) -> str:
    """`2026-11-28T18:00:00+00:00` -> `2026-11-28 18:00 UTC`; text that is not ISO 8601 comes back unchanged.

    A missing value is an em dash. The result is plain text: escape it before putting it in markup.
    """
    moment = parse_datetime(text)
    if moment is None:
        return text or "\u2014"
    if not with_time:
        return moment.strftime("%Y-%m-%d")
    shown = moment.strftime("%Y-%m-%d %H:%M")
    offset = moment.utcoffset()
    if offset is None:
        return shown
    if not offset:
        return f"{shown} UTC"
    return f"{shown} {moment.strftime('%z')[:3]}:{moment.strftime('%z')[3:]}"
