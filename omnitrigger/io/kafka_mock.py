"""librdkafka's built-in mock Kafka cluster, driven through its C API (ctypes), for tests and benchmarks.

confluent-kafka ships librdkafka as a shared library with the mock cluster
API exported (`rd_kafka_mock_*`). Creating the cluster through that API,
rather than with a client's `test.mock.num.brokers`, gives us the handle, so
a test can create topics with a chosen partition count (the mock's
`CreateTopics` never answers), take the broker down and up again to
simulate an outage, slow it down, and delete a partition's oldest records as retention
would. The cluster speaks the real protocol on 127.0.0.1, so
any client (the job's consumer and producer included, in other processes)
can use `bootstrap_servers`. docs/design.md#mock-cluster-limits lists its limits.
"""

from __future__ import annotations

import ctypes
import glob
import os
from ctypes import c_char_p, c_int, c_int32, c_int64, c_size_t, c_void_p

_PRODUCER = 0


def _library() -> ctypes.CDLL:
    import confluent_kafka

    base = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
    candidates = sorted(glob.glob(os.path.join(base, "confluent_kafka.libs", "librdkafka*.so*")))
    if not candidates:
        raise RuntimeError("librdkafka shared library not found next to confluent_kafka; the mock cluster needs it")
    lib = ctypes.CDLL(candidates[0])
    lib.rd_kafka_conf_new.restype = c_void_p
    lib.rd_kafka_conf_set.argtypes = [c_void_p, c_char_p, c_char_p, c_char_p, c_size_t]
    lib.rd_kafka_new.restype = c_void_p
    lib.rd_kafka_new.argtypes = [c_int, c_void_p, c_char_p, c_size_t]
    lib.rd_kafka_destroy.argtypes = [c_void_p]
    lib.rd_kafka_mock_cluster_new.restype = c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [c_void_p, c_int]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [c_void_p]
    lib.rd_kafka_mock_broker_set_down.argtypes = [c_void_p, c_int32]
    lib.rd_kafka_mock_broker_set_up.argtypes = [c_void_p, c_int32]
    lib.rd_kafka_mock_topic_create.argtypes = [c_void_p, c_char_p, c_int, c_int]
    lib.rd_kafka_mock_broker_set_rtt.argtypes = [c_void_p, c_int32, c_int]
    lib.rd_kafka_mock_partition_delete_records.argtypes = [c_void_p, c_char_p, c_int32, c_int64]
    return lib


class MockCluster:
    """A mock Kafka cluster of `brokers` brokers (ids 1..N) in this process; `close()` ends it."""

    def __init__(self, brokers: int = 1) -> None:
        self._lib = _library()
        errstr = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"0", errstr, 512)
        self._handle = self._lib.rd_kafka_new(_PRODUCER, conf, errstr, 512)
        if not self._handle:
            raise RuntimeError(f"cannot create the librdkafka handle for the mock cluster: {errstr.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._handle, brokers)
        if not self._cluster:
            raise RuntimeError("librdkafka refused to create a mock cluster")
        self.brokers = brokers
        self.bootstrap_servers: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, topic: str, partitions: int) -> None:
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, topic.encode(), partitions, 1)
        if code != 0:
            raise RuntimeError(f"mock cluster: cannot create topic {topic} (librdkafka error {code})")

    def delete_records(self, topic: str, partition: int, before_offset: int) -> None:
        """Delete the partition's messages before `before_offset`, as retention does: its earliest offset moves up."""
        code = self._lib.rd_kafka_mock_partition_delete_records(self._cluster, topic.encode(), partition, before_offset)
        if code != 0:
            raise RuntimeError(f"mock cluster: cannot delete records of {topic}[{partition}] (librdkafka error {code})")

    def set_down(self, broker_id: int = 1) -> None:
        """Disconnect the broker and refuse new connections; its data stays."""
        self._lib.rd_kafka_mock_broker_set_down(self._cluster, broker_id)

    def set_up(self, broker_id: int = 1) -> None:
        self._lib.rd_kafka_mock_broker_set_up(self._cluster, broker_id)

    def set_rtt(self, rtt_ms: int, broker_id: int = 1) -> None:
        """Delay every response of the broker by `rtt_ms` (0: none), as a slow network would."""
        self._lib.rd_kafka_mock_broker_set_rtt(self._cluster, broker_id, rtt_ms)

    def close(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._handle:
            self._lib.rd_kafka_destroy(self._handle)
            self._handle = None

    def __enter__(self) -> "MockCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
