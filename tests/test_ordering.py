"""Property tests of state/ordering.py: stamped order keys reproduce the recording's heap merge, and the
frontier merge restores one order whatever the senders' interleaving, across a snapshot too."""

from __future__ import annotations

import heapq
import pickle
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnitrigger.pii import Pseudonymizer
from omnitrigger.io.recording import RecordingReader
from omnitrigger.records import Event
from omnitrigger.schemas import Contracts
from omnitrigger.state.ordering import FINISHED, NOTHING, FrontierMerge, OrderKey, PartitionStamper, decode_key, encode_key

SETTINGS = settings(max_examples=150, deadline=None)
Line = tuple[int, str, int, int]  # (merge time, topic, partition, offset): a line as the reader's heap sees it


# -- the reader's merge and the order keys ---------------------------------------

def reader_merge(streams: list[list[Line]]) -> list[tuple[int, int]]:
    """(stream, position) in the order RecordingReader hands lines out: one head per file on a heap keyed
    (merge_ts, topic, partition, offset, file index, ...) (`__init__`/`_advance`), the least popped and
    its file's next line pushed (`read_batch`). The file index is unique on the heap: nothing after it
    is ever compared."""
    heap: list[tuple[int, str, int, int, int, int]] = []

    def advance(index: int, position: int) -> None:
        if position < len(streams[index]):
            heapq.heappush(heap, (*streams[index][position], index, position))

    for index in range(len(streams)):
        advance(index, 0)
    out = []
    while heap:
        *_, index, position = heapq.heappop(heap)
        out.append((index, position))
        advance(index, position + 1)
    return out


def stamped_order(streams: list[list[Line]]) -> tuple[list[tuple[int, int]], dict[tuple[int, int], OrderKey]]:
    """(stream, position) sorted by the OrderKey of a PartitionStamper per stream, and the keys."""
    keys = {}
    for index, stream in enumerate(streams):
        stamper = PartitionStamper(stream[0][1], stream[0][2]) if stream else None
        for position, (ts, _, _, _) in enumerate(stream):
            keys[index, position] = stamper.stamp(ts)
    return sorted(keys, key=keys.__getitem__), keys


def running_max_order(streams: list[list[Line]], with_index: bool = False) -> list[tuple[int, int]]:
    """(stream, position) sorted by (running max of the stream's tuples so far, position), the tuple
    extended by the stream's index when `with_index` (the heap's own comparison key)."""
    keyed = []
    for index, stream in enumerate(streams):
        best: tuple = ()
        for position, line in enumerate(stream):
            best = max(best, (*line, index) if with_index else line)
            keyed.append(((best, position), (index, position)))
    return [where for _, where in sorted(keyed)]


TOPICS = ["a", "ab", "b", "web.events"]  # "a" < "ab" < "b": string order matters between partitions


@st.composite
def partition_streams(draw: Any) -> list[list[Line]]:
    """One stream per (topic, partition), offsets increasing, times from a narrow range: late records and ties."""
    parts = draw(st.lists(st.tuples(st.sampled_from(TOPICS), st.integers(0, 2)), min_size=1, max_size=5, unique=True))
    streams = []
    for topic, partition in parts:
        times = draw(st.lists(st.integers(0, 12), max_size=15))
        offset = draw(st.integers(0, 5))
        stream = []
        for ts in times:
            stream.append((ts, topic, partition, offset))
            offset += draw(st.integers(1, 3))
        streams.append(stream)
    return streams


@st.composite
def file_streams(draw: Any) -> list[list[Line]]:
    """Streams of arbitrary lines, as a file may hold: several partitions, repeated and unordered offsets,
    the same line in two files."""
    line = st.tuples(st.integers(0, 6), st.sampled_from(TOPICS[:2]), st.integers(0, 1), st.integers(0, 3))
    return draw(st.lists(st.lists(line, max_size=10), min_size=1, max_size=4))


@SETTINGS
@given(partition_streams())
def test_stamped_keys_sort_as_the_readers_heap_merge(streams: list[list[Line]]) -> None:
    merged = reader_merge(streams)
    order, keys = stamped_order(streams)
    assert order == merged
    assert running_max_order(streams) == merged  # the statement: (running max tuple, position)
    clock = None  # the merged stream's latest event time, as RecordingReader.clock_ms keeps it
    for index, position in merged:
        ts = streams[index][position][0]
        clock = ts if clock is None else max(clock, ts)
        assert keys[index, position][0] == clock


