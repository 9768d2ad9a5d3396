"""kill -9 of `omnitrigger run` mid-stream, restarted each time on the same state folder, through the mock cluster.

The job works through a backlog (the demo generator's recording, 1,200
customers, about 19k records) and is killed four times, at growing amounts
of output (at least three kills must land while triggers are still to come),
then restarted once more and left to finish. Bytewax
re-runs the epochs after its last committed snapshot, so the other streams
may hold a record twice (at-least-once, compared as sets); the triggers
topic must hold exactly the trigger ids `omnitrigger replay` gives for the
same recording, each id once: the sink reads back the triggers topic's tail
at start and does not resend an id already there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from kafka_fixtures import (  # noqa: F401  (mock_kafka is a fixture)
    PARTITIONS, LiveJob, create_topics, free_port, live_config, mock_kafka, read_topic, scrape, wait_until,
)
from omnitrigger.config import Config
from omnitrigger.io.kafka_tools import output_topics, publish
from omnitrigger.records import TRIGGERS
from test_live import STREAMS, normalized, replay_streams, single_partition_recording

# Fractions of the expected output messages. Most triggers come in one burst near the end (the clock jumps past the
# day-long browse deadlines), so the last kill may land in or after it; the first three land before it.
KILL_AT = (0.1, 0.2, 0.3, 0.5)


class OutputSize:
    """Messages now in some topics (sum of high watermarks), through one open consumer: cheap enough to poll."""

    def __init__(self, brokers: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": brokers, "group.id": "omnitrigger-tests-size"})

    def __call__(self, topics: list[str]) -> int:
        return sum(self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)[1]
                   for topic in topics for partition in range(PARTITIONS))

    def close(self) -> None:
        self.consumer.close()


def job_config(path: Path, config: Config) -> Path:
    """Small batches and frequent snapshots: many epochs, so each kill lands with some committed and some not."""
    path.write_text("\n".join([
        "[replay]", "batch_size = 20", 'epoch_interval = "0.2s"',
        "[kafka]", f'topic_prefix = "{config.kafka_topic_prefix}"', "metrics_port = 0", "heartbeat_interval = 0.0",
        f"merge_wait = {config.kafka_merge_wait_s}", "[policy]", 'max_delay = "0"']) + "\n")
    return path


def test_sigkill_three_times_live_then_each_trigger_id_once(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    recording, stores = single_partition_recording(tmp_path, customers=1200)
    config = live_config("killed.")
    create_topics(mock_kafka, config)
    brokers = mock_kafka.bootstrap_servers
    publish(recording, brokers, config)
    replayed = replay_streams(tmp_path, recording, stores)
    want_ids = sorted(record["trigger_id"] for record in replayed[TRIGGERS])
    assert len(want_ids) >= 50 and len(set(want_ids)) == len(want_ids)
    outputs = output_topics(config)
    config_path = job_config(tmp_path / "job.toml", config)
    state = tmp_path / "state"

    expected_total = sum(len(records) for records in replayed.values())
    killed_at = []  # (output messages, triggers) at each kill
    messages_in = OutputSize(brokers)
    for run, fraction in enumerate(KILL_AT):
        job = LiveJob(brokers, stores, state, config_path, tmp_path / f"run-{run}.log")
        job.wait_for_log("read back the triggers topic's tail", timeout=30)
        at_start = messages_in(list(outputs.values()))
        target = max(fraction * expected_total, at_start + 50)
        last, last_growth = at_start, time.monotonic()
        while (count := messages_in(list(outputs.values()))) < target:
            assert job.process.poll() is None, job.log_path.read_text()[-3000:]
            if count > last:
                last, last_growth = count, time.monotonic()
            elif time.monotonic() - last_growth > 3:
                break  # nothing left for this run to do: kill it idle
            time.sleep(0.005)
        job.kill()
        killed_at.append((count, messages_in([outputs[TRIGGERS]])))
    messages_in.close()
    mid_stream = [triggers for _, triggers in killed_at if 0 < triggers < len(want_ids)]
    assert len(mid_stream) >= 3 and len(set(mid_stream)) >= 3, f"three kills mid-stream, at different points: {killed_at}"

    final = LiveJob(brokers, stores, state, config_path, tmp_path / "final.log")
    try:
        deadline = time.monotonic() + 40
        while True:
            live = {stream: read_topic(brokers, topic, timeout=5.0) for stream, topic in outputs.items()}
            got = {stream: {normalized(stream, m["value"], config.kafka_topic_prefix) for m in live[stream]}
                   for stream in STREAMS}
            want = {stream: {normalized(stream, r, config.kafka_topic_prefix) for r in replayed[stream]}
                    for stream in STREAMS}
            if got == want or time.monotonic() > deadline:
                break
            assert final.process.poll() is None, final.log_path.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1.5)  # a few more epochs: nothing more may arrive
        live = {stream: read_topic(brokers, topic, timeout=5.0) for stream, topic in outputs.items()}
    finally:
        assert final.stop() == 0, final.log_path.read_text()[-3000:]

    for stream in STREAMS:
        got_set = {normalized(stream, m["value"], config.kafka_topic_prefix) for m in live[stream]}
        want_set = {normalized(stream, r, config.kafka_topic_prefix) for r in replayed[stream]}
        assert got_set == want_set, f"{stream}: live {len(got_set)} distinct, replay {len(want_set)} (kills at {killed_at})"
    got_ids = sorted(message["value"]["trigger_id"] for message in live[TRIGGERS])
    assert got_ids == want_ids, f"{len(got_ids)} trigger messages, {len(set(got_ids))} ids, replay {len(want_ids)}"
    assert all(message["headers"]["trigger_id"] == message["value"]["trigger_id"] for message in live[TRIGGERS])
    read_back = [orjson.loads(line).get("trigger_ids", 0)
                 for log in [*(tmp_path / f"run-{run}.log" for run in range(1, len(KILL_AT))), tmp_path / "final.log"]
                 for line in log.read_bytes().splitlines()
                 if line.startswith(b"{") and b"read back the triggers" in line]
    assert len(read_back) == len(KILL_AT) and read_back[-1] > 0, read_back  # each restart read the tail back
    print(f"kills at (messages, triggers) {killed_at} of ({expected_total}, {len(want_ids)}); "
          f"{sum(len(v) for v in live.values())} messages at the end")



def burst_config(path: Path, config: Config, epoch_interval: str, metrics_port: int = 0) -> Path:
    """[kafka] dedup_tail = 1: what bounds the duplicates must be the snapshot's offsets, not a tail. `[state]
    spill_entries = 1`: the sequencer and the history stage write every batch's changes into RocksDB at once, so a
    job killed in the middle of an epoch leaves them there (ShardState.spill), and the next must undo them."""
    path.write_text("\n".join([
        "[replay]", f'epoch_interval = "{epoch_interval}"', "[state]", "spill_entries = 1",
        "[kafka]", f'topic_prefix = "{config.kafka_topic_prefix}"', f"metrics_port = {metrics_port}",
        "heartbeat_interval = 0.0", f"merge_wait = {config.kafka_merge_wait_s}", "dedup_tail = 1",
        "[policy]", 'max_delay = "0"']) + "\n")
    return path


def test_a_long_epoch_re_run_after_a_crash_is_not_resent(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    """Issue 13, defect 10: a whole backlog in one epoch (as after an outage or a clock jump), killed before that
    epoch commits, is re-run in full. The sink reads the triggers topic back from the offsets in the snapshot it
    resumes from (everything produced since), so a tail of one message a partition is no bound: none is resent."""
    recording, stores = single_partition_recording(tmp_path)
    replayed = replay_streams(tmp_path, recording, stores)
    want_ids = sorted(record["trigger_id"] for record in replayed[TRIGGERS])
    assert len(want_ids) > 10 * PARTITIONS, "many more than a tail of one a partition could hold"
    config = live_config("burst.")
    create_topics(mock_kafka, config)
    brokers = mock_kafka.bootstrap_servers
    triggers_topic = output_topics(config)[TRIGGERS]
    state = tmp_path / "state"

    first = LiveJob(brokers, stores, state, burst_config(tmp_path / "first.toml", config, "0.2s"), tmp_path / "first.log")
    try:
        first.wait_for_log("reading input")  # nothing to read yet; a snapshot commits at the stop
    finally:
        assert first.stop() == 0, first.log_path.read_text()[-3000:]

    publish(recording, brokers, config)
    second = LiveJob(brokers, stores, state, burst_config(tmp_path / "second.toml", config, "1h"),
                     tmp_path / "second.log")  # the whole backlog in an epoch that never commits
    try:
        wait_until(lambda: len(read_topic(brokers, triggers_topic, timeout=2)) >= len(want_ids),
                   what="every trigger", job=second)
    finally:
        second.kill()

    port = free_port()
    third = LiveJob(brokers, stores, state, burst_config(tmp_path / "third.toml", config, "0.2s", port),
                    tmp_path / "third.log")
    try:
        third.wait_for_log("reading input")
        # It re-runs the backlog: every trigger is made again, and each must be dropped as already sent.
        def re_run_done() -> bool:
            values = scrape(port)
            return values.get("omnitrigger_triggers_resent_dropped_total", 0) + sum(
                value for name, value in values.items() if name.startswith("omnitrigger_triggers_total")) \
                >= len(want_ids)

        wait_until(re_run_done, timeout=60, what="the re-run", job=third)
        time.sleep(1)  # a few more epochs: nothing more may arrive
    finally:
        assert third.stop() == 0, third.log_path.read_text()[-3000:]
    got_ids = sorted(message["value"]["trigger_id"] for message in read_topic(brokers, triggers_topic))
    assert got_ids == want_ids, f"{len(got_ids)} trigger messages, {len(set(got_ids))} ids, replay {len(want_ids)}"
