"""Step 1 of a run: the state folder's identity card (layout.json) and its checks before a dataflow starts.

`prepare_run_folders` is the step: it checks (or sets up) the folder of each process to run here,
locks it and opens its stores; the rest of this module is what it is made of.

A state folder is only valid for the flow that wrote it. Reused with another
layout it would not fail, it would compute the wrong thing: with another
`[rules] shards` customers hash to other rules shards and find no state, with
another PII key every hashed identifier is new, with another operator list the
snapshot tuples no longer line up. So layout.json records everything that
fixes the layout, and a mismatch is refused with one line:

    omnitrigger: error: state folder S was made with rule_shards=16, not 8; ...

What it records (replay and live):
    layout_version   FORMAT_VERSION below: bump it whenever the RocksDB key layout,
                     the stage structure or the snapshot shape changes
    mode             "replay" or "live"
    processes        the processes of the run (--processes, or the number of --addresses);
                     a replay on one machine may resume with another count (below)
    process_id       in a cluster over machines, which process's folder this is (runner/cluster.py)
    rule_shards      [rules] shards: which rules shard holds which customer
    operators        the operators in the flow, in order (replay can run a subset)
    pii_key_id       a fingerprint of OMNITRIGGER_PII_KEY (not the key): hashed ids are key-specific
    recording        replay: the recording folder; live: input_topics, the topics read
    part_files       replay: PART_FILES_VERSION, the format of the output part files
                     (checked and cut back to the snapshot on resume: omnitrigger/io/outputs.py)

The folder (one process alone, or every process of a one-machine cluster):
    layout.json  recovery/part-0.sqlite3  rocksdb/sequencer/  rocksdb/history/  rocksdb/rules-0000/ ...  parts/
One RocksDB store a Bytewax shard key, opened by whichever process Bytewax gives the key to
(the hash of the key modulo the process count), and one recovery partition every process of a
one-machine cluster sees. Bytewax (0.21.1, docs/guide/concepts/rescaling.md) keeps a fixed
number of recovery partitions, set when they are made, needs the cluster as a whole to see
each (several processes may see one: one of them is made its primary) and, on resume,
routes every key's snapshot to the worker that owns the key in the new cluster, whatever
the worker count. So a replay on one machine resumes with another --processes from the
same folder: each key's snapshot and its RocksDB store meet in the process that now runs
the key, and the outputs are those of an uninterrupted run. A cluster over machines
(--addresses/--hostfile) keeps a folder a process, with recovery partition part-I of N
and the stores of the keys process I ran: those cannot move between machines, so it
resumes only with the same cluster; so does a live job (its sinks are per process).

Config that does not fix the layout (retention, caps, batch size, ...) may
change between runs. Before the dataflow starts, the Bytewax recovery store
(SQLite) and the RocksDB folders are opened and checked, so a corrupted or
missing store is one line too, not a traceback from inside a worker.

A run first claims its folder (`claim_folder`): it must be ours, empty or
missing (then made, mode 0700: nobody else reads the state), writable (a
read-only or unwritable folder is said to be so, with its path, not called
damaged), and not locked by another process (`omnitrigger.lock`, an flock
held for the whole run; the loser is told who holds it). A new folder is set
up under a marker file, `setup-in-progress`, and gets its layout.json last
and atomically, so a crash during the first set-up leaves a folder the next
run sets up again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import orjson

from omnitrigger.io.outputs import fsync_folder, write_atomic
from omnitrigger.state import StateError

if TYPE_CHECKING:
    from omnitrigger.config import Config

#: Bump when the RocksDB key layout, the stages or the snapshot shape change: old folders are then refused.
#: 5: one RocksDB store a shard key (rocksdb/<key>/), one shared recovery partition on one machine.
#: 6: the history stage (history, the clock) has its own key and store, rocksdb/history/.
#: 7: visits run in the history stage: their state is in rocksdb/history/, no longer in rocksdb/sequencer/.
#: 8: a replay reads one source part a stream of the recording; the sequencer's snapshot holds their merge
#:    (the "input" namespace: operators/input_merge.py).
FORMAT_VERSION = 8

#: Keys compared in this order, so the most basic mismatch is the one reported.
_ORDER = ("layout_version", "mode", "processes", "process_id", "rule_shards", "operators", "rules",
          "pii_key_id", "recording", "input_topics")

_CLUSTER_KEYS = ("cluster", "process_id")

#: The RocksDB folder of the sequencer key (flows/replay_flow.py SEQUENCER_KEY), under rocksdb/.
SEQUENCER_STORE = "sequencer"

#: The format of a replay's output part files (flows/part_file_sink.py), recorded in its layout.json.
PART_FILES_VERSION = 3  # 3: records with sorted keys (2: counts and checksums in the manifest)

#: The lock file every run holds (flock) on its state folder, with the holder's pid in it.
LOCK_FILE = "omnitrigger.lock"

#: Present while a new folder is being set up; a folder that has it was never run, so it is set up again.
SETUP_MARKER = "setup-in-progress"

_held_locks: dict[Path, int] = {}

_NO_SPACE = "No space left on device"
#: Bytewax's recovery store is SQLite, which says a full disk its own way.
_SQLITE_FULL = ("database or disk is full", "DiskFull")
_UNWRITABLE = re.compile(r"Permission denied|Read-only file system|Operation not permitted")

_NAMES = {"processes": "--processes", "rule_shards": "[rules] shards", "input_topics": "input topics"}


class StateFolderError(StateError):
    """The state folder does not belong to this flow, or is damaged; the message is one line."""


def pii_key_id(key: bytes) -> str:
    """A fingerprint of the PII key: tells two keys apart, reveals nothing about either."""
    return hmac.new(key, b"omnitrigger state folder", hashlib.sha256).hexdigest()[:16]


def layout_record(mode: str, processes: int, rule_shards: int, operators: list[str], pii_key: bytes,
                  **extra: Any) -> dict[str, Any]:
    return {"layout_version": FORMAT_VERSION, "mode": mode, "processes": processes, "rule_shards": rule_shards,
            "operators": list(operators), "pii_key_id": pii_key_id(pii_key), **extra}


def flow_layout(mode: str, config: Config, processes: int, operators: Sequence[str] | None = None,
                **extra: Any) -> dict[str, Any]:
    """The layout record of a run of the flow: `operators` by name (None: the whole flow), the PII key from
    the environment, `config`'s rules shards and rules, and `extra` (the recording, or the input topics)."""
    from omnitrigger.flows.replay_flow import DEFAULT_OPERATORS
    from omnitrigger.operators.rules import rule_layout
    from omnitrigger.pii import key_from_environment

    names = list(operators) if operators is not None else [factory.name for factory in DEFAULT_OPERATORS]
    return layout_record(mode, processes, config.rule_shards, names, key_from_environment(), **extra,
                         rules=rule_layout(config))


