"""Maintenance windows: "Sat 22:00-Sun 06:00" (weekly) or "22:00-06:00" (every day), pure and tested.

With a start date and a time zone the planner gives each batch the next free occurrence, in order, so
the plan carries real dates a change board can approve; without a start date it only checks that every
batch's estimate fits the window's length.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from migrator.errors import UserError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PART = r"(?:(?P<{day}>[A-Za-z]{{3}})[a-z]*\s+)?(?P<{hm}>\d{{1,2}}:\d{{2}})"
_WINDOW = re.compile(r"^\s*" + _PART.format(day="d1", hm="t1") + r"\s*-\s*" + _PART.format(day="d2", hm="t2") + r"\s*$")


@dataclass(frozen=True)
class Window:
    text: str
    start_day: int | None
    start: time
    end_day: int | None
    end: time

    @property
    def seconds(self) -> int:
        """Length of one occurrence."""
        begin = (self.start_day or 0) * 86400 + self.start.hour * 3600 + self.start.minute * 60
        finish = (self.end_day if self.end_day is not None else self.start_day or 0) * 86400 \
            + self.end.hour * 3600 + self.end.minute * 60
        period = 7 * 86400 if self.start_day is not None else 86400
        return (finish - begin) % period or period

    def occurrences(self, first_day: date, zone: ZoneInfo) -> Iterator[tuple[datetime, datetime]]:
        """Every occurrence starting on or after `first_day`, in local time of `zone`."""
        day = first_day
        while True:
            if self.start_day is None or day.weekday() == self.start_day:
                begin = datetime.combine(day, self.start, tzinfo=zone)
                yield begin, begin + timedelta(seconds=self.seconds)
            day += timedelta(days=1)


def _clock(text: str, where: str) -> time:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 23 or minutes > 59:
        raise UserError(f"{where}: {text!r} is not a time of day")
    return time(hours, minutes)


def _day(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    key = text[:3].lower()
    if key not in DAYS:
        raise UserError(f"{where}: {text!r} is not a day of the week (Mon, Tue, ... Sun)")
    return DAYS.index(key)


def parse_window(text: str, where: str = "--window") -> Window:
    """Raises UserError for anything but "Day HH:MM-Day HH:MM" or "HH:MM-HH:MM"."""
    match = _WINDOW.match(text)
    if not match:
        raise UserError(f'{where}: {text!r} is not a window; write e.g. "Sat 22:00-Sun 06:00" or "22:00-06:00"')
    start_day, end_day = _day(match["d1"], where), _day(match["d2"], where)
    if (start_day is None) != (end_day is None):
        raise UserError(f"{where}: {text!r}: give a day on both sides or on neither")
    window = Window(text.strip(), start_day, _clock(match["t1"], where), end_day, _clock(match["t2"], where))
    if window.seconds <= 0:
        raise UserError(f"{where}: {text!r} is empty")
    return window


def zone(name: str, where: str = "--timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(f"{where}: unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from None
