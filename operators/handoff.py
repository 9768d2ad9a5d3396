"""What the sequencer hands the history stage: every record a later stage reads, and clock marks for the rest.

The flow runs in two single-key stages before the rules (flows/replay_flow.py):
the sequencer (dedup, identity, visits) and the history stage (history, the
event-time clock, the router). On a cluster they run on different processes,
so whatever passes between them is pickled. Most of the input is geo pings,
and after visits no stage reads a ping but the clock, which needs only its
time. So the sequencer hands on in full what a later stage reads (the topics
the rules or the journal read, identity changes, consent, the control
records), and of the rest only the record that moved the latest event time
since the last one handed on, stripped of its body: the clock sees the same
latest event time at every record that reaches the router, which is all the
router passes on (operators/router.py), so the triggers are the same. A
`Progress` mark ends each hand-off, so the history stage knows where the
batch and, at the end, the input ended: the router's end-of-batch watermark
and the end-of-input records keep their places.

What crosses is `pack`ed: a kind code a record and its fields as a plain
tuple. Pickling a NamedTuple calls Python for every record (an `Event`
costs its sender 2.1 µs to dump, docs/scaling.md); a plain tuple does not
(0.4), and `unpack` rebuilds the records by `tuple.__new__`.
"""

from __future__ import annotations

from collections.abc import Iterable

from omnitrigger.records import INTERNAL_TOPIC_PREFIX, Event, Heartbeat, Item, Merge, Progress, Watermark

#: The record types a hand-off holds, by their code in a packed hand-off.
_KINDS: tuple[type, ...] = (Event, Merge, Heartbeat, Progress, Watermark)
_CODE = {kind: code for code, kind in enumerate(_KINDS)}

#: A packed hand-off: one kind code a record, and each record's fields.
Packed = tuple[bytes, list[tuple]]


class Handoff:
    """Cuts the sequencer's events down to what the history stage needs; a plain class.

    `full_topics`: the topics a later stage reads (the rules', the journal's, the broadcast ones).
    It remembers the latest event time handed on, in memory only: forgetting it (a restart) only hands
    on a few more marks, which the clock ignores, so nothing of this is saved.
    """

    def __init__(self, full_topics: Iterable[str]) -> None:
        self.full_topics = frozenset(full_topics)
        self.latest_ms = -(1 << 62)  # the latest event time handed on

    def items(self, events: list[Item], last_seq: int) -> list[Item]:
        """The items for the history stage from one delivery's `events`, ended by Progress(`last_seq`)."""
        out: list[Item] = []
        full = self.full_topics
        latest = self.latest_ms
        mark: Event | None = None  # the record holding the latest time since the last item handed on
        for event in events:
            if type(event) is Event and event.topic not in full and not event.topic.startswith(INTERNAL_TOPIC_PREFIX):
                if event.ts_ms > latest:
                    latest = event.ts_ms
                    mark = event
                continue
            if mark is not None:
                out.append(_stripped(mark))
                mark = None
            if type(event) is Event and event.ts_ms > latest and not event.topic.startswith(INTERNAL_TOPIC_PREFIX):
                latest = event.ts_ms
            out.append(event)
        if mark is not None:
            out.append(_stripped(mark))
        self.latest_ms = latest
        out.append(Progress(last_seq))
        return out


def _stripped(event: Event) -> Event:
    """The record as a clock mark: its place and time, no body and no customer (nothing reads them)."""
    return Event(event.seq, event.topic, event.partition, event.offset, event.ts_ms, {})


def pack(items: list[Item]) -> Packed:
    """`items` as they cross to the history stage's process: plain tuples, which pickle without Python calls."""
    code = _CODE
    return bytes([code[type(item)] for item in items]), [tuple(item) for item in items]


def unpack(packed: Packed) -> list[Item]:
    """The records `pack` was given, rebuilt."""
    codes, fields = packed
    new, kinds = tuple.__new__, _KINDS
    return [new(kinds[code], values) for code, values in zip(codes, fields)]
