"""Run a replay: lay out the state folder, run the dataflow (one process or a cluster), merge outputs.

State folder layout (`--state-dir`, or a temporary folder) of one process:
    layout.json          what fixes the layout (state format, processes, [rules] shards, operators,
                         PII key id, recording; in a cluster, the process id); checked on reuse
                         (omnitrigger/state_folder.py)
    recovery/            Bytewax's recovery store (snapshots: source offsets, state generations):
                         part-0 alone; part-I as process I of a cluster
    rocksdb/process-N/   operator state of process N
    parts/               output part files and their manifest (count, size, checksum of each), merged
                         into the output files at the end (in a cluster, process 0's gathers every
                         process's outputs): omnitrigger/outputs.py
    omnitrigger.lock     held (flock) by the run using the folder (omnitrigger/state_folder.py)

`--processes N` (one machine) keeps layout.json (`cluster: "local"`) over process-0/ ...
process-N-1/, each laid out as above; `--addresses ... --process-id I` (machines) uses
the --state-dir given to each process as its folder. omnitrigger/cluster.py says
which process does what.

A replay that stops (`stop_after`, Ctrl-C or SIGTERM, a disk running full,
or a crash) resumes from the same state folder: Bytewax resumes the source
from its committed offsets, RocksDB is rolled back to the matching generation,
and the part files are cut back to the same snapshot (flows/part_file_sink.py).

Faults, each one line (`omnitrigger: error: ...`) and never a traceback:
- before anything runs, every output's folder must take a new file, and the
  state folder's disk must have MIN_FREE_BYTES free;
- SIGINT or SIGTERM while the flow runs ends the input at the next batch, so
  the run stops at a snapshot like `--stop-after` (exit 130 or 143; a second
  signal stops at once, as a crash would); a temporary state folder is
  removed; during set-up or the merge the run stops at once, outputs unchanged;
- the disk of the state folder falling below STOP_BELOW_BYTES while the flow
  runs stops it the same way (exit 1), before RocksDB or Bytewax fail on a
  full disk; a write that still fails with ENOSPC says which disk and how much
  is free;
- the outputs are written by a checked, streaming merge, each to a temporary
  file renamed into place once all are complete (omnitrigger/outputs.py).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from omnitrigger.runner.cluster import Role, local_addresses, run_cluster, start_children, wait_children
from omnitrigger.config import Config
from omnitrigger.outputs import (
    AtomicFile, OutputFiles, Parts, check_output_paths, check_parts_present, free_bytes, last_record_unchecked, mib,
    output_error,
)
from omnitrigger.pii import key_from_environment
from omnitrigger.recording import recording_files
from omnitrigger.records import (
    CONVERSIONS, DEAD_LETTERS, DUPLICATES, EVENTS, REFUSED_LINKS, RETRACTIONS, SUPPRESSED, TRIGGERS, VISITS,
)
from omnitrigger.operators.stage_chain import STATS
from omnitrigger.runner.state_folder import (
    PART_FILES_VERSION, check_recovery_store, layout_record, prepare_local_cluster, prepare_process_folder,
    raise_if_corrupted, release_locks,
)
from omnitrigger.stores import load_stores

#: Free space a replay needs on the disk of its state folder to start.
MIN_FREE_BYTES = 64 << 20
#: While the flow runs, free space on that disk below this stops the replay at a snapshot (resumable).
STOP_BELOW_BYTES = 32 << 20
#: How often the free space is looked at while the flow runs.
DISK_CHECK_INTERVAL_S = 0.25

#: The output flags, by ReplayOptions field.
OUTPUT_FLAGS = {"out": "--out", "dead_letter": "--dead-letter", "visits": "--visits", "suppressed": "--suppressed",
                "identities": "--identities", "refused_links": "--refused-links", "duplicates": "--duplicates",
                "events": "--events", "retractions": "--retractions", "conversions": "--conversions"}


class ReplayError(Exception):
    """The replay cannot run as asked; the message is one line for the user."""


class ReplayInterrupted(Exception):
    """SIGINT or SIGTERM stopped the replay; the message is one line, `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, state_dir: Path | None, temporary: bool, after_flow_stop: bool) -> None:
        name = signal.Signals(signum).name
        if temporary or state_dir is None:
            detail = "nothing was written, and the temporary state folder was removed"
        elif after_flow_stop:
            detail = (f"the output files were not changed; the replay stopped at a snapshot: run the same command "
                      f"again to resume from state folder {state_dir}")
        else:
            detail = f"the output files were not changed; run the same command again to resume from {state_dir}"
        super().__init__(f"interrupted ({name}); {detail}")
        self.exit_code = 128 + signum


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
    retractions: Path | None = None
    conversions: Path | None = None
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
    retractions_by_rule: dict[str, int] = field(default_factory=dict)
    #: identifier values ignored as blank or blocked (identity's run totals), by type
    ignored_identifiers: dict[str, int] = field(default_factory=dict)
    #: confirmed visits not written because the customer had not allowed location processing
    visits_without_location_consent: int = 0
    returns: int = 0
    #: purchases of messaged products within the conversion window, by arm ("treated", "holdout")
    conversions_by_arm: dict[str, int] = field(default_factory=dict)

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
        out.append(f"store visits: {self.visits:,} (late pings dropped: {self.late_pings:,}; without location "
                   f"consent, not written: {self.visits_without_location_consent:,})")
        out.append(f"identifiers: {self.identifiers:,} in {self.customers:,} customers")
        if self.ignored_identifiers:
            out.append(f"blank or blocked identifier values ignored: {sum(self.ignored_identifiers.values()):,}")
            out += [f"  {kind}: {count:,}" for kind, count in self.ignored_identifiers.items()]
        out.append(f"returns (cancel nothing): {self.returns:,}")
        out.append(f"links refused: {sum(self.refused_links_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.refused_links_by_reason.items()]
        out.append(f"triggers: {sum(self.triggers_by_rule.values()):,}")
        out += [f"  {rule}: {count:,}" for rule, count in self.triggers_by_rule.items()]
        out.append(f"suppressed: {sum(self.suppressed_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.suppressed_by_reason.items()]
        out.append(f"retracted (bought before their time): {sum(self.retractions_by_rule.values()):,}")
        out += [f"  {rule}: {count:,}" for rule, count in self.retractions_by_rule.items()]
        out.append(f"conversions (bought within the window after a message): {sum(self.conversions_by_arm.values()):,}")
        out += [f"  {arm}: {count:,}" for arm, count in self.conversions_by_arm.items()]
        out.append(f"events/s: {rate:,.0f} ({self.records_this_run:,} records in {self.seconds:.2f} s this run)")
        return out


def run_replay(options: ReplayOptions) -> ReplaySummary | ProcessDone:
    """Check the inputs and every output path, run the flow (resuming `state_dir`), merge the outputs.

    One-line errors: ReplayError, ReplayInterrupted, OutputError, PartFileError and the other user errors.
    """
    role = Role.of(options.addresses, options.process_id, options.processes)
    writes_outputs = role is None or role.reads_input  # in a cluster only process 0 reads and writes the files
    if writes_outputs:
        recording_files(Path(options.recording_dir), options.config.kafka_topic_prefix,  # fail early, with one
                        dict(options.config.kafka_input_topics))  # line, on an empty or missing folder
    key_from_environment()
    load_stores(options.stores)
    if options.processes < 1:
        raise ReplayError(f"--processes must be at least 1, got {options.processes}")
    if writes_outputs:
        check_output_paths(_output_paths(options))  # before the run, not after it
    temporary = options.state_dir is None
    stopper = _Stopper(graceful=writes_outputs)
    with stopper.handling_signals():
        state_dir = Path(tempfile.mkdtemp(prefix="omnitrigger-")) if temporary else Path(options.state_dir)
        stopper.state_dir, stopper.temporary = state_dir, temporary
        try:
            _check_free_space(state_dir, temporary)
            outputs_dir = _prepare_state_dir(state_dir, options, role)
            parts_dir = outputs_dir / "parts"
            if writes_outputs:
                check_parts_present(parts_dir, resuming=check_recovery_store(outputs_dir, [0]) > 0)
            before = last_record_unchecked(parts_dir, STATS)
            started = time.monotonic()
            with stopper.flow_running(), _watch_disk(state_dir, stopper, enabled=writes_outputs):
                if role is not None:
                    run_worker(_worker_spec(options, state_dir, role), stop=stopper.event)
                elif options.processes == 1:
                    run_worker(_worker_spec(options, state_dir, None), stop=stopper.event)
                else:
                    _run_cluster(options, state_dir, stopper)
            stopper.raise_if_stopped()
            if role is not None and not role.reads_input:
                return ProcessDone(role.describe(options.config.rule_shards), time.monotonic() - started)
            seconds = time.monotonic() - started
            return _finish(options, parts_dir, before, seconds)
        finally:
            _close_stores(quietly=True)  # opened by the set-up, if it failed before the flow
            release_locks()
            if temporary:
                shutil.rmtree(state_dir, ignore_errors=True)


def _output_paths(options: ReplayOptions) -> dict[str, Path]:
    return {flag: Path(getattr(options, name)) for name, flag in OUTPUT_FLAGS.items()
            if getattr(options, name) is not None}


def _check_free_space(state_dir: Path, temporary: bool) -> None:
    free = free_bytes(state_dir)
    if free is not None and free < MIN_FREE_BYTES:
        where = ("the temporary state folder; set TMPDIR or give a --state-dir on another disk" if temporary
                 else "the state folder; free some space or use a --state-dir on another disk")
        raise ReplayError(f"only {mib(free)} free on the disk of {state_dir} ({where}): a replay needs at least "
                          f"{mib(MIN_FREE_BYTES)} there to start")


class _Stopper:
    """SIGINT and SIGTERM, and a disk running full, during a replay.

    While the flow runs, the first signal (or the disk watch) sets `event`: the source ends the input at its
    next batch, so the run ends at a snapshot like `--stop-after`, and one-machine cluster processes are sent
    SIGTERM to do the same. A second signal, or one where the flow cannot stop so (a cluster process other
    than 0), stops at once, as a crash would. Outside the flow (set-up, the merge) a signal raises
    ReplayInterrupted, so the outputs stay as they were and the temporary folder goes.
    """

    def __init__(self, graceful: bool) -> None:
        self.graceful = graceful
        self.event = threading.Event()
        self.signum: int | None = None
        self.disk_free: int | None = None
        self.children: list[subprocess.Popen] = []
        self.state_dir: Path | None = None
        self.temporary = False
        self._in_flow = False

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextmanager
    def flow_running(self) -> Iterator[None]:
        self._in_flow = True
        try:
            yield
        finally:
            self._in_flow = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._in_flow:
            raise ReplayInterrupted(signum, self.state_dir, self.temporary, after_flow_stop=False)
        if self.event.is_set() or not self.graceful:
            self._stop_now(signum)
        self.signum = signum
        self.stop()

    def stop(self, disk_free: int | None = None) -> None:
        """End the input at the next batch (here and in every cluster process)."""
        if disk_free is not None and self.signum is None:
            self.disk_free = disk_free
        self.event.set()
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def _stop_now(self, signum: int) -> None:
        """Stop the process at once, like a crash (the state folder resumes from its last snapshot)."""
        name = signal.Signals(signum).name
        if self.temporary and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            detail = "the temporary state folder was removed"
        else:
            detail = (f"run the same command again to resume from the last snapshot in state folder {self.state_dir}"
                      + ("" if self.graceful else " (start every process of the cluster again)"))
        for child in self.children:
            if child.poll() is None:
                child.kill()
        sys.stderr.write(f"omnitrigger: error: interrupted ({name}): stopped at once; {detail}\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    def raise_if_stopped(self) -> None:
        if not self.event.is_set():
            return
        if self.signum is not None:
            raise ReplayInterrupted(self.signum, self.state_dir, self.temporary, after_flow_stop=True)
        where = ("the temporary state folder was removed: free some space and run again" if self.temporary else
                 "the replay stopped at a snapshot: free some space and run the same command again to resume")
        raise ReplayError(f"the disk of state folder {self.state_dir} has only {mib(self.disk_free)} free (a replay "
                          f"stops below {mib(STOP_BELOW_BYTES)}); {where}")


@contextmanager
def _watch_disk(state_dir: Path, stopper: _Stopper, enabled: bool) -> Iterator[None]:
    """While the flow runs, stop it at a snapshot when the state folder's disk is nearly full."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(DISK_CHECK_INTERVAL_S):
            free = free_bytes(state_dir)
            if free is not None and free < STOP_BELOW_BYTES:
                stopper.stop(disk_free=free)
                return

    thread = threading.Thread(target=watch, name="omnitrigger-disk-watch", daemon=True) if enabled else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if thread is not None:
            thread.join()


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
    from omnitrigger.operators.rules import rule_layout

    operators = list(options.operators) if options.operators is not None else [f.name for f in DEFAULT_OPERATORS]
    processes = role.processes if role is not None else options.processes
    layout = layout_record("replay", processes, options.config.rule_shards, operators,
                           key_from_environment(), recording=str(Path(options.recording_dir).resolve()),
                           part_files=PART_FILES_VERSION, rules=rule_layout(options.config))
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


def run_worker(spec: dict[str, Any], stop: threading.Event | None = None) -> None:
    """Build and run the dataflow in this process: alone, or as `spec["cluster"]`'s process of a cluster.

    In a cluster, process 0 reads the recording and gathers every output into its parts/ (through Bytewax,
    so no folder is shared between machines); the others run rules shards. `stop` set ends the input at the
    next batch; without one (a one-machine cluster's child) SIGTERM and SIGINT set one here.
    """
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import run_main

    from omnitrigger.flows.cluster_worker import PinnedSource
    from omnitrigger.flows.part_file_sink import CLOSE_ERRORS, PartFileSink
    from omnitrigger.flows.recording_source import RecordingSource
    from omnitrigger.flows.replay_flow import build_flow
    from omnitrigger.operators import OPERATORS

    config = Config.from_dict(spec["config"])
    state_dir = Path(spec["state_dir"])
    role = Role.from_spec(spec.get("cluster"))
    reads_input = role is None or role.reads_input
    with _child_signals(reads_input) if stop is None else _nothing(stop) as stop:
        source: Any = _StoppableSource(RecordingSource(Path(spec["recording_dir"]), config,
                                                       stop_after=spec["stop_after"], progress=spec["progress"]), stop)
        sink = PartFileSink(state_dir / "parts", here=reads_input)
        if role is not None:
            source = PinnedSource(source, here=role.reads_input)
        operators = None if spec["operators"] is None else [OPERATORS[name] for name in spec["operators"]]
        flow = build_flow(source, sink, config, state_dir / "rocksdb" / f"process-{role.process_id if role else 0}",
                          operators=operators, emit_events=spec["emit_events"])
        recovery = RecoveryConfig(state_dir / "recovery")
        epoch = timedelta(seconds=config.epoch_interval_s)
        CLOSE_ERRORS.clear()
        try:
            if role is None:
                run_main(flow, epoch_interval=epoch, recovery_config=recovery)
            else:
                run_cluster(flow, role, epoch_interval=epoch, recovery_config=recovery)
        except BaseException as error:
            _close_stores(quietly=True)
            if isinstance(error, Exception):
                raise_if_corrupted(state_dir, error)
            raise
        try:
            _close_stores(quietly=False)
            if CLOSE_ERRORS:
                raise CLOSE_ERRORS.pop()
        except Exception as error:
            raise_if_corrupted(state_dir, error)
            raise


def _close_stores(quietly: bool) -> None:
    from omnitrigger.state import close_all_stores

    try:
        close_all_stores()
    except Exception:
        if not quietly:
            raise


@contextmanager
def _nothing(value: threading.Event) -> Iterator[threading.Event]:
    yield value


@contextmanager
def _child_signals(reads_input: bool) -> Iterator[threading.Event]:
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


class _StoppableSource(FixedPartitionedSource):
    """`source`, whose input ends at the next batch once `stop` is set: the run then ends at a snapshot."""

    def __init__(self, source: FixedPartitionedSource, stop: threading.Event) -> None:
        self.source = source
        self.stop = stop

    def list_parts(self) -> list[str]:
        return self.source.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(self.source.build_part(step_id, for_part, resume_state), self.stop)


def _run_cluster(options: ReplayOptions, state_dir: Path, stopper: _Stopper) -> None:
    """A one-machine cluster: `options.processes` child processes on 127.0.0.1, one worker each, each run
    exactly as that process of a cluster spread over machines, with its own folder state_dir/process-I."""
    addresses = tuple(local_addresses(options.processes))
    specs = [_worker_spec(options, state_dir / f"process-{index}", Role(index, addresses))
             for index in range(options.processes)]
    children = start_children(specs)
    stopper.children = children
    if stopper.event.is_set():
        stopper.stop()
    try:
        codes = wait_children(children)
    finally:
        stopper.children = []
    if any(codes):
        raise ReplayError(f"cluster process exit codes {codes}; see the log lines above")


def _final_visits(lines: Callable[[], Iterator[bytes]]) -> Iterator[bytes]:
    """Visits still open at the end are written at each end of input (a stopped and resumed replay has
    several); keep the visit's real end if it came later, else its last "open" record. Two passes over the
    merged visits (`lines()` gives them again), holding only visit ids."""
    ended: set[str] = set()
    last_open: dict[str, int] = {}
    for n, line in enumerate(lines()):
        visit = orjson.loads(line)
        if visit.get("ended_by") != "open":
            ended.add(visit["visit_id"])
        else:
            last_open[visit["visit_id"]] = n
    for n, line in enumerate(lines()):
        visit = orjson.loads(line)
        if visit.get("ended_by") != "open" or (visit["visit_id"] not in ended and last_open[visit["visit_id"]] == n):
            yield line


def _write_identities(rocksdb_dir: Path, path: Path | None, files: OutputFiles | None = None) -> tuple[int, int]:
    """`--identities`: every live identifier and its customer, read from the finished run's identity state
    (streamed, so ten million identifiers never sit in memory); returns (identifiers, customers).

    The file is written through `files` (renamed into place with the other outputs), or alone, atomically."""
    from omnitrigger.operators.identity import Identity, identities
    from omnitrigger.state import RocksDBStore, ShardState

    count, customers = 0, set()
    own = files is None and path is not None
    files = OutputFiles() if own else files
    target: AtomicFile | None = files.open(Path(path)) if path is not None and files is not None else None
    try:
        for folder in sorted(rocksdb_dir.glob("process-*")):
            store = RocksDBStore(folder)
            try:
                for record in identities(ShardState(store, Identity.name, 0)):
                    count += 1
                    customers.add(record["customer_id"])
                    if target is not None:
                        try:
                            target.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
                        except OSError as error:
                            raise output_error(error, target.path) from None
            finally:
                store.close()
        if own and files is not None:
            files.commit()
    finally:
        if own and files is not None:
            files.discard()
    return count, len(customers)


#: The field each counted stream's summary is by.
_COUNTED = {TRIGGERS: "rule", SUPPRESSED: "reason", REFUSED_LINKS: "reason", RETRACTIONS: "rule", CONVERSIONS: "arm"}


def _finish(options: ReplayOptions, parts_dir: Path, before: dict[str, Any], seconds: float) -> ReplaySummary:
    """Merge the checked part files into the output files (all renamed into place at the end) and sum up."""
    parts = Parts(parts_dir, work_dir=parts_dir.parent)
    stats = parts.last(STATS) or {}
    outputs = {TRIGGERS: options.out, DEAD_LETTERS: options.dead_letter, VISITS: options.visits,
               SUPPRESSED: options.suppressed, DUPLICATES: options.duplicates,
               EVENTS: options.events, REFUSED_LINKS: options.refused_links, RETRACTIONS: options.retractions,
               CONVERSIONS: options.conversions}
    counts: dict[str, Counter] = {}
    written: dict[str, int] = {}
    with OutputFiles() as files:
        for stream, path in outputs.items():
            if path is None and stream not in _COUNTED and stream != VISITS:
                continue
            target = files.open(Path(path)) if path is not None else None
            lines: Iterator[bytes] = (_final_visits(lambda: parts.records(VISITS)) if stream == VISITS
                                      else parts.records(stream))
            counts[stream], written[stream] = _write_stream(target, lines, _COUNTED.get(stream))
        identifiers, customers = _write_identities(parts_dir.parent / "rocksdb", options.identities, files)
        files.commit()
    read_now = sum(stats.get("read", {}).values())
    read_before = sum(before.get("read", {}).values())
    return ReplaySummary(
        read_by_topic=dict(sorted(stats.get("read", {}).items())),
        dead_letters_by_reason=dict(sorted(stats.get("dead_letters", {}).items())),
        duplicates_by_topic=dict(sorted(stats.get("duplicates", {}).items())),
        triggers_by_rule=dict(sorted(counts[TRIGGERS].items())),
        suppressed_by_reason=dict(sorted(counts[SUPPRESSED].items())),
        refused_links_by_reason=dict(sorted(counts[REFUSED_LINKS].items())),
        visits=written[VISITS],
        late_pings=stats.get("visits", {}).get("late_pings", 0),
        identifiers=identifiers,
        customers=customers,
        records_this_run=read_now - read_before,
        seconds=seconds,
        retractions_by_rule=dict(sorted(counts[RETRACTIONS].items())),
        ignored_identifiers={kind.removeprefix("ignored_"): count
                             for kind, count in sorted(stats.get("identity", {}).items())},
        visits_without_location_consent=stats.get("visits", {}).get("visits_without_location_consent", 0),
        returns=sum(stats.get("returns", {}).values()),
        conversions_by_arm=dict(sorted(counts[CONVERSIONS].items())),
    )


def _write_stream(target: AtomicFile | None, lines: Iterator[bytes], field: str | None) -> tuple[Counter, int]:
    """Write a merged stream to `target` (None: only count it); returns (records by `field`, records)."""
    counter: Counter = Counter()
    count = 0
    for line in lines:
        count += 1
        if field is not None:
            counter[str(orjson.loads(line).get(field))] += 1
        if target is not None:
            try:
                target.write(line)
            except OSError as error:
                raise output_error(error, target.path) from None
    return counter, count
