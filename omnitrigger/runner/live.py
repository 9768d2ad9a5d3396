"""Live mode: `omnitrigger run`, the flow of the replay between Kafka topics.

`run_live` reads in the order of runner/__init__.py: check the key, the stores and Kafka
(brokers and topics); (1) prepare the state folder (runner/state_folder.py); (2, 3) build one
ProcessSpec a process and run it (runner/process.py), in this process or as a one-machine
cluster (runner/local_cluster.py). There is no step 4: the outputs are on the output topics as it runs.

    input topics ──► KafkaLiveSource ──► the replay's dataflow (build_flow) ──► KafkaOutputSink ──► output topics
                     (one partition,                                           (idempotent producer,
                      event-time merge)                                          acked per batch)

Before the dataflow starts, the brokers and every input and output topic are
checked (`kafka_tools.preflight`): an unreachable cluster or a missing topic
is one line and exit 1 within `[kafka] preflight_timeout`, not Bytewax's
silent hang. State folder layout (`--state-dir`):

    layout.json          what fixes the layout (state format, processes, [rules] shards, operators,
                         PII key id, input topics; in a cluster, the process id); checked on reuse
                         (runner/state_folder.py)
    recovery/            Bytewax's recovery store: input offsets, the seq counter, state generations
                         (part-0 on one machine; part-I as process I of a cluster over machines)
    rocksdb/<key>/       operator state, one RocksDB store a shard key (sequencer, rules-0000, ...)

As a cluster (runner/cluster.py): process 0 reads every input partition
and runs the sequencer, the rules shards spread over all processes, and each
process publishes the outputs its shards make. `--processes N` runs its N
processes over the one folder above (each opens the stores of the keys it
runs); `--addresses ... --process-id I` uses the --state-dir given as process I's.
A live job resumes with the same process count.

Broker outages are watched by `BrokerWatch` (runner/broker_watch.py), in a thread of its own (the
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

import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from omnitrigger import jsonlog
from omnitrigger.config import Config
from omnitrigger.io.kafka_tools import input_topics, optional_input_topics, output_topics, preflight
from omnitrigger.pii import key_from_environment
from omnitrigger.runner.cluster import ClusterError, Role, roles_here
from omnitrigger.runner.local_cluster import run_local_cluster
from omnitrigger.runner.process import run_process
from omnitrigger.runner.spec import KafkaInput, ProcessSpec
from omnitrigger.runner.state_folder import flow_layout, prepare_run_folders
from omnitrigger.io.stores import load_stores

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
    processes = role.processes if role is not None else processes
    layout = flow_layout("live", config, processes, input_topics=input_topics(config))
    return prepare_run_folders(state_dir, layout, processes, role.process_id if role is not None else None,
                               what="omnitrigger live", open_new_store=True)


def run_live(options: LiveOptions) -> None:
    """Run until SIGTERM. Raises the CLI's user errors (bad key, stores, brokers, topics) before starting."""
    key_from_environment()
    load_stores(options.stores)
    config = options.config.with_overrides(stores_file=str(Path(options.stores).resolve()), wall_clock=True)
    role = Role.of(options.addresses, options.process_id, options.processes,
                   allow_public=options.allow_public_cluster or None)
    partitions = check_kafka(options.brokers, config)
    # 1. the state folder: checked (or set up), locked, its stores open
    folders = prepare_state_dir(Path(options.state_dir), config, options.processes, role)
    port = config.kafka_metrics_port if options.metrics_port is None else options.metrics_port
    if options.metrics_bind is not None:
        config = config.with_overrides(kafka_metrics_bind=options.metrics_bind)
    # 2 and 3. the flow of each process (process I of a one-machine cluster serves metrics on port + I)
    specs = [ProcessSpec(folder.resolve(), config, KafkaInput(options.brokers, partitions, port + index if port else 0),
                         role=process)
             for index, (folder, process) in enumerate(zip(folders, roles_here(role, options.processes), strict=True))]
    if len(specs) == 1:
        run_process(specs[0])
    else:
        _run_local_cluster(specs, options.state_dir)


def _run_local_cluster(specs: list[ProcessSpec], state_dir: Path) -> None:
    """One child process a spec on 127.0.0.1, each run as that process of a cluster over machines;
    SIGTERM and Ctrl-C are passed on to every one of them."""
    jsonlog.setup()
    addresses = list(specs[0].role.addresses) if specs[0].role is not None else []
    log.info("starting a cluster on this machine", extra={"fields": {
        "processes": len(specs), "addresses": addresses, "state_dir": str(state_dir)}})

    def on_signal(signum: int) -> None:
        log.info("stop requested: passed on to every process", extra={"fields": {
            "signal": signal.Signals(signum).name}})

    codes = run_local_cluster(specs, forward_signals=True, on_signal=on_signal)
    if any(codes):
        raise ClusterError(f"cluster process exit codes {codes}; see the log lines above (a restart with the "
                           "same --state-dir resumes from the last snapshot)")
    log.info("cluster stopped")
