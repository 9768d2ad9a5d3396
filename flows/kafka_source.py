"""Bytewax source over the live input topics: one partition reading every topic-partition, merged in event time.

One Bytewax partition on purpose, like the recording source: the sequencer
is one shard key, so all input meets on one worker anyway, and reading
every topic-partition in one place is what lets `EventTimeMerger` hand the
records out in the replay's order (omnitrigger/io/live_input.py). In a cluster
the partition is built on process 0, the sequencer's (flows/cluster_worker.py
`PinnedSource`), so the input never crosses the network. Offsets live
in the Bytewax snapshot with the merge's seq counter, never in a consumer
group, so a resume reads on from the last committed epoch (Bytewax hands the
snapshot to whichever process builds the partition).

Each Bytewax item is a micro-batch (a list) of Events and dead letters. When
every partition is at its end, nothing is buffered and no partition has
records past the last one read (consumer lag, by the latest fetch's high
watermarks), the batch is a `Heartbeat(wall_ms)` every `[kafka]
heartbeat_interval`, so deadlines fire without traffic (only once the
sequencer understands Heartbeat: see `heartbeats_supported`). While a
backlog is read (a first start from "earliest", a restart after an
outage) the clock follows the records alone, as in a replay: deadlines fire
in event-time order as it is read, and those more than `[policy]
max_delay` past their time are suppressed as `stale` (operators/rules.py).

Retention gaps. A resumed partition whose saved next offset is below the
partition's earliest offset lost input to retention while the job was down
(or, while it runs, fell that far behind): one error line per partition
(topic, partition, expected and earliest offset, messages lost), counted in
`omnitrigger_input_gap_messages_total`, then `InputGapError` (one line, exit 1)
unless `[kafka] on_retention_gap = "skip"`, which reads on from the earliest
offset. The consumer's `auto.offset.reset` is "error", so librdkafka never
jumps over a gap by itself.

Re-sent triggers. The snapshot also keeps the triggers topic's end offsets
as a thread of the source last read them before the snapshot (`_TriggerEnds`):
whatever a resume from it re-runs is produced after the snapshot, so at
offsets at or past those; the source hands them to this process's sinks
(flows/kafka_sink.py `TriggersReadBack`), which read the topic back from
there and drop the trigger ids already sent.

Operations (docs/monitoring.md). The consumer's statistics (one report a
second, served inside `consume`) give each input partition's lag, to
`omnitrigger_consumer_lag_messages` and to /readyz (`metrics.READINESS`);
`snapshot()` marks the snapshot age's clock (`metrics.SNAPSHOTS`); and every
`[kafka] progress_interval` one "progress" line says what came in, what went
out and how far behind the job is. All of it once a second or less, never
per record.

Broker outages are watched and reported by `omnitrigger.runner.broker_watch.BrokerWatch`
(its own thread: the flow's thread can be blocked for the whole outage in the
sink's flush); the source only asks it whether one is under way, so the merge
waits for partitions it cannot see, and how many there were. After an outage
(even one it spent blocked in the sink) the merge waits without a time limit
until this consumer's own statistics, reported after the brokers came back,
show a broker connection up; then the partitions still waiting for data get
a fresh `merge_wait` (the one before was spent unreachable). So records are
released in event-time order however long the consumer takes to reconnect.
Likewise at start: until every partition has answered once (a message, or
its end), the merge waits for it without a time limit (a slow first fetch is
no reason to release later records first); a warning names the partitions
still silent after `_SILENT_WARN_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from omnitrigger import metrics
from omnitrigger.config import Config
from omnitrigger.flows.kafka_sink import TriggersReadBack
from omnitrigger.io.kafka_tools import KafkaSetupError, client_settings, quiet_logger
from omnitrigger.io.live_input import EventTimeMerger, MessageDecoder
from omnitrigger.pii import Pseudonymizer, key_from_environment
from omnitrigger.io.recording import LineDecoder
from omnitrigger.records import Heartbeat
from omnitrigger.schemas import Contracts

log = logging.getLogger("omnitrigger.live.source")

_STATS_INTERVAL_MS = 1000
_METRICS_EVERY_S = 1.0
_SILENT_WARN_S = 10.0
_OUTAGE_CODES = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE)


class InputGapError(KafkaSetupError):
    """Input the job had not read was deleted by retention, and `[kafka] on_retention_gap` is "fail"."""


def heartbeats_supported() -> bool:
    """Whether the sequencer stage consumes Heartbeat items (it imports the class once it does)."""
    from omnitrigger.operators import stage_chain

    return getattr(stage_chain, "Heartbeat", None) is Heartbeat


class Shutdown:
    """Set by SIGTERM: the source stops reading, lets the in-flight records reach the outputs and a snapshot
    commit, then calls `on_drained` (which ends the process). `on_fatal` ends it on a user error found while
    reading (omnitrigger/runner/live.py: one line, exit 1, no Bytewax panic); by default the error is raised."""

    def __init__(self, drain_snapshots: int = 2) -> None:
        self.requested = threading.Event()
        self.drain_snapshots = drain_snapshots
        self.on_drained: Callable[[], None] = lambda: None
        self.on_fatal: Callable[[Exception], None] = _raise


def _raise(error: Exception) -> None:
    raise error


class _TriggerEnds:
    """The triggers partitions' end offsets, read every `interval_s` in a daemon thread (never in the flow's)."""

    def __init__(self, brokers: str, config: Config, topic: str, interval_s: float) -> None:
        self.topic = topic
        self.interval_s = interval_s
        self.latest: dict[int, int] | None = None  # replaced whole, once every partition answered
        self._stop = threading.Event()
        self._consumer = Consumer(client_settings(brokers, config, **{
            "group.id": "omnitrigger-trigger-ends", "enable.auto.commit": False,
            "allow.auto.create.topics": False}), logger=quiet_logger("omnitrigger.kafka.consumer"))
        self.refresh()
        threading.Thread(target=self._loop, name="omnitrigger-trigger-ends", daemon=True).start()

    def refresh(self) -> None:
        try:
            metadata = self._consumer.list_topics(timeout=5.0)
            partitions = sorted(metadata.topics[self.topic].partitions) if self.topic in metadata.topics else []
            ends = {partition: self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition),
                                                                    timeout=5.0)[1]
                    for partition in partitions}
        except Exception:  # an outage: keep the older offsets, which only means reading back more
            return
        if ends:
            self.latest = ends

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()
        self._consumer.close()

    def stop(self) -> None:
        self._stop.set()


class _Progress:
    """The "progress" line every `interval_s` (0: none): records in since the last line and in all, triggers
    acknowledged by this process's sinks (`omnitrigger_triggers_total`), dead letters, the input's consumer lag
    and the snapshot age. The source adds what it read once a second; `due` is one comparison."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.records = 0  # read since the start (added once a second)
        self._last = time.monotonic()
        self._records = 0
        self._triggers = metrics.counter_total(metrics.TRIGGERS)
        self._dead_letters = metrics.counter_total(metrics.DEAD_LETTERS)

    def due(self, now: float) -> bool:
        return self.interval_s > 0 and now - self._last >= self.interval_s

    def log(self, now: float, seq: int) -> None:
        triggers = metrics.counter_total(metrics.TRIGGERS)
        dead_letters = metrics.counter_total(metrics.DEAD_LETTERS)
        age = metrics.SNAPSHOTS.age_s()
        log.info("progress", extra={"fields": {
            "records_in": self.records - self._records, "records_in_total": self.records,
            "triggers_out": int(triggers - self._triggers), "triggers_out_total": int(triggers),
            "dead_letters": int(dead_letters - self._dead_letters),
            "consumer_lag": metrics.READINESS.lag_total(),
            "snapshot_age_s": round(age, 1) if age is not None else None,
            "seq": seq, "interval_s": round(now - self._last, 1)}})
        self._last, self._records, self._triggers, self._dead_letters = now, self.records, triggers, dead_letters


