"""`run_replay`: a replay, from the command's options to the output files and the summary.

It reads in one direction, the steps of runner/__init__.py: check the recording, the stores, the
PII key and every output path; (1) prepare the state folder (runner/state_folder.py); (2, 3)
build one ProcessSpec a process and run it (runner/process.py), in this process or as a
one-machine cluster (runner/local_cluster.py); (4) merge the part files into the output files
(runner/finish.py).

State folder layout (`--state-dir`, or a temporary folder) of one process:
    layout.json          what fixes the layout (state format, processes, [rules] shards, operators,
                         PII key id, recording; in a cluster, the process id); checked on reuse
                         (runner/state_folder.py)
    recovery/            Bytewax's recovery store (snapshots: source offsets, state generations):
                         part-0 on one machine; part-I as process I of a cluster over machines
    rocksdb/<key>/       operator state, one RocksDB store a shard key: sequencer, rules-0000, ...
    parts/               output part files and their manifest (count, size, checksum of each), merged
                         into the output files at the end (in a cluster, process 0's gathers every
                         process's outputs): omnitrigger/io/outputs.py
    omnitrigger.lock     held (flock) by the run using the folder (runner/state_folder.py)

`--processes N` (one machine) runs its N processes over that one folder, each opening the
stores of the keys it runs, so a replay resumes with another --processes and writes what an
uninterrupted run writes (runner/state_folder.py says why); `--addresses ... --process-id I`
(machines) uses the --state-dir given to each process as its folder, and resumes only with
the same cluster. runner/cluster.py says which process does what.

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
  file renamed into place once all are complete (omnitrigger/io/outputs.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from omnitrigger.config import Config
from omnitrigger.operators.stage_chain import STATS, merge_run_totals
from omnitrigger.io.outputs import check_output_paths, check_parts_present, free_bytes, mib, records_unchecked
from omnitrigger.pii import key_from_environment
from omnitrigger.io.recording import recording_files
from omnitrigger.records import (
    CONVERSIONS, DEAD_LETTERS, DUPLICATES, EVENTS, REFUSED_LINKS, RETRACTIONS, SUPPRESSED, TRIGGERS, VISITS,
)
from omnitrigger.runner.cluster import Role, roles_here
from omnitrigger.runner.errors import ReplayError
from omnitrigger.runner.finish import ProcessDone, ReplaySummary, finish_outputs
from omnitrigger.runner.local_cluster import run_local_cluster
from omnitrigger.runner.process import close_stores, run_process
from omnitrigger.runner.spec import ProcessSpec, RecordingInput
from omnitrigger.runner.state_folder import (
    PART_FILES_VERSION, check_recovery_store, flow_layout, prepare_run_folders, release_locks,
)
from omnitrigger.io.stores import load_stores

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
            # 1. the state folder: checked (or set up), locked, its stores open
            processes = role.processes if role is not None else options.processes
            layout = flow_layout("replay", options.config, processes, options.operators,
                                 recording=str(Path(options.recording_dir).resolve()), part_files=PART_FILES_VERSION)
            folders = prepare_run_folders(state_dir, layout, processes, role.process_id if role is not None else None)
            parts_dir = folders[0] / "parts"  # process 0's gathers the outputs
            parts_dir.mkdir(exist_ok=True)
            if writes_outputs:
                check_parts_present(parts_dir, resuming=check_recovery_store(folders[0], [0]) > 0)
            before = merge_run_totals(records_unchecked(parts_dir, STATS))
            # 2 and 3. the flow of each process, run in this one or as a one-machine cluster
            specs = _specs(options, folders, role, processes)
            started = time.monotonic()
            with stopper.flow_running(), _watch_disk(state_dir, stopper, enabled=writes_outputs):
                if len(specs) == 1:
                    run_process(specs[0], stop=stopper.event)
                else:
                    _run_local_cluster(specs, stopper)
            stopper.raise_if_stopped()
            seconds = time.monotonic() - started
            if role is not None and not role.reads_input:
                return ProcessDone(role.describe(options.config.rule_shards), seconds)
            # 4. the outputs: the part files merged into the output files
            return finish_outputs(_outputs(options), options.identities, parts_dir, before, seconds)
        finally:
            close_stores(quietly=True)  # opened by the set-up, if it failed before the flow
            release_locks()
            if temporary:
                shutil.rmtree(state_dir, ignore_errors=True)


def _output_paths(options: ReplayOptions) -> dict[str, Path]:
    return {flag: Path(getattr(options, name)) for name, flag in OUTPUT_FLAGS.items()
            if getattr(options, name) is not None}


def _outputs(options: ReplayOptions) -> dict[str, Path | None]:
    """The output file of each stream (None: not written, perhaps counted), in the order they are merged."""
    return {TRIGGERS: options.out, DEAD_LETTERS: options.dead_letter, VISITS: options.visits,
            SUPPRESSED: options.suppressed, DUPLICATES: options.duplicates, EVENTS: options.events,
            REFUSED_LINKS: options.refused_links, RETRACTIONS: options.retractions, CONVERSIONS: options.conversions}


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

    def watch_children(self, children: list[subprocess.Popen]) -> None:
        """A one-machine cluster's processes, just started: stopped with this replay (now, if it already is)."""
        self.children = children
        if self.event.is_set():
            self.stop()

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


def _specs(options: ReplayOptions, folders: list[Path], role: Role | None, processes: int) -> list[ProcessSpec]:
    """One spec a process to run here: `role` alone, one process alone, or a one-machine cluster's processes."""
    config = options.config.with_overrides(stores_file=str(Path(options.stores).resolve()))
    recording = RecordingInput(Path(options.recording_dir).resolve(), stop_after=options.stop_after,
                               progress=options.progress)
    operators = tuple(options.operators) if options.operators is not None else None
    return [ProcessSpec(folder.resolve(), config, recording, role=process, operators=operators,
                        emit_events=options.events is not None)
            for folder, process in zip(folders, roles_here(role, processes), strict=True)]


def _run_local_cluster(specs: list[ProcessSpec], stopper: _Stopper) -> None:
    """A one-machine cluster: one child process a spec on 127.0.0.1, each run exactly as that process of a
    cluster spread over machines, with its own folder state_dir/process-I; the stopper stops them too."""
    try:
        codes = run_local_cluster(specs, started=stopper.watch_children)
    finally:
        stopper.children = []
    if any(codes):
        raise ReplayError(f"cluster process exit codes {codes}; see the log lines above")
