"""Customer history: a short journal of each customer's rule-relevant events, carried across merges.

Bytewax dataflows have no loops, so when identity merges two customers the
rules cannot ask upstream for the loser's past. Instead this operator, in
the same stage as identity, journals every rule-relevant event (views, cart
changes, purchases online and at a till, consent changes, confirmed
visits) under its customer, and when a `MERGE_TOPIC` event passes it
re-files the loser's journal under the winner and attaches it to the merge
event as `history`: the rules, whichever shard holds the winner, replay it
into the winner's state and retire the loser (DESIGN.md section 4). The
shape's ceiling is the identity stage: one shard, one core.

Entries expire `history_retention_s` after their event time (the longest
rule window is 24 hours; consents matter for longer); a merge carries at
most the latest `history_max_events`.

State (namespace "history"):
    h <customer id> NUL <seq: 8 bytes> -> [topic, ts_ms, body]
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.records import MERGE_TOPIC, VISIT_CONFIRMED, Event
from omnitrigger.state import ShardState

#: Topics whose events a rule may need after a merge.
JOURNALED_TOPICS = frozenset({"web.events", "pos.receipts", "consent.changes", VISIT_CONFIRMED})
_CLOCK = b"clock"
_SWEEP_EVERY_MS = 3_600_000
log = logging.getLogger("omnitrigger.history")


class History(StageOperator):
    name = "history"

    def __init__(self, state: ShardState, config: Any) -> None:
        super().__init__(state, config)
        self.retention_ms = int(config.history_retention_s * 1000)
        self.max_events = config.history_max_events
        clock = state.get_meta(_CLOCK)
        self.clock_ms = int(clock) if clock else 0
        self._swept_at_ms = self.clock_ms

    def on_events(self, events: list[Event]) -> OperatorResult:
        out: list[Event] = []
        for event in events:
            if event.ts_ms > self.clock_ms:
                self.clock_ms = event.ts_ms
            if event.topic == MERGE_TOPIC:
                journal = self._move(event.body["loser"], event.body["winner"])
                out.append(event._replace(body={**event.body, "history": journal}))
                continue
            if event.customer is not None and event.topic in JOURNALED_TOPICS:
                entry = _journal_entry(event)
                if entry is not None:
                    self.state.put(_entry_key(event.customer, event.seq), entry, event.ts_ms + self.retention_ms)
            out.append(event)
        self.state.put_meta(_CLOCK, str(self.clock_ms).encode())
        if self.clock_ms - self._swept_at_ms >= _SWEEP_EVERY_MS:
            self.state.sweep(self.clock_ms)
            self._swept_at_ms = self.clock_ms
        return OperatorResult(out, [])

    def journal(self, customer: str) -> list[list[Any]]:
        """The customer's live journal, oldest first: [seq, topic, ts_ms, body] each."""
        prefix = b"h" + customer.encode() + b"\x00"
        return [[int.from_bytes(key[-8:], "big"), *orjson.loads(value)]
                for key, value in self.state.scan(prefix, prefix + b"\xff" * 9, self.clock_ms)]

    def _move(self, loser: str, winner: str) -> list[list[Any]]:
        prefix = b"h" + loser.encode() + b"\x00"
        entries = self.state.scan(prefix, prefix + b"\xff" * 9, self.clock_ms)
        for key, _ in entries:
            self.state.delete(key)
        kept = entries[-self.max_events:]
        journal: list[list[Any]] = []
        for key, value in kept:
            seq = int.from_bytes(key[-8:], "big")
            topic, ts_ms, body = orjson.loads(value)
            self.state.put(_entry_key(winner, seq), value, ts_ms + self.retention_ms)
            journal.append([seq, topic, ts_ms, body])
        return journal


def _journal_entry(event: Event) -> bytes | None:
    """The journal value of `event`, or None (logged) when it cannot be written.

    The contract check keeps bodies far shallower than orjson's 254 levels
    ([contracts] max_depth), so this is a last line of defence: an event the
    journal cannot hold goes on without being journaled, rather than
    stopping the flow on every resume.
    """
    try:
        return orjson.dumps([event.topic, event.ts_ms, event.body])
    except orjson.JSONEncodeError as error:
        log.warning("event not journaled, it cannot be written as JSON",
                    extra={"fields": {"seq": event.seq, "topic": event.topic, "error": str(error)}})
        return None


def _entry_key(customer: str, seq: int) -> bytes:
    return b"h" + customer.encode() + b"\x00" + seq.to_bytes(8, "big")