class _KafkaPartition(StatefulSourcePartition):
    def __init__(self, brokers: str, config: Config, parts: dict[tuple[str, int], str], resume_state: Any,
                 shutdown: Shutdown, heartbeats: bool, outage: Callable[[], tuple[bool, int]] | None = None,
                 triggers_topic: str | None = None, read_back: TriggersReadBack | None = None) -> None:
        self.config = config
        self.outage = outage or (lambda: (False, 0))  # (brokers away now, outages so far)
        self._outages_seen = self.outage()[1]
        self._await_up_after: float | None = None  # wall time: after an outage, wait for stats newer than this
        self._silent = set(parts)  # partitions that have not answered yet (no message, no end)
        self._started = time.monotonic()
        self._silent_warned = False
        self.contract_topic = {topic: contract for (topic, _), contract in parts.items()}
        self.decoder = MessageDecoder(LineDecoder(
            Contracts(max_future_ms=int(config.max_future_s * 1000), max_depth=config.max_depth), config.max_record_bytes, None,
            Pseudonymizer(key_from_environment(), config.default_country_code),
            max_clock_skew_ms=int(config.max_clock_skew_s * 1000)))
        self.merger = EventTimeMerger(sorted(parts), resume_state, config.kafka_merge_wait_s)
        metrics.SNAPSHOTS.started()
        metrics.READINESS.reading(set(parts), config.kafka_ready_max_lag)
        self._progress = _Progress(config.kafka_progress_interval_s)
        self.batch_size = config.batch_size
        self.batch_wait_s = config.kafka_batch_wait_s
        self.shutdown = shutdown
        self.heartbeats = heartbeats and config.kafka_heartbeat_interval_s > 0
        self._last_record = time.monotonic()
        self._caught_up = False  # logged once when the input is first read to its end
        self._last_metrics = 0.0
        self._snapshots_since_shutdown = -1
        self._events_in: dict[str, int] = {}
        self._next_fetch: dict[tuple[str, int], int] = {}  # the offset after the last message read, per partition
        self._end_seen: dict[tuple[str, int], int] = {}  # the end offset of each partition's latest end-of-partition
        self.client_log = quiet_logger("omnitrigger.kafka.consumer")
        self.consumer = Consumer(client_settings(brokers, config, **{
            "group.id": "omnitrigger-live",  # required by librdkafka; offsets are never committed to it
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            "auto.offset.reset": "error",  # never jump over a retention gap (a fresh start asks for its offset)
            "fetch.wait.max.ms": max(1, int(config.kafka_fetch_wait_s * 1000)),
            "statistics.interval.ms": _STATS_INTERVAL_MS,
            "stats_cb": self._on_stats,
            "error_cb": self._on_error,
        }), logger=self.client_log)
        start = OFFSET_BEGINNING if config.kafka_start == "earliest" else OFFSET_END
        assignment = []
        gaps = []
        for part in sorted(parts):
            offset = self.merger.start_offset(part)
            if offset >= 0:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(*part),
                                                                timeout=max(5.0, config.kafka_preflight_timeout_s))
                if not low <= offset <= high:
                    gaps.append(self._gap(part, offset, low, high))
                    offset = low
            assignment.append(TopicPartition(part[0], part[1], offset if offset >= 0 else start))
        if gaps:
            self._refuse_or_skip(gaps, "on resume")
        self.consumer.assign(assignment)
        self.trigger_ends = None if triggers_topic is None else \
            _TriggerEnds(brokers, config, triggers_topic, max(0.2, min(config.epoch_s, 5.0)))
        if read_back is not None:
            saved = (resume_state or {}).get("triggers_from")
            read_back.resume_from({int(partition): int(offset) for partition, offset in saved}
                                  if saved is not None else None)
        log.info("reading input", extra={"fields": {
            "brokers": brokers, "partitions": len(assignment), "resumed": resume_state is not None,
            "seq": self.merger.next_seq, "heartbeats": self.heartbeats}})

    # -- librdkafka callbacks (served inside consume) ---------------------------------

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _OUTAGE_CODES:  # omnitrigger.runner.broker_watch.BrokerWatch reports the outage
            self._await_up_after = max(self._await_up_after or 0.0, time.time())
        self.client_log.warning("kafka consumer error", extra={"fields": {"error": error.str(), "code": error.code()}})

    def _on_stats(self, raw: str) -> None:
        stats = orjson.loads(raw)
        brokers_up = any(broker.get("state") == "UP" for name, broker in stats.get("brokers", {}).items()
                         if not name.startswith("GroupCoordinator"))
        if brokers_up and self._await_up_after is not None and stats.get("time", 0) > self._await_up_after \
                and not self.outage()[0]:
            self._back_online()
        lags: dict[tuple[str, int], int] = {}
        queues = self.merger.queues
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                high = partition_stats.get("hi_offset", -1)
                if partition == "-1" or high < 0 or (topic, int(partition)) not in queues:
                    continue
                part = (topic, int(partition))
                # No committed offsets (positions live in the snapshot): lag = end offset - next offset to read,
                # the furthest of what librdkafka handed out, our own position and the earliest offset still
                # there (app_offset is unset until a message is read).
                position = max(partition_stats.get("app_offset", -1), self._position(part),
                               partition_stats.get("lo_offset", -1), 0)
                lags[part] = max(0, high - position)
                metrics.CONSUMER_LAG.labels(topic, partition).set(lags[part])
        if lags:
            metrics.READINESS.report_lag(lags)

    def _back_online(self) -> None:
        """The consumer is connected again: partitions still waiting for data wait `merge_wait` from now."""
        self._await_up_after = None
        now = time.monotonic()
        for queue in self.merger.queues.values():
            if not queue.items and not queue.eof:
                queue.empty_since = now

    def _redelivered(self, part: tuple[str, int], offset: int) -> None:
        """librdkafka can hand a message out again after a reconnect: read once, or seqs (and ids) would shift."""
        self.client_log.warning("kafka consumer delivered a message again; dropped", extra={"fields": {
            "topic": part[0], "partition": part[1], "offset": offset, "expected_offset": self._next_fetch[part]}})

    # -- retention gaps ---------------------------------------------------------------

    def _gap(self, part: tuple[str, int], expected: int, low: int, high: int) -> dict[str, Any]:
        """Log and count one partition whose next offset `expected` is no longer in [low, high]."""
        topic, partition = part
        lost = max(0, low - expected)
        if expected < low:
            message = "input deleted by retention before it was read"
        else:
            message = "input partition is shorter than the saved position (topic recreated or truncated?)"
        fields = {"topic": topic, "partition": partition, "expected_offset": expected, "earliest_offset": low,
                  "end_offset": high, "lost_messages": lost, "on_retention_gap": self.config.kafka_on_retention_gap}
        log.error(message, extra={"fields": fields})
        if lost:
            metrics.INPUT_GAP.labels(topic, str(partition)).inc(lost)
        return fields

    def _refuse_or_skip(self, gaps: list[dict[str, Any]], when: str) -> None:
        """InputGapError unless [kafka] on_retention_gap = "skip" (then reading goes on from the earliest offsets)."""
        lost = sum(gap["lost_messages"] for gap in gaps)
        where = ", ".join(f"{gap['topic']}[{gap['partition']}] expected offset {gap['expected_offset']:,}, earliest "
                          f"{gap['earliest_offset']:,}" for gap in gaps[:3]) + (" ..." if len(gaps) > 3 else "")
        if self.config.kafka_on_retention_gap != "skip":
            self.shutdown.on_fatal(InputGapError(
                f"input lost to retention {when}: {lost:,} messages in {len(gaps)} partition"
                f"{'s' if len(gaps) != 1 else ''} ({where}); decide, then restart with [kafka] on_retention_gap "
                f"= \"skip\" to read on from the earliest offsets, or replay the lost input from a recording"))
            return
        log.error("skipping input lost to retention ([kafka] on_retention_gap = \"skip\")", extra={"fields": {
            "lost_messages": lost, "partitions": len(gaps), "when": when}})
        for gap in gaps:
            queue = self.merger.queues[(gap["topic"], gap["partition"])]
            if not queue.items:  # a snapshot taken before the next record resumes past the gap, not before it
                queue.next_offset = gap["earliest_offset"]

    def _offset_reset(self, topic: str, partition: int, offset: int) -> None:
        """librdkafka found `offset` out of range while reading (auto.offset.reset = error): a gap, or a truncation."""
        low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10.0)
        if not low <= offset <= high:
            self._refuse_or_skip([self._gap((topic, partition), offset, low, high)], "while reading")
            offset = low
        # After the error the partition's fetcher stops, and librdkafka refuses a seek: assign it afresh.
        self.consumer.incremental_unassign([TopicPartition(topic, partition)])
        self.consumer.incremental_assign([TopicPartition(topic, partition, offset)])

    # -- Bytewax --------------------------------------------------------------------

    def next_batch(self) -> list[Any]:
        if self.shutdown.requested.is_set():
            return self._drain()
        self._read()
        batch: list[Any] = self.merger.pop_ready(self.batch_size, outage=self._outage_now())
        now = time.monotonic()
        if batch:
            self._last_record = now
        elif self.heartbeats and self.merger.idle() and now - self._last_record >= self.config.kafka_heartbeat_interval_s:
            self._last_record = now
            if self._lag_remains():  # a backlog: the clock follows its records, as in a replay, not the wall
                self._caught_up = False
            else:
                if not self._caught_up:
                    self._caught_up = True
                    log.info("caught up with the input: the event-time clock follows the wall clock between "
                             "records", extra={"fields": {"seq": self.merger.next_seq}})
                batch = [Heartbeat(int(time.time() * 1000))]
        if now - self._last_metrics >= _METRICS_EVERY_S:
            self._publish_metrics(now)
        return [batch] if batch else []

    def _read(self) -> None:
        # Up to batch_size messages, waiting at most batch_wait for them: under load a batch fills up, so what
        # each batch costs downstream (a watermark to every rules shard, a call of every stage) is shared by
        # up to 1,000 records, not a dozen; when quiet, the wait is the latency it adds (and no spin).
        messages = self.consumer.consume(self.batch_size, self.batch_wait_s)
        merger = self.merger
        decode = self.decoder.decode
        counts = self._events_in
        for message in messages:
            error = message.error()
            topic = message.topic()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    merger.mark_eof((topic, message.partition()))
                    self._end_seen[(topic, message.partition())] = message.offset()
                    self._silent.discard((topic, message.partition()))
                elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._offset_reset(topic, message.partition(), message.offset())
                else:
                    self.client_log.warning("kafka consume error", extra={"fields": {
                        "error": error.str(), "code": error.code(), "topic": topic}})
                continue
            part = (topic, message.partition())
            offset = message.offset()
            if offset < self._next_fetch.get(part, -1):
                self._redelivered(part, offset)
                continue
            self._next_fetch[part] = offset + 1
            self._silent.discard(part)
            merge_ts, item = decode(self.contract_topic[topic], topic, part[1], offset, message.value(),
                                    message.key(), message.timestamp()[1], merger.last_ts(part))
            merger.add(part, offset, merge_ts, item)
            counts[topic] = counts.get(topic, 0) + 1

    def _lag_remains(self) -> bool:
        """Whether any input partition has records past the last one read, by the high watermarks of the latest
        fetch responses (librdkafka's cached values: no request). A partition's end-of-partition mark can
        predate records fetched since; a heartbeat then would move the clock past them."""
        for part in self.merger.queues:
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(*part), cached=True)
            except KafkaException:
                return True
            position = self._position(part)
            if high >= 0 and position >= 0 and high > position:
                return True
        return False

    def _position(self, part: tuple[str, int]) -> int:
        """The next offset to read in `part`, as far as this source knows: after the last message read, its
        latest end mark (transaction markers take offsets no message is read at), or where it resumed; -1 if
        none yet."""
        return max(self._next_fetch.get(part, -1), self._end_seen.get(part, -1), self.merger.start_offset(part))

    def _outage_now(self) -> bool:
        """Whether the merge waits without a time limit: the brokers are away (BrokerWatch), or were (BrokerWatch
        or this consumer's own errors) and the consumer has not yet reported a connection up since, or a
        partition has not answered once since the start."""
        down, outages = self.outage()
        if outages != self._outages_seen or down:
            self._outages_seen = outages
            self._await_up_after = max(self._await_up_after or 0.0, time.time())
        if self._silent and not self._silent_warned and time.monotonic() - self._started >= _SILENT_WARN_S:
            self._silent_warned = True
            log.warning("waiting for input partitions to answer before merging (no message and no end yet)",
                        extra={"fields": {"partitions": [f"{topic}[{partition}]" for topic, partition
                                                         in sorted(self._silent)[:10]], "count": len(self._silent)}})
        return down or self._await_up_after is not None or bool(self._silent)

    def _publish_metrics(self, now: float) -> None:
        self._last_metrics = now
        for topic, count in self._events_in.items():
            metrics.EVENTS_IN.labels(topic).inc(count)
            self._progress.records += count
        self._events_in.clear()
        if self._progress.due(now):
            self._progress.log(now, self.merger.next_seq)
        wall_ms = time.time() * 1000
        for (topic, partition), queue in self.merger.queues.items():
            if queue.max_ts > 0:
                metrics.WATERMARK_LAG.labels(topic, str(partition)).set(max(0.0, (wall_ms - queue.max_ts) / 1000))

    def _drain(self) -> list[Any]:
        if self._snapshots_since_shutdown < 0:
            self._snapshots_since_shutdown = 0
            log.info("SIGTERM: stopped reading; waiting for in-flight records to be written and a snapshot to commit")
        if self._snapshots_since_shutdown >= self.shutdown.drain_snapshots:
            self._publish_metrics(time.monotonic())
            self.close()
            self.shutdown.on_drained()
        time.sleep(0.01)
        return []

    def snapshot(self) -> Any:
        metrics.SNAPSHOTS.taken()
        if self._snapshots_since_shutdown >= 0:
            self._snapshots_since_shutdown += 1
        state = self.merger.snapshot()
        ends = self.trigger_ends.latest if self.trigger_ends is not None else None
        if ends is not None:  # read before this snapshot: what a resume from it re-sends lies at or past them
            state["triggers_from"] = sorted(ends.items())
        return state

    def close(self) -> None:
        if self.trigger_ends is not None:
            self.trigger_ends.stop()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class KafkaLiveSource(FixedPartitionedSource):
    """Every partition of `topics` (Kafka topic -> contract topic), read as one merged stream."""

    def __init__(self, brokers: str, config: Config, topics: dict[str, str], partitions: dict[str, int],
                 shutdown: Shutdown | None = None, heartbeats: bool | None = None,
                 outage: Callable[[], tuple[bool, int]] | None = None, triggers_topic: str | None = None,
                 read_back: TriggersReadBack | None = None) -> None:
        """`triggers_topic`: whose end offsets the snapshot keeps, handed to `read_back` on resume."""
        self.brokers = brokers
        self.outage = outage
        self.triggers_topic = triggers_topic
        self.read_back = read_back
        self.config = config
        self.parts = {(topic, partition): contract for topic, contract in topics.items()
                      for partition in range(partitions[topic])}
        self.shutdown = shutdown or Shutdown()
        self.heartbeats = heartbeats_supported() if heartbeats is None else heartbeats

    def list_parts(self) -> list[str]:
        return ["kafka"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _KafkaPartition:
        return _KafkaPartition(self.brokers, self.config, self.parts, resume_state, self.shutdown, self.heartbeats,
                               self.outage, self.triggers_topic, self.read_back)
