"""The partitioned replay source and the sequencer's merge: one part a stream, merged back into the reader's order.

Property tests drive the parts (omnitrigger/io/recording.py `StreamReader`) in random turns and random batch sizes
into `InputMerge` (operators/input_merge.py) over a real RocksDB store, with snapshots and crashes between,
and hold the released records to `RecordingReader`'s merged order, seqs and bodies included. Through the whole
flow: a bare line is judged against its own stream's clock, whatever the other files hold.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import kcat_envelope, records, replay, write_lines
from test_ordering import BASE_MS, geo_ping, web_event
from omnitrigger.config import Config
from omnitrigger.flows.recording_source import RecordingSource
from omnitrigger.operators.input_merge import InputMerge
from omnitrigger.pii import Pseudonymizer, key_from_environment
from omnitrigger.io.recording import LineDecoder, RecordingReader, StreamReader, recording_streams
from omnitrigger.records import PartBatch
from omnitrigger.schemas import Contracts
from omnitrigger.state import ShardState
from omnitrigger.state.rocksdb import RocksDBStore

MINUTE_MS = 60_000
DAY_MS = 86_400_000
KEY = b"k" * 32


@st.composite
def recordings(draw: Any) -> dict[str, list[Any]]:
    """web.events as kcat envelopes over up to three partitions in one file (late records, ties, a broken
    payload now and then); geo.pings as bare lines, with lone spikes days ahead and broken lines."""
    files: dict[str, list[Any]] = {}
    web_lines: list[Any] = []
    offsets = [0, 0, 0]
    for n in range(draw(st.integers(0, 14))):
        partition = draw(st.integers(0, 2))
        ts_ms = BASE_MS + draw(st.integers(0, 20)) * MINUTE_MS
        body: Any = web_event(n, ts_ms) if draw(st.integers(0, 9)) else "{broken"
        web_lines.append(kcat_envelope("web.events", partition, offsets[partition], body, ts_ms))
        offsets[partition] += 1
    if web_lines:
        files["web.events"] = web_lines
    ping_lines: list[Any] = []
    for n in range(draw(st.integers(0, 14))):
        kind = draw(st.integers(0, 11))
        if kind == 0:
            ping_lines.append(b"{not json")
        else:
            ahead = 5 * DAY_MS if kind == 1 else 0  # a spike the stream does not support: a dead letter
            ping_lines.append(geo_ping(n, BASE_MS + draw(st.integers(0, 20)) * MINUTE_MS + ahead))
    if ping_lines:
        files["geo.pings"] = ping_lines
    if not files:
        files["web.events"] = [web_event(0, BASE_MS)]
    return files


def comparable(item: Any) -> bytes:
    """An Event or a dead letter's Emitted, every field."""
    return orjson.dumps(item._asdict())


def decoder() -> LineDecoder:
    return LineDecoder(Contracts(), 262_144, None, Pseudonymizer(KEY), 900_000)


