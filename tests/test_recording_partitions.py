"""A recording file that holds several Kafka partitions is read as one stream per partition (issue 19).

A kcat recording of a multi-partition topic interleaves its partitions in one file. A consumer of
those partitions merges them by event time; so does the replay now (omnitrigger/io/recording.py), so a
replay and a live run of the same records agree (tests/test_live.py has the live twin). Within one
partition the file's order still holds: a late record stays late.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from conftest import kcat_envelope, records, replay, write_lines
from omnitrigger.pii import Pseudonymizer
from omnitrigger.io.recording import RecordingReader, file_partitions, line_partition
from omnitrigger.schemas import Contracts
from test_trust import MINUTE, T0, cart_shopper, receipt, rules_and_reasons


def till_on_partitions(recording: Path, first: int, second: int) -> None:
    """Anna's cart (60-minute reminder, 5-minute purchase grace); the till sends a stranger's receipt at
    minute 70 (partition `first`), then Anna's purchase of minute 58 (partition `second`), in that file order."""
    cart_shopper(recording, receipts=[])
    write_lines(recording / "pos.receipts.jsonl", [
        kcat_envelope("pos.receipts", first, 0, receipt(1, T0 + 70 * MINUTE, "L7", ("P7", 1)), T0 + 70 * MINUTE),
        kcat_envelope("pos.receipts", second, 0 if second != first else 1,
                      receipt(2, T0 + 58 * MINUTE, "L1", ("P1", 1)), T0 + 58 * MINUTE)])


def test_a_purchase_on_another_partition_is_not_held_behind_a_later_receipt(tmp_path: Path) -> None:
    till_on_partitions(tmp_path / "rec", first=0, second=1)
    _, files = replay(tmp_path, tmp_path / "rec")
    assert rules_and_reasons(files) == ([], [("cart_abandoned", "purchased")])


def test_within_one_partition_the_file_order_holds(tmp_path: Path) -> None:
    """The same two receipts on one partition: the purchase is behind the receipt of minute 70, so the
    reminder (due at 60, grace to 65) has gone out when it arrives, as a consumer of that partition sees it."""
    till_on_partitions(tmp_path / "rec", first=0, second=0)
    _, files = replay(tmp_path, tmp_path / "rec")
    assert rules_and_reasons(files)[0] == ["cart_abandoned"]


def interleaved_recording(recording: Path, count: int = 60) -> None:
    """Web events over three partitions, interleaved in one file, each partition late within itself now and
    then; and a bare-line file beside it."""
    lines = []
    for n in range(count):
        partition = n % 3
        ts = T0 + (n * 7919 % 50) * MINUTE
        lines.append(kcat_envelope("web.events", partition, n // 3, {
            "event_id": f"w{n}", "type": "view_item", "ts": ts, "channel": "web", "ids": {"cookie_id": f"c{n % 9}"},
            "product_id": f"P{n % 4}"}, ts))
    write_lines(recording / "web.events.jsonl", lines)
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": f"k{n}", "ts": T0 + n * 5 * MINUTE, "ids": {"cookie_id": f"c{n}"}, "channel": "push",
         "status": "granted"} for n in range(9)])


def test_the_reader_merges_partitions_in_event_time_and_keeps_each_partitions_order(tmp_path: Path) -> None:
    interleaved_recording(tmp_path / "rec")
    reader = RecordingReader(tmp_path / "rec", Contracts(), pseudonymizer=Pseudonymizer(b"k" * 32))
    items = reader.read_batch(10**6)
    reader.close()
    web = [item for item in items if item.topic == "web.events"]
    assert len(web) == 60
    for partition in range(3):
        offsets = [item.offset for item in web if item.partition == partition]
        assert offsets == sorted(offsets) and len(offsets) == 20  # each partition in its file order
    # Between partitions: the least head first, as a consumer of all three merges them.
    heads = {partition: [item for item in web if item.partition == partition] for partition in range(3)}
    position = {partition: 0 for partition in range(3)}
    for item in web:
        candidates = [(stream[position[p]].ts_ms, p) for p, stream in heads.items() if position[p] < len(stream)]
        assert (item.ts_ms, item.partition) == min(candidates)
        position[item.partition] += 1


@pytest.mark.parametrize("stop", [1, 7, 25, 50])
def test_a_replay_stopped_and_resumed_gives_the_uninterrupted_outputs(tmp_path: Path, stop: int) -> None:
    """Each partition of the file resumes where it stopped (the position names `<file>@<partition>`)."""
    interleaved_recording(tmp_path / "rec")
    _, whole = replay(tmp_path, tmp_path / "rec", name="whole")
    state = tmp_path / "state"
    replay(tmp_path, tmp_path / "rec", name="first", state_dir=state, stop_after=stop)
    _, resumed = replay(tmp_path, tmp_path / "rec", name="rest", state_dir=state)
    assert records(resumed["events"]) == records(whole["events"])
    assert len(records(whole["events"])) == 69