def prepare_run_folders(state_dir: Path, layout: dict[str, Any], processes: int, process_id: int | None, *,
                        what: str = "omnitrigger", open_new_store: bool = False) -> list[Path]:
    """Check a reused state folder fits this run and is readable (one line if not), or set up a new one;
    returns the folder of each process to run here, in process order: `state_dir` itself, once for one
    process alone or process `process_id` of a cluster over machines, once a process for a one-machine
    cluster (its processes share the folder).

    A process run alone keeps the RocksDB stores open for the flow, so a damaged one fails now (a
    one-machine cluster's stores are checked here and opened by the processes that run their keys);
    `open_new_store` opens (makes) the sequencer's store even when new, where the sequencer runs.
    """
    if process_id is not None:  # one process of a cluster spread over machines: this folder is its own
        prepare_process_folder(state_dir, {**layout, "process_id": process_id}, process_id, processes,
                               keep_open=True, what=what, sequencer_here=process_id == 0)
        if open_new_store and process_id == 0:
            open_rocksdb(state_dir, state_dir / "rocksdb" / SEQUENCER_STORE, keep_open=True)
        return [state_dir]
    alone = processes == 1
    prepare_process_folder(state_dir, layout, 0, 1, keep_open=alone, what=what, sequencer_here=True,
                           rescalable=layout.get("mode") == "replay")
    if open_new_store and alone:
        open_rocksdb(state_dir, state_dir / "rocksdb" / SEQUENCER_STORE, keep_open=True)
    return [state_dir] * processes


