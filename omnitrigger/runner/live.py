"""Live mode: `omnitrigger run`, the flow of the replay between Kafka topics.

    input topics ──► KafkaLiveSource ──► the replay's dataflow (build_flow) ──► KafkaOutputSink ──► output topics
                     (one partition,                                           (idempotent producer,
                      event-time merge)                                          acked per batch)

Before the dataflow starts, the brokers and every input and output topic are
checked (`kafka_tools.preflight`): an unreachable cluster or a missing topic
is one line and exit 1 within `[kafka] preflight_timeout`, not Bytewax's
silent hang. State folder layout (`--state-dir`):

    layout.json          what fixes the layout (state format, processes, [rules] shards, operators,
                         PII key id, input topics; in a cluster, the process id); checked on reuse
                         (omnitrigger/state_folder.py)
    recovery/            Bytewax's recovery store: input offsets, the seq counter, state generations
                         (part-0 alone; part-I as process I of a cluster)
    rocksdb/process-I/   operator state

As a cluster (omnitrigger/cluster.py): process 0 reads every input partition
and runs the sequencer, the rules shards spread over all processes, and each
process publishes the outputs its shards make. `--processes N` keeps
layout.json over process-0/ ... process-N-1/, one folder as above each;
`--addresses ... --process-id I` uses the --state-dir given as process I's.

Broker outages are watched by `BrokerWatch`, in a thread of its own (the
flow's thread waits in the sink's flush for as long as the brokers are away):
`omnitrigger_brokers_reachable` follows it, one line says when the brokers
went away and one when they are back, with the outage's length.

Operations (docs/monitoring.md): the metrics port serves /metrics, /healthz
and /readyz (omnitrigger/metrics.py), `omnitrigger_build_info` names the
version and the config's hash, and the source logs a "progress" line every
`[kafka] progress_interval`.

SIGTERM (and Ctrl-C) stop reading, let the records in flight reach the
output topics and a snapshot commit, and exit 0; a restart resumes there.
In a cluster process 0 drains so, and the other processes, once stopped
too, end when it has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from omnitrigger import __version__, jsonlog, metrics
from omnitrigger.runner.cluster import ClusterError, Role, local_addresses, run_cluster, start_children, wait_children
from omnitrigger.config import Config
from omnitrigger.kafka_tools import client_settings, input_topics, optional_input_topics, output_topics, preflight
from omnitrigger.pii import key_from_environment
from omnitrigger.records import TRIGGERS
from omnitrigger.runner.state_folder import (
    layout_record, open_rocksdb, prepare_local_cluster, prepare_process_folder, raise_if_corrupted,
)
from omnitrigger.stores import load_stores

log = logging.getLogger("omnitrigger.live")


@dataclass
class LiveOptions:
    brokers: str
    stores: Path
    state_dir: Path
    config: Config = field(default_factory=Config)
    metrics_port: int | None = None  # None: [kafka] metrics_port
    metrics_bind: str | None = None  # None: [kafka] metrics_bind
    processes: int = 1  # a one-machine cluster of this many processes
    addresses: list[str] | None = None  # or: run as process `process_id` of the cluster at these addresses
    process_id: int | None = None
    allow_public_cluster: bool = False  # --allow-public-cluster (or OMNITRIGGER_ALLOW_PUBLIC_CLUSTER=1)


class BrokerWatch:
    """Asks the brokers for metadata every `interval_s` in a daemon thread, whatever the flow is doing.

    Sets `omnitrigger_brokers_reachable`; logs one line when the brokers stop answering (at that time) and
    one when they answer again, with the outage's length; and lets the client log throttles report what they
    held back (`jsonlog.Throttle`). `state()` tells the source whether an outage is under way and how many
    there were.
    """

    def __init__(self, brokers: str, config: Config, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.brokers = brokers
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.down_since: float | None = None  # monotonic time of the first probe that failed
        self.outages = 0  # how many began
        self._stop = threading.Event()
        silent = logging.getLogger("omnitrigger.kafka.watch")  # the outage is reported once, here, not per retry
        silent.addHandler(logging.NullHandler())
        silent.propagate = False
        self._client = AdminClient(client_settings(brokers, config, **{
            "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000))}), logger=silent)
        metrics.BROKERS_REACHABLE.set(1)  # preflight has just reached them

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def state(self) -> tuple[bool, int]:
        """(brokers away now, outages so far): what the source asks (flows/kafka_source.py)."""
        return self.down_since is not None, self.outages

    def probe(self) -> bool:
        """One metadata request: do the brokers answer within `timeout_s`?"""
        from confluent_kafka import KafkaException

        try:
            metadata = self._client.list_topics(timeout=self.timeout_s)
        except KafkaException:
            return False
        return bool(metadata.brokers)

    def check(self) -> None:
        """Probe once and update the gauge and the log."""
        started = time.monotonic()
        reachable = self.probe()
        if not reachable and self.down_since is None:
            self.down_since = started
            self.outages += 1
            metrics.BROKERS_REACHABLE.set(0)
            log.warning("brokers unreachable; waiting for them (nothing is lost: reading resumes at the same "
                        "offsets, outputs wait for acknowledgement)", extra={"fields": {
                            "brokers": self.brokers, "probe_timeout_s": self.timeout_s}})
        elif reachable and self.down_since is not None:
            from omnitrigger.jsonlog import Throttle

            outage_s = round(time.monotonic() - self.down_since, 1)
            self.down_since = None
            metrics.BROKERS_REACHABLE.set(1)
            log.warning("brokers reachable again; resumed", extra={"fields": {
                "brokers": self.brokers, "outage_s": outage_s}})
            Throttle.flush_all(force=True)  # what the clients repeated during the outage, counted

    def start(self) -> "BrokerWatch":
        def loop() -> None:
            from omnitrigger.jsonlog import Throttle

            while not self._stop.is_set():
                started = time.monotonic()
                self.check()
                Throttle.flush_all()
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

        threading.Thread(target=loop, name="omnitrigger-broker-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


def check_kafka(brokers: str, config: Config) -> dict[str, int]:
    """Preflight: partitions per input topic; KafkaSetupError (one line) when brokers or topics are missing."""
    inputs = list(input_topics(config).values())
    optional = optional_input_topics(config)
    partitions = preflight(brokers, inputs, config, what="input topics", optional=optional)
    preflight(brokers, list(output_topics(config).values()), config, what="output topics")
    return partitions


def prepare_state_dir(state_dir: Path, config: Config, processes: int = 1, role: Role | None = None) -> list[Path]:
    """Check a reused state folder fits this job and is readable (one line if not), or set up a new one;
    returns the folder of each process to run here (one; `processes` for a one-machine cluster).

    A process's RocksDB store is opened here and stays open for the flow, so a damaged one fails before
    Kafka is read (a one-machine cluster's stores are checked here and opened by each process).
    """
    from omnitrigger.flows.replay_flow import DEFAULT_OPERATORS
    from omnitrigger.operators.rules import rule_layout

    what = "omnitrigger live"
    processes = role.processes if role is not None else processes
    layout = layout_record("live", processes, config.rule_shards, [factory.name for factory in DEFAULT_OPERATORS],
                           key_from_environment(), input_topics=input_topics(config), rules=rule_layout(config))
    if role is None and processes > 1:
        return prepare_local_cluster(state_dir, layout, processes, what=what)
    index = role.process_id if role is not None else 0
    if role is not None:
        layout["process_id"] = index
    prepare_process_folder(state_dir, layout, index, processes, keep_open=True, what=what,
                           sequencer_here=index == 0)
    open_rocksdb(state_dir, state_dir / "rocksdb" / f"process-{index}", keep_open=True)
    return [state_dir]


def run_live(options: LiveOptions) -> None:
    """Run until SIGTERM. Raises the CLI's user errors (bad key, stores, brokers, topics) before starting."""
    key_from_environment()
    load_stores(options.stores)
    config = options.config.with_overrides(stores_file=str(Path(options.stores).resolve()), wall_clock=True)
    role = Role.of(options.addresses, options.process_id, options.processes,
                   allow_public=options.allow_public_cluster or None)
    partitions = check_kafka(options.brokers, config)
    state_dir = Path(options.state_dir)
    folders = prepare_state_dir(state_dir, config, options.processes, role)
    port = config.kafka_metrics_port if options.metrics_port is None else options.metrics_port
    if options.metrics_bind is not None:
        config = config.with_overrides(kafka_metrics_bind=options.metrics_bind)
    if role is None and options.processes > 1:
        _run_local_cluster(options, config, partitions, folders, port)
    else:
        run_process(_process_spec(options, config, partitions, state_dir, port, role))


def _process_spec(options: LiveOptions, config: Config, partitions: dict[str, int], folder: Path, port: int,
                  role: Role | None) -> dict[str, Any]:
    return {"mode": "live", "brokers": options.brokers, "config": dataclasses.asdict(config),
            "state_dir": str(folder.resolve()), "partitions": partitions, "metrics_port": port,
            "cluster": role.to_spec() if role is not None else None}


def _run_local_cluster(options: LiveOptions, config: Config, partitions: dict[str, int], folders: list[Path],
                       port: int) -> None:
    """`options.processes` child processes on 127.0.0.1, each run as that process of a cluster over machines
    (process I serves its metrics on port + I); SIGTERM and Ctrl-C are passed on to every one of them."""
    jsonlog.setup()
    addresses = tuple(local_addresses(options.processes))
    specs = [_process_spec(options, config, partitions, folder, port + index if port else 0, Role(index, addresses))
             for index, folder in enumerate(folders)]
    log.info("starting a cluster on this machine", extra={"fields": {
        "processes": options.processes, "addresses": list(addresses), "state_dir": str(options.state_dir)}})

    def on_signal(signum: int) -> None:
        log.info("stop requested: passed on to every process", extra={"fields": {
            "signal": signal.Signals(signum).name}})

    codes = wait_children(start_children(specs), forward_signals=True, on_signal=on_signal)
    if any(codes):
        raise ClusterError(f"cluster process exit codes {codes}; see the log lines above (a restart with the "
                           "same --state-dir resumes from the last snapshot)")
    log.info("cluster stopped")


def run_process(spec: dict[str, Any]) -> None:
    """Run the flow in this process (alone, or as `spec["cluster"]`'s process of a cluster) until stopped."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import run_main

    from omnitrigger.flows.cluster_worker import PinnedSource
    from omnitrigger.flows.kafka_sink import KafkaOutputSink, TriggersReadBack
    from omnitrigger.flows.kafka_source import KafkaLiveSource, Shutdown
    from omnitrigger.flows.replay_flow import build_flow
    from omnitrigger.state import close_all_stores

    config = Config.from_dict(spec["config"])
    state_dir = Path(spec["state_dir"])
    role = Role.from_spec(spec["cluster"])
    brokers = spec["brokers"]
    jsonlog.setup()
    metrics.set_build_info(config)
    metrics.serve(spec["metrics_port"], config.kafka_metrics_bind)
    metrics.watch_state_size(state_dir)
    watch = BrokerWatch(brokers, config).start()
    metrics.READINESS.brokers_down = lambda: watch.down

    shutdown = Shutdown()

    def drained() -> None:
        log.info("shutdown complete: outputs acknowledged, snapshot committed")
        close_all_stores()
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)  # Bytewax has no clean stop short of end-of-input, which would flush replay-only outputs

    shutdown.on_drained = drained

    def fatal(error: Exception) -> None:  # raising it inside Bytewax would print a Rust panic and backtrace
        close_all_stores()
        logging.shutdown()
        sys.stderr.write(f"omnitrigger: error: {error}\n")
        sys.stderr.flush()
        os._exit(1)

    shutdown.on_fatal = fatal

    def on_signal(signum: int, _frame: object) -> None:
        if shutdown.requested.is_set():
            log.warning("second signal: stopping now (a restart resumes from the last snapshot)")
            os._exit(1)
        message = "stop requested"
        if role is not None and not role.reads_input:
            message += "; waiting for process 0 to drain the outputs and commit a snapshot (stop it too)"
        log.info(message, extra={"fields": {"signal": signal.Signals(signum).name}})
        shutdown.requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    topics = {kafka: contract for contract, kafka in input_topics(config).items() if kafka in spec["partitions"]}
    for topic in optional_input_topics(config):
        if topic not in spec["partitions"] and (role is None or role.reads_input):
            log.info("optional input topic not found: reading without it", extra={"fields": {
                "topic": topic, "read_by": "back_in_stock rules, in-store offers with min_stock"}})
    # The source (here only on process 0) tells this process's sink from where to read the triggers back.
    read_back = TriggersReadBack() if role is None or role.reads_input else None
    source: Any = KafkaLiveSource(brokers, config, topics, spec["partitions"], shutdown, outage=watch.state,
                                  triggers_topic=output_topics(config)[TRIGGERS], read_back=read_back)
    if role is not None:
        source = PinnedSource(source, here=role.reads_input)
    sink = KafkaOutputSink(brokers, config, output_topics(config), read_back)
    flow = build_flow(source, sink, config, state_dir / "rocksdb" / f"process-{role.process_id if role else 0}")
    fields: dict[str, Any] = {"brokers": brokers, "state_dir": str(state_dir), "input_topics": sorted(topics),
                              "outputs": output_topics(config), "metrics_port": spec["metrics_port"],
                              "metrics_bind": config.kafka_metrics_bind if spec["metrics_port"] else None,
                              "version": __version__, "config_hash": metrics.config_hash(config)}
    if role is not None:
        fields.update(process_id=role.process_id, processes=role.processes, address=role.address,
                      reads_input=role.reads_input, rule_shards=role.rule_shards(config.rule_shards))
    log.info("starting", extra={"fields": fields})
    epoch = timedelta(seconds=config.epoch_interval_s)
    recovery = RecoveryConfig(state_dir / "recovery")
    try:
        if role is None:
            run_main(flow, epoch_interval=epoch, recovery_config=recovery)
        else:
            run_cluster(flow, role, epoch_interval=epoch, recovery_config=recovery)
    except ClusterError:
        if role is not None and not role.reads_input and shutdown.requested.is_set():
            log.info("shutdown complete: process 0 has drained and stopped the cluster")
            return
        raise
    except Exception as error:
        raise_if_corrupted(state_dir, error)
        raise
    finally:
        watch.stop()
        close_all_stores()

