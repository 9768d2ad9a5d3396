"""Thins a stream to what the stages after it read, keeping the event-time clock exact.

After visits, no stage reads a ping (four records in five, `Event`s or the
hand-off's `Ping`s) but the clock,
which needs only its time. So the records of the topics no later stage reads
are dropped, except, before each record kept, the one that moved the latest
event time since the last one kept, stripped of its body: the clock sees
the same latest event time at every record that reaches the router, which
is all the router passes on (operators/router.py), so the triggers are the
same. Control records and the flow's own topics (omnitrigger.*) are kept.

Used by the sequencer's hand-off (operators/handoff.py) and, after visits,
in the history stage (flows/stage.py). It remembers the latest event time
kept, in memory only: forgetting it (a restart) only keeps a few more
marks, which the clock ignores, so nothing of this is saved.
"""

from __future__ import annotations

from collections.abc import Iterable

from omnitrigger.operators.base import OperatorResult
from omnitrigger.records import INTERNAL_TOPIC_PREFIX, Event, Item, Ping


class ClockMarks:
    """Keeps the records of `kept_topics`, control records and internal topics; of the rest, clock marks."""

    name = "clock_marks"

    def __init__(self, kept_topics: Iterable[str]) -> None:
        self.kept_topics = frozenset(kept_topics)
        self.latest_ms = -(1 << 62)  # the latest event time kept

    def thin(self, events: list[Item]) -> list[Item]:
        out: list[Item] = []
        kept = self.kept_topics
        latest = self.latest_ms
        mark: Event | Ping | None = None  # the record holding the latest time since the last record kept
        for event in events:
            kind = type(event)
            if (kind is Event or kind is Ping) and event.topic not in kept \
                    and not event.topic.startswith(INTERNAL_TOPIC_PREFIX):
                if event.ts_ms > latest:
                    latest = event.ts_ms
                    mark = event
                continue
            if mark is not None:
                out.append(stripped(mark))
                mark = None
            if type(event) is Event and event.ts_ms > latest and not event.topic.startswith(INTERNAL_TOPIC_PREFIX):
                latest = event.ts_ms
            out.append(event)
        if mark is not None:
            out.append(stripped(mark))
        self.latest_ms = latest
        return out

    # As an operator of a stage's chain (operators/stage_chain.py).

    def on_events(self, events: list[Item]) -> OperatorResult:
        return OperatorResult(self.thin(events), [])

    def on_eof(self, end_seq: int) -> OperatorResult:
        return OperatorResult([], [])


def stripped(event: Event | Ping) -> Event:
    """The record as a clock mark: its place and time, no body and no customer (nothing reads them)."""
    return Event(event.seq, event.topic, event.partition, event.offset, event.ts_ms, {})
