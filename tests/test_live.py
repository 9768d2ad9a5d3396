"""Live mode against librdkafka's mock cluster: same outputs as the replay, outages, start-up checks, metrics.

Why the live outputs are compared as sets: the job publishes each record keyed
by customer id, so the order across output partitions is not the replay's
merged order; the records themselves are the same. What makes them the same
is the source's event-time merge (omnitrigger/io/live_input.py): on a backlog it
hands the records out in the replay's order with the replay's seqs, so
customer ids, visits and trigger ids agree. A replay reads a file that
holds several partitions as one stream per partition, as a consumer of them
does (test_a_file_of_two_partitions_replays_as_live_consumes_them); most
tests here put the demo's receipts on one partition all the same. A last ping, days
after the rest, moves the event-time clock past every deadline and open
visit in both modes (live mode never reaches the replay's end of input,
where the replay flushes them).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import write_stores
from kafka_fixtures import (  # noqa: F401  (mock_kafka is a fixture)
    LiveJob, config_file, create_topics, free_port, live_config, mock_kafka, read_topic, scrape, wait_for_counts,
)
from omnitrigger.config import Config
from omnitrigger.demo.generator import START_MS, RecordingGenerator
from omnitrigger.io.kafka_tools import input_topics, output_topics, publish, record
from omnitrigger.io.live_input import EventTimeMerger, MessageDecoder
from omnitrigger.pii import Pseudonymizer
from omnitrigger.io.recording import LineDecoder
from omnitrigger.records import DEAD_LETTERS, SUPPRESSED, TRIGGERS, VISITS, Emitted, Event
from omnitrigger.runner.replay import ReplayOptions, run_replay
from omnitrigger.schemas import Contracts
from test_recording_partitions import till_on_partitions

STREAMS = (TRIGGERS, SUPPRESSED, VISITS, DEAD_LETTERS)


def single_partition_recording(folder: Path, customers: int = 40) -> tuple[Path, Path]:
    """The demo generator's recording with pos.receipts on one partition (file order kept); and its stores."""
    generator = RecordingGenerator(seed=7, customers=customers).generate()
    recording = folder / "recording"
    generator.write(recording)
    generator.write_stores(folder / "stores.csv")
    receipts = recording / "pos.receipts.jsonl"
    lines = []
    for offset, line in enumerate(receipts.read_bytes().splitlines()):
        envelope = orjson.loads(line)
        envelope.update(partition=0, offset=offset)
        lines.append(orjson.dumps(envelope))
    receipts.write_bytes(b"".join(line + b"\n" for line in lines))
    sentinel = {"event_id": "ping-sentinel", "ts": START_MS + 20 * 86_400_000, "ids": {"device_id": "dev-sentinel"},
                "lat": 0.5, "lon": 0.5, "accuracy_m": 10, "source": "gps"}
    with (recording / "geo.pings.jsonl").open("ab") as handle:
        handle.write(orjson.dumps(sentinel) + b"\n")
    return recording, folder / "stores.csv"


def replay_streams(tmp_path: Path, recording: Path, stores: Path) -> dict[str, list[dict[str, Any]]]:
    """What `omnitrigger replay` writes for each output stream of live mode."""
    paths = {stream: tmp_path / f"replay-{stream}.jsonl" for stream in STREAMS}
    run_replay(ReplayOptions(recording_dir=recording, stores=stores, out=paths[TRIGGERS], suppressed=paths[SUPPRESSED],
                             visits=paths[VISITS], dead_letter=paths[DEAD_LETTERS]))
    return {stream: [orjson.loads(line) for line in path.read_bytes().splitlines()] for stream, path in paths.items()}


def normalized(stream: str, record_: dict[str, Any], prefix: str) -> bytes:
    """A record as both modes must agree on it.

    emitted_at is the wall clock. A dead letter's source_file exists only in a
    replay, and its topic is the Kafka topic (with the prefix). A Kafka message
    is the payload of the envelope a recording of it holds, so a bare line that
    is not JSON (invalid_json, empty_line) is invalid_payload_json live, as in a
    replay of `omnitrigger record`'s recording of it.
    """
    record_ = dict(record_)
    record_.pop("emitted_at", None)
    if stream == DEAD_LETTERS:
        record_.pop("source_file", None)
        record_["topic"] = str(record_["topic"]).removeprefix(prefix)
        if record_["reason"] in ("invalid_json", "empty_line"):
            record_["reason"] = "invalid_payload_json"
            record_.pop("detail", None)
        elif record_["reason"] == "invalid_payload_json":
            record_.pop("detail", None)
    return orjson.dumps(record_, option=orjson.OPT_SORT_KEYS)