def test_which_partition_a_line_belongs_to(tmp_path: Path) -> None:
    kcat = orjson.dumps(kcat_envelope("web.events", 4, 0, {"a": 1}))
    assert line_partition(kcat) == 4
    reordered = orjson.dumps({"payload": "{}", "offset": 3, "partition": 2, "topic": "web.events"})
    assert line_partition(reordered) == 0  # not as kcat writes it: partition 0's stream
    assert line_partition(b'{"event_id": "e", "partition": 5}') == 0  # a bare event with such a field
    assert line_partition(b'{"topic":"x","partition":7,"offset":1,"payload":null}') == 7
    assert line_partition(b"not json at all, \"partition\": 3") == 0
    assert line_partition(b'{"topic":"x","partition":05,"offset":1}') == 0  # no JSON number as kcat writes one
    assert line_partition(b'{"topic":"x","partition":-1,"offset":1}') == -1
    assert line_partition(b"") == 0
    path = write_lines(tmp_path / "mixed.jsonl", [kcat, b"broken", reordered])
    assert file_partitions(path) == [0, 4]


@pytest.mark.parametrize("chunk", [7, 64, 1000, 1 << 20])
def test_the_partitions_of_a_file_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """The prescan reads a MiB at a time; with any chunk size it finds what reading line by line finds, a
    line cut by a chunk's end and a last line without its terminator included."""
    from omnitrigger.io import recording

    monkeypatch.setattr(recording, "_PRESCAN_CHUNK", chunk)
    bare = [orjson.dumps({"event_id": f"e{n}", "ts": T0}) for n in range(30)]
    kcat = [orjson.dumps(kcat_envelope("web.events", n % 2 + 1, n, {"event_id": f"k{n}"})) for n in range(10)]
    reordered = orjson.dumps({"payload": "{}", "offset": 3, "partition": 5, "topic": "web.events"})  # partition 0
    spaced = b'{"topic": "web.events", "partition": 5 ,"offset":4,"payload":"{}"}'  # spaces as JSON allows
    last = orjson.dumps(kcat_envelope("web.events", 7, 0, {"event_id": "last"}))
    cases = {
        "bare": (b"\n".join(bare) + b"\n", [0]),
        "kcat": (b"\n".join(kcat) + b"\n", [1, 2]),
        "mixed": (b"\n".join(bare[:10] + kcat + [reordered, spaced, b"", b"not json"] + bare[10:] + [last]), [0, 1, 2, 5, 7]),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(data)
        assert file_partitions(path) == expected, name


@pytest.mark.parametrize("block", [16, 200, 4096])
@pytest.mark.parametrize("seed", range(6))
def test_a_partitions_cursor_reads_exactly_its_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int,
                                                     seed: int) -> None:
    """Each partition's cursor skips the other partitions' lines a block at a time; whatever the block size,
    it reads the lines `line_partition` gives it, with their line numbers and byte offsets, and a look ahead
    (`mark`, `reset`) leaves it where it was."""
    import random

    from omnitrigger.io import recording

    monkeypatch.setattr(recording._PartitionCursor, "_BLOCK", block)
    rng = random.Random(seed)
    lines: list[bytes] = []
    for n in range(300):
        roll = rng.random()
        if roll < 0.8:
            lines.append(orjson.dumps(kcat_envelope("web.events", rng.choice([0, 1, 2, 3, 10, 11]), n, {"n": n})))
        elif roll < 0.85:
            lines.append(b'{"topic":"web.events","partition":1}')  # its last field
        elif roll < 0.87:
            lines.append(b'{"topic":"web.events","partition":01,"offset":1}')  # no JSON number: partition 0
        elif roll < 0.9:
            lines.append(rng.choice([b'{"topic":"web.events","partition": 2 ,"offset":1}',  # spaces: 2
                                     b'{"topic":"web.events","partition":1 ,"offset":1}', b'{ "topic" : "x","partition":3}']))
        elif roll < 0.95:
            lines.append(orjson.dumps({"event_id": f"bare{n}"}))
        else:
            lines.append(b"")
    data = b"\n".join(lines) + (b"\n" if seed % 2 else b"")  # with and without a last terminator
    path = tmp_path / "web.events.jsonl"
    path.write_bytes(data)
    starts, offset = [], 0
    for line in lines:
        starts.append(offset)
        offset += len(line) + 1
    for partition in file_partitions(path):
        expected = [(number, starts[number]) for number, line in enumerate(lines) if line_partition(line) == partition
                    and (number < len(lines) - 1 or line or seed % 2)]
        cursor = recording._PartitionCursor("web.events", path, partition, 0, 0, 0)
        got = []
        while True:
            if len(got) % 7 == 3:  # a look ahead in between changes nothing
                mark = cursor.mark()
                cursor.read_line(limit=5)
                cursor.read_line()
                cursor.reset(mark)
            read = cursor.read_line()
            if read is None:
                break
            line, number = read
            assert line.rstrip(b"\n") == lines[number]
            assert cursor.line_at(cursor.read_pos - len(line), len(line)) == line
            got.append((number, cursor.read_pos - len(line)))
        cursor.close()
        assert got == expected, partition
