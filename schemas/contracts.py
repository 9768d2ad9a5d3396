"""Apply the v1 topic contracts to decoded records and read their event time."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import orjson

from omnitrigger.schemas.acceptor import compile_acceptor
from omnitrigger.schemas.structs import EARLIEST_TS_MS, LATEST_TS_MS, LENIENT_TOPIC_TYPES, MAX_DEPTH, TOPIC_TYPES
from omnitrigger.schemas.validator import ContractViolation, SchemaCompiler, depth_exceeds

INPUT_TOPICS = ("web.events", "pos.receipts", "geo.pings", "identity.links", "consent.changes", "inventory.levels")
#: Input topics a live job reads when they exist and does without otherwise (their rules then see no data).
OPTIONAL_INPUT_TOPICS = ("inventory.levels",)

DAY_MS = 86_400_000
#: Default `[contracts] max_depth`: events nest about 3 levels (body, items, item); a deeper record is a dead letter.
DEFAULT_MAX_DEPTH = 32
#: The most `[contracts] max_depth` may be: orjson writes at most 254 levels, and the journal wraps a body in 3 more.
MAX_DEPTH_LIMIT = 200
# EARLIEST_TS_MS and LATEST_TS_MS, the event time's bounds, come from structs.py: its Structs check them too.
# RFC 3339 date-time; Python's fromisoformat alone also takes other ISO 8601 forms (week dates, basic format).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def parse_event_time(value: Any) -> int:
    """Event time as epoch milliseconds, from RFC 3339 with an offset or from epoch milliseconds."""
    if type(value) is int or (type(value) is float and value.is_integer()):
        ts_ms = int(value)
    elif type(value) is str:
        if not _RFC3339.match(value):
            raise ContractViolation("invalid_timestamp", f"{value[:64]!r} is not RFC 3339", ("ts",))
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ContractViolation("invalid_timestamp", f"{value[:64]!r} is not RFC 3339", ("ts",)) from None
        if parsed.tzinfo is None:
            raise ContractViolation("invalid_timestamp", f"{value[:64]!r} has no UTC offset", ("ts",))
        ts_ms = (parsed - _EPOCH) // _ONE_MS
    else:
        raise ContractViolation("invalid_timestamp", f"{value!r} is neither RFC 3339 nor epoch milliseconds", ("ts",))
    if not EARLIEST_TS_MS <= ts_ms < LATEST_TS_MS:
        raise ContractViolation("invalid_timestamp", f"{value!r} is outside 2000..3000 (epoch seconds instead of milliseconds?)", ("ts",))
    return ts_ms


#: What a refusal looks like: msgspec's (ValidationError is a DecodeError; deep unknown fields may exceed its
#: recursion limit), or orjson's on text msgspec read.
_REFUSED = (msgspec.DecodeError, orjson.JSONDecodeError, RecursionError)


class Contracts:
    """Compiled validators for the input topics, plus the event-time rules and the nesting-depth limit."""

    def __init__(self, max_future_ms: int = DAY_MS, max_depth: int = DEFAULT_MAX_DEPTH, *, structs: bool = True) -> None:
        """`structs=False`: no `check_json` fast path (the differential test and benchmark compare with that)."""
        compiler = SchemaCompiler()
        self._checks = {topic: compiler.compile_file(f"{topic}.schema.json") for topic in INPUT_TOPICS}
        # The fast yes/no answer first; the closure validator only runs to say why a record is invalid.
        self._accepts = {topic: compile_acceptor(f"{topic}.schema.json", compiler) for topic in INPUT_TOPICS}
        self.max_future_ms = max_future_ms
        if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be 1..{MAX_DEPTH_LIMIT}, got {max_depth}")
        self.max_depth = max_depth
        # The Structs straight from the bytes (structs.py), before any of that: the strict ones (none if
        # max_depth is under their depth), then for a record with unknown fields the lenient ones.
        self._vouchers = ({topic: msgspec.json.Decoder(TOPIC_TYPES[topic]).decode for topic in INPUT_TOPICS}
                          if structs and max_depth >= MAX_DEPTH else {})
        self._lenient = ({topic: msgspec.json.Decoder(LENIENT_TOPIC_TYPES[topic]).decode for topic in INPUT_TOPICS}
                         if structs else {})

    def check(self, topic: str, body: Any, reference_ms: int, raw: bytes | None = None, *,
              max_future_ms: int | None = None) -> int:
        """Validate `body` against `topic`'s contract and return its event time in ms.

        `reference_ms` is "now" for the record: its Kafka timestamp, or the
        stream's own clock in a replay of bare lines. An event time further
        than `max_future_ms` (default: the configured `max_future`) past it
        is a dead letter: a clock that far off would poison every window.

        A body nested deeper than `max_depth` (unknown fields may hold
        anything) is a `too_deep` dead letter, so no later stage can hit a
        serialiser's or Python's recursion limit on it. `raw`, the bytes the
        body was decoded from, makes that check nearly free: a record with
        no more brackets than `max_depth` cannot nest deeper (counting bytes
        123 "{" and 91 "[": an int is a faster needle than a bytes one).
        """
        if type(body) is not dict:
            raise ContractViolation("not_an_object", f"expected a JSON object, got {type(body).__name__}")
        if (raw is None or raw.count(123) + raw.count(91) > self.max_depth) and depth_exceeds(body, self.max_depth):
            raise ContractViolation("too_deep", f"objects and arrays nest more than max_depth {self.max_depth} levels")
        if not self._accepts[topic](body):
            self._checks[topic](body)
        return self._event_time(body, parse_event_time(body["ts"]), reference_ms, max_future_ms)

    def check_json(self, topic: str, data: bytes, reference_ms: int, *,
                   max_future_ms: int | None = None) -> tuple[dict[str, Any], int] | None:
        """(body, event time in ms) of `data`, a record's JSON text, when `topic`'s msgspec Structs vouch for it.

        None when they do not (a dead letter to be, or one nested deeper than `max_depth`): then
        `orjson.loads` and `check` give the answer, or the reason, as before. `vouch`, then
        `vouched_time`; the same ContractViolations as `check` for the event time.
        """
        body = self.vouch(topic, data)
        return None if body is None else (body, self.vouched_time(body, reference_ms, max_future_ms))

    def vouch(self, topic: str, data: bytes) -> dict[str, Any] | None:
        """`orjson.loads(data)` (unknown fields and key order as they are) if the Structs say it meets
        `topic`'s contract and nests no deeper than `max_depth`; None if they cannot say so.

        The strict Structs first (no unknown field: nothing to check the depth of); for a record
        they refuse, the lenient ones and the depth check. The event time is `vouched_time`'s.
        """
        vouch = self._vouchers.get(topic)
        if vouch is not None:
            try:
                vouch(data)
                return orjson.loads(data)  # a JSON object: the Structs take nothing else
            except _REFUSED:
                pass
        vouch = self._lenient.get(topic)
        if vouch is None:
            return None
        try:
            vouch(data)
            body = orjson.loads(data)
        except _REFUSED:
            return None
        if data.count(123) + data.count(91) > self.max_depth and depth_exceeds(body, self.max_depth):
            return None  # `check` names it too_deep
        return body

    def vouched_time(self, body: dict[str, Any], reference_ms: int, max_future_ms: int | None = None) -> int:
        """The event time of a body `vouch` returned, by `check`'s rules (a Struct takes any string for it)."""
        ts = body["ts"]  # orjson's last "ts" if the text repeats it: the Structs checked every one
        ts_ms = ts if type(ts) is int else parse_event_time(ts)  # an int the Structs have range-checked
        if ts_ms > reference_ms + (self.max_future_ms if max_future_ms is None else max_future_ms):
            self._event_time(body, ts_ms, reference_ms, max_future_ms)  # raises timestamp_in_future
        return ts_ms

    def _event_time(self, body: dict[str, Any], ts_ms: int, reference_ms: int, max_future_ms: int | None) -> int:
        max_future_ms = self.max_future_ms if max_future_ms is None else max_future_ms
        if ts_ms > reference_ms + max_future_ms:
            raise ContractViolation(
                "timestamp_in_future",
                f"{body['ts']!r} is more than {max_future_ms // 1000} s after the record's reference time",
                ("ts",))
        return ts_ms
