"""Quiet hours: a reminder due at night waits for the morning, in event time.

`[policy] quiet_hours = "21:00-09:00"` in `[policy] timezone` ("Europe/Helsinki"):
a deadline whose local time falls inside the window moves to the window's end
(09:00 local, the next morning for a deadline at 23:30). It is a function of the
deadline alone, so a replay gives the same times whatever its speed, and the
moved deadline is the one a purchase must come before to cancel the reminder.
Daylight saving is the zone's: 09:00 is 09:00 local on either side of a change.
An empty window switches it off. Nothing here imports bytewax.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)\Z")
_MINUTE_MS = 60_000


def parse_window(text: str) -> tuple[int, int] | None:
    """`"21:00-09:00"` as (start, end) minutes after local midnight; `""` as None; ValueError otherwise."""
    if text == "":
        return None
    match = _WINDOW.match(text)
    if match is None or match.group(1, 2) == match.group(3, 4):
        raise ValueError(f"expected \"HH:MM-HH:MM\" (two different times, e.g. \"21:00-09:00\") or \"\", got {text!r}")
    hours_from, minutes_from, hours_to, minutes_to = (int(part) for part in match.groups())
    return hours_from * 60 + minutes_from, hours_to * 60 + minutes_to


#: (window, zone) -> {minute: the window's end (ms) if that minute is quiet}: shared by every QuietHours of
#: one window and zone (a rules shard has one per store, a process up to 16 shards): each minute computed once.
_MEMOS: dict[tuple[tuple[int, int] | None, str], dict[int, int | None]] = {}
_MEMO_KEPT = 100_000


class QuietHours:
    def __init__(self, window: str, zone: str) -> None:
        self.window = parse_window(window)
        self.zone = ZoneInfo(zone)
        self._memo = _MEMOS.setdefault((self.window, zone), {})  # a pure function of these two and the minute

    def is_quiet(self, ts_ms: int) -> bool:
        return self._end_of_quiet(ts_ms) is not None

    def defer(self, ts_ms: int) -> int:
        """`ts_ms`, or the end of the quiet hours it falls in."""
        end = self._end_of_quiet(ts_ms)
        return ts_ms if end is None else end

    def _end_of_quiet(self, ts_ms: int) -> int | None:
        if self.window is None:
            return None
        minute = ts_ms // _MINUTE_MS
        memo = self._memo
        if minute in memo:
            return memo[minute]
        if len(memo) >= _MEMO_KEPT:
            memo.clear()  # (shared: the other instances of this window and zone start afresh too)
        end = memo[minute] = self._compute(minute * _MINUTE_MS)
        return end

    def _compute(self, ts_ms: int) -> int | None:
        start, end = self.window  # type: ignore[misc]
        local = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).astimezone(self.zone)
        now = local.hour * 60 + local.minute
        if start < end:
            quiet, next_day = start <= now < end, False
        else:  # over midnight: quiet from start to the end of the day, and from midnight to end
            quiet, next_day = now >= start or now < end, now >= start
        if not quiet:
            return None
        day = local.date() + timedelta(days=1 if next_day else 0)
        until = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=self.zone)
        return int(until.astimezone(timezone.utc).timestamp() * 1000)
