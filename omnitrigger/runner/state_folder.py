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
    processes        the processes of the run (--processes, or the number of --addresses):
                     Bytewax routes keys by worker count
    process_id       in a cluster, which process's folder this is (runner/cluster.py);
                     `cluster: "local"` marks the top of a one-machine cluster's folder
    rule_shards      [rules] shards: which rules shard holds which customer
    operators        the operators in the flow, in order (replay can run a subset)
    pii_key_id       a fingerprint of OMNITRIGGER_PII_KEY (not the key): hashed ids are key-specific
    recording        replay: the recording folder; live: input_topics, the topics read
    part_files       replay: PART_FILES_VERSION, the format of the output part files
                     (checked and cut back to the snapshot on resume: omnitrigger/outputs.py)

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

from omnitrigger.outputs import fsync_folder, write_atomic
from omnitrigger.state import StateError

if TYPE_CHECKING:
    from omnitrigger.config import Config

#: Bump when the RocksDB key layout, the stages or the snapshot shape change: old folders are then refused.
FORMAT_VERSION = 4

#: Keys compared in this order, so the most basic mismatch is the one reported.
_ORDER = ("layout_version", "mode", "processes", "cluster", "process_id", "rule_shards", "operators", "rules",
          "pii_key_id", "recording", "input_topics")

_CLUSTER_KEYS = ("cluster", "process_id")

