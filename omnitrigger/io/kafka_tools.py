"""Kafka plumbing shared by live mode, `record` and `publish`: topic names, client settings, the start-up check,
and the two commands that move recordings in and out of Kafka.

Nothing here imports bytewax. `KafkaSetupError` is a user error: the CLI
prints it as one line (`omnitrigger: error: ...`) and exits 1.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, KafkaException,
    Producer, TopicPartition,
)

from omnitrigger.config import Config
from omnitrigger.records import (
    CONVERSIONS, DEAD_LETTERS, DUPLICATES, IDENTITIES, REFUSED_LINKS, RETRACTIONS, SUPPRESSED, TRIGGERS, VISITS,
)
from omnitrigger.schemas import INPUT_TOPICS, OPTIONAL_INPUT_TOPICS

#: Header carrying the wall-clock time (epoch ms, ASCII) at which `publish` sent a record.
SENT_HEADER = "omnitrigger.sent_ms"
#: Header carrying a trigger's id on the triggers topic.
TRIGGER_ID_HEADER = "trigger_id"


class KafkaSetupError(Exception):
    """Brokers unreachable, topics missing, or a Kafka setting that cannot work; one line for the user."""


def input_topics(config: Config) -> dict[str, str]:
    """Contract topic -> Kafka topic, with the prefix and any per-topic override."""
    overrides = dict(config.kafka_input_topics)
    return {topic: config.kafka_topic_prefix + overrides.get(topic, topic) for topic in INPUT_TOPICS}


def output_topics(config: Config) -> dict[str, str]:
    """Output stream -> Kafka topic. Other streams (stats, events) are not published; identity changes,
    refused links and duplicates only while their `[kafka] ..._topic` is not "" (identities: compacted)."""
    prefix = config.kafka_topic_prefix
    topics = {TRIGGERS: prefix + config.kafka_triggers_topic, SUPPRESSED: prefix + config.kafka_suppressed_topic,
              VISITS: prefix + config.kafka_visits_topic, DEAD_LETTERS: prefix + config.kafka_dead_letters_topic,
              RETRACTIONS: prefix + config.kafka_retractions_topic,
              CONVERSIONS: prefix + config.kafka_conversions_topic}
    if config.kafka_identities_topic:
        topics[IDENTITIES] = prefix + config.kafka_identities_topic
    if config.kafka_refused_links_topic:
        topics[REFUSED_LINKS] = prefix + config.kafka_refused_links_topic
    if config.kafka_duplicates_topic:
        topics[DUPLICATES] = prefix + config.kafka_duplicates_topic
    return topics


def quiet_logger(name: str = "omnitrigger.kafka.client", interval_s: float = 60.0) -> logging.Logger:
    """A logger for librdkafka's own log lines (otherwise printed raw on stderr): warnings and up, throttled.

    librdkafka repeats a failing reconnect every few hundred ms: a `jsonlog.Throttle` lets one line of each
    kind (facility, or message and error code) through per `interval_s` and reports how many it held back.
    """
    from omnitrigger.jsonlog import throttled

    logger = throttled(name, interval_s)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    return logger


def client_settings(brokers: str, config: Config, **settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"bootstrap.servers": brokers, "client.id": "omnitrigger"}
    base.update(dict(config.kafka_client_properties))
    base.update(settings)
    return base


def preflight(brokers: str, topics: list[str], config: Config, what: str = "topics",
              optional: tuple[str, ...] = ()) -> dict[str, int]:
    """Check that the brokers answer and every topic in `topics` exists; returns partitions per topic.
    A topic in `optional` may be missing: it is then left out of the answer.

    Bytewax's Kafka source hangs without a word on an unreachable broker, so
    this runs first and turns both failures into one line. Metadata is asked
    for all topics (never for one by name, which can auto-create it).
    """
    timeout = config.kafka_preflight_timeout_s
    silent = logging.getLogger("omnitrigger.kafka.preflight")
    silent.addHandler(logging.NullHandler())
    silent.propagate = False
    errors: list[str] = []

    def on_error(error: Any) -> None:
        errors.append(str(error.str() if hasattr(error, "str") else error))

    consumer = Consumer(client_settings(brokers, config, **{
        "group.id": "omnitrigger-preflight", "enable.auto.commit": False, "allow.auto.create.topics": False,
        "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
        "error_cb": on_error}), logger=silent)
    started = time.monotonic()
    try:
        metadata = consumer.list_topics(timeout=timeout)
    except KafkaException as error:
        detail = errors[-1] if errors else error.args[0].str()
        raise KafkaSetupError(f"cannot reach Kafka brokers at {brokers} within {timeout:g} s ({detail})") from None
    finally:
        consumer.close()
    if not metadata.brokers:
        raise KafkaSetupError(f"Kafka at {brokers} answered with no brokers after {time.monotonic() - started:.1f} s")
    partitions = {name: len(topic.partitions) for name, topic in metadata.topics.items()
                  if topic.error is None and topic.partitions}
    missing = [topic for topic in topics if topic not in partitions and topic not in optional]
    if missing:
        raise KafkaSetupError(f"{what} missing on {brokers}: {', '.join(missing)} "
                              "(create them, or set [kafka] topic_prefix / topic names in the config)")
    return {topic: partitions[topic] for topic in topics if topic in partitions}


def optional_input_topics(config: Config) -> tuple[str, ...]:
    """The Kafka names of the input topics a job does without when they do not exist (inventory.levels)."""
    names = input_topics(config)
    return tuple(names[topic] for topic in OPTIONAL_INPUT_TOPICS)


# -- record: topics -> a recording folder ------------------------------------------------------


def record(brokers: str, out_dir: Path, config: Config, topics: list[str] | None = None,
           duration_s: float | None = None, progress: Callable[[str], None] | None = None,
           outputs: bool = False) -> dict[str, int]:
    """Write `<topic>.jsonl` files of kcat -J envelopes; returns records written per contract topic.

    `outputs`: record the output topics instead (triggers, suppressed, conversions, ...), each file named
    by its Kafka topic (`omnitrigger.triggers.jsonl`): what `omnitrigger report` reads.

    Without `duration_s`, reads every partition up to the end offsets it had when recording started
    (`--until-offsets`); with it, reads for that long. Lines of one partition keep their order; the
    partitions of a topic are interleaved in arrival order, as kcat writes them.
    """
    names = input_topics(config) if not outputs else {topic: topic for topic in output_topics(config).values()}
    wanted = topics or list(names)
    unknown = [topic for topic in wanted if topic not in names]
    if unknown:
        raise KafkaSetupError(f"unknown topics {', '.join(unknown)}: record takes contract topic names "
                              f"({', '.join(names)}); the prefix and overrides come from the config")
    kafka_topics = {names[topic]: topic for topic in wanted}
    optional = optional_input_topics(config) if topics is None and not outputs else ()
    partitions = preflight(brokers, list(kafka_topics), config, what="topics", optional=optional)
    out_dir.mkdir(parents=True, exist_ok=True)
    consumer = Consumer(client_settings(brokers, config, **{
        "group.id": "omnitrigger-record", "enable.auto.commit": False, "enable.partition.eof": True,
        "allow.auto.create.topics": False, "fetch.wait.max.ms": 50}), logger=quiet_logger())
    handles = {topic: (out_dir / f"{topic}.jsonl").open("wb") for topic in wanted}
    written = {topic: 0 for topic in wanted}
    try:
        assignment, ends = [], {}
        for topic, count in partitions.items():
            for partition in range(count):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                           timeout=config.kafka_preflight_timeout_s)
                if duration_s is not None or high > low:
                    assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
                    ends[(topic, partition)] = high
        consumer.assign(assignment)
        pending = set(ends) if duration_s is None else set()
        deadline = time.monotonic() + duration_s if duration_s is not None else None
        last_report = time.monotonic()
        while (pending if deadline is None else time.monotonic() < deadline):
            for message in consumer.consume(1000, 0.2):
                part = (message.topic(), message.partition())
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF and deadline is None:
                        if message.offset() >= ends.get(part, 0):
                            pending.discard(part)
                    continue
                if deadline is None and message.offset() >= ends[part]:
                    pending.discard(part)
                    continue
                contract = kafka_topics[part[0]]
                handles[contract].write(orjson.dumps(envelope(message)) + b"\n")
                written[contract] += 1
                if deadline is None and message.offset() + 1 >= ends[part]:
                    pending.discard(part)
            if progress is not None and time.monotonic() - last_report >= 2.0:
                last_report = time.monotonic()
                progress(f"record: {sum(written.values()):,} records")
    finally:
        consumer.close()
        for handle in handles.values():
            handle.close()
    for topic in OPTIONAL_INPUT_TOPICS:  # not asked for by name and empty: no file, no count
        if topics is None and written.get(topic) == 0:
            del written[topic]
            (out_dir / f"{topic}.jsonl").unlink(missing_ok=True)
    return written


def envelope(message: Any) -> dict[str, Any]:
    """The JSON object `kcat -C -J` writes for a message."""
    ts_type, ts = message.timestamp()
    value, key = message.value(), message.key()
    return {"topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
            "tstype": {TIMESTAMP_CREATE_TIME: "create", TIMESTAMP_LOG_APPEND_TIME: "logappend"}.get(ts_type, "none"),
            "ts": ts, "broker": -1,
            "key": key.decode("utf-8", "replace") if key is not None else None,
            "payload": value.decode("utf-8", "replace") if value is not None else None}


# -- publish: a recording folder -> topics ---------------------------------------------------


class _Message(NamedTuple):
    """What `publish` sends for one recorded line: where to, with which key and Kafka timestamp."""

    partition: int
    key: bytes | None
    value: bytes | None
    kafka_ts: int


def _message(line: bytes) -> _Message:
    """A recorded line as Kafka message: a kcat envelope's partition, key, payload and timestamp, or the bare line."""
    line = line.rstrip(b"\r\n")
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _Message(0, None, line, -1)
    if type(document) is dict and "payload" in document and "topic" in document and "offset" in document:
        kafka_ts = document.get("ts") if type(document.get("ts")) is int else -1
        partition = document.get("partition") if type(document.get("partition")) is int else 0
        raw_key = document.get("key")
        payload = document["payload"]
        value = None if payload is None else payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
        return _Message(partition, str(raw_key).encode() if raw_key is not None else None, value, kafka_ts)
    return _Message(0, None, line, -1)