def _mismatch(key: str, made: Any, now: Any, existing: dict[str, Any], layout: dict[str, Any]) -> str:
    if key == "processes" and existing.get("process_id") is not None:
        return f"with a cluster of {made} processes, not {now}; resume with the same cluster or use a fresh --state-dir"
    if key == "processes" and layout.get("process_id") is not None:
        return _mismatch("process_id", None, layout["process_id"], existing, layout)
    if key == "processes" and existing.get("mode") == "live":
        return (f"with --processes {made}, not {now}; a live job resumes with the same --processes (a replay "
                "may change it): resume with the same settings or use a fresh --state-dir")
    if key in _CLUSTER_KEYS:
        if existing.get("process_id") is None:
            return (f"for {_made_as(existing)}, not for {_made_as(layout)}; each process of a cluster over "
                    "machines keeps a state folder of its own: use a fresh --state-dir")
        return (f"for {_made_as(existing)}, not for {_made_as(layout)}; each process of a cluster keeps its own "
                "state folder: resume as it was made or use a fresh --state-dir")
    if key == "layout_version":
        return (f"with state format {made}, and this omnitrigger uses state format {now}; "
                "use a fresh --state-dir (or the omnitrigger version that made it)")
    if key == "pii_key_id":
        return (f"with another OMNITRIGGER_PII_KEY (key id {made}, this one is {now}); "
                "resume with the same key or use a fresh --state-dir")
    if key == "part_files":
        kind = "carry no counts or checksums" if made is None else f"are in format {made} (this one writes {now})"
        return f"by an older omnitrigger, whose output part files {kind}; replay again with a fresh --state-dir"
    if key == "rules" and isinstance(made, list) and isinstance(now, list):
        return (f"with rules {', '.join(made)}, not {', '.join(now)} (name:kind:state code); resume with the "
                "same rules or use a fresh --state-dir")
    if key == "operators" and isinstance(made, list):
        made, now = ",".join(made), ",".join(now)
        return f"with operators {made}, not {now}; resume with the same operators or use a fresh --state-dir"
    name = _NAMES.get(key, key)
    return f"with {name} {made!r}, not {now!r}; resume with the same settings or use a fresh --state-dir"


def _made_as(layout: dict[str, Any]) -> str:
    processes = layout.get("processes")
    if layout.get("process_id") is not None:
        return f"process {layout['process_id']} of a cluster of {processes} (--addresses/--hostfile)"
    if processes == 1:
        return "a single process"
    return f"a one-machine cluster (--processes {processes})"


def check_or_write_layout(state_dir: Path, layout: dict[str, Any], what: str = "omnitrigger",
                          rescalable: bool = False) -> bool:
    """Refuse a folder made for another layout or not ours; True when resuming (layout.json there), else False.

    `rescalable`: a folder of one machine (no process id on either side) may resume with another process
    count; layout.json then says the new count."""
    layout_file = state_dir / "layout.json"
    if layout_file.exists():
        try:
            existing = orjson.loads(layout_file.read_bytes())
            if not isinstance(existing, dict):
                raise ValueError
        except (orjson.JSONDecodeError, ValueError):
            raise StateFolderError(f"state folder {state_dir} has a corrupt layout.json; "
                                   "use a fresh --state-dir") from None
        # The cluster keys are compared when either side has them: a cluster process's folder is not a single run's.
        keys = [key for key in _ORDER if key in layout or (key in _CLUSTER_KEYS and key in existing)]
        keys += [key for key in layout if key not in _ORDER]
        rescaled = False
        for key in keys:
            if existing.get(key) != layout.get(key):
                if key == "processes" and rescalable and existing.get("process_id") is None \
                        and layout.get("process_id") is None:
                    rescaled = True
                    continue
                detail = _mismatch(key, existing.get(key), layout.get(key), existing, layout)
                raise StateFolderError(f"state folder {state_dir} was made {detail}")
        if rescaled:
            write_layout(state_dir, {**existing, "processes": layout["processes"]})
        return True
    if state_dir.exists() and _entries(state_dir) - {SETUP_MARKER}:
        raise StateFolderError(f"state folder {state_dir} is not empty and is not an {what} state folder")
    state_dir.mkdir(parents=True, exist_ok=True)
    return False