@SETTINGS
@given(file_streams())
def test_any_streams_sort_by_the_running_max_of_the_heaps_own_key(streams: list[list[Line]]) -> None:
    """The general statement: greedy heap merge == sort by (running max of the heap key, position),
    for any streams, when the heap key includes the stream's index (so no two heads tie)."""
    merged = reader_merge(streams)
    assert running_max_order(streams, with_index=True) == merged
    clock = None
    best = {}
    for index, position in merged:
        clock = max(clock or 0, streams[index][position][0])
        best[index] = max(line[0] for line in streams[index][: position + 1])
        assert best[index] == clock


def test_per_partition_keys_differ_from_a_merge_of_whole_files() -> None:
    """Merged as one stream, a file with two partitions would hold its late record (t/1 at 1) behind the
    file's head (t/0 at 5); per-partition keys do not, and neither does RecordingReader, which reads such
    a file as one stream per partition (test_recording_reader_hands_out_the_partition_merge)."""
    files = [[(5, "t", 0, 0), (1, "t", 1, 0)], [(3, "u", 0, 0)]]
    assert reader_merge(files) == [(1, 0), (0, 0), (0, 1)]
    by_partition = [[(5, "t", 0, 0)], [(1, "t", 1, 0)], [(3, "u", 0, 0)]]
    assert [by_partition[i][0] for i, _ in stamped_order(by_partition)[0]] == [(1, "t", 1, 0), (3, "u", 0, 0),
                                                                              (5, "t", 0, 0)]
    assert reader_merge(by_partition) == [(1, 0), (2, 0), (0, 0)]


def test_two_files_with_the_same_line_tie_on_the_file_index() -> None:
    """Without the file index in the key, (running max, position) can misorder streams that share a line."""
    files = [[(0, "a", 0, 0), (2, "a", 0, 0)], [(2, "a", 0, 0)]]
    assert reader_merge(files) == [(0, 0), (0, 1), (1, 0)]
    assert running_max_order(files) == [(0, 0), (1, 0), (0, 1)]
    assert running_max_order(files, with_index=True) == reader_merge(files)


# -- against RecordingReader itself ---------------------------------------------

BASE_MS = 1_795_622_400_000  # 2026-11-25T16:00:00Z


def envelope(topic: str, partition: int, offset: int, body: dict[str, Any], ts_ms: int) -> bytes:
    """The line `kcat -C -J` writes for one record (conftest.kcat_envelope's, with the Kafka time)."""
    return orjson.dumps({"topic": topic, "partition": partition, "offset": offset, "tstype": "create", "ts": ts_ms,
                         "broker": 0, "key": None, "payload": orjson.dumps(body).decode()})


@cache
def contracts() -> Contracts:
    return Contracts()


def web_event(n: int, ts_ms: int) -> dict[str, Any]:
    return {"event_id": f"w-{n}", "type": "view_item", "ts": ts_ms, "channel": "web", "ids": {"cookie_id": f"c-{n}"},
            "product_id": "p-1"}


def geo_ping(n: int, ts_ms: int) -> dict[str, Any]:
    return {"event_id": f"g-{n}", "ts": ts_ms, "ids": {"device_id": f"d-{n}"}, "lat": 60.1699, "lon": 24.9384,
            "accuracy_m": 12.5, "source": "gps"}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 12)), max_size=12),
       st.lists(st.integers(0, 12), max_size=12))
