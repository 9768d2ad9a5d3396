"""Steps 2 and 3 in one process: build the dataflow a `ProcessSpec` describes, and run it.

The same for a replay and a live run, alone or as one process of a cluster; what differs is
the source and the sink on either side of flows/replay_flow.py `build_flow`:

    replay   RecordingSource, ended by `stop` ──► build_flow ──► PartFileSink (this folder's parts/)
    live     KafkaLiveSource, ended by Shutdown ──► build_flow ──► KafkaOutputSink (the output topics)

In a cluster the source is built on process 0 only (flows/cluster_worker.py `PinnedSource`), and
a replay's part-file sink too, so process 0 reads the input and gathers every output. The flow
runs in this thread: Bytewax's `run_main` alone, `cluster_main` as a process of a cluster
(runner/cluster.py `run_cluster`); its recovery store is the folder's recovery/, its operator
state one RocksDB store a shard key it runs, the folder's rocksdb/<key>/ (runner/state_folder.py
prepared both; a one-machine cluster's processes share the folder).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import Sink

from omnitrigger import __version__, jsonlog, metrics
from omnitrigger.io.kafka_tools import input_topics, optional_input_topics, output_topics
from omnitrigger.records import TRIGGERS
from omnitrigger.runner.broker_watch import BrokerWatch
from omnitrigger.runner.cluster import ClusterError, run_cluster
from omnitrigger.runner.spec import KafkaInput, ProcessSpec, RecordingInput
from omnitrigger.runner.state_folder import raise_if_corrupted

log = logging.getLogger("omnitrigger.live")  # a live process's lines (docs/monitoring.md)


def run_process(spec: ProcessSpec, stop: threading.Event | None = None) -> None:
    """Build and run `spec`'s dataflow in this process, until its input ends (replay) or it is stopped (live).

    A replay's input ends at the next batch once `stop` is set; without one (a one-machine cluster's
    child) SIGTERM and SIGINT set one here. A live run takes SIGTERM and SIGINT itself: it drains the
    records in flight, commits a snapshot and exits 0.
    """
    if isinstance(spec.input, KafkaInput):
        _run_live(spec, spec.input)
    else:
        _run_replay(spec, spec.input, stop)


def build_process_flow(spec: ProcessSpec, source: FixedPartitionedSource, sink: Sink) -> Dataflow:
    """Step 2: the dataflow between `source` and `sink`, with the source on process 0 in a cluster."""
    from omnitrigger.flows.cluster_worker import PinnedSource
    from omnitrigger.flows.replay_flow import build_flow
    from omnitrigger.operators import OPERATORS

    if spec.role is not None:
        source = PinnedSource(source, here=spec.role.reads_input)
    operators = None if spec.operators is None else [OPERATORS[name] for name in spec.operators]
    return build_flow(source, sink, spec.config, spec.rocksdb_dir, operators=operators, emit_events=spec.emit_events,
                      processes=spec.role.processes if spec.role is not None else 1)


def run_dataflow(spec: ProcessSpec, flow: Dataflow) -> None:
    """Step 3 in this process: run `flow` alone, or as `spec.role`'s process of a cluster, recovering from
    (and snapshotting into) the folder's recovery store."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import run_main

    epoch = timedelta(seconds=spec.config.epoch_s)
    recovery = RecoveryConfig(spec.state_dir / "recovery")
    tune_garbage_collector()
    if spec.role is None:
        run_main(flow, epoch_interval=epoch, recovery_config=recovery)
    else:
        run_cluster(flow, spec.role, epoch_interval=epoch, recovery_config=recovery)


