"""Run a replay: lay out the state folder, run the dataflow (one process or a cluster), merge outputs.

State folder layout (`--state-dir`, or a temporary folder) of one process:
    layout.json          what fixes the layout (state format, processes, [rules] shards, operators,
                         PII key id, recording; in a cluster, the process id); checked on reuse
                         (omnitrigger/state_folder.py)
    recovery/            Bytewax's recovery store (snapshots: source offsets, state generations):
                         part-0 alone; part-I as process I of a cluster
    rocksdb/process-N/   operator state of process N
    parts/               output part files, merged into the output files at the end (in a cluster,
                         process 0's gathers every process's outputs)

`--processes N` (one machine) keeps layout.json (`cluster: "local"`) over process-0/ ...
process-N-1/, each laid out as above; `--addresses ... --process-id I` (machines) uses
the --state-dir given to each process as its folder. omnitrigger/cluster.py says
which process does what.

A replay that stops (`stop_after`, or a crash) resumes from the same state
folder: Bytewax resumes the source from its committed offsets, RocksDB is
rolled back to the matching generation, and re-emitted outputs are merged
away by their sort keys.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from omnitrigger.cluster import Role, local_addresses, run_cluster, start_children, wait_children
from omnitrigger.config import Config
from omnitrigger.outputs import count_by, read_stream, write_records
from omnitrigger.pii import key_from_environment
from omnitrigger.recording import recording_files
from omnitrigger.records import (
    DEAD_LETTERS, DUPLICATES, EVENTS, REFUSED_LINKS, SUPPRESSED, TRIGGERS, VISITS,
)
from omnitrigger.operators.stage_chain import STATS
from omnitrigger.state_folder import (
    layout_record, prepare_local_cluster, prepare_process_folder, raise_if_corrupted,
)
from omnitrigger.stores import load_stores


class ReplayError(Exception):
    """The replay cannot run as asked; the message is one line for the user."""


@dataclass
class ReplayOptions:
    recording_dir: Path
    stores: Path
    out: Path | None  # None only in a cluster's process other than 0 (process 0 writes the outputs)
    dead_letter: Path | None = None
    visits: Path | None = None
    suppressed: Path | None = None
    identities: Path | None = None
    refused_links: Path | None = None
    duplicates: Path | None = None
    events: Path | None = None
    state_dir: Path | None = None
    config: Config = field(default_factory=Config)
    processes: int = 1  # a one-machine cluster of this many processes
    addresses: list[str] | None = None  # or: run as process `process_id` of the cluster at these addresses
    process_id: int | None = None
    stop_after: int | None = None
    progress: bool = False
    operators: tuple[str, ...] | None = None  # names from omnitrigger.operators.OPERATORS; None = the full flow


@dataclass
class ReplaySummary:
    read_by_topic: dict[str, int]
    dead_letters_by_reason: dict[str, int]
    duplicates_by_topic: dict[str, int]
    triggers_by_rule: dict[str, int]
    suppressed_by_reason: dict[str, int]
    refused_links_by_reason: dict[str, int]
    visits: int
    late_pings: int
    identifiers: int
    customers: int
    records_this_run: int
    seconds: float

    @property
    def records_read(self) -> int:
        return sum(self.read_by_topic.values())

    def lines(self) -> list[str]:
        rate = self.records_this_run / self.seconds if self.seconds > 0 else 0.0
        out = [f"records read: {self.records_read:,}"]
        out += [f"  {topic}: {count:,}" for topic, count in self.read_by_topic.items()]
        out.append(f"dead letters: {sum(self.dead_letters_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.dead_letters_by_reason.items()]
        out.append(f"duplicates dropped: {sum(self.duplicates_by_topic.values()):,}")
        out += [f"  {topic}: {count:,}" for topic, count in self.duplicates_by_topic.items()]
        out.append(f"store visits: {self.visits:,} (late pings dropped: {self.late_pings:,})")
        out.append(f"identifiers: {self.identifiers:,} in {self.customers:,} customers")
        out.append(f"links refused: {sum(self.refused_links_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.refused_links_by_reason.items()]
        out.append(f"triggers: {sum(self.triggers_by_rule.values()):,}")
        out += [f"  {rule}: {count:,}" for rule, count in self.triggers_by_rule.items()]
        out.append(f"suppressed: {sum(self.suppressed_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.suppressed_by_reason.items()]
        out.append(f"events/s: {rate:,.0f} ({self.records_this_run:,} records in {self.seconds:.2f} s this run)")
        return out


def run_replay(options: ReplayOptions) -> ReplaySummary | ProcessDone:
    role = Role.of(options.addresses, options.process_id, options.processes)
    if role is None or role.reads_input:  # in a cluster only process 0 reads the recording
        recording_files(Path(options.recording_dir))  # fail early, with one line, on an empty or missing folder
    key_from_environment()
    load_stores(options.stores)
    if options.processes < 1:
        raise ReplayError(f"--processes must be at least 1, got {options.processes}")
    temporary = options.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="omnitrigger-")) if temporary else Path(options.state_dir)
    try:
        outputs_dir = _prepare_state_dir(state_dir, options, role)
        parts_dir = outputs_dir / "parts"
        before = _stats(parts_dir)
        started = time.monotonic()
        if role is not None:
            run_worker(_worker_spec(options, state_dir, role))
            if not role.reads_input:
                return ProcessDone(role.describe(options.config.rule_shards), time.monotonic() - started)
        elif options.processes == 1:
            run_worker(_worker_spec(options, state_dir, None))
        else:
            _run_cluster(options, state_dir)
        seconds = time.monotonic() - started
        return _finish(options, parts_dir, before, seconds)
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)


@dataclass
class ProcessDone:
    """What a process of a cluster other than 0 reports: process 0 gathers the outputs and writes the summary."""

    role: str
    seconds: float

    def lines(self) -> list[str]:
        return [f"{self.role}: done in {self.seconds:.2f} s; process 0 writes the outputs and the summary"]


def _prepare_state_dir(state_dir: Path, options: ReplayOptions, role: Role | None) -> Path:
    """Check a reused state folder fits this replay and is readable (one line if not), or set up a new one;
    returns the folder whose parts/ gathers the outputs (process 0's in a cluster)."""
    from omnitrigger.flows.replay_flow import DEFAULT_OPERATORS

    operators = list(options.operators) if options.operators is not None else [f.name for f in DEFAULT_OPERATORS]
    processes = role.processes if role is not None else options.processes
    layout = layout_record("replay", processes, options.config.rule_shards, operators,
                           key_from_environment(), recording=str(Path(options.recording_dir).resolve()))
    if role is not None:  # one process of a cluster spread over machines: this folder is its own
        prepare_process_folder(state_dir, {**layout, "process_id": role.process_id}, role.process_id, processes,
                               keep_open=True, sequencer_here=role.reads_input)
        folder = state_dir
    elif processes == 1:
        prepare_process_folder(state_dir, layout, 0, 1, keep_open=True)  # the flow reuses the open store
        folder = state_dir
    else:
        folder = prepare_local_cluster(state_dir, layout, processes)[0]
    (folder / "parts").mkdir(exist_ok=True)
    return folder


def _worker_spec(options: ReplayOptions, folder: Path, role: Role | None) -> dict[str, Any]:
    return {
        "mode": "replay",
        "recording_dir": str(Path(options.recording_dir).resolve()),
        "state_dir": str(folder.resolve()),
        "config": dataclasses.asdict(options.config.with_overrides(stores_file=str(Path(options.stores).resolve()))),
        "stop_after": options.stop_after,
        "emit_events": options.events is not None,
        "progress": options.progress,
        "operators": list(options.operators) if options.operators is not None else None,
        "cluster": role.to_spec() if role is not None else None,
    }


def run_worker(spec: dict[str, Any]) -> None:
    """Build and run the dataflow in this process: alone, or as `spec["cluster"]`'s process of a cluster.

    In a cluster, process 0 reads the recording and gathers every output into its parts/ (through Bytewax,
    so no folder is shared between machines); the others run rules shards.
    """
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import run_main

    from omnitrigger.flows.cluster_worker import GatheredPartFiles, PinnedSource
    from omnitrigger.flows.part_file_sink import PartFileSink
    from omnitrigger.flows.recording_source import RecordingSource
    from omnitrigger.flows.replay_flow import build_flow
    from omnitrigger.operators import OPERATORS
    from omnitrigger.state import close_all_stores

    config = Config.from_dict(spec["config"])
    state_dir = Path(spec["state_dir"])
    role = Role.from_spec(spec.get("cluster"))
    source: Any = RecordingSource(Path(spec["recording_dir"]), config, stop_after=spec["stop_after"],
                                  progress=spec["progress"])
    sink: Any = PartFileSink(state_dir / "parts")
    if role is not None:
        source = PinnedSource(source, here=role.reads_input)
        sink = GatheredPartFiles(state_dir / "parts", here=role.reads_input)
    operators = None if spec["operators"] is None else [OPERATORS[name] for name in spec["operators"]]
    flow = build_flow(source, sink, config, state_dir / "rocksdb" / f"process-{role.process_id if role else 0}",
                      operators=operators, emit_events=spec["emit_events"])
    recovery = RecoveryConfig(state_dir / "recovery")
    epoch = timedelta(seconds=config.epoch_interval_s)
    try:
        if role is None:
            run_main(flow, epoch_interval=epoch, recovery_config=recovery)
        else:
            run_cluster(flow, role, epoch_interval=epoch, recovery_config=recovery)
    except Exception as error:
        raise_if_corrupted(state_dir, error)
        raise
    finally:
        close_all_stores()


def _run_cluster(options: ReplayOptions, state_dir: Path) -> None:
    """A one-machine cluster: `options.processes` child processes on 127.0.0.1, one worker each, each run
    exactly as that process of a cluster spread over machines, with its own folder state_dir/process-I."""
    addresses = tuple(local_addresses(options.processes))
    specs = [_worker_spec(options, state_dir / f"process-{index}", Role(index, addresses))
             for index in range(options.processes)]
    codes = wait_children(start_children(specs))
    if any(codes):
        raise ReplayError(f"cluster process exit codes {codes}; see the log lines above")


def _stats(parts_dir: Path) -> dict[str, Any]:
    records = read_stream(parts_dir, STATS) if parts_dir.exists() else []
    return records[-1] if records else {}


def _final_visits(visits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Visits still open at the end are written at each end of input (a stopped and resumed replay has
    several); keep the visit's real end if it came later, else its last "open" record."""
    ended = {visit["visit_id"] for visit in visits if visit.get("ended_by") != "open"}
    last_open = {visit["visit_id"]: n for n, visit in enumerate(visits) if visit.get("ended_by") == "open"}
    return [visit for n, visit in enumerate(visits)
            if visit.get("ended_by") != "open" or (visit["visit_id"] not in ended and last_open[visit["visit_id"]] == n)]


def _write_identities(rocksdb_dir: Path, path: Path | None) -> tuple[int, int]:
    """`--identities`: every live identifier and its customer, read from the finished run's identity state
    (streamed, so ten million identifiers never sit in memory); returns (identifiers, customers)."""
    from omnitrigger.operators.identity import Identity, identities
    from omnitrigger.state import RocksDBStore, ShardState

    count, customers = 0, set()
    handle = Path(path).open("wb") if path is not None else None
    try:
        for folder in sorted(rocksdb_dir.glob("process-*")):
            store = RocksDBStore(folder)
            try:
                for record in identities(ShardState(store, Identity.name, 0)):
                    count += 1
                    customers.add(record["customer_id"])
                    if handle is not None:
                        handle.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
            finally:
                store.close()
    finally:
        if handle is not None:
            handle.close()
    return count, len(customers)


def _finish(options: ReplayOptions, parts_dir: Path, before: dict[str, Any], seconds: float) -> ReplaySummary:
    stats = _stats(parts_dir)
    outputs = {TRIGGERS: options.out, DEAD_LETTERS: options.dead_letter, VISITS: options.visits,
               SUPPRESSED: options.suppressed, DUPLICATES: options.duplicates,
               EVENTS: options.events, REFUSED_LINKS: options.refused_links}
    streams: dict[str, list[dict[str, Any]]] = {}
    for stream, path in outputs.items():
        if path is not None or stream in (TRIGGERS, SUPPRESSED, REFUSED_LINKS, VISITS):
            streams[stream] = read_stream(parts_dir, stream)
    streams[VISITS] = _final_visits(streams[VISITS])
    for stream, path in outputs.items():
        if path is not None:
            write_records(Path(path), streams[stream])
    identifiers, customers = _write_identities(parts_dir.parent / "rocksdb", options.identities)
    read_now = sum(stats.get("read", {}).values())
    read_before = sum(before.get("read", {}).values())
    return ReplaySummary(
        read_by_topic=dict(sorted(stats.get("read", {}).items())),
        dead_letters_by_reason=dict(sorted(stats.get("dead_letters", {}).items())),
        duplicates_by_topic=dict(sorted(stats.get("duplicates", {}).items())),
        triggers_by_rule=count_by(streams[TRIGGERS], "rule"),
        suppressed_by_reason=count_by(streams[SUPPRESSED], "reason"),
        refused_links_by_reason=count_by(streams[REFUSED_LINKS], "reason"),
        visits=len(streams[VISITS]),
        late_pings=stats.get("visits", {}).get("late_pings", 0),
        identifiers=identifiers,
        customers=customers,
        records_this_run=read_now - read_before,
        seconds=seconds,
    )
