"""Prometheus metrics of a live job, served on `[kafka] metrics_port` (`/metrics`).

One registry of our own (not the client's global one), so tests can build
several jobs' worth of metrics in one process without name clashes.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("omnitrigger.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter("omnitrigger_events_in", "Records read from the input topics (dead letters included)",
                    ["topic"], registry=REGISTRY)
DEAD_LETTERS = Counter("omnitrigger_dead_letters", "Records that broke their contract, by reason", ["reason"],
                       registry=REGISTRY)
TRIGGERS = Counter("omnitrigger_triggers", "Triggers acknowledged on the triggers topic, by rule", ["rule"],
                   registry=REGISTRY)
SUPPRESSED = Counter("omnitrigger_suppressed", "Triggers held back by policy, by rule and reason",
                     ["rule", "reason"], registry=REGISTRY)
VISITS = Counter("omnitrigger_visits", "Store visit records published", registry=REGISTRY)
RESENT_DROPPED = Counter("omnitrigger_triggers_resent_dropped",
                         "Triggers not sent again because their trigger_id is already on the triggers topic",
                         registry=REGISTRY)
TRIGGER_LATENCY = Histogram(
    "omnitrigger_trigger_latency_seconds",
    "From the moment a trigger became due (its event_time) to its acknowledgement on the triggers topic",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY)
WATERMARK_LAG = Gauge("omnitrigger_watermark_lag_seconds",
                      "Wall clock minus the latest event time read, per input partition", ["topic", "partition"],
                      registry=REGISTRY)
CONSUMER_LAG = Gauge("omnitrigger_consumer_lag_messages", "Messages behind the partition's end, per input partition",
                     ["topic", "partition"], registry=REGISTRY)
BROKERS_REACHABLE = Gauge("omnitrigger_brokers_reachable", "1 while the input brokers answer, 0 during an outage",
                          registry=REGISTRY)
OUTPUT_PENDING = Gauge("omnitrigger_output_pending_messages", "Output messages waiting for acknowledgement",
                       registry=REGISTRY)
RETRACTIONS = Counter("omnitrigger_retractions", "Retractions published (a trigger's products bought before its time), "
                      "by rule", ["rule"], registry=REGISTRY)
IGNORED_IDENTIFIERS = Counter("omnitrigger_ignored_identifiers",
                              "Identifier values ignored as blank or blocked (empty, null, N/A, all zeros, ...), by type",
                              ["type"], registry=REGISTRY)
RULE_DISABLED = Gauge("omnitrigger_rule_disabled", "1 while the kill switch holds the rule off (config or control file)",
                      ["rule"], registry=REGISTRY)
INPUT_GAP = Counter("omnitrigger_input_gap_messages",
                    "Input messages deleted by retention before the job read them (a resume found the partition's "
                    "earliest offset past the saved one), per input partition", ["topic", "partition"],
                    registry=REGISTRY)
STALE = Counter("omnitrigger_stale_triggers",
                "Triggers suppressed as stale: they would have reached the topic more than [policy] max_delay "
                "after their time (a backlog, an outage), by rule", ["rule"], registry=REGISTRY)
IDENTITY_UPDATES = Counter("omnitrigger_identity_updates",
                           "Identity changes published to the identities topic (kind: customer, or tombstone for a "
                           "customer merged away)", ["kind"], registry=REGISTRY)
STATE_BYTES = Gauge("omnitrigger_state_bytes", "Size on disk of the state folder (RocksDB and recovery store)",
                    registry=REGISTRY)


def serve(port: int, bind: str = "0.0.0.0") -> None:
    """Serve /metrics on `bind`:`port` in a daemon thread (port 0: off)."""
    if port:
        try:
            start_http_server(port, addr=bind, registry=REGISTRY)
        except (OSError, ValueError) as error:
            from omnitrigger.config import ConfigError

            reason = getattr(error, "strerror", None) or str(error)
            raise ConfigError(f"cannot serve metrics on {bind}:{port} ({reason}); choose another --metrics-port "
                              "or --metrics-bind ([kafka] metrics_port, metrics_bind)") from None
        log.info("metrics endpoint up", extra={"fields": {"port": port, "bind": bind, "path": "/metrics"}})


def watch_state_size(state_dir: Path, interval_s: float = 15.0) -> threading.Thread:
    """Refresh STATE_BYTES every `interval_s` in a daemon thread."""

    def size() -> int:
        total = 0
        for root, _dirs, files in os.walk(state_dir):
            for name in files:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    pass  # a RocksDB file removed by compaction between listing and stat
        return total

    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            STATE_BYTES.set(size())
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="omnitrigger-state-size", daemon=True)
    thread.start()
    return thread
