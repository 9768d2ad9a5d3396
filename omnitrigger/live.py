"""Live mode: `omnitrigger run`, the flow of the replay between Kafka topics.

    input topics ──► KafkaLiveSource ──► the replay's dataflow (build_flow) ──► KafkaOutputSink ──► output topics
                     (one partition,                                           (idempotent producer,
                      event-time merge)                                          acked per batch)

Before the dataflow starts, the brokers and every input and output topic are
checked (`kafka_tools.preflight`): an unreachable cluster or a missing topic
is one line and exit 1 within `[kafka] preflight_timeout`, not Bytewax's
silent hang. State folder layout (`--state-dir`):

    layout.json          what fixes the layout (state format, [rules] shards, operators, PII key id,
                         input topics); checked on reuse (omnitrigger/state_folder.py)
    recovery/            Bytewax's recovery store: input offsets, the seq counter, state generations
    rocksdb/process-0/   operator state

SIGTERM (and Ctrl-C) stop reading, let the records in flight reach the
output topics and a snapshot commit, and exit 0; a restart resumes there.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path


from omnitrigger import jsonlog, metrics
from omnitrigger.config import Config
from omnitrigger.kafka_tools import input_topics, output_topics, preflight
from omnitrigger.pii import key_from_environment
from omnitrigger.state_folder import (
    check_or_write_layout, check_recovery_store, check_rocksdb_present, layout_record, open_rocksdb, raise_if_corrupted,
    write_layout,
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


def check_kafka(brokers: str, config: Config) -> dict[str, int]:
    """Preflight: partitions per input topic; KafkaSetupError (one line) when brokers or topics are missing."""
    inputs = list(input_topics(config).values())
    partitions = preflight(brokers, inputs, config, what="input topics")
    preflight(brokers, list(output_topics(config).values()), config, what="output topics")
    return partitions


def prepare_state_dir(state_dir: Path, config: Config) -> None:
    """Check a reused state folder fits this job and is readable (one line if not), or set up a new one.

    The RocksDB store is opened here and stays open for the flow, so a damaged one fails before Kafka is read.
    """
    from bytewax.recovery import init_db_dir

    from omnitrigger.flows.replay_flow import DEFAULT_OPERATORS

    layout = layout_record("live", 1, config.rule_shards, [factory.name for factory in DEFAULT_OPERATORS],
                           key_from_environment(), input_topics=input_topics(config))
    if check_or_write_layout(state_dir, layout, what="omnitrigger live"):
        check_rocksdb_present(state_dir, check_recovery_store(state_dir, 1))
    else:
        (state_dir / "recovery").mkdir(parents=True, exist_ok=True)
        init_db_dir(state_dir / "recovery", 1)
        write_layout(state_dir, layout)
    open_rocksdb(state_dir, state_dir / "rocksdb" / "process-0", keep_open=True)


def run_live(options: LiveOptions) -> None:
    """Run until SIGTERM. Raises the CLI's user errors (bad key, stores, brokers, topics) before starting."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import run_main

    from omnitrigger.flows.kafka_sink import KafkaOutputSink
    from omnitrigger.flows.kafka_source import KafkaLiveSource, Shutdown
    from omnitrigger.flows.replay_flow import build_flow
    from omnitrigger.state import close_all_stores

    key_from_environment()
    load_stores(options.stores)
    config = options.config.with_overrides(stores_file=str(Path(options.stores).resolve()))
    partitions = check_kafka(options.brokers, config)
    state_dir = Path(options.state_dir)
    prepare_state_dir(state_dir, config)
    jsonlog.setup()
    port = config.kafka_metrics_port if options.metrics_port is None else options.metrics_port
    metrics.serve(port)
    metrics.watch_state_size(state_dir)

    shutdown = Shutdown()

    def drained() -> None:
        log.info("shutdown complete: outputs acknowledged, snapshot committed")
        close_all_stores()
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)  # Bytewax has no clean stop short of end-of-input, which would flush replay-only outputs

    shutdown.on_drained = drained

    def on_signal(signum: int, _frame: object) -> None:
        if shutdown.requested.is_set():
            log.warning("second signal: stopping now (a restart resumes from the last snapshot)")
            os._exit(1)
        log.info("stop requested", extra={"fields": {"signal": signal.Signals(signum).name}})
        shutdown.requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    topics = {kafka: contract for contract, kafka in input_topics(config).items()}
    source = KafkaLiveSource(options.brokers, config, topics, partitions, shutdown)
    sink = KafkaOutputSink(options.brokers, config, output_topics(config))
    flow = build_flow(source, sink, config, state_dir / "rocksdb" / "process-0")
    log.info("starting", extra={"fields": {"brokers": options.brokers, "state_dir": str(state_dir),
                                           "input_topics": sorted(topics), "outputs": output_topics(config),
                                           "metrics_port": port}})
    try:
        run_main(flow, epoch_interval=timedelta(seconds=config.epoch_interval_s),
                 recovery_config=RecoveryConfig(state_dir / "recovery"))
    except Exception as error:
        raise_if_corrupted(state_dir, error)
        raise
    finally:
        close_all_stores()
