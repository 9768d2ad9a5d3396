"""The event-time clock: a watermark from the data, inserted into the stream where it moves.

Bytewax's timers are wall-clock (docs/design.md#bytewax-timers-are-wall-clock), so deadlines keep a
clock of their own: the watermark is the latest event time seen minus
`rules_lateness_s`, and never goes back. Whenever an event moves it, a
`Watermark` record carrying the new value goes downstream *before*
that event; the rules fire every deadline at or before it, then see the
event. Because the watermark is a function of the input order alone, the
same recording fires the same deadlines at the same places whatever the
batch size, speed or worker count.

In live mode an idle source sends `Heartbeat(wall_ms)` (the stage gives it
its place in the input order); the clock then
advances to the wall clock minus the lateness, so a deadline at 03:00
fires at 03:00 plus the lateness without new traffic. At the end of a
replay no purchase can still arrive, so the clock moves past the last
event time by `[rules] purchase_grace`: every deadline up to the last event
time fires, as it would without the grace; later ones stay pending (a
resumed replay with more input fires them).
"""

from __future__ import annotations

from typing import Any

from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.records import INTERNAL_TOPIC_PREFIX, Event, Heartbeat, Item, Watermark
from omnitrigger.state import ShardState

_CLOCK = b"clock"


def watermark_event(seq: int, watermark_ms: int) -> Watermark:
    return Watermark(seq, watermark_ms)


class EventClock(StageOperator):
    name = "clock"

    def __init__(self, state: ShardState, config: Any) -> None:
        super().__init__(state, config)
        self.lateness_ms = int(config.rules_lateness_s * 1000)
        self.grace_ms = int(config.purchase_grace_s * 1000)
        saved = state.get_meta(_CLOCK)
        self.max_ts_ms, self.watermark_ms = (int(part) for part in saved.split(b",")) if saved else (0, 0)

    def on_events(self, events: list[Item]) -> OperatorResult:
        out: list[Item] = []
        for event in events:
            kind = type(event)
            if kind is Heartbeat:  # an idle live source: follow the wall clock
                self._advance(event.seq, event.wall_ms - self.lateness_ms, out)
                continue
            if kind is Event and event.ts_ms > self.max_ts_ms and not event.topic.startswith(INTERNAL_TOPIC_PREFIX):
                self.max_ts_ms = event.ts_ms
                self._advance(event.seq, self.max_ts_ms - self.lateness_ms, out)
            out.append(event)
        self._save()
        return OperatorResult(out, [])

    def on_eof(self, end_seq: int) -> OperatorResult:
        out: list[Item] = []
        self._advance(end_seq, self.max_ts_ms + self.grace_ms, out)
        self._save()
        return OperatorResult(out, [])

    def _advance(self, seq: int, candidate_ms: int, out: list[Item]) -> None:
        if candidate_ms > self.watermark_ms:
            self.watermark_ms = candidate_ms
            out.append(watermark_event(seq, candidate_ms))

    def _save(self) -> None:
        self.state.put_meta(_CLOCK, b"%d,%d" % (self.max_ts_ms, self.watermark_ms))
