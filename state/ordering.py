"""A global, deterministic record order built from each partition's own data, and the merge that restores it.

Today one worker (the sequencer) reads every input in one merged order: a
greedy k-way heap merge of the streams by (event time, topic, partition,
offset), `omnitrigger/io/recording.py` `RecordingReader` over the recording's
files and `omnitrigger/io/live_input.py` `EventTimeMerger` over the Kafka
partitions, each record numbered by its place (`seq`). A partitioned flow
cannot have that one place, so the order must be a key each record carries.

`PartitionStamper` (one per (topic, partition), in its source part) gives
each record the key

    (max event time of the partition so far, topic, partition, position in the partition)

What is proven (tests/test_ordering.py, property tests, and against
RecordingReader itself): for any streams, the greedy merge that pops the
least head by the heap's key (event time, topic, partition, offset, stream
index) hands the records out in the order of (running max of that key over
the stream's records so far, position in the stream). The stream index
keeps two heads from ever tying; a record whose key is not above its
stream's running max (late, or a repeat) sorts right after its predecessor.
When each stream is one (topic, partition), as for the live merger and for
a recording whose files hold one partition each, no two streams share a
tuple, so the index never decides; and as the topic and partition are fixed
and the max's offset only grows with the position, the running max adds
nothing past its time: sorting by the key above is the merge, exactly. Its
time is also the merged stream's clock at that record (the latest event
time handed out up to it, RecordingReader's `clock_ms`).

Where the reader differs: its streams are files, so a file that interleaves
two partitions is one stream (a late record of one partition waits behind
the file's head of the other), which per-partition keys do not reproduce;
and a bare line (no Kafka time) far ahead of the stream clock is judged
against that clock (`RecordingReader._unsupported`), so its merge time can
depend on other files. Envelopes with their Kafka time depend on nothing else.

`FrontierMerge` (one per receiving shard) puts records from several
senders back in key order. Bytewax keeps order only per (sender, receiver)
pair and `op.merge` keeps none, so each sender sends its records in
increasing key order plus, now and then, a frontier; the receiver holds a
record until no sender can still send a smaller key. Whatever the
interleaving of arrivals, the released sequence is the same, and the low
frontier is the shard's event-time clock (`state/clock.py`'s "now"). A
replay's sequencer merges the source's parts with one
(operators/input_merge.py, which saves it in the sequencer's state); the
later stages do not use one yet. `ReadTurns` paces the parts of one
process. Nothing here imports bytewax.
"""

from __future__ import annotations

import bisect
import math
import operator
import struct
from itertools import islice
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["FINISHED", "NOTHING", "FrontierMerge", "OrderKey", "PartitionStamper", "ReadTurns", "decode_key", "encode_key"]

_TS_BIAS = 1 << 63  # signed 64-bit time as unsigned: byte order == numeric order for negatives too
_PARTITION_BIAS = 1 << 31
_TS = struct.Struct(">Q")
_TAIL = struct.Struct(">IQ")  # partition, position


OrderKey = tuple[int, str, int, int]
"""A record's place in the global order, unique per record: (ts_ms, topic, partition, position).

`ts_ms` is the latest event time of the record's partition up to and including it, `position`
the record's place in its partition, from 0. A plain tuple, not a NamedTuple: it is built once
per record, and CPython's garbage collector stops tracking a tuple of ints and strings, where
a NamedTuple stays tracked (three times the stamping time once many keys are held).
"""


def encode_key(key: OrderKey) -> bytes:
    """Big-endian ints and the topic in UTF-8 ended by NUL, so the bytes compare as the keys do."""
    ts_ms, topic, partition, position = key
    name = topic.encode()
    if b"\0" in name:
        raise ValueError(f"a topic with NUL cannot be encoded in order: {topic!r}")
    return _TS.pack(ts_ms + _TS_BIAS) + name + b"\0" + _TAIL.pack(partition + _PARTITION_BIAS, position)


def decode_key(data: bytes) -> OrderKey:
    end = data.index(b"\0", 8)
    partition, position = _TAIL.unpack_from(data, end + 1)
    return _TS.unpack_from(data)[0] - _TS_BIAS, data[8:end].decode(), partition - _PARTITION_BIAS, position


Frontier = tuple  # an OrderKey, a prefix of one such as (ts_ms,), NOTHING or FINISHED
NOTHING: Frontier = ()  # below every key: a sender not heard from yet
FINISHED: Frontier = (math.inf,)  # above every key: a sender that will send nothing more
_KEY = operator.itemgetter(0)


class PartitionStamper:
    """Stamps one partition's records, in offset order, with their OrderKey; resumable from `state()`.

    Only the event time is taken: the running max's offset adds nothing to the order (see the
    module docstring), and the position is counted here.
    """

    __slots__ = ("topic", "partition", "_max_ts", "_position")

    def __init__(self, topic: str, partition: int, state: tuple[int, int] | None = None) -> None:
        """`state`: what `state()` returned, to go on from there (None: the partition's start)."""
        self.topic = topic
        self.partition = partition
        self._max_ts, self._position = state if state is not None else (-_TS_BIAS, 0)

    def stamp(self, ts_ms: int) -> OrderKey:
        """The key of the partition's next record, whose event (merge) time is `ts_ms`."""
        position = self._position
        self._position = position + 1
        if ts_ms > self._max_ts:
            self._max_ts = ts_ms
        return self._max_ts, self.topic, self.partition, position

    def state(self) -> tuple[int, int]:
        """(max event time so far, next position): all a resumed source part needs."""
        return self._max_ts, self._position


