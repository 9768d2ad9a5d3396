"""Prometheus metrics of a live job, and its health, served on `[kafka] metrics_port`.

    /metrics   the registry below, in Prometheus' text format
    /healthz   200 while the process runs (liveness)
    /readyz    200 while every input partition read here is fewer than `[kafka] ready_max_lag` messages
               behind its end and the brokers answer; else 503, with a JSON body saying why (readiness)

One registry of our own (not the client's global one), so tests can build
several jobs' worth of metrics in one process without name clashes.
prometheus_client's own server answers /metrics alone, so a small
`http.server` one (a daemon thread, a thread per request) serves all three.
docs/monitoring.md says what each metric means.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from omnitrigger.config import Config

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
CONVERSIONS = Counter("omnitrigger_conversions",
                      "Purchases of messaged products within [metrics] conversion_window, by rule, arm (treated, "
                      "holdout) and purchase channel (web, app, pos)", ["rule", "arm", "channel"], registry=REGISTRY)
PENDING_DEADLINES = Gauge("omnitrigger_pending_deadlines",
                          "Deadlines set and not yet fired or cancelled, by rule (this process's rules shards)",
                          ["rule"], registry=REGISTRY)
STALE = Counter("omnitrigger_stale_triggers",
                "Triggers suppressed as stale: they would have reached the topic more than [policy] max_delay "
                "after their time (a backlog, an outage), by rule", ["rule"], registry=REGISTRY)
IDENTITY_UPDATES = Counter("omnitrigger_identity_updates",
                           "Identity changes published to the identities topic (kind: customer, or tombstone for a "
                           "customer merged away)", ["kind"], registry=REGISTRY)
STATE_BYTES = Gauge("omnitrigger_state_bytes", "Size on disk of the state folder (RocksDB and recovery store)",
                    registry=REGISTRY)
DUPLICATES = Counter("omnitrigger_duplicates", "Redelivered records dropped by dedup, by contract topic",
                     ["topic"], registry=REGISTRY)
REFUSED_LINKS = Counter("omnitrigger_refused_links",
                        "Identity links refused by merge protection (blocked value, low confidence, a limit), by reason",
                        ["reason"], registry=REGISTRY)
LATE_PINGS = Counter("omnitrigger_late_pings",
                     "geo.pings older than the visits watermark ([visits] allowed_lateness): counted, dropped",
                     registry=REGISTRY)
BUILD_INFO = Gauge("omnitrigger_build_info", "1, labelled with the package version and a hash of the config in force",
                   ["version", "config_hash"], registry=REGISTRY)


class SnapshotClock:
    """When the input was last snapshot: `omnitrigger_snapshot_age_seconds`, computed at each scrape.

    The source partition calls `started` when it is built and `taken` from its `snapshot()`, which Bytewax
    calls at every epoch's snapshot; the age counts from the start until the first one. A process that
    reads no input (a cluster's processes but 0) exposes no age rather than one that only grows.
    """

    name = "omnitrigger_snapshot_age_seconds"
    documentation = "Seconds since the last Bytewax snapshot of the input (since the start, before the first)"

    def __init__(self) -> None:
        self.since: float | None = None  # wall time of the last snapshot (or the start)

    def started(self) -> None:
        if self.since is None:
            self.since = time.time()

    def taken(self) -> None:
        self.since = time.time()

    def age_s(self) -> float | None:
        since = self.since
        return None if since is None else max(0.0, time.time() - since)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = self.age_s()
        if age is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=round(age, 3))


SNAPSHOTS = SnapshotClock()
REGISTRY.register(SNAPSHOTS)

#: After this long without a consumer statistics report (one a second while the flow reads) the lag is unknown.
_STATS_STALE_S = 30.0


class Readiness:
    """What /readyz answers from: the consumer lag of each input partition read here, and the brokers.

    The source says which partitions it reads (`reading`) and reports their lag from each consumer statistics
    report (`report_lag`, about once a second); omnitrigger/runner/process.py points `brokers_down` at BrokerWatch. A process that
    reads no input is ready while the brokers answer.
    """

    def __init__(self) -> None:
        self.max_lag = 1000
        self.brokers_down: Callable[[], bool] = lambda: False
        self._partitions: frozenset[tuple[str, int]] | None = None
        self._lag: dict[tuple[str, int], int] = {}
        self._reported_at: float | None = None  # monotonic time of the latest report

    def reading(self, partitions: set[tuple[str, int]], max_lag: int) -> None:
        self._partitions = frozenset(partitions)
        self.max_lag = max_lag

    def report_lag(self, lag: dict[tuple[str, int], int]) -> None:
        """The latest lag of the partitions in this report (a report may name only some)."""
        self._lag = {**self._lag, **lag}
        self._reported_at = time.monotonic()

    def lag_total(self) -> int | None:
        return sum(self._lag.values()) if self._partitions is not None and self._reported_at is not None else None

    def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, a short JSON-able account: reasons when not, the lag when known)."""
        reasons: list[str] = []
        if self.brokers_down():
            reasons.append("brokers unreachable")
        detail: dict[str, Any] = {}
        partitions, lag, reported_at = self._partitions, dict(self._lag), self._reported_at
        if partitions is not None:
            detail.update(max_lag=self.max_lag, partitions=len(partitions))
            if reported_at is None:
                reasons.append("no consumer statistics yet")
            elif time.monotonic() - reported_at > _STATS_STALE_S:
                reasons.append(f"no consumer statistics for {time.monotonic() - reported_at:.0f} s "
                               "(the flow is not reading)")
            missing = partitions - lag.keys()
            if reported_at is not None and missing:
                reasons.append(f"no lag known yet for {len(missing)} of {len(partitions)} input partitions")
            behind = sorted(((value, part) for part, value in lag.items()
                             if part in partitions and value >= self.max_lag), reverse=True)
            if behind:
                reasons.append(f"{len(behind)} input partition{'s' if len(behind) != 1 else ''} "
                               f"{self.max_lag:,} or more messages behind")
                detail["behind"] = [{"topic": topic, "partition": partition, "lag": value}
                                    for value, (topic, partition) in behind[:10]]
            if reported_at is not None:
                detail["lag_total"] = sum(value for part, value in lag.items() if part in partitions)
        return not reasons, {"ready": not reasons, **({"reasons": reasons} if reasons else {}), **detail}


READINESS = Readiness()


def counter_total(counter: Counter) -> float:
    """The sum of a counter over all its labels (for a log line, never per event)."""
    return sum(sample.value for family in counter.collect() for sample in family.samples
               if sample.name.endswith("_total"))


def metric_names() -> set[str]:
    """Every series name the registry can expose (counters with `_total` and `_created`, histograms with
    `_bucket`, `_sum`, `_count`): what the dashboard and the alert rules may name (tests/test_live_ops.py)."""
    return set(REGISTRY._names_to_collectors)  # prometheus_client keeps no public list of them


def config_hash(config: "Config") -> str:
    """12 hex digits of the sha256 of the config's settings (run-time fields left out), sorted: the same
    settings give the same hash on every machine and restart, whatever file or order they came from."""
    from omnitrigger.config import RUNTIME_FIELDS

    settings = {key: value for key, value in dataclasses.asdict(config).items() if key not in RUNTIME_FIELDS}
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def set_build_info(config: "Config") -> None:
    """`omnitrigger_build_info{version, config_hash} 1` for this process's config."""
    from omnitrigger import __version__

    BUILD_INFO.labels(__version__, config_hash(config)).set(1)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, /healthz, /readyz; anything else 404."""

    server_version = "omnitrigger"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b'{"alive":true}\n', "application/json")
        elif path == "/readyz":
            ready, detail = READINESS.check()
            self._answer(200 if ready else 503, json.dumps(detail).encode() + b"\n", "application/json")
        else:
            self._answer(404, b"not found: /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # a scrape every few seconds is not worth a log line


def _server(port: int, bind: str) -> ThreadingHTTPServer:
    """A threading HTTP server on `bind`:`port`, IPv6 too (http.server assumes IPv4 otherwise)."""
    family, _, _, _, address = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    return Server((address[0], port), _Handler)


def serve(port: int, bind: str = "0.0.0.0") -> None:
    """Serve /metrics, /healthz and /readyz on `bind`:`port` in a daemon thread (port 0: off)."""
    if port:
        try:
            server = _server(port, bind)
        except (OSError, ValueError) as error:
            from omnitrigger.config import ConfigError

            reason = getattr(error, "strerror", None) or str(error)
            raise ConfigError(f"cannot serve metrics on {bind}:{port} ({reason}); choose another --metrics-port "
                              "or --metrics-bind ([kafka] metrics_port, metrics_bind)") from None
        threading.Thread(target=server.serve_forever, name="omnitrigger-metrics", daemon=True).start()
        log.info("metrics endpoint up", extra={"fields": {"port": port, "bind": bind, "path": "/metrics",
                                                          "health": ["/healthz", "/readyz"]}})


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
