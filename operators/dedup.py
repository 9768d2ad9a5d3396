"""Drop redelivered records: POS receipts by (terminal_id, receipt_no, ts), web events by event_id.

POS change-data-capture redelivers receipts, sometimes hours apart; a
receipt counted twice would double a purchase and its suppression. The key
of each record is remembered for `retention` (default 7 days) of event time
after the record's own time; a later record with the same key is emitted on
the `duplicates` stream with the position of the first one, and goes no
further. Records of other topics pass through untouched.
"""

from __future__ import annotations

from typing import Callable

import orjson
import xxhash

from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.records import DUPLICATES, Emitted, Event, Item
from omnitrigger.state import ShardState
from omnitrigger.state.clock import ShardClock



def receipt_key(event: Event) -> bytes:
    """hash(terminal_id, receipt_no, ts): ts normalised to epoch ms, so both ts spellings agree."""
    body = event.body
    return b"r" + xxhash.xxh3_128_digest(f"{body['terminal_id']}\x1f{body['receipt_no']}\x1f{event.ts_ms}".encode())


def event_id_key(event: Event) -> bytes:
    return b"e" + xxhash.xxh3_128_digest(f"{event.topic}\x1f{event.body['event_id']}".encode())


DEDUP_KEYS: dict[str, Callable[[Event], bytes]] = {
    "pos.receipts": receipt_key,
    "web.events": event_id_key,
}


class Dedup(StageOperator):
    name = "dedup"

    def __init__(self, state: ShardState, config) -> None:
        super().__init__(state, config)
        self.retention_ms = int(config.dedup_retention_s * 1000)
        self.key_functions = {topic: DEDUP_KEYS[topic] for topic in config.dedup_topics}
        self.clock = ShardClock(state, sweep_every_ms=60_000)

    def on_events(self, events: list[Item]) -> OperatorResult:
        kept: list[Item] = []
        duplicates: list[Emitted] = []
        state = self.state
        for event in events:
            key_function = self.key_functions.get(event.topic) if type(event) is Event else None
            if key_function is None:
                kept.append(event)
                continue
            self.clock.advance(event.ts_ms)
            key = key_function(event)
            first = state.get(key, self.clock.now_ms)
            if first is None:
                state.put(key, orjson.dumps([event.partition, event.offset]), event.ts_ms + self.retention_ms)
                kept.append(event)
            else:
                first_partition, first_offset = orjson.loads(first)
                duplicates.append(Emitted(DUPLICATES, (event.seq, 0), {
                    "topic": event.topic, "partition": event.partition, "offset": event.offset,
                    "ts_ms": event.ts_ms, "first_partition": first_partition, "first_offset": first_offset,
                }))
        self.clock.save()
        self.clock.sweep_if_due()
        return OperatorResult(kept, duplicates)
