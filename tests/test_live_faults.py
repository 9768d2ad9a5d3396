"""Live mode under faults, through librdkafka's mock cluster: input lost to retention, a broker outage.

- Retention gap (issue 13, defect 6): a partition's saved next offset below
  its earliest offset is input the job never read. On resume `omnitrigger run`
  names the partition, the expected and earliest offsets and the count lost
  in an error line, counts it in `omnitrigger_input_gap_messages_total`, and
  refuses to start (one line, exit 1) unless `[kafka] on_retention_gap =
  "skip"`, which reads on from the earliest offset. A gap that opens while the
  job reads (it fell behind retention) is caught the same way: the consumer's
  `auto.offset.reset` is "error", so librdkafka never jumps over it.
- Outage (defect 7): `omnitrigger_brokers_reachable` goes to 0 while the
  broker is down and back to 1 after, one line says the brokers went away
  (logged while they are still away) and one that they are back, with an
  outage length covering the time they were away, and librdkafka's repeated
  reconnect errors are throttled to a bounded number of lines, with a count
  of what was held back.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_fixtures import (  # noqa: F401  (mock_kafka is a fixture)
    LiveJob, config_file, create_topics, free_port, live_config, mock_kafka, read_topic, scrape, wait_for_counts,
    wait_until,
)
from omnitrigger.config import Config
from omnitrigger.flows.kafka_source import InputGapError, Shutdown, _KafkaPartition
from omnitrigger.io.kafka_tools import input_topics, output_topics, publish
from omnitrigger.records import DEAD_LETTERS, TRIGGERS
from test_live import replay_streams, single_partition_recording


def start_job(tmp_path: Path, mock: Any, config: Config, stores: Path, name: str, state_dir: Path,
              *args: str) -> LiveJob:
    return LiveJob(mock.bootstrap_servers, stores, state_dir, config_file(tmp_path / f"{name}.toml", config),
                   tmp_path / f"{name}.log", *args)


def watermarks(brokers: str, topic: str, partition: int) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "omnitrigger-tests-wm"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        consumer.close()


def produce(brokers: str, topic: str, partition: int, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    for value in values:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(10) == 0


def raw_lines(job: LiveJob) -> list[str]:
    """What the job printed that is not a JSON log line."""
    return [line["raw"] for line in job.log_lines() if "raw" in line]


def test_input_lost_to_retention_while_down_refuses_to_start_unless_skip(tmp_path: Path,
                                                                          mock_kafka: Any) -> None:  # noqa: F811
    brokers = mock_kafka.bootstrap_servers
    recording, stores = single_partition_recording(tmp_path)
    config = live_config("gap.")
    create_topics(mock_kafka, config)
    publish(recording, brokers, config)
    replayed = replay_streams(tmp_path, recording, stores)
    state_dir = tmp_path / "state"
    web = input_topics(config)["web.events"]
    read_to = watermarks(brokers, web, 0)[1]

    first = start_job(tmp_path, mock_kafka, config, stores, "first", state_dir)
    try:
        wait_for_counts(brokers, output_topics(config), {stream: len(records) for stream, records in replayed.items()},
                        job=first)
    finally:
        assert first.stop() == 0, first.log_path.read_text()[-3000:]

    # While the job is down: 25 more messages arrive, and retention deletes them before it is back.
    produce(brokers, web, 0, [b"not json %d" % number for number in range(25)])
    _, high = watermarks(brokers, web, 0)
    mock_kafka.delete_records(web, 0, high)
    earliest, _ = watermarks(brokers, web, 0)
    assert earliest == high == read_to + 25

    refused = start_job(tmp_path, mock_kafka, config, stores, "refused", state_dir)
    assert refused.process.wait(60) == 1, refused.log_path.read_text()[-3000:]
    refused.stop()
    gaps = refused.lines_with("input deleted by retention")
    assert [(line["level"], line["topic"], line["partition"], line["expected_offset"], line["earliest_offset"],
             line["lost_messages"]) for line in gaps] == [("error", web, 0, read_to, earliest, 25)]
    assert raw_lines(refused) == [
        f"omnitrigger: error: input lost to retention on resume: 25 messages in 1 partition ({web}[0] expected "
        f"offset {read_to:,}, earliest {earliest:,}); decide, then restart with [kafka] on_retention_gap = "
        "\"skip\" to read on from the earliest offsets, or replay the lost input from a recording"]

    # A data engineer decides to go on: "skip" counts the gap and reads on from the earliest offset.
    port = free_port()
    skipping = config.with_overrides(kafka_on_retention_gap="skip", kafka_metrics_port=port)
    job = start_job(tmp_path, mock_kafka, skipping, stores, "skip", state_dir, "--metrics-bind", "127.0.0.1")
    try:
        job.wait_for_log("reading input")
        assert [line["lost_messages"] for line in job.lines_with("input deleted by retention")] == [25]
        assert scrape(port)[f'omnitrigger_input_gap_messages_total{{partition="0",topic="{web}"}}'] == 25
        with pytest.raises(OSError):  # --metrics-bind 127.0.0.1: this machine's loopback only
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
        produce(brokers, web, 0, [b"after the gap"])
        dead_letters = output_topics(config)[DEAD_LETTERS]

        def read_on() -> list[dict[str, Any]]:
            return [message for message in read_topic(brokers, dead_letters, timeout=3)
                    if message["value"]["topic"] == web and message["value"]["offset"] >= earliest]

        after = wait_until(read_on, what="a dead letter from after the gap", job=job)
        assert [message["value"]["offset"] for message in after] == [earliest]
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]

    again = start_job(tmp_path, mock_kafka, config, stores, "again", state_dir)  # "fail" again: nothing is lost now
    try:
        again.wait_for_log("reading input")
    finally:
        assert again.stop() == 0, again.log_path.read_text()[-3000:]
    assert not again.lines_with("input deleted by retention")


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_gap_that_opens_while_reading_is_caught(mock_kafka: Any, policy: str) -> None:  # noqa: F811
    """The job is behind and retention deletes what it has not read yet: librdkafka may not skip it quietly.

    The source partition starts at the end of a topic; its first fetch is then held by the mock for the whole
    fetch wait (2 s here), long enough to add 30 messages and delete the first 20 of them before it reads.
    """
    brokers = mock_kafka.bootstrap_servers
    config = live_config(f"gap-{policy}.", kafka_on_retention_gap=policy, kafka_fetch_wait_s=2.0)
    create_topics(mock_kafka, config, partitions=1)
    topic = input_topics(config)["web.events"]
    produce(brokers, topic, 0, [b"not json %d" % number for number in range(30)])
    parts = {(kafka, 0): contract for contract, kafka in input_topics(config).items()}
    resume = {"seq": 0, "parts": [[kafka, 0, 30 if kafka == topic else 0, 0] for kafka, _ in parts]}
    partition = _KafkaPartition(brokers, config, parts, resume, Shutdown(), heartbeats=False)
    try:
        time.sleep(0.5)  # the first fetch is on its way
        produce(brokers, topic, 0, [b"not json %d" % number for number in range(30, 60)])
        mock_kafka.delete_records(topic, 0, 50)
        got: list[Any] = []

        def read_all() -> bool:
            for batch in partition.next_batch():
                got.extend(batch)
            return len(got) >= 10

        if policy == "fail":
            with pytest.raises(InputGapError, match=rf"while reading: 20 messages in 1 partition \({topic}\[0\] "
                                                     "expected offset 30, earliest 50"):
                wait_until(read_all, what="the gap")
        else:
            wait_until(read_all, what="the records after the gap")
            assert [item.record["offset"] for item in got] == list(range(50, 60))
    finally:
        partition.close()


def test_outage_is_reported_when_it_happens_with_its_length_and_few_lines(tmp_path: Path,
                                                                          mock_kafka: Any) -> None:  # noqa: F811
    brokers = mock_kafka.bootstrap_servers
    recording, stores = single_partition_recording(tmp_path, customers=1200)
    port = free_port()
    config = live_config("down.", kafka_metrics_port=port, kafka_metrics_bind="127.0.0.1")
    create_topics(mock_kafka, config)
    publish(recording, brokers, config)
    replayed = replay_streams(tmp_path, recording, stores)
    outputs = output_topics(config)
    job = start_job(tmp_path, mock_kafka, config, stores, "job", tmp_path / "state")
    try:
        job.wait_for_log("reading input")
        mock_kafka.set_rtt(250)  # every acknowledgement a quarter second: the backlog takes minutes, not seconds
        wait_until(lambda: read_topic(brokers, outputs[DEAD_LETTERS], timeout=2), what="first outputs", job=job)
        assert scrape(port)["omnitrigger_brokers_reachable"] == 1
        mock_kafka.set_down()
        try:
            wait_until(lambda: scrape(port)["omnitrigger_brokers_reachable"] == 0, what="the gauge at 0", job=job)
            # Said while the brokers are still away, once.
            assert len(wait_until(lambda: job.lines_with("brokers unreachable"), what="the outage line")) == 1
            seen_down = time.monotonic()
            time.sleep(8)  # long enough for librdkafka to retry (and, unthrottled, log) many times
            assert len(job.lines_with("brokers unreachable")) == 1 and not job.lines_with("brokers reachable again")
            # The flow's thread is stuck in the sink's flush, the case where the gauge used to stay at 1.
            assert job.lines_with("waiting for the brokers to acknowledge outputs")
        finally:
            mock_kafka.set_rtt(0)
            mock_kafka.set_up()
            came_back = time.monotonic()
        wait_until(lambda: scrape(port)["omnitrigger_brokers_reachable"] == 1, what="the gauge at 1", job=job)
        live = wait_for_counts(brokers, outputs, {stream: len(records) for stream, records in replayed.items()},
                               timeout=120, job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    # Nothing lost or invented. (As a set: a batch in flight when the mock broker dropped its connections was
    # now and then stored twice on its retry, the same produce call at two offsets; not the job resending.)
    assert {message["value"]["trigger_id"] for message in live[TRIGGERS]} == \
        {record["trigger_id"] for record in replayed[TRIGGERS]}

    lines = job.log_lines()
    down = [index for index, line in enumerate(lines) if str(line.get("msg", "")).startswith("brokers unreachable")]
    back = [index for index, line in enumerate(lines) if str(line.get("msg", "")).startswith("brokers reachable again")]
    assert len(down) == 1 and len(back) == 1 and down[0] < back[0]
    # The outage began before the line was seen and ended after the broker came back.
    assert lines[back[0]]["outage_s"] >= round(came_back - seen_down, 1) - 0.2, lines[back[0]]
    client_lines = [line for line in lines if line.get("level") in ("warning", "error")
                    and str(line.get("logger", "")).startswith("omnitrigger.kafka.")]
    summaries = [line for line in client_lines if "similar warnings suppressed" in line["msg"]]
    assert summaries and all(line["suppressed"] > 0 for line in summaries)
    # One line per kind (and one summary per kind) for the two clients, not one per reconnect attempt.
    kinds = {(line["logger"], orjson.dumps(line.get("code")), line["msg"].split(" ", 1)[0]) for line in client_lines
             if line not in summaries}
    assert len(client_lines) - len(summaries) == len(kinds), client_lines
    assert len(client_lines) <= 16, client_lines
