"""Bytewax source over the live input topics: one partition reading every topic-partition, merged in event time.

One Bytewax partition on purpose, like the recording source: the sequencer
is one shard key, so all input meets on one worker anyway, and reading
every topic-partition in one place is what lets `EventTimeMerger` hand the
records out in the replay's order (omnitrigger/live_input.py). In a cluster
the partition is built on process 0, the sequencer's (flows/cluster_worker.py
`PinnedSource`), so the input never crosses the network. Offsets live
in the Bytewax snapshot with the merge's seq counter, never in a consumer
group, so a resume reads on from the last committed epoch (Bytewax hands the
snapshot to whichever process builds the partition).

Each Bytewax item is a micro-batch (a list) of Events and dead letters. When
every partition is at its end and nothing is buffered, the batch is a
`Heartbeat(wall_ms)` every `[kafka] heartbeat_interval`, so deadlines fire
without traffic (only once the sequencer understands Heartbeat: see
`heartbeats_supported`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from omnitrigger import metrics
from omnitrigger.config import Config
from omnitrigger.kafka_tools import client_settings, quiet_logger
from omnitrigger.live_input import EventTimeMerger, MessageDecoder
from omnitrigger.pii import Pseudonymizer, key_from_environment
from omnitrigger.recording import LineDecoder
from omnitrigger.records import Heartbeat
from omnitrigger.schemas import Contracts

log = logging.getLogger("omnitrigger.live.source")

_STATS_INTERVAL_MS = 5000
_METRICS_EVERY_S = 1.0


def heartbeats_supported() -> bool:
    """Whether the sequencer stage consumes Heartbeat items (it imports the class once it does)."""
    from omnitrigger.operators import stage_chain

    return getattr(stage_chain, "Heartbeat", None) is Heartbeat


class Shutdown:
    """Set by SIGTERM: the source stops reading, lets the in-flight records reach the outputs and a snapshot
    commit, then calls `on_drained` (which ends the process)."""

    def __init__(self, drain_snapshots: int = 2) -> None:
        self.requested = threading.Event()
        self.drain_snapshots = drain_snapshots
        self.on_drained: Callable[[], None] = lambda: None


class _KafkaPartition(StatefulSourcePartition):
    def __init__(self, brokers: str, config: Config, parts: dict[tuple[str, int], str], resume_state: Any,
                 shutdown: Shutdown, heartbeats: bool) -> None:
        self.config = config
        self.contract_topic = {topic: contract for (topic, _), contract in parts.items()}
        self.decoder = MessageDecoder(LineDecoder(
            Contracts(max_future_ms=int(config.max_future_s * 1000)), config.max_record_bytes, 0,
            Pseudonymizer(key_from_environment(), config.default_country_code)))
        self.merger = EventTimeMerger(sorted(parts), resume_state, config.kafka_merge_wait_s)
        self.batch_size = config.batch_size
        self.shutdown = shutdown
        self.heartbeats = heartbeats and config.kafka_heartbeat_interval_s > 0
        self._last_record = time.monotonic()
        self._last_metrics = 0.0
        self._snapshots_since_shutdown = -1
        self._outage_since: float | None = None
        self._events_in: dict[str, int] = {}
        self.consumer = Consumer(client_settings(brokers, config, **{
            "group.id": "omnitrigger-live",  # required by librdkafka; offsets are never committed to it
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            "auto.offset.reset": config.kafka_start,
            "fetch.wait.max.ms": max(1, int(config.kafka_fetch_wait_s * 1000)),
            "statistics.interval.ms": _STATS_INTERVAL_MS,
            "stats_cb": self._on_stats,
            "error_cb": self._on_error,
        }), logger=quiet_logger())
        start = OFFSET_BEGINNING if config.kafka_start == "earliest" else OFFSET_END
        assignment = []
        for part in sorted(parts):
            offset = self.merger.start_offset(part)
            assignment.append(TopicPartition(part[0], part[1], offset if offset >= 0 else start))
        self.consumer.assign(assignment)
        metrics.BROKERS_REACHABLE.set(1)
        log.info("reading input", extra={"fields": {
            "brokers": brokers, "partitions": len(assignment), "resumed": resume_state is not None,
            "seq": self.merger.next_seq, "heartbeats": self.heartbeats}})

    # -- librdkafka callbacks (served inside consume) ---------------------------------

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                metrics.BROKERS_REACHABLE.set(0)
                log.warning("brokers unreachable; waiting for them (nothing is lost: reading resumes at the same "
                            "offsets)", extra={"fields": {"error": error.str()}})
        else:
            log.warning("kafka client error", extra={"fields": {"error": error.str(), "code": error.code()}})

    def _on_stats(self, raw: str) -> None:
        stats = orjson.loads(raw)
        brokers_up = any(broker.get("state") == "UP" for name, broker in stats.get("brokers", {}).items()
                         if not name.startswith("GroupCoordinator"))
        if brokers_up:
            self._back_online()
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                # No committed offsets (positions live in the snapshot): lag = end offset - next offset to read.
                high, position = partition_stats.get("hi_offset", -1), partition_stats.get("app_offset", -1)
                if partition != "-1" and high >= 0:
                    metrics.CONSUMER_LAG.labels(topic, partition).set(max(0, high - max(position, 0)))

    def _back_online(self) -> None:
        if self._outage_since is not None:
            log.warning("brokers reachable again; resumed", extra={"fields": {
                "outage_s": round(time.monotonic() - self._outage_since, 1)}})
            self._outage_since = None
            metrics.BROKERS_REACHABLE.set(1)

    # -- Bytewax --------------------------------------------------------------------

    def next_batch(self) -> list[Any]:
        if self.shutdown.requested.is_set():
            return self._drain()
        self._read()
        batch: list[Any] = self.merger.pop_ready(self.batch_size, outage=self._outage_since is not None)
        now = time.monotonic()
        if batch:
            self._last_record = now
        elif self.heartbeats and self.merger.idle() and now - self._last_record >= self.config.kafka_heartbeat_interval_s:
            self._last_record = now
            batch = [Heartbeat(int(time.time() * 1000))]
        if now - self._last_metrics >= _METRICS_EVERY_S:
            self._publish_metrics(now)
        return [batch] if batch else []

    def _read(self) -> None:
        # Whatever is queued, at once; if nothing is, wait a little for the first message (low latency, no spin).
        messages = self.consumer.consume(self.batch_size, 0)
        if not messages and not self.merger.buffered():
            messages = self.consumer.consume(1, 0.02)
            if messages:
                messages += self.consumer.consume(self.batch_size - 1, 0)
        merger = self.merger
        decode = self.decoder.decode
        counts = self._events_in
        for message in messages:
            error = message.error()
            topic = message.topic()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    merger.mark_eof((topic, message.partition()))
                else:
                    log.warning("kafka consume error", extra={"fields": {"error": error.str(), "topic": topic}})
                continue
            part = (topic, message.partition())
            offset = message.offset()
            merge_ts, item = decode(self.contract_topic[topic], topic, part[1], offset, message.value(),
                                    message.key(), message.timestamp()[1], merger.last_ts(part))
            merger.add(part, offset, merge_ts, item)
            counts[topic] = counts.get(topic, 0) + 1
        if messages and self._outage_since is not None:
            self._back_online()

    def _publish_metrics(self, now: float) -> None:
        self._last_metrics = now
        for topic, count in self._events_in.items():
            metrics.EVENTS_IN.labels(topic).inc(count)
        self._events_in.clear()
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
        if self._snapshots_since_shutdown >= 0:
            self._snapshots_since_shutdown += 1
        return self.merger.snapshot()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class KafkaLiveSource(FixedPartitionedSource):
    """Every partition of `topics` (Kafka topic -> contract topic), read as one merged stream."""

    def __init__(self, brokers: str, config: Config, topics: dict[str, str], partitions: dict[str, int],
                 shutdown: Shutdown | None = None, heartbeats: bool | None = None) -> None:
        self.brokers = brokers
        self.config = config
        self.parts = {(topic, partition): contract for topic, contract in topics.items()
                      for partition in range(partitions[topic])}
        self.shutdown = shutdown or Shutdown()
        self.heartbeats = heartbeats_supported() if heartbeats is None else heartbeats

    def list_parts(self) -> list[str]:
        return ["kafka"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _KafkaPartition:
        return _KafkaPartition(self.brokers, self.config, self.parts, resume_state, self.shutdown, self.heartbeats)