class FrontierMerge:
    """Merges records from a fixed set of senders into key order, releasing what no sender can still precede.

    A sender's frontier F means "every key I send from now on is greater than F". Pushing a
    record moves its sender's frontier to the record's key (keys increase per sender), and
    `advance` moves it further: to a key it knows it is past, to `(ts_ms,)` for "nothing more
    before time ts_ms", or to FINISHED. `release` hands out every buffered record whose key
    is <= the lowest frontier: all keys up to there have arrived, since keys are unique.
    A sender not heard from yet is at NOTHING and holds everything back.

    What it buffers and hands out are items whose first element is the key: `(key, record)` for
    `push`, the caller's own tuples for `push_many` (a batch of stamped records as they are). Each
    sender's items wait in a list in key order, so `release` cuts each list where the low frontier
    falls (a binary search) and sorts what it cut, runs already in order, in C: `release` takes no
    Python step a record.
    """

    __slots__ = ("senders", "_index", "_frontiers", "_queues")

    def __init__(self, senders: Iterable[Hashable]) -> None:
        self.senders: tuple[Hashable, ...] = tuple(senders)
        self._index = {sender: i for i, sender in enumerate(self.senders)}
        if len(self._index) != len(self.senders):
            raise ValueError(f"senders repeat: {self.senders!r}")
        self._frontiers: list[Frontier] = [NOTHING] * len(self.senders)
        self._queues: list[list[tuple]] = [[] for _ in self.senders]

    def push(self, sender: Hashable, key: OrderKey, record: Any) -> None:
        """Buffer `record`; ValueError if `key` is not above the sender's frontier (out of order, or repeated)."""
        self.push_many(sender, [(key, record)])

    def push_many(self, sender: Hashable, items: list[tuple]) -> None:
        """Buffer `items`, each a tuple whose first element is its key, sent in this order; ValueError (and
        nothing buffered) unless the keys increase from above the sender's frontier."""
        if not items:
            return
        i = self._index[sender]
        keys = [item[0] for item in items]
        if not keys[0] > self._frontiers[i] or not all(map(operator.lt, keys, islice(keys, 1, None))):
            raise ValueError(f"sender {sender!r} sent keys out of order or not above its frontier "
                             f"{self._frontiers[i]!r}, from {keys[0]!r}")
        self._frontiers[i] = keys[-1]
        self._queues[i].extend(items)

    def advance(self, sender: Hashable, frontier: Frontier) -> None:
        """The sender will send no key <= `frontier` (a frontier below its current one changes nothing)."""
        i = self._index[sender]
        if frontier > self._frontiers[i]:
            self._frontiers[i] = frontier

    def low_frontier(self) -> Frontier:
        """The merged stream's progress: once `release` has run, every record with a key <= it is out."""
        return min(self._frontiers)

    def release(self) -> list[tuple]:
        """Every buffered item with key <= the low frontier, in key order."""
        low = min(self._frontiers)
        out: list[tuple] = []
        runs = 0
        for queue in self._queues:
            if queue and queue[0][0] <= low:
                cut = len(queue) if queue[-1][0] <= low else bisect.bisect_right(queue, low, key=_KEY)
                out += queue[:cut]
                del queue[:cut]
                runs += 1
        if runs > 1:
            out.sort(key=_KEY)  # keys are unique: nothing past them is compared
        return out

    def snapshot(self) -> dict[str, Any]:
        """Plain data (senders, frontiers, pending items) for the recovery store."""
        return {"senders": list(self.senders), "frontiers": list(self._frontiers),
                "pending": [list(queue) for queue in self._queues]}

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> FrontierMerge:
        merge = cls(snapshot["senders"])
        merge._frontiers = [tuple(frontier) for frontier in snapshot["frontiers"]]
        for i, pending in enumerate(snapshot["pending"]):  # tuples again, the key too, if a codec made lists
            merge._queues[i].extend((tuple(item[0]), *item[1:]) for item in pending)
        return merge


class ReadTurns:
    """Which part of a partitioned source reads next on one process: the one whose next record comes first.

    A receiver's FrontierMerge holds whatever arrives ahead of its slowest sender, and a Bytewax dataflow has
    no loops through which a receiver could slow a sender down (docs/design.md#bytewax-dataflows-have-no-loops).
    So the parts of one process take turns: a part reads only while its next key is the least of the
    process's unfinished parts' (`is_lowest`), and the merge holds about a batch a part. `limit_for` is the
    least next key of the others: reading below it keeps a part's records in the merged order itself.
    """

    __slots__ = ("_heads",)

    def __init__(self) -> None:
        self._heads: dict[Hashable, tuple] = {}

    def update(self, part: Hashable, next_key: tuple | None) -> None:
        """`part`'s next key (None: it has ended, and waits for no one)."""
        if next_key is None:
            self._heads.pop(part, None)
        else:
            self._heads[part] = next_key

    def is_lowest(self, part: Hashable) -> bool:
        key = self._heads.get(part)
        return key is not None and key <= min(self._heads.values())

    def limit_for(self, part: Hashable) -> tuple:
        """The least next key among the other parts (FINISHED when there are none)."""
        return min((key for other, key in self._heads.items() if other != part), default=FINISHED)