def test_recording_reader_hands_out_the_partition_merge(web: list[tuple[int, int]], geo: list[int]) -> None:
    """The model above is RecordingReader's order, one stream per (topic, partition): kcat envelopes (each
    with its Kafka time, so no clock check depends on the other file), web.events over two partitions
    interleaved in one file, geo.pings over one. So the stamped keys give the reader's order too."""
    files = {"web.events": [(partition, ts) for partition, ts in web], "geo.pings": [(0, ts) for ts in geo]}
    streams: list[list[Line]] = []
    with tempfile.TemporaryDirectory() as folder:
        for topic, records in sorted(files.items()):  # the reader's file order: by name
            offsets = [0, 0]
            lines, by_partition = [], {}
            for n, (partition, ts) in enumerate(records):
                ts_ms = BASE_MS + ts * 1000
                body = (web_event if topic == "web.events" else geo_ping)(n, ts_ms)
                lines.append(envelope(topic, partition, offsets[partition], body, ts_ms))
                by_partition.setdefault(partition, []).append((ts_ms, topic, partition, offsets[partition]))
                offsets[partition] += 1
            (Path(folder) / f"{topic}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
            streams += [by_partition[partition] for partition in sorted(by_partition)]
        reader = RecordingReader(Path(folder), contracts(), pseudonymizer=Pseudonymizer(b"k" * 32))
        items = reader.read_batch(10**6)
        reader.close()
    assert all(type(item) is Event for item in items)
    read = [(item.ts_ms, item.topic, item.partition, item.offset) for item in items]
    assert read == [streams[i][p] for i, p in reader_merge(streams)]
    assert read == [streams[i][p] for i, p in stamped_order(streams)[0]]
    if items:
        assert reader.clock_ms == max(ts for ts, *_ in read)


# -- PartitionStamper ------------------------------------------------------------

@SETTINGS
@given(st.lists(st.integers(-5, 20), max_size=30), st.integers(0, 30))
def test_a_stamper_resumed_from_its_state_stamps_the_same_keys(times: list[int], cut: int) -> None:
    whole = PartitionStamper("t", 3)
    expected = [whole.stamp(ts) for ts in times]
    first = PartitionStamper("t", 3)
    keys = [first.stamp(ts) for ts in times[:cut]]
    resumed = PartitionStamper("t", 3, pickle.loads(pickle.dumps(first.state())))
    keys += [resumed.stamp(ts) for ts in times[cut:]]
    assert keys == expected
    assert [key[3] for key in keys] == list(range(len(times)))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


# -- OrderKey bytes --------------------------------------------------------------

order_keys = st.tuples(
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=6)
    | st.sampled_from(TOPICS),
    st.integers(-(1 << 31), (1 << 31) - 1) | st.integers(0, 3),
    st.integers(0, (1 << 64) - 1) | st.integers(0, 3),
)


@settings(max_examples=400, deadline=None)
@given(order_keys, order_keys)
def test_key_bytes_sort_as_the_keys_and_round_trip(a: OrderKey, b: OrderKey) -> None:
    assert decode_key(encode_key(a)) == a
    assert (a < b) == (encode_key(a) < encode_key(b))
    assert (a == b) == (encode_key(a) == encode_key(b))


def test_a_topic_with_nul_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_key((0, "a\0b", 0, 0))


# -- FrontierMerge ---------------------------------------------------------------

Step = tuple[str, int, Any]  # ("push", sender, (key, record)) | ("advance", sender, frontier) | ("release", -1, None)


@st.composite
def sender_scripts(draw: Any) -> list[list[Step]]:
    """Per sender, what it sends in order: its records (keys from a stamper, increasing) and now and then a
    frontier it may give, never past its next key; the last step FINISHED, unless it stays open."""
    scripts = []
    for sender in range(draw(st.integers(1, 4))):
        stamper = PartitionStamper(draw(st.sampled_from(TOPICS)), sender)
        keys = [stamper.stamp(ts) for ts in draw(st.lists(st.integers(0, 15), max_size=12))]
        script: list[Step] = []
        for n, key in enumerate(keys):
            if draw(st.booleans()):  # a frontier before the record: at most just below it
                script.append(("advance", sender, draw(st.sampled_from([(key[0],), key[:3] + (key[3] - 1,)]))))
            script.append(("push", sender, (key, ("record", sender, n))))
            if draw(st.booleans()):
                script.append(("advance", sender, key))  # a frontier at its last record: a heartbeat
        if draw(st.integers(0, 4)):  # most senders finish
            script.append(("advance", sender, FINISHED))
        scripts.append(script)
    return scripts


def interleave(draw: Any, scripts: list[list[Step]]) -> list[Step]:
    """The scripts delivered in a random interleaving (FIFO per sender), with releases sprinkled in."""
    cursors = [0] * len(scripts)
    steps: list[Step] = []
    while any(cursor < len(script) for cursor, script in zip(cursors, scripts)):
        open_ = [i for i, script in enumerate(scripts) if cursors[i] < len(script)]
        i = draw(st.sampled_from(open_))
        steps.append(scripts[i][cursors[i]])
        cursors[i] += 1
        if draw(st.integers(0, 3)) == 0:
            steps.append(("release", -1, None))
    return steps