#: The format of a replay's output part files (flows/part_file_sink.py), recorded in its layout.json.
PART_FILES_VERSION = 2

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
    returns the folder of each process to run here, in process order: `state_dir` itself (one process alone,
    or process `process_id` of a cluster over machines), or process-0/ ... under it (a one-machine cluster).

    The folder of a process run here keeps its RocksDB stores open for the flow, so a damaged one fails
    now (a one-machine cluster's stores are checked here and opened by each process); `open_new_store`
    opens (makes) this process's store even when new.
    """
    if process_id is None and processes > 1:
        return prepare_local_cluster(state_dir, layout, processes, what=what)
    index = process_id if process_id is not None else 0
    if process_id is not None:  # one process of a cluster spread over machines: this folder is its own
        layout = {**layout, "process_id": process_id}
    prepare_process_folder(state_dir, layout, index, processes, keep_open=True, what=what, sequencer_here=index == 0)
    if open_new_store:
        open_rocksdb(state_dir, state_dir / "rocksdb" / f"process-{index}", keep_open=True)
    return [state_dir]


def _mismatch(key: str, made: Any, now: Any, existing: dict[str, Any], layout: dict[str, Any]) -> str:
    if key == "processes" and (existing.get("process_id") is not None or existing.get("cluster") is not None):
        return f"with a cluster of {made} processes, not {now}; resume with the same cluster or use a fresh --state-dir"
    if key in ("cluster", "process_id"):
        if not any(key in existing for key in _CLUSTER_KEYS) and existing.get("processes") != 1:
            return (f"for {_made_as(existing)}, not for {_made_as(layout)}; this omnitrigger keeps a folder a "
                    "process: use a fresh --state-dir")
        return (f"for {_made_as(existing)}, not for {_made_as(layout)}; each process of a cluster keeps its own "
                "state folder: resume as it was made or use a fresh --state-dir")
    if key == "layout_version":
        return (f"with state format {made}, and this omnitrigger uses state format {now}; "
                "use a fresh --state-dir (or the omnitrigger version that made it)")
    if key == "pii_key_id":
        return (f"with another OMNITRIGGER_PII_KEY (key id {made}, this one is {now}); "
                "resume with the same key or use a fresh --state-dir")
    if key == "part_files":
        return ("by an older omnitrigger, whose output part files carry no counts or checksums; "
                "replay again with a fresh --state-dir")
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
    if layout.get("cluster") == "local":
        return f"a one-machine cluster (--processes {processes})"
    if layout.get("process_id") is not None:
        return f"process {layout['process_id']} of a cluster of {processes} (--addresses/--hostfile)"
    if processes == 1:
        return "a single process"
    return f"the --processes {processes} layout of an older omnitrigger"


def check_or_write_layout(state_dir: Path, layout: dict[str, Any], what: str = "omnitrigger") -> bool:
    """Refuse a folder made for another layout or not ours; True when resuming (layout.json there), else False."""
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
        for key in keys:
            if existing.get(key) != layout.get(key):
                detail = _mismatch(key, existing.get(key), layout.get(key), existing, layout)
                raise StateFolderError(f"state folder {state_dir} was made {detail}")
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
    """What the folder holds, bar our lock file (which a loser of the lock race may have just created)."""
    return {entry.name for entry in folder.iterdir()} - {LOCK_FILE}


def not_writable(folder: Path, error: OSError | str) -> StateFolderError:
    reason = error if isinstance(error, str) else (error.strerror or str(error))
    return StateFolderError(f"state folder {folder} is not writable ({reason}); its state is kept: give this user "
                            "write access to it (or mount it read-write) and run the same command again")


def check_writable(folder: Path) -> None:
    """Write (and remove) a file in `folder`, and in the folders and files beneath it that the flow writes;
    StateFolderError (not writable, with the path) when any refuses."""
    folders = [folder] + [path for path in (folder / "recovery", folder / "parts", folder / "rocksdb")
                          if path.is_dir()]
    folders += sorted(path for path in (folder / "rocksdb").glob("process-*") if path.is_dir())
    for path in folders:
        probe = path / f".write-test-{os.getpid()}"
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
    from omnitrigger.outputs import free_bytes, mib

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


def prepare_process_folder(folder: Path, layout: dict[str, Any], index: int, processes: int, *, keep_open: bool,
                           what: str = "omnitrigger", sequencer_here: bool = True) -> bool:
    """Check a reused state folder of one process (its layout, recovery partition and RocksDB; one line if
    they do not fit) or set up a new one; True when resuming.

    The folder is locked for this process first (`lock_folder`). A new folder is set up under a marker
    file and gets layout.json last, atomically: a crash part way leaves a folder the next run sets up
    again, never one it refuses. It keeps Bytewax's recovery partition `index` of `processes` (a single
    process: part-0 of 1). Bytewax finds the partitions in each process's recovery folder and resumes once
    the cluster has all of them. `keep_open`: the RocksDB stores stay open for the flow this process runs.
    """
    from bytewax.recovery import init_db_dir

    claim_folder(folder, what)
    if check_or_write_layout(folder, layout, what):
        snapshots = check_recovery_store(folder, [index])
        if sequencer_here:  # the sequencer sees every batch: its process has RocksDB state once anything was snapshot
            check_rocksdb_present(folder, snapshots)
        for rocksdb in sorted((folder / "rocksdb").glob("process-*")):
            open_rocksdb(folder, rocksdb, keep_open=keep_open)
        return True
    _begin_setup(folder)
    recovery = folder / "recovery"
    recovery.mkdir(parents=True, exist_ok=True)
    init_db_dir(recovery, processes)
    for part in recovery.glob("part-*.sqlite3*"):
        if part.name.split(".sqlite3")[0] != f"part-{index}":
            part.unlink()  # another process's partition: it keeps its own
    write_layout(folder, layout)
    _end_setup(folder)
    return False


def prepare_local_cluster(state_dir: Path, layout: dict[str, Any], processes: int,
                          what: str = "omnitrigger") -> list[Path]:
    """A one-machine cluster's state folder: layout.json (`cluster: "local"`) over one folder a process,
    process-I/, each laid out as process I of a cluster spread over machines would keep it."""
    folders = [state_dir / f"process-{index}" for index in range(processes)]
    claim_folder(state_dir, what)
    if check_or_write_layout(state_dir, {**layout, "cluster": "local"}, what):
        for index, folder in enumerate(folders):
            if not (folder / "layout.json").is_file():
                raise StateFolderError(f"state folder {state_dir} is damaged: {folder.name} has no layout.json "
                                       "(deleted?); use a fresh --state-dir")
            prepare_process_folder(folder, {**layout, "process_id": index}, index, processes, keep_open=False,
                                   what=what, sequencer_here=index == 0)
        return folders
    _begin_setup(state_dir)
    for index, folder in enumerate(folders):
        prepare_process_folder(folder, {**layout, "process_id": index}, index, processes, keep_open=False, what=what)
    write_layout(state_dir, {**layout, "cluster": "local"})
    _end_setup(state_dir)
    return folders


def check_recovery_store(state_dir: Path, parts: Iterable[int]) -> int:
    """The recovery store partitions this process keeps are there and read as SQLite; returns the snapshots held.

    One process keeps all of its run's partitions; a process of a cluster keeps one, part-I (Bytewax needs
    every partition somewhere in the cluster, not each in every process).
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
    if snapshots and not any((folder / "CURRENT").is_file() for folder in rocksdb.glob("process-*")):
        raise StateFolderError(f"state folder {state_dir} is damaged: the recovery store has snapshots but "
                               f"{rocksdb} holds no RocksDB state (deleted?); use a fresh --state-dir")


def open_rocksdb(state_dir: Path, path: Path, keep_open: bool) -> None:
    """Open the process's RocksDB store (kept open for the flow, which reuses it) or fail with one line."""
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
    from omnitrigger.outputs import PartFileError

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