def write_layout(state_dir: Path, layout: dict[str, Any]) -> None:
    """Written last, once the folder is set up, whole or not at all (a temporary file renamed)."""
    write_atomic(state_dir / "layout.json", orjson.dumps(layout, option=orjson.OPT_INDENT_2))


# -- claiming a folder: ours, writable, locked; a set-up a crash cut short is redone -----------------------


def _entries(folder: Path) -> set[str]:
    """What the folder holds, bar our lock file (which a loser of the lock race may have just created) and the
    write probes of `check_writable` (which another run setting up the same new folder makes before it locks)."""
    return {entry.name for entry in folder.iterdir()
            if entry.name != LOCK_FILE and not entry.name.startswith(_WRITE_PROBE)}


_WRITE_PROBE = ".write-test-"


def not_writable(folder: Path, error: OSError | str) -> StateFolderError:
    reason = error if isinstance(error, str) else (error.strerror or str(error))
    return StateFolderError(f"state folder {folder} is not writable ({reason}); its state is kept: give this user "
                            "write access to it (or mount it read-write) and run the same command again")


def check_writable(folder: Path) -> None:
    """Write (and remove) a file in `folder`, and in the folders and files beneath it that the flow writes;
    StateFolderError (not writable, with the path) when any refuses."""
    folders = [folder] + [path for path in (folder / "recovery", folder / "parts", folder / "rocksdb")
                          if path.is_dir()]
    folders += rocksdb_folders(folder)
    for path in folders:
        probe = path / f"{_WRITE_PROBE}{os.getpid()}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        except FileExistsError:
            probe.unlink(missing_ok=True)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise no_space(folder) from None
            raise not_writable(path, error) from None
    for path in [*folder.glob("recovery/part-*.sqlite3*"), folder / "layout.json"]:
        if path.is_file() and not os.access(path, os.W_OK):
            raise not_writable(path, "permission denied")


def no_space(folder: Path) -> StateFolderError:
    from omnitrigger.io.outputs import free_bytes, mib

    return StateFolderError(f"no space left on the disk of state folder {folder} ({mib(free_bytes(folder))} free); "
                            "free some space and run the same command again: it resumes from the last snapshot")