@settings(max_examples=60, deadline=None)
@given(recordings(), st.integers(0, 2**32 - 1))
def test_parts_read_in_any_turns_merge_into_the_readers_order_across_crashes(files: dict[str, list[Any]],
                                                                             seed: int) -> None:
    """Any part may send next, any number of records; now and then the merge's state is committed with the
    parts' positions (a Bytewax snapshot), and now and then everything after the last such snapshot is lost
    (a crash: store rolled back, parts rebuilt from their saved positions). The records released, numbered,
    are RecordingReader's."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        recording = Path(folder) / "rec"
        for topic, lines in files.items():
            write_lines(recording / f"{topic}.jsonl", lines)
        reader = RecordingReader(recording, Contracts(), pseudonymizer=Pseudonymizer(KEY))
        expected = [comparable(item) for item in reader.read_batch(10**6)]
        reader.close()

        layout = recording_streams(recording)
        store = RocksDBStore(Path(folder) / "store")
        shared = decoder()

        def build(positions: list[Any], generation: int) -> tuple[list[StreamReader], InputMerge]:
            state = ShardState(store, "input", 0)
            state.rollback_to(generation)
            streams = [StreamReader(stream, index, shared, 86_400_000, positions[index])
                       for index, stream in enumerate(layout)]
            return streams, InputMerge(state)

        saved_positions: list[Any] = [None] * len(layout)
        saved_generation = 0
        saved_released: list[bytes] = []
        saved_finished = [False] * len(layout)
        streams, merge = build(saved_positions, 0)
        released: list[bytes] = []
        finished = [False] * len(layout)
        while not all(finished):
            roll = rng.random()
            if roll < 0.1:  # a snapshot
                saved_generation = merge.state.commit()
                saved_positions = [stream.position() for stream in streams]
                saved_released = list(released)
                saved_finished = list(finished)
                continue
            if roll < 0.15 and saved_generation:  # a crash: back to the last snapshot
                for stream in streams:
                    stream.close()
                streams, merge = build(saved_positions, saved_generation)
                released = list(saved_released)
                finished = list(saved_finished)
                continue
            index = rng.randrange(len(streams))
            if finished[index]:
                continue
            stream = streams[index]
            sent = stream.read(rng.randint(0, 4))
            frontier = stream.frontier()
            finished[index] = stream.head is None
            for batch in merge.on_values([PartBatch(index, len(streams), frontier, sent)]):
                released += [comparable(item) for item in batch]
        for stream in streams:
            stream.close()
        store.close()
    assert released == expected


@settings(max_examples=60, deadline=None)
@given(recordings(), st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(0, 40))
def test_the_sources_parts_polled_in_any_order_merge_into_the_readers_order(files: dict[str, list[Any]], seed: int,
                                                                           batch_size: int, stop: int) -> None:
    """RecordingSource's own parts, polled as Bytewax might (in any order, any part at any time), with snapshots
    and crashes between: first a run with `stop_after` (exactly the merged order's first records come out, so
    the merge holds nothing back), then a resume to the end. Together: RecordingReader's records, numbered."""
    rng = random.Random(seed)
    config = Config(batch_size=batch_size)
    with tempfile.TemporaryDirectory() as folder:
        recording = Path(folder) / "rec"
        for topic, lines in files.items():
            write_lines(recording / f"{topic}.jsonl", lines)
        reader = RecordingReader(recording, Contracts(), pseudonymizer=Pseudonymizer(key_from_environment()))
        expected = [comparable(item) for item in reader.read_batch(10**6)]
        reader.close()
        store = RocksDBStore(Path(folder) / "store")
        saved: dict[str, Any] = {}
        saved_generation = 0
        released: list[bytes] = []
        saved_released: list[bytes] = []
        for stop_after in (stop, None):
            source = RecordingSource(recording, config, stop_after=stop_after)
            while True:  # one run: every part polled until each has ended; now and then a snapshot or a crash
                parts = {key: source.build_part("read", key, saved.get(key)) for key in source.list_parts()}
                state = ShardState(store, "input", 0)
                state.rollback_to(saved_generation)
                merge = InputMerge(state)
                released = list(saved_released)
                live = sorted(parts)
                crashed = False
                while live:
                    roll = rng.random()
                    if roll < 0.05:
                        saved = {key: part.snapshot() for key, part in parts.items()}
                        saved_generation = merge.state.commit()
                        saved_released = list(released)
                        continue
                    if roll < 0.08:
                        crashed = True
                        break
                    key = rng.choice(live)
                    try:
                        values = parts[key].next_batch()
                    except StopIteration:
                        live.remove(key)
                        continue
                    for batch in merge.on_values(values):
                        released += [comparable(item) for item in batch]
                for part in parts.values():
                    part.close()
                source = RecordingSource(recording, config, stop_after=stop_after)  # a new process's
                if not crashed:
                    break
            if stop_after is not None:
                assert released == expected[:stop_after]
            saved = {key: part.snapshot() for key, part in parts.items()}  # the run's final snapshot
            saved_generation = merge.state.commit()
            saved_released = list(released)
        store.close()
    assert released == expected


