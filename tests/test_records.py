"""omnitrigger/records.py: the one output time format every output writes."""

from __future__ import annotations

import datetime
import random

from omnitrigger import records
from omnitrigger.records import format_ms


def _by_datetime(ts_ms: int) -> str:
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(milliseconds=ts_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def test_format_ms_is_rfc3339_with_milliseconds_whatever_it_kept_before() -> None:
    rng = random.Random(19)
    moments = [0, 999, 1000, -1, -1001, 1511853085000, 1511853085999, 253402300799999]
    moments += [rng.randrange(-10**12, 4 * 10**12) for _ in range(2000)]
    moments += [1511853085000 + rng.randrange(0, 3000) for _ in range(2000)]  # one second's text, kept and reused
    for ts_ms in moments + moments[::-1]:
        assert format_ms(ts_ms) == _by_datetime(ts_ms), ts_ms
    assert format_ms(1511576184123) == "2017-11-25T02:16:24.123Z"


def test_format_ms_starts_afresh_when_its_seconds_are_full(monkeypatch) -> None:
    monkeypatch.setattr(records, "_SECONDS_KEPT", 3)
    records._SECONDS.clear()
    for second in range(10):
        assert format_ms(second * 1000 + 7) == _by_datetime(second * 1000 + 7)
        assert len(records._SECONDS) <= 3