def publish(recording_dir: Path, brokers: str, config: Config, speed: float | None = None, rate: float | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Send a recording to the input topics; returns records sent per contract topic.

    The records go out in the replay's order and are paced by the replay's
    merge times: the recording is read by the replay's own reader, so a
    record the replay rejects (a wrong clock years ahead, a broken line) is
    still sent, where the replay has it, but neither reorders nor delays
    the rest. Each partition therefore gets its records in the file's order.
    A record goes to its envelope's partition (modulo the topic's partition
    count), a bare line to partition 0: the positions the replay gives
    them. `speed` keeps the recorded gaps divided by it; `rate` sends N
    records a second; neither: as fast as the producer goes. Each message
    carries its send time in the `omnitrigger.sent_ms` header, and its
    envelope's Kafka timestamp if it had one (else the send time).
    """
    import os

    from omnitrigger.pii import Pseudonymizer
    from omnitrigger.io.recording import RecordingReader, recording_files
    from omnitrigger.schemas import Contracts

    files = recording_files(Path(recording_dir), config.kafka_topic_prefix, dict(config.kafka_input_topics))
    names = input_topics(config)
    partitions = preflight(brokers, [names[topic] for topic in files], config, what="topics")
    # The reader decides order and pacing only; what it decodes is thrown away, so any hashing key will do.
    reader = RecordingReader(Path(recording_dir), Contracts(max_future_ms=int(config.max_future_s * 1000),
                                                            max_depth=config.max_depth),
                             max_record_bytes=config.max_record_bytes, reference_ms=config.reference_time_ms,
                             pseudonymizer=Pseudonymizer(os.urandom(32), config.default_country_code),
                             max_clock_skew_ms=int(config.max_clock_skew_s * 1000),
                             topic_prefix=config.kafka_topic_prefix, topic_overrides=dict(config.kafka_input_topics))
    producer = Producer(client_settings(brokers, config, **{
        "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 300_000}), logger=quiet_logger())
    sent = {topic: 0 for topic in files}
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    started_wall = time.monotonic()
    first_ms: int | None = None
    last_report = started_wall
    count = 0
    try:
        while batch := reader.read_lines(1000):
            for topic, line, merge_ts in batch:
                if first_ms is None:
                    first_ms = merge_ts
                if rate:
                    _sleep_until(started_wall + count / rate)
                elif speed:
                    _sleep_until(started_wall + max(0, merge_ts - first_ms) / 1000 / speed)
                message = _message(line)
                kafka_topic = names[topic]
                now_ms = int(time.time() * 1000)
                while True:
                    try:
                        producer.produce(kafka_topic, message.value, message.key,
                                         partition=message.partition % partitions[kafka_topic],
                                         timestamp=message.kafka_ts if message.kafka_ts > 0 else now_ms,
                                         headers=[(SENT_HEADER, str(now_ms).encode())], on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.1)
                producer.poll(0)
                sent[topic] += 1
                count += 1
                if progress is not None and time.monotonic() - last_report >= 2.0:
                    last_report = time.monotonic()
                    progress(f"publish: {count:,} records sent")
    finally:
        reader.close()
    remaining = producer.flush(60)
    if failures or remaining:
        raise KafkaSetupError(f"publish: {len(failures) + remaining} records not acknowledged "
                              f"({failures[0] if failures else 'flush timed out'})")
    return sent


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)
