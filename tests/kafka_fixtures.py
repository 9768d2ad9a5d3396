"""Live-mode test helpers: a session-wide mock Kafka cluster, a job in a subprocess, reading topics back.

The mock cluster is librdkafka's own (omnitrigger/io/kafka_mock.py), created in
the test process: nothing to install or start outside the test session.
Each test uses its own topic prefix, so tests share the cluster and never
see each other's records.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from omnitrigger.config import Config
from omnitrigger.io.kafka_mock import MockCluster
from omnitrigger.io.kafka_tools import input_topics, output_topics

PARTITIONS = 4


@pytest.fixture(scope="session")
def mock_kafka() -> Iterator[MockCluster]:
    cluster = MockCluster(brokers=1)
    yield cluster
    cluster.close()


def live_config(prefix: str, **kafka: Any) -> Config:
    """Live settings for a test: its own topic prefix, no metrics port, no heartbeats, and no stale check
    (the tests publish recordings of past days and compare with a replay; tests of `max_delay` set it)."""
    settings = {"kafka_topic_prefix": prefix, "kafka_metrics_port": 0, "kafka_heartbeat_interval_s": 0.0,
                "max_delay_s": 0.0}
    settings.update(kafka)
    return Config(**settings)


def config_file(path: Path, config: Config) -> Path:
    """The [kafka] part of `config` (client settings included; and [policy] max_delay, control_file) as a TOML file for
    `omnitrigger run --config`."""
    lines = ["[kafka]", f'topic_prefix = "{config.kafka_topic_prefix}"',
             f"metrics_port = {config.kafka_metrics_port}",
             f'metrics_bind = "{config.kafka_metrics_bind}"',
             f'on_retention_gap = "{config.kafka_on_retention_gap}"',
             f"heartbeat_interval = {config.kafka_heartbeat_interval_s}",
             f"merge_wait = {config.kafka_merge_wait_s}",
             f'identities_topic = "{config.kafka_identities_topic}"',
             f'refused_links_topic = "{config.kafka_refused_links_topic}"',
             f'duplicates_topic = "{config.kafka_duplicates_topic}"',
             f"ready_max_lag = {config.kafka_ready_max_lag}",
             f"progress_interval = {config.kafka_progress_interval_s}"]
    if config.kafka_client_properties:
        lines.append("client = {" + ", ".join(f"{orjson.dumps(name).decode()} = {orjson.dumps(value).decode()}"
                                              for name, value in config.kafka_client_properties) + "}")
    lines += ["[policy]", f"max_delay = {config.max_delay_s}"]
    if config.control_file:
        lines.append(f"control_file = {orjson.dumps(config.control_file).decode()}")
    path.write_text("\n".join(lines) + "\n")
    return path


def create_topics(cluster: MockCluster, config: Config, partitions: int = PARTITIONS) -> None:
    for topic in [*input_topics(config).values(), *output_topics(config).values()]:
        cluster.create_topic(topic, partitions)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveJob:
    """`omnitrigger run` in a subprocess; its JSON log lines go to `log_path`."""

    def __init__(self, brokers: str, stores: Path, state_dir: Path, config_path: Path, log_path: Path,
                 *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omnitrigger", "run", "--brokers", brokers, "--stores", str(stores),
             "--state-dir", str(state_dir), "--config", str(config_path), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                lines.append({"raw": line.decode(errors="replace")})
        return lines

    def lines_with(self, message: str) -> list[dict[str, Any]]:
        """The log lines whose message starts with `message`."""
        return [line for line in self.log_lines() if str(line.get("msg", "")).startswith(message)]

    def wait_for_log(self, message: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.get("msg", "").startswith(message) for line in self.log_lines()):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"job exited with {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no log line {message!r} within {timeout} s: {self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A job's /metrics, as {series: value}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def wait_until(condition: Any, timeout: float = 30.0, what: str = "condition", job: "LiveJob | None" = None) -> Any:
    """Poll `condition()` until it returns something true (returned), failing after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if job is not None and job.process.poll() is not None:
            raise AssertionError(f"job exited with {job.process.returncode} waiting for {what}: "
                                 f"{job.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s" +
                                 (f": {job.log_path.read_text()[-3000:]}" if job is not None else ""))
        time.sleep(0.1)


def read_topic(brokers: str, topic: str, partitions: int = PARTITIONS, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every message of `topic` now: key, headers, value (parsed JSON), partition, offset."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "omnitrigger-tests", "enable.partition.eof": True,
                         "enable.auto.commit": False})
    out: list[dict[str, Any]] = []
    try:
        consumer.assign([TopicPartition(topic, partition, 0) for partition in range(partitions)])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < partitions and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                    continue
                at_end.discard(message.partition())
                out.append({"key": message.key().decode() if message.key() is not None else None,
                            "headers": {name: value.decode() for name, value in message.headers() or ()},
                            "value": orjson.loads(message.value()) if message.value() is not None else None,
                            "partition": message.partition(),
                            "offset": message.offset()})
    finally:
        consumer.close()
    return out


def wait_for_counts(brokers: str, topics: dict[str, str], expected: dict[str, int], timeout: float = 60.0,
                    job: LiveJob | None = None) -> dict[str, list[dict[str, Any]]]:
    """Read the output topics until each holds at least `expected[stream]` messages (or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {stream: read_topic(brokers, topic, timeout=5.0) for stream, topic in topics.items()}
        if all(len(got[stream]) >= count for stream, count in expected.items()) or time.monotonic() > deadline:
            return got
        if job is not None and job.process.poll() is not None:
            raise AssertionError(f"job exited with {job.process.returncode}: {job.log_path.read_text()[-3000:]}")
        time.sleep(0.5)