def lock_folder(folder: Path) -> None:
    """Hold `folder`'s lock (flock on omnitrigger.lock) until `release_locks` or the process ends; StateFolderError
    with the holder's pid when another process holds it. Taking a lock this process holds already is a no-op."""
    key = folder.resolve()
    if key in _held_locks:
        return
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise not_writable(folder, error) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise StateFolderError(f"state folder {folder} is in use by another omnitrigger process{pid}: it holds "
                               f"{folder / LOCK_FILE}; wait until it ends, or use another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_locks[key] = fd


def release_locks() -> None:
    """Let go of every state folder lock this process holds (at the end of a run)."""
    for fd in _held_locks.values():
        os.close(fd)
    _held_locks.clear()


def claim_folder(folder: Path, what: str = "omnitrigger") -> bool:
    """Make sure `folder` is ours (or empty, or missing: made, mode 0700), writable, and locked by this process,
    and undo a set-up a crash cut short; True when the folder is new (to be set up)."""
    if folder.exists():
        if not folder.is_dir():
            raise StateFolderError(f"state folder {folder} is not a folder")
        try:
            entries = _entries(folder)
        except OSError as error:
            raise StateFolderError(f"state folder {folder} cannot be read ({error.strerror or error})") from None
        if entries and "layout.json" not in entries and SETUP_MARKER not in entries:
            raise StateFolderError(f"state folder {folder} is not empty and is not an {what} state folder")
    else:
        try:
            folder.mkdir(parents=True, mode=0o700)
        except FileExistsError:
            pass
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise no_space(folder.parent) from None
            raise StateFolderError(f"state folder {folder} cannot be made ({error.strerror or error})") from None
        entries = set()
    check_writable(folder)
    lock_folder(folder)
    if SETUP_MARKER in _entries(folder):  # a first set-up that did not finish: nothing ran here yet, so redo it
        for entry in folder.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        entries = set()
    if "layout.json" in _entries(folder):
        return False
    os.chmod(folder, 0o700)  # new: the state (and the outputs on their way) are the user's alone
    return True


def _begin_setup(folder: Path) -> None:
    """Mark `folder` as being set up: until `_end_setup`, a crash leaves a folder the next run sets up again."""
    (folder / SETUP_MARKER).touch()
    fsync_folder(folder)


def _end_setup(folder: Path) -> None:
    (folder / SETUP_MARKER).unlink()
    fsync_folder(folder)


def prepare_process_folder(folder: Path, layout: dict[str, Any], index: int, partitions: int, *, keep_open: bool,
                           what: str = "omnitrigger", sequencer_here: bool = True, rescalable: bool = False) -> bool:
    """Check a reused state folder (its layout, recovery partition and RocksDB stores; one line if they do
    not fit) or set up a new one; True when resuming.

    The folder is locked for this process first (`lock_folder`). A new folder is set up under a marker
    file and gets layout.json last, atomically: a crash part way leaves a folder the next run sets up
    again, never one it refuses. It keeps Bytewax's recovery partition `index` of `partitions`: part-0 of 1
    on one machine, whatever the process count (every process of a one-machine cluster reads the one
    folder), part-I of N as process I of a cluster over machines (Bytewax resumes once the cluster has all
    of them). `keep_open`: the RocksDB stores stay open for the flow this process runs alone.
    """
    from bytewax.recovery import init_db_dir

    claim_folder(folder, what)
    if check_or_write_layout(folder, layout, what, rescalable=rescalable):
        snapshots = check_recovery_store(folder, [index])
        if sequencer_here:  # the sequencer sees every batch: it has RocksDB state once anything was snapshot
            check_rocksdb_present(folder, snapshots)
        for rocksdb in rocksdb_folders(folder):
            open_rocksdb(folder, rocksdb, keep_open=keep_open)
        return True
    _begin_setup(folder)
    recovery = folder / "recovery"
    recovery.mkdir(parents=True, exist_ok=True)
    init_db_dir(recovery, partitions)
    for part in recovery.glob("part-*.sqlite3*"):
        if part.name.split(".sqlite3")[0] != f"part-{index}":
            part.unlink()  # another process's partition: it keeps its own
    write_layout(folder, layout)
    _end_setup(folder)
    return False


def rocksdb_folders(state_dir: Path) -> list[Path]:
    """The RocksDB stores of a state folder, one a shard key: rocksdb/sequencer, rocksdb/rules-0000, ..."""
    rocksdb = state_dir / "rocksdb"
    return sorted(path for path in rocksdb.iterdir() if path.is_dir()) if rocksdb.is_dir() else []


def check_recovery_store(state_dir: Path, parts: Iterable[int]) -> int:
    """The recovery store partitions this process keeps are there and read as SQLite; returns the snapshots held.

    A folder on one machine keeps the one partition of its run, part-0, whatever the process count; a process
    of a cluster over machines keeps one, part-I (Bytewax needs every partition somewhere in the cluster,
    not each in every process).
    """
    recovery = state_dir / "recovery"
    snapshots = 0
    for part in parts:
        path = recovery / f"part-{part}.sqlite3"
        if not path.is_file():
            raise StateFolderError(f"state folder {state_dir} is damaged: the recovery store has no {path.name} "
                                   "(deleted?); use a fresh --state-dir")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                problem = connection.execute("PRAGMA quick_check").fetchone()[0]
                if problem != "ok":
                    raise sqlite3.DatabaseError(problem)
                snapshots += connection.execute("SELECT count(*) FROM snaps").fetchone()[0]
        except sqlite3.Error as error:
            raise StateFolderError(f"state folder {state_dir} is damaged: the recovery store {path.name} cannot be "
                                   f"read ({_first_line(error)}); use a fresh --state-dir") from None
    return snapshots


def check_rocksdb_present(state_dir: Path, snapshots: int) -> None:
    """Bytewax snapshots without any RocksDB state: the operator state was deleted or replaced."""
    rocksdb = state_dir / "rocksdb"
    if snapshots and not any((folder / "CURRENT").is_file() for folder in rocksdb_folders(state_dir)):
        raise StateFolderError(f"state folder {state_dir} is damaged: the recovery store has snapshots but "
                               f"{rocksdb} holds no RocksDB state (deleted?); use a fresh --state-dir")


def open_rocksdb(state_dir: Path, path: Path, keep_open: bool) -> None:
    """Open a shard key's RocksDB store (kept open for the flow, which reuses it) or fail with one line."""
    from omnitrigger.state import RocksDBStore, open_store

    try:
        store = open_store(path) if keep_open else RocksDBStore(path)
        for _ in store.scan(b"m", b"n"):  # every shard's generation: reads (and checksums) those blocks
            pass
        if not keep_open:
            store.close()
    except Exception as error:  # rocksdict raises a bare Exception("Corruption: ...", "IO error: ...")
        text = _first_line(error)
        if _UNWRITABLE.search(text):
            raise not_writable(path, text) from None
        if _NO_SPACE in text:
            raise no_space(state_dir) from None
        if "lock" in text.lower():
            raise StateFolderError(f"state folder {state_dir} is in use by another omnitrigger process "
                                   f"({text})") from None
        raise StateFolderError(f"state folder {state_dir} is damaged: RocksDB in {path} cannot be opened "
                               f"({text}); use a fresh --state-dir") from None


def corruption_in(error: BaseException) -> str | None:
    """RocksDB's "Corruption: ..." text if it is behind `error` (Bytewax wraps what an operator raised), else None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "Corruption:" in str(current):
            return _first_line(current)
        current = current.__cause__ or current.__context__
    return None


def raise_if_corrupted(state_dir: Path, error: BaseException) -> None:
    """Turn what stopped the flow into one line when it is about the state folder: a RocksDB corruption found
    while running (a damaged block read), a full disk, a folder that turned read-only, a damaged part file."""
    from omnitrigger.io.outputs import PartFileError

    detail = corruption_in(error)
    if detail is not None:
        raise StateFolderError(f"state folder {state_dir} is damaged: RocksDB reported a corruption while reading "
                               f"state ({detail}); use a fresh --state-dir") from None
    for cause in _chain(error):
        if isinstance(cause, PartFileError):
            raise PartFileError(str(cause)) from None
        text = str(cause)
        if (isinstance(cause, OSError) and cause.errno == errno.ENOSPC) or _NO_SPACE in text \
                or any(marker in text for marker in _SQLITE_FULL):
            raise no_space(state_dir) from None
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise not_writable(Path(cause.filename).parent if cause.filename else state_dir, cause) from None
        if _UNWRITABLE.search(text) and "IO error" in text:
            raise not_writable(state_dir, _first_line(cause)) from None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and what caused it, in order (Bytewax wraps what a step raised)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300]