def run(merge: FrontierMerge, steps: list[Step], released: list[tuple[OrderKey, Any]],
        snapshot_at: int | None = None) -> FrontierMerge:
    """Apply `steps`; after each release, check it is incremental. Snapshot, pickle and restore at `snapshot_at`."""
    for n, (kind, sender, value) in enumerate(steps):
        if n == snapshot_at:
            merge = FrontierMerge.from_snapshot(pickle.loads(pickle.dumps(merge.snapshot())))
        if kind == "push":
            merge.push(sender, *value)
        elif kind == "advance":
            merge.advance(sender, value)
        else:
            out = merge.release()
            low = merge.low_frontier()
            assert all(key <= low for key, _ in out)  # nothing beyond the low frontier
            assert all(key > low for pending in merge.snapshot()["pending"] for key, _ in pending)  # all up to it
            if released and out:
                assert out[0][0] > released[-1][0]
            released.extend(out)
    released.extend(merge.release())
    return merge


@SETTINGS
@given(sender_scripts(), st.data())
def test_the_merge_releases_the_sorted_union_whatever_the_interleaving(scripts: list[list[Step]], data: Any) -> None:
    records = [value for script in scripts for kind, _, value in script if kind == "push"]
    open_senders = [i for i, script in enumerate(scripts) if not script or script[-1][2] is not FINISHED]
    outputs = []
    for _ in range(2):
        steps = interleave(data.draw, scripts)
        snapshot_at = data.draw(st.none() | st.integers(0, len(steps)))
        released: list[tuple[OrderKey, Any]] = []
        merge = run(FrontierMerge(range(len(scripts))), steps, released, snapshot_at)
        outputs.append(released)
        if not open_senders:
            assert released == sorted(records)  # no loss, no duplicate, key order
            assert merge.low_frontier() == FINISHED
        else:  # an open sender holds back what is past its last key
            low = merge.low_frontier()
            assert released == sorted(record for record in records if record[0] <= low)
    assert outputs[0] == outputs[1]


def key(ts: int, position: int, topic: str = "t", partition: int = 0) -> OrderKey:
    return ts, topic, partition, position


def test_a_finished_sender_holds_nothing_back() -> None:
    merge = FrontierMerge(["x", "y"])
    merge.advance("x", FINISHED)
    merge.push("y", key(5, 0), "a")
    merge.push("y", key(7, 1), "b")
    assert merge.release() == [(key(5, 0), "a"), (key(7, 1), "b")]
    assert merge.low_frontier() == key(7, 1)


def test_a_sender_never_heard_from_holds_everything_back() -> None:
    merge = FrontierMerge(["x", "y", "z"])
    merge.push("x", key(1, 0), "a")
    merge.advance("y", FINISHED)
    assert merge.release() == [] and merge.low_frontier() == NOTHING
    merge.advance("z", (1,))  # "nothing more before time 1": a key at time 1 may still come
    assert merge.release() == []
    merge.advance("z", (2,))
    assert merge.release() == [(key(1, 0), "a")]


def test_a_key_not_above_its_senders_frontier_is_refused() -> None:
    merge = FrontierMerge(["x"])
    merge.push("x", key(3, 1), "a")
    for bad in (key(3, 1), key(3, 0), key(2, 2)):
        with pytest.raises(ValueError):
            merge.push("x", bad, "b")
    merge.advance("x", FINISHED)
    with pytest.raises(ValueError):
        merge.push("x", key(9, 9), "c")
    with pytest.raises(ValueError):
        FrontierMerge(["x", "x"])


def test_a_batch_out_of_order_is_refused_whole() -> None:
    """`push_many` takes the caller's own tuples (key first) as they are, but only in increasing key order."""
    merge = FrontierMerge(["x", "y"])
    merge.push_many("x", [(key(1, 0), "a"), (key(2, 1), "b")])
    for bad in ([(key(3, 2), "c"), (key(3, 2), "d")], [(key(4, 3), "c"), (key(3, 9), "d")], [(key(2, 1), "c")]):
        with pytest.raises(ValueError):
            merge.push_many("x", bad)
    merge.advance("y", FINISHED)
    assert merge.release() == [(key(1, 0), "a"), (key(2, 1), "b")]  # nothing of the refused batches
    merge.push_many("x", [(key(5, 4), "e")])
    merge.advance("x", FINISHED)
    assert merge.release() == [(key(5, 4), "e")]
