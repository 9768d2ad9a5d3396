"""Bytewax sink publishing the output streams to Kafka: triggers, suppressed, visits, dead letters,
retractions, identity changes, refused identity links and dropped duplicates.

Each record goes to its stream's topic as JSON (sorted keys), keyed by its
`customer_id` when it has one, so one customer's records stay in order on
one partition. The producer is idempotent (acks=all, retries without
duplicates or reordering), and `write_batch` returns only once every
message of the batch is acknowledged: Bytewax snapshots an epoch after its
items reached the sink, so nothing acknowledged-as-processed is lost. While
the brokers are down the flush waits (and says so), up to
`[kafka] delivery_timeout`.

Output is at-least-once after a crash (Bytewax re-runs the epochs after its
last snapshot). For triggers that is not enough, so at start the sink
reads the triggers topic back and never sends a trigger_id that is already
there (nor one it sent itself since). What it reads back must cover what
one crash can re-emit: everything produced since the snapshot the job
resumes from, however much that is (a whole backlog is one epoch after an
outage or a clock jump). So the source keeps, in its snapshot, the triggers
partitions' end offsets as they were before that snapshot
(`TriggersReadBack`), and the sink of the process that reads the input reads
back from those offsets, or the last `[kafka] dedup_tail` messages if that
is more; without them (a fresh state folder, a cluster's other processes)
only the tail.

In a cluster every process has its own sink partition and producer and
publishes what its own stages and rules shards made (the sequencer on process 0),
so no output crosses between processes. That keeps each trigger id once:
an id is made by one rules shard (its customer's), and a shard stays on one
process for the life of the state folder (the process count is fixed in
layout.json); every process reads back the whole tail of every partition
at start, whichever process sent what is there; and Bytewax commits an
epoch's snapshot only once every process's sink has had that epoch's
messages acknowledged, so a crash of any process loses none
(tests/test_cluster.py restarts a two-process job that re-runs its whole
backlog and finds each trigger id once).

A suppression with reason `stale` whose trigger_id is already on the
triggers topic (sent before a crash, re-decided later by the wall clock) is
dropped: that trigger did go out. Identity changes go to the compacted
identities topic keyed by customer id, a merged-away customer as a
tombstone (a null value), so the topic compacts to each customer's
current identifiers. Refused links and duplicates are written as a replay's
`--refused-links` and `--duplicates` files hold them (no customer id, so no
key), and counted (`omnitrigger_refused_links_total{reason}`,
`omnitrigger_duplicates_total{topic}`) even when their topic is "".

Headers: triggers carry `trigger_id`; dead letters carry `source_topic`,
`source_partition`, `source_offset` and `reason` (the value is the dead
letter record, with the source record's text, email and phone redacted).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from omnitrigger import metrics
from omnitrigger.config import Config
from omnitrigger.io.kafka_tools import TRIGGER_ID_HEADER, client_settings, quiet_logger
from omnitrigger.records import (
    CONVERSIONS, DEAD_LETTERS, DUPLICATES, IDENTITIES, REFUSED_LINKS, RETRACTIONS, SUPPRESSED, TRIGGERS, VISITS, Emitted,
    format_ms,
)
from omnitrigger.schemas import ContractViolation, parse_event_time

log = logging.getLogger("omnitrigger.live.sink")

_MAX_REMEMBERED_IDS = 500_000
_WAIT_LOG_EVERY_S = 60.0


class DeliveryError(Exception):
    """An output message was not acknowledged within the delivery timeout: the job stops (and resumes on restart)."""


class TriggersReadBack:
    """Where the sinks of this process read the triggers topic back from, handed over by the source.

    The source partition, when it is built, calls `resume_from` with the triggers partitions' end offsets
    kept in the snapshot it resumes from (None without one); a sink calls `when_known` with what to run
    then (at once if the source was built first).
    """

    def __init__(self) -> None:
        self.known = False
        self.offsets: dict[int, int] | None = None
        self._waiting: list[Callable[[dict[int, int] | None], None]] = []

    def resume_from(self, offsets: dict[int, int] | None) -> None:
        self.known, self.offsets = True, offsets
        waiting, self._waiting = self._waiting, []
        for callback in waiting:
            callback(offsets)

    def when_known(self, callback: Callable[[dict[int, int] | None], None]) -> None:
        if self.known:
            callback(self.offsets)
        else:
            self._waiting.append(callback)


def read_trigger_ids(brokers: str, config: Config, topic: str, tail: int, timeout_s: float = 30.0,
                     since: dict[int, int] | None = None) -> list[str]:
    """The trigger_id headers of every partition of `topic` from its offset in `since` (a partition missing
    there: from its start), or its last `tail` messages if that is more (all partitions, without `since`)."""
    consumer = Consumer(client_settings(brokers, config, **{
        "group.id": "omnitrigger-sink-tail", "enable.auto.commit": False, "enable.partition.eof": True,
        "allow.auto.create.topics": False}), logger=quiet_logger("omnitrigger.kafka.consumer"))
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        assignment = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            start = high - tail
            if since is not None:
                start = min(start, since.get(partition, low))
            if high > max(low, start):
                assignment.append(TopicPartition(topic, partition, max(low, start)))
        ids: list[str] = []
        if not assignment:
            return ids
        consumer.assign(assignment)
        pending = {tp.partition for tp in assignment}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                    continue
                for name, value in message.headers() or ():
                    if name == TRIGGER_ID_HEADER and value is not None:
                        ids.append(value.decode())
        return ids
    finally:
        consumer.close()


class _KafkaOutput(StatelessSinkPartition):
    def __init__(self, brokers: str, config: Config, topics: dict[str, str], known_ids: list[str]) -> None:
        self.brokers = brokers
        self.config = config
        self.read_back_done = False
        self.topics = topics
        self.timeout_s = config.kafka_delivery_timeout_s
        self.sent: OrderedDict[str, None] = OrderedDict((trigger_id, None) for trigger_id in known_ids[-_MAX_REMEMBERED_IDS:])
        self.failures: list[str] = []
        self.client_log = quiet_logger("omnitrigger.kafka.producer")
        self.producer = Producer(client_settings(brokers, config, **{
            "enable.idempotence": True, "acks": "all", "linger.ms": max(0, int(config.kafka_linger_s * 1000)),
            "message.timeout.ms": max(1000, int(config.kafka_delivery_timeout_s * 1000)),
            "compression.type": "lz4", "error_cb": self._on_error}), logger=self.client_log)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.failures.append(error.str())
        # Throttled: while the brokers are away librdkafka reports every reconnect attempt (omnitrigger.live
        # BrokerWatch says once that they are away).
        self.client_log.warning("kafka producer error", extra={"fields": {"error": error.str(), "code": error.code()}})

    def _trigger_acknowledged(self, due_ms: int | None, rule: str) -> Any:
        def callback(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                self.failures.append(error.str())
                return
            metrics.TRIGGERS.labels(rule).inc()
            if due_ms is not None:
                metrics.TRIGGER_LATENCY.observe(max(0.0, time.time() - due_ms / 1000))
        return callback

    def read_back(self, since: dict[int, int] | None) -> None:
        """Read the triggers topic back (from `since`, or the tail) and remember its trigger ids as sent."""
        self.read_back_done = True
        topic = self.topics.get(TRIGGERS)
        if topic is None:
            return
        tail = self.config.kafka_dedup_tail
        ids = read_trigger_ids(self.brokers, self.config, topic, tail, since=since)
        for trigger_id in ids[-_MAX_REMEMBERED_IDS:]:
            self.sent[trigger_id] = None
        while len(self.sent) > _MAX_REMEMBERED_IDS:
            self.sent.popitem(last=False)
        log.info("read back the triggers topic's tail", extra={"fields": {
            "topic": topic, "trigger_ids": len(ids), "tail": tail,
            "since_snapshot": sorted(since.items()) if since is not None else None}})

    def write_batch(self, items: list[list[Emitted]]) -> None:
        if not self.read_back_done:  # the source never said (it should have, before any item): the tail
            self.read_back(None)
        for emitted_list in items:
            for emitted in emitted_list:
                topic = self.topics.get(emitted.stream)
                if topic is None:
                    if emitted.stream in (DUPLICATES, REFUSED_LINKS):  # not published, but counted
                        _count(emitted)
                    continue
                record = emitted.record
                headers: list[tuple[str, bytes]] = []
                callback = None
                if emitted.stream == TRIGGERS:
                    trigger_id = str(record.get("trigger_id"))
                    if trigger_id in self.sent:
                        metrics.RESENT_DROPPED.inc()
                        continue
                    self.sent[trigger_id] = None
                    if len(self.sent) > _MAX_REMEMBERED_IDS:
                        self.sent.popitem(last=False)
                    headers.append((TRIGGER_ID_HEADER, trigger_id.encode()))
                    callback = self._trigger_acknowledged(due_ms(record), str(record.get("rule")))
                elif emitted.stream == DEAD_LETTERS:
                    metrics.DEAD_LETTERS.labels(str(record.get("reason"))).inc()
                    headers += [("source_topic", str(record.get("topic")).encode()),
                                ("source_partition", str(record.get("partition")).encode()),
                                ("source_offset", str(record.get("offset")).encode()),
                                ("reason", str(record.get("reason")).encode())]
                elif emitted.stream == SUPPRESSED:
                    if record.get("reason") == "stale":
                        if str(record.get("trigger_id")) in self.sent:  # sent before a crash: it did go out
                            continue
                        metrics.STALE.labels(str(record.get("rule"))).inc()
                    metrics.SUPPRESSED.labels(str(record.get("rule")), str(record.get("reason"))).inc()
                elif emitted.stream == IDENTITIES:  # compacted topic: the customer's identifiers, or a tombstone
                    gone = record["identifiers"] is None
                    metrics.IDENTITY_UPDATES.labels("tombstone" if gone else "customer").inc()
                    self._produce(topic, None if gone else orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                                  record["customer_id"].encode(), [], None)
                    continue
                elif emitted.stream == VISITS:
                    metrics.VISITS.inc()
                elif emitted.stream == RETRACTIONS:
                    metrics.RETRACTIONS.labels(str(record.get("rule"))).inc()
                elif emitted.stream == CONVERSIONS:
                    metrics.CONVERSIONS.labels(str(record.get("rule")), str(record.get("arm")),
                                               str(record.get("purchase_channel"))).inc()
                elif emitted.stream in (DUPLICATES, REFUSED_LINKS):
                    _count(emitted)
                if emitted.stream in (TRIGGERS, SUPPRESSED, RETRACTIONS, CONVERSIONS):  # the emit time is the wall clock live
                    record = {**record, "emitted_at": _wall_clock_iso()}
                key = record.get("customer_id")
                self._produce(topic, orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                              key.encode() if isinstance(key, str) else None, headers, callback)
        self._flush()

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                 callback: Any) -> None:
        while True:
            try:
                if callback is None:
                    self.producer.produce(topic, value, key, headers=headers or None, on_delivery=self._on_delivery)
                else:
                    self.producer.produce(topic, value, key, headers=headers or None, on_delivery=callback)
                return
            except BufferError:  # the local queue is full (a long outage): wait for room
                self._wait(1.0)

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self.failures.append(error.str())

    def _flush(self) -> None:
        started = time.monotonic()
        last_log = started
        while True:
            pending = self.producer.flush(1.0)
            metrics.OUTPUT_PENDING.set(pending)
            if self.failures:
                raise DeliveryError(f"output not acknowledged: {self.failures[0]} ({len(self.failures)} failures)")
            if pending == 0:
                if last_log != started:
                    log.warning("outputs acknowledged again; resumed", extra={"fields": {
                        "waited_s": round(time.monotonic() - started, 1)}})
                return
            now = time.monotonic()
            if now - last_log >= _WAIT_LOG_EVERY_S or (last_log == started and now - started >= 2.0):
                last_log = now
                log.warning("waiting for the brokers to acknowledge outputs", extra={"fields": {
                    "pending": pending, "waited_s": round(now - started, 1)}})

    def _wait(self, seconds: float) -> None:
        self.producer.poll(seconds)
        if self.failures:
            raise DeliveryError(f"output not acknowledged: {self.failures[0]} ({len(self.failures)} failures)")

    def close(self) -> None:
        self.producer.flush(self.timeout_s)


def _count(emitted: Emitted) -> None:
    """Count a dropped duplicate by its (contract) topic, a refused link by its reason."""
    if emitted.stream == DUPLICATES:
        metrics.DUPLICATES.labels(str(emitted.record.get("topic"))).inc()
    else:
        metrics.REFUSED_LINKS.labels(str(emitted.record.get("reason"))).inc()


def due_ms(record: dict[str, Any]) -> int | None:
    """When a trigger became due in event time: `event_time` (trigger.schema.json), else `ts_ms` or `ts`."""
    if type(record.get("ts_ms")) is int:
        return record["ts_ms"]
    for field in ("event_time", "ts"):
        try:
            return parse_event_time(record[field])
        except (ContractViolation, KeyError, TypeError, ValueError):
            continue
    return None


class KafkaOutputSink(DynamicSink):
    """Publishes `topics` (stream -> Kafka topic); other streams are dropped."""

    def __init__(self, brokers: str, config: Config, topics: dict[str, str],
                 read_back: TriggersReadBack | None = None) -> None:
        """`read_back`: where the source says from which offsets to read the triggers topic back (None:
        this process reads no input, so the tail)."""
        self.brokers = brokers
        self.config = config
        self.topics = topics
        self.read_back = read_back

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaOutput:
        output = _KafkaOutput(self.brokers, self.config, self.topics, [])
        if self.read_back is None:
            output.read_back(None)
        else:
            self.read_back.when_known(output.read_back)
        return output


def _wall_clock_iso() -> str:
    return format_ms(int(time.time() * 1000))