def assert_same_outputs(live: dict[str, list[dict[str, Any]]], replayed: dict[str, list[dict[str, Any]]],
                        prefix: str) -> None:
    for stream in STREAMS:
        got = sorted(normalized(stream, message["value"], prefix) for message in live[stream])
        want = sorted(normalized(stream, record_, prefix) for record_ in replayed[stream])
        assert got == want, f"{stream}: live {len(got)} records, replay {len(want)}; first difference: " + \
            str(next(((a, b) for a, b in zip(got, want) if a != b), None))


def start_job(tmp_path: Path, mock: Any, config: Config, stores: Path, name: str = "job",
              state_dir: Path | None = None) -> LiveJob:
    return LiveJob(mock.bootstrap_servers, stores, state_dir or tmp_path / f"{name}-state",
                   config_file(tmp_path / f"{name}.toml", config), tmp_path / f"{name}.log")


def run_until_replayed(tmp_path: Path, mock: Any, config: Config, stores: Path,
                       replayed: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, list[dict[str, Any]]], LiveJob]:
    """A live job run until its output topics hold as many records as the replay wrote, then stopped;
    its outputs must be the replay's."""
    job = start_job(tmp_path, mock, config, stores)
    try:
        live = wait_for_counts(mock.bootstrap_servers, output_topics(config),
                               {stream: len(records) for stream, records in replayed.items()}, job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    assert_same_outputs(live, replayed, config.kafka_topic_prefix)
    return live, job


def test_live_gives_the_replays_outputs(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    recording, stores = single_partition_recording(tmp_path)
    config = live_config("same.")
    create_topics(mock_kafka, config)
    publish(recording, mock_kafka.bootstrap_servers, config)
    replayed = replay_streams(tmp_path, recording, stores)
    assert replayed[VISITS] and replayed[DEAD_LETTERS]
    live, job = run_until_replayed(tmp_path, mock_kafka, config, stores, replayed)
    for message in live[TRIGGERS]:
        assert message["headers"]["trigger_id"] == message["value"]["trigger_id"]
        assert message["key"] == message["value"]["customer_id"]
        assert message["value"]["emitted_at"] > message["value"]["ts"], "live emit times are the wall clock"
    for message in live[DEAD_LETTERS]:
        assert message["headers"]["source_offset"] == str(message["value"]["offset"])
        assert message["headers"]["source_topic"].startswith("same.")
    assert any(line.get("msg", "").startswith("shutdown complete") for line in job.log_lines())


def test_a_file_of_two_partitions_replays_as_live_consumes_them(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    """The till's receipts on two partitions, Anna's purchase behind a later receipt in the file: live merges
    the partitions by event time, and so does the replay (tests/test_recording_partitions.py)."""
    recording = tmp_path / "recording"
    till_on_partitions(recording, first=0, second=1)
    stores = write_stores(tmp_path / "stores.csv")
    config = live_config("twoparts.")
    create_topics(mock_kafka, config)
    publish(recording, mock_kafka.bootstrap_servers, config)
    replayed = replay_streams(tmp_path, recording, stores)
    assert [(s["rule"], s["reason"]) for s in replayed[SUPPRESSED]] == [("cart_abandoned", "purchased")]
    run_until_replayed(tmp_path, mock_kafka, config, stores, replayed)


def test_broker_outage_mid_stream_loses_nothing(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    recording, stores = single_partition_recording(tmp_path, customers=200)
    config = live_config("outage.")
    create_topics(mock_kafka, config)
    publish(recording, mock_kafka.bootstrap_servers, config)
    replayed = replay_streams(tmp_path, recording, stores)
    expected = {stream: len(records) for stream, records in replayed.items()}
    job = start_job(tmp_path, mock_kafka, config, stores)
    outputs = output_topics(config)
    try:
        job.wait_for_log("reading input")
        deadline = time.monotonic() + 20
        while not read_topic(mock_kafka.bootstrap_servers, outputs[DEAD_LETTERS], timeout=2) and time.monotonic() < deadline:
            time.sleep(0.05)
        mock_kafka.set_down()
        try:
            time.sleep(6)
        finally:
            mock_kafka.set_up()
        live = wait_for_counts(mock_kafka.bootstrap_servers, outputs, expected, job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    assert_same_outputs(live, replayed, config.kafka_topic_prefix)
    messages = [line.get("msg", "") for line in job.log_lines()]
    assert any(message.startswith("brokers unreachable") or message.startswith("waiting for the brokers")
               for message in messages), messages

    # A restart on the same state folder resumes after the committed snapshot: nothing is sent twice.
    again = start_job(tmp_path, mock_kafka, config, stores, name="again", state_dir=tmp_path / "job-state")
    try:
        again.wait_for_log("reading input")
        time.sleep(3)
    finally:
        assert again.stop() == 0, again.log_path.read_text()[-3000:]
    after = {stream: read_topic(mock_kafka.bootstrap_servers, topic) for stream, topic in outputs.items()}
    assert {stream: len(after[stream]) for stream in expected} == expected


def test_metrics_endpoint_counts_what_flows(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    recording, stores = single_partition_recording(tmp_path)
    port = free_port()
    config = live_config("metrics.", kafka_metrics_port=port)
    create_topics(mock_kafka, config)
    job = start_job(tmp_path, mock_kafka, config, stores)
    try:
        job.wait_for_log("reading input")
        before = scrape(port)
        sent = publish(recording, mock_kafka.bootstrap_servers, config)
        wait_for_counts(mock_kafka.bootstrap_servers, {VISITS: output_topics(config)[VISITS]}, {VISITS: 1}, job=job)
        deadline = time.monotonic() + 15
        while True:
            after = scrape(port)
            read = {topic: after.get(f'omnitrigger_events_in_total{{topic="metrics.{topic}"}}', 0) for topic in sent}
            if read == {topic: float(count) for topic, count in sent.items()} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        assert job.stop() == 0
    assert read == {topic: float(count) for topic, count in sent.items()}
    assert sum(before.get(f'omnitrigger_events_in_total{{topic="metrics.{topic}"}}', 0) for topic in sent) == 0
    assert sum(value for name, value in after.items() if name.startswith("omnitrigger_dead_letters_total")) > 0
    assert after["omnitrigger_visits_total"] > 0
    assert any(name.startswith("omnitrigger_watermark_lag_seconds{") for name in after)
    assert "omnitrigger_trigger_latency_seconds_count" in after
    assert after["omnitrigger_brokers_reachable"] == 1.0


def _cli(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "omnitrigger", *args], capture_output=True, text=True,
                            timeout=timeout)
    return result, time.monotonic() - started


def test_unreachable_brokers_fail_fast_with_one_line(tmp_path: Path) -> None:
    stores = tmp_path / "stores.csv"
    RecordingGenerator().write_stores(stores)
    result, seconds = _cli("run", "--brokers", "127.0.0.1:1", "--stores", str(stores),
                           "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("omnitrigger: error: cannot reach Kafka brokers at 127.0.0.1:1")
    assert seconds < 10


def test_missing_topics_fail_fast_with_one_line(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    stores = tmp_path / "stores.csv"
    RecordingGenerator().write_stores(stores)
    config_path = config_file(tmp_path / "c.toml", live_config("never-created."))
    result, seconds = _cli("run", "--brokers", mock_kafka.bootstrap_servers, "--stores", str(stores),
                           "--state-dir", str(tmp_path / "state"), "--config", str(config_path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("omnitrigger: error: input topics missing on")
    assert "never-created.web.events" in result.stderr
    assert seconds < 10


def test_record_writes_a_replayable_recording(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    recording, stores = single_partition_recording(tmp_path)
    config = live_config("rec.")
    create_topics(mock_kafka, config)
    sent = publish(recording, mock_kafka.bootstrap_servers, config)
    out = tmp_path / "recorded"
    written = record(mock_kafka.bootstrap_servers, out, config)
    assert written == sent
    for topic in sent:
        original = (recording / f"{topic}.jsonl").read_bytes().splitlines()
        recorded = [orjson.loads(line) for line in (out / f"{topic}.jsonl").read_bytes().splitlines()]
        assert all(line["topic"] == input_topics(config)[topic] and line["tstype"] == "create" for line in recorded)
        if topic != "pos.receipts":  # bare lines: one partition, payload = the line, offset = the line number
            assert [line["payload"].encode() for line in recorded] == original
            assert [line["offset"] for line in recorded] == list(range(len(original)))
    first = replay_streams(tmp_path / "a", recording, stores)
    second = replay_streams(tmp_path / "b", out, stores)
    for stream in (TRIGGERS, SUPPRESSED, VISITS):
        assert sorted(normalized(stream, r, "rec.") for r in first[stream]) == \
            sorted(normalized(stream, r, "rec.") for r in second[stream])


# -- the live input's pieces, without Kafka ---------------------------------------------------------


def _line_decoder() -> LineDecoder:
    return LineDecoder(Contracts(max_future_ms=86_400_000), 262_144, 0, Pseudonymizer(b"k" * 32))


@pytest.mark.parametrize("value", [
    b'{"event_id": "e1", "type": "view_item", "ts": "2026-10-05T08:00:00.000Z", "channel": "web", '
    b'"ids": {"device_id": "d1", "email": "A@Example.com"}, "product_id": "P1"}',
    b"{not json", b"", b'["an", "array"]', b'\xff\xfe',
    b'{"event_id": "e2", "type": "teleport", "ts": "2026-10-05T08:00:00.000Z", "channel": "web", "ids": {"device_id": "d"}}',
])
def test_a_message_decodes_as_a_replay_of_its_recorded_envelope(value: bytes) -> None:
    decoder = MessageDecoder(_line_decoder())
    merge_ts, item = decoder.decode("web.events", "p.web.events", 3, 17, value, b"k1", 1_791_187_300_000, 5)
    envelope = {"topic": "p.web.events", "partition": 3, "offset": 17, "tstype": "create", "ts": 1_791_187_300_000,
                "key": "k1", "payload": value.decode("utf-8", "replace")}
    replayed_ts, _, partition, offset, replayed, is_event = _line_decoder().decode(
        orjson.dumps(envelope), "web.events", 0, None, 5)
    if value == b"\xff\xfe":  # kcat cannot write invalid UTF-8 into JSON; live says what it is
        assert item.record["reason"] == "invalid_utf8"
        return
    assert merge_ts == replayed_ts
    if type(item) is Event:
        assert is_event and item == Event(item.seq, "web.events", partition, offset, replayed_ts, replayed)
    else:
        assert type(item) is Emitted and item.stream == DEAD_LETTERS
        assert not is_event and item.record == replayed


def test_merger_orders_partitions_by_event_time_and_resumes() -> None:
    parts = [("a", 0), ("a", 1), ("b", 0)]
    merger = EventTimeMerger(parts, None, merge_wait_s=10.0)
    event = Event(0, "web.events", 0, 0, 0, {})
    merger.add(("a", 0), 0, 30, event._replace(ts_ms=30))
    merger.add(("a", 1), 0, 10, event._replace(ts_ms=10))
    assert merger.pop_ready(10, now=0.0) == []  # ("b", 0) has data in flight: it may hold an earlier record
    merger.mark_eof(("b", 0))
    merger.add(("a", 0), 1, 20, event._replace(ts_ms=20))  # late within its partition: stays after 30
    out = merger.pop_ready(10, now=0.0)
    assert [item.ts_ms for item in out] == [10]  # ("a", 1) is now empty, not at its end: wait for it
    merger.mark_eof(("a", 1))
    out += merger.pop_ready(10, now=0.0)
    assert [(item.ts_ms, item.seq) for item in out] == [(10, 0), (30, 1), (20, 2)]
    resumed = EventTimeMerger(parts, orjson.loads(orjson.dumps(merger.snapshot())), merge_wait_s=10.0)
    assert resumed.next_seq == 3
    assert [resumed.start_offset(part) for part in parts] == [2, 1, -1]
    waiting = EventTimeMerger(parts, None, merge_wait_s=0.5)
    waiting.add(("a", 0), 0, 30, event._replace(ts_ms=30))
    assert waiting.pop_ready(10, now=waiting.queues[("a", 1)].empty_since + 1.0) != []  # waited long enough