def test_a_bare_line_is_judged_against_its_own_streams_clock_whatever_the_other_files_hold(tmp_path: Path) -> None:
    """A ping ten days ahead of its own stream, which then carries on where it was, is a spike: a
    `timestamp_in_future` dead letter, with or without a web.events file whose records are ten days ahead
    (the merged stream's clock, which earlier versions judged bare lines against, would have let it through)."""
    pings = [geo_ping(0, BASE_MS), geo_ping(1, BASE_MS + 10 * DAY_MS), geo_ping(2, BASE_MS + MINUTE_MS),
             geo_ping(3, BASE_MS + 2 * MINUTE_MS)]
    views = [web_event(n, BASE_MS + 10 * DAY_MS + n * MINUTE_MS) for n in range(3)]
    alone, with_views = tmp_path / "alone", tmp_path / "with-views"
    write_lines(alone / "geo.pings.jsonl", pings)
    write_lines(with_views / "geo.pings.jsonl", pings)
    write_lines(with_views / "web.events.jsonl", views)
    _, only_pings = replay(tmp_path, alone, name="alone")  # max_future: a day
    summary, both = replay(tmp_path, with_views, name="with-views")
    for files in (only_pings, both):
        letters = records(files["dead_letter"])
        assert [(letter["reason"], letter["topic"], letter["offset"]) for letter in letters] == [
            ("timestamp_in_future", "geo.pings", 1)]
    assert summary.records_read == 7


def test_a_replay_stopped_before_a_files_first_record_releases_exactly_what_it_read(tmp_path: Path) -> None:
    """The receipts all come hours after the views, so their part waits for its turn the whole first run; it must
    still tell the merge where it stands, or the merge holds every view back. `--stop-after 10` hands exactly
    the first 10 records on, and the resumed run gives the uninterrupted outputs."""
    views = [web_event(n, BASE_MS + n * MINUTE_MS) for n in range(30)]
    receipts = [{"terminal_id": "T1", "receipt_no": str(n), "store_id": "S1", "ts": BASE_MS + 5 * 3_600_000 + n,
                 "items": [{"product_id": "p-1", "qty": 1, "price": 2.5}]} for n in range(5)]
    recording = tmp_path / "rec"
    write_lines(recording / "web.events.jsonl", views)
    write_lines(recording / "pos.receipts.jsonl", receipts)
    _, whole = replay(tmp_path, recording, name="whole")
    state = tmp_path / "state"
    first, stopped = replay(tmp_path, recording, name="resumed", state_dir=state, stop_after=10)
    assert first.records_read == 10
    assert [record["event"]["event_id"] for record in records(stopped["events"])] == [f"w-{n}" for n in range(10)]
    second, resumed = replay(tmp_path, recording, name="resumed", state_dir=state)
    assert second.records_read == 35
    assert resumed == whole


def test_the_progress_line_counts_every_part_and_ends_at_the_whole_recording(tmp_path: Path) -> None:
    """Without --quiet, the parts of the process report together: the last line gives every record once and
    100 % of the bytes, a file of two partitions (two parts reading one file) counted once."""
    recording = tmp_path / "rec"
    write_lines(recording / "web.events.jsonl",
                [kcat_envelope("web.events", n % 2, n // 2, web_event(n, BASE_MS + n * MINUTE_MS), BASE_MS + n * MINUTE_MS)
                 for n in range(20)])
    write_lines(recording / "geo.pings.jsonl", [geo_ping(n, BASE_MS + n * MINUTE_MS) for n in range(7)])
    stores = tmp_path / "stores.csv"
    stores.write_text("store_id,name,lat,lon\nS1,Kamppi,60.1699,24.9384\n")
    result = subprocess.run([sys.executable, "-m", "omnitrigger", "replay", str(recording), "--stores", str(stores),
                             "--out", str(tmp_path / "triggers.jsonl")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("replay: ")]
    assert lines[-1].startswith("replay: 27 records read (100.0% of the recording), "), lines
