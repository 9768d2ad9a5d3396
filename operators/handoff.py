"""What the sequencer hands the history stage: every record a later stage reads, pings cut to what visits
reads, and clock marks for the rest.

The flow runs in two single-key stages before the rules (flows/replay_flow.py):
the sequencer (dedup, identity) and the history stage (visits, history, the
event-time clock, the router). On a cluster they run on different processes,
so whatever passes between them is pickled. So the sequencer hands on:

* in full, what a later stage reads whole: the topics the rules or the journal
  read, identity changes, consent, the control records;
* the pings (four records in five), when visits runs later, cut to the fields
  visits reads (the device, the source, the accuracy, the place; its seq,
  partition, offset, time and customer): a `Ping` (omnitrigger/records.py);
* of the rest, clock marks (operators/clock_marks.py): the record that moved
  the latest event time, stripped, before each record handed on.

A `Progress` mark ends each hand-off, so the history stage knows where the
batch and, at the end, the input ended: the router's end-of-batch watermark
and the end-of-input records keep their places.

What crosses to another process is packed (`Handoff.packed`, `unpack`): a kind
code a record, the records' fields as plain tuples, the cut pings' apart,
encoded as one MessagePack value by msgspec, which decodes the pings straight
into `Ping`s; in one process, where nothing is pickled, the records go on as
they are (`Handoff.items`). Pickling a NamedTuple calls Python for every
record (an `Event` costs its sender 2.1 µs to dump, docs/scaling.md); a plain
tuple does not (0.4, a flat ping 0.24), and msgspec encodes a flat ping in
0.05 µs, leaving Bytewax one bytes object to pickle. `unpack` rebuilds the
other records by `tuple.__new__`; a `Ping` needs no body dicts, which cost the
receiving process more than the rest of the crossing. MessagePack
has one array type, so a tuple inside a record comes back a list (a merge's
empty journal `()` comes back `[]`); no stage tells them apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from omnitrigger.operators.clock_marks import ClockMarks
from omnitrigger.records import Event, Heartbeat, Item, Merge, Ping, Progress, Watermark

#: The record types a hand-off holds, by their code in a packed hand-off; a cut ping has the code after them.
_KINDS: tuple[type, ...] = (Event, Merge, Heartbeat, Progress, Watermark)
_CODE = {kind: code for code, kind in enumerate(_KINDS)}
_PROGRESS, _PING = _CODE[Progress], len(_KINDS)

#: A packed hand-off: MessagePack of (one kind code a record, the other records' fields, the cut pings' fields).
Packed = bytes

_ENCODE = msgspec.msgpack.Encoder().encode
#: (codes, the other records' fields, the cut pings): msgspec builds the `Ping`s itself.
_DECODE = msgspec.msgpack.Decoder(tuple[bytes, list[Any], list[Ping]]).decode


class Handoff:
    """Cuts the sequencer's events down to what the history stage needs, packed; a plain class.

    `full_topics`: the topics a later stage reads whole (the rules', the journal's, the broadcast ones).
    `ping_topics`: the topics handed on cut to a ping's fields (geo.pings when visits runs later; a topic
    in `full_topics` too is handed on whole). The rest become clock marks (operators/clock_marks.py).
    `packed`: the history stage runs in another process, so `hand_on` packs (else it hands on `items`).
    """

    def __init__(self, full_topics: Iterable[str], ping_topics: Iterable[str] = (), packed: bool = True) -> None:
        self.packed_on = packed
        self.full_topics = frozenset(full_topics)
        self.ping_topics = frozenset(ping_topics) - self.full_topics
        self.marks = ClockMarks(self.full_topics | self.ping_topics)

    def hand_on(self, events: list[Item], last_seq: int) -> Packed | list[Item]:
        """One delivery's hand-off: `packed` to another process, else `items`."""
        return self.packed(events, last_seq) if self.packed_on else self.items(events, last_seq)

    @staticmethod
    def items(events: list[Item], last_seq: int) -> list[Item]:
        """The hand-off to a history stage in the same process, where nothing is pickled: every record as it
        is, ended by Progress(`last_seq`). The history stage thins the pings itself after visits."""
        return [*events, Progress(last_seq)]

    def packed(self, events: list[Item], last_seq: int) -> Packed:
        """The hand-off of one delivery's `events`, ended by Progress(`last_seq`), packed to cross processes."""
        codes = bytearray()
        fields: list[tuple] = []
        cut: list[tuple] = []
        pings, code_of = self.ping_topics, _CODE
        for item in self.marks.thin(events):
            kind = type(item)
            if kind is Event and item.topic in pings:
                seq, topic, partition, offset, ts_ms, body, customer = item
                codes.append(_PING)
                cut.append((seq, topic, partition, offset, ts_ms, body["ids"].get("device_id"), body["source"],
                            body["accuracy_m"], body["lat"], body["lon"], customer))
            else:
                codes.append(code_of[kind])
                fields.append(tuple(item))
        codes.append(_PROGRESS)
        fields.append((last_seq,))
        return _ENCODE((bytes(codes), fields, cut))


def pack(items: list[Item]) -> Packed:
    """`items` as plain tuples, each whole: a routed batch to a rules shard on another process (flows/stage.py);
    the sequencer's hand-off is `Handoff.packed`."""
    code = _CODE
    return _ENCODE((bytes([code[type(item)] for item in items]), [tuple(item) for item in items], []))


def unpack(packed: Packed) -> list[Item]:
    """The records a packed hand-off holds, rebuilt in their order; a cut ping as a `Ping`."""
    codes, fields, pings = _DECODE(packed)
    new, kinds = tuple.__new__, _KINDS
    next_ping, next_fields = iter(pings).__next__, iter(fields).__next__
    return [next_ping() if code == _PING else new(kinds[code], next_fields()) for code in codes]