def tune_garbage_collector() -> None:
    """Collect cycles less often: the flow allocates a few objects a record (events, batches, decoded state)
    and almost none of them form cycles, yet Python's default (a young collection every 700 allocations,
    each promoted object walked again and again) cost about 5 % of a replay's CPU on the real mix x10
    (benchmarks/README.md). What was built before the flow starts is frozen: never walked again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def close_stores(quietly: bool) -> None:
    """Close every RocksDB store this process opened (`quietly`: whatever fails, as after an error)."""
    from omnitrigger.state import close_all_stores

    try:
        close_all_stores()
    except Exception:
        if not quietly:
            raise


# -- a replay's process ------------------------------------------------------------------------------


def _run_replay(spec: ProcessSpec, recording: RecordingInput, stop: threading.Event | None) -> None:
    """In a cluster, process 0 reads the recording and gathers every output into its parts/ (through Bytewax,
    so no folder is shared between machines); the others run rules shards."""
    from omnitrigger.flows.part_file_sink import CLOSE_ERRORS, PartFileSink
    from omnitrigger.flows.recording_source import RecordingSource

    with _child_signals() if stop is None else nullcontext(stop) as stop:
        source = StoppableSource(RecordingSource(recording.recording_dir, spec.config, stop_after=recording.stop_after,
                                                 progress=recording.progress), stop)
        flow = build_process_flow(spec, source, PartFileSink(spec.state_dir / "parts", here=spec.reads_input))
        CLOSE_ERRORS.clear()
        try:
            run_dataflow(spec, flow)
        except BaseException as error:
            close_stores(quietly=True)
            if isinstance(error, Exception):
                raise_if_corrupted(spec.state_dir, error)
            raise
        try:
            close_stores(quietly=False)
            if CLOSE_ERRORS:
                raise CLOSE_ERRORS.pop()
        except Exception as error:
            raise_if_corrupted(spec.state_dir, error)
            raise


@contextmanager
def _child_signals() -> Iterator[threading.Event]:
    """A one-machine cluster's process: the parent passes SIGTERM on once to stop (process 0 ends the input
    at a snapshot, the others end with it); a second signal stops at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _StoppablePartition(StatefulSourcePartition):
    def __init__(self, inner: StatefulSourcePartition, stop: threading.Event) -> None:
        self.inner = inner
        self.stop = stop

    def next_batch(self) -> list[Any]:
        if self.stop.is_set():
            raise StopIteration()
        return self.inner.next_batch()

    def next_awake(self) -> Any:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class StoppableSource(FixedPartitionedSource):
    """`source`, whose input ends at the next batch once `stop` is set: the run then ends at a snapshot."""

    def __init__(self, source: FixedPartitionedSource, stop: threading.Event) -> None:
        self.source = source
        self.stop = stop

    def list_parts(self) -> list[str]:
        return self.source.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(self.source.build_part(step_id, for_part, resume_state), self.stop)


# -- a live process ----------------------------------------------------------------------------------


def _run_live(spec: ProcessSpec, kafka: KafkaInput) -> None:
    """Serve the metrics, watch the brokers, and run until SIGTERM (then drain and exit 0) or a fatal error
    (one line, exit 1). Each process of a cluster publishes the outputs its rules shards make."""
    from omnitrigger.flows.kafka_sink import KafkaOutputSink, TriggersReadBack
    from omnitrigger.flows.kafka_source import KafkaLiveSource, Shutdown
    from omnitrigger.state import close_all_stores

    config, state_dir, role, brokers = spec.config, spec.state_dir, spec.role, kafka.brokers
    jsonlog.setup()
    metrics.set_build_info(config)
    metrics.serve(kafka.metrics_port, config.kafka_metrics_bind)
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
        if not spec.reads_input:
            message += "; waiting for process 0 to drain the outputs and commit a snapshot (stop it too)"
        log.info(message, extra={"fields": {"signal": signal.Signals(signum).name}})
        shutdown.requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    topics = {kafka_topic: contract for contract, kafka_topic in input_topics(config).items()
              if kafka_topic in kafka.partitions}
    for topic in optional_input_topics(config):
        if topic not in kafka.partitions and spec.reads_input:
            log.info("optional input topic not found: reading without it", extra={"fields": {
                "topic": topic, "read_by": "back_in_stock rules, in-store offers with min_stock"}})
    # The source (here only on process 0) tells this process's sink from where to read the triggers back.
    read_back = TriggersReadBack() if spec.reads_input else None
    source = KafkaLiveSource(brokers, config, topics, kafka.partitions, shutdown, outage=watch.state,
                             triggers_topic=output_topics(config)[TRIGGERS], read_back=read_back)
    flow = build_process_flow(spec, source, KafkaOutputSink(brokers, config, output_topics(config), read_back))
    fields: dict[str, Any] = {"brokers": brokers, "state_dir": str(state_dir), "input_topics": sorted(topics),
                              "outputs": output_topics(config), "metrics_port": kafka.metrics_port,
                              "metrics_bind": config.kafka_metrics_bind if kafka.metrics_port else None,
                              "version": __version__, "config_hash": metrics.config_hash(config)}
    if role is not None:
        fields.update(process_id=role.process_id, processes=role.processes, address=role.address,
                      reads_input=role.reads_input, rule_shards=role.rule_shards(config.rule_shards))
    log.info("starting", extra={"fields": fields})
    try:
        run_dataflow(spec, flow)
    except ClusterError:
        if not spec.reads_input and shutdown.requested.is_set():
            log.info("shutdown complete: process 0 has drained and stopped the cluster")
            return
        raise
    except Exception as error:
        raise_if_corrupted(state_dir, error)
        raise
    finally:
        watch.stop()
        close_all_stores()
