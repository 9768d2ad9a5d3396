"""Part files, their manifest, and the checked, streaming merge of them into the output files.

The sink (flows/part_file_sink.py) appends `[seq, sub, record]` lines to one
part file a stream, `parts/<stream>.w0.jsonl`, and keeps for each part its
line count, byte size and a running CRC-32 of what it wrote. That triple is
the sink's Bytewax snapshot: on resume the sink cuts each part back to the
size of the committed snapshot (so a torn tail and whatever the killed run
wrote after the snapshot go; Bytewax re-emits exactly that), and continues
the count and checksum from there. It also keeps `parts/manifest.json`, the
latest triples, replaced atomically at each snapshot and at the end (a new
run starts it empty, before the flow: Bytewax builds the sink only when a
first record reaches it).

The merge trusts nothing it has not checked: every part the manifest lists
must be there with the size, line count and checksum written, and every line
must parse; otherwise it stops with one line (`PartFileError`) before any
output file changes. Each stream is sorted by (seq, sub) with bounded memory
(chunks sorted in memory, spilled to run files in the state folder and merged
by a heap), keeping the first of any record written twice under one sort
key (a rerun of a finished or `--stop-after` replay writes its end-of-input
records again), and written with sorted keys, so two runs of the same input
give byte-identical files. Only an exact repeat is dropped: the end-of-input
records of a `--stop-after` run are keyed `(last seq + 1, n)`, the keys the
resumed run's first record gives what it emits, and both are real records.

Every output file is written under a temporary name in its own folder
(mode 0600), fsync'd, and renamed over the old one only when every output is
complete (`OutputFiles`): a kill at any point leaves each output file either
as it was or complete.
"""

from __future__ import annotations

import errno
import heapq
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import orjson

from omnitrigger.state import StateError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

#: Bytes of output records (as written) one sort chunk holds in memory before it is spilled to a run file.
CHUNK_BYTES = 32 << 20

#: A part's (lines, bytes, crc32): what the sink wrote to it.
PartState = tuple[int, int, int]


class PartFileError(StateError):
    """A part file is missing, cut short or damaged; the message is one line."""


class OutputError(Exception):
    """An output cannot be written (folder not writable, disk full); the message is one line."""


def part_name(stream: str) -> str:
    return f"{stream}.w0.jsonl"


def stream_of(name: str) -> str:
    return name.split(".w", 1)[0]


# -- files written whole or not at all --------------------------------------------------------------


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_prefix(path: Path, pid: int | str) -> str:
    return f".{path.name}.omnitrigger-{pid}-"


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files beside `path` that a killed omnitrigger left (their process is gone)."""
    start = len(f".{path.name}.omnitrigger-")
    for temporary in path.parent.glob(_temporary_prefix(path, "*") + "*.tmp"):
        pid = temporary.name[start:].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            temporary.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AtomicFile:
    """A file written under a temporary name beside `path` (mode 0600) and renamed over it by `commit`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=_temporary_prefix(self.path, os.getpid()),
                                    suffix=".tmp")
        self.temporary = Path(name)
        self.handle: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def finish(self, sync: bool = True) -> None:
        """Flush (and fsync) the temporary file; nothing is visible under `path` yet."""
        if not self.handle.closed:
            self.handle.flush()
            if sync:
                os.fsync(self.handle.fileno())
            self.handle.close()

    def commit(self) -> None:
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        try:
            self.temporary.unlink()
        except FileNotFoundError:
            pass


def write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Replace `path` with `data` whole: a crash leaves the old file or the new one, never a part."""
    target = AtomicFile(path)
    try:
        target.write(data)
        target.finish(sync)
        target.commit()
    except BaseException:
        target.discard()
        raise
    if sync:
        fsync_folder(path.parent)


class OutputFiles:
    """The run's output files, each written to a temporary file in its folder and all renamed at `commit`."""

    def __init__(self) -> None:
        self.files: dict[Path, AtomicFile] = {}

    def open(self, path: Path) -> AtomicFile:
        path = Path(path)
        try:
            self.files[path] = AtomicFile(path)
        except OSError as error:
            raise output_error(error, path) from None
        return self.files[path]

    def commit(self) -> None:
        for path, file in self.files.items():
            try:
                file.finish()
            except OSError as error:
                raise output_error(error, path) from None
        for file in self.files.values():
            file.commit()
        for folder in {path.parent for path in self.files}:
            fsync_folder(folder)
        self.files.clear()

    def discard(self) -> None:
        for file in self.files.values():
            file.discard()
        self.files.clear()

    def __enter__(self) -> OutputFiles:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.discard()  # after commit there is nothing left to discard


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk of `path` (or of its nearest existing folder), None if unknown."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def mib(count: int | None) -> str:
    return "an unknown amount" if count is None else f"{count / (1 << 20):,.1f} MiB"


def output_error(error: OSError, path: Path) -> OutputError:
    """One line for a failed write of an output file."""
    if error.errno == errno.ENOSPC:
        return OutputError(f"no space left on the disk of {path.parent} writing {path} ({mib(free_bytes(path))} "
                           "free); the output files were not changed")
    reason = error.strerror or str(error)
    return OutputError(f"cannot write {path} ({reason}); the output files were not changed")


def check_output_paths(paths: dict[str, Path]) -> None:
    """Before a run: each output's folder exists (made if missing) and takes a new file; no two flags name one file.

    `paths` maps the flag (`--out`) to its path.
    """
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        path = Path(path)
        resolved = path.resolve()
        if resolved in seen:
            raise OutputError(f"{seen[resolved]} and {flag} name the same file {path}")
        seen[resolved] = flag
        if path.is_dir():
            raise OutputError(f"{flag} {path} is a folder, not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"{flag} {path}: cannot make its folder {path.parent} "
                              f"({error.strerror or error})") from None
        try:
            probe = AtomicFile(path)
            probe.discard()
            remove_stale_temporaries(path)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise OutputError(f"{flag} {path}: no space left on the disk of {path.parent} "
                                  f"({mib(free_bytes(path.parent))} free)") from None
            raise OutputError(f"{flag} {path}: its folder {path.parent} is not writable "
                              f"({error.strerror or error})") from None


# -- the manifest -------------------------------------------------------------------------------------


def write_manifest(parts_dir: Path, parts: dict[str, PartState], closed: bool, sync: bool = False) -> None:
    """`parts_dir/manifest.json`: each part's (lines, bytes, crc32); `closed` once the run's sink was closed."""
    document = {"version": MANIFEST_VERSION, "closed": closed,
                "parts": {name: list(state) for name, state in sorted(parts.items())}}
    write_atomic(parts_dir / MANIFEST, orjson.dumps(document, option=orjson.OPT_INDENT_2), sync=sync)


def read_manifest(parts_dir: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none; PartFileError when it does not parse."""
    path = parts_dir / MANIFEST
    try:
        document = orjson.loads(path.read_bytes())
        parts = document["parts"]
        document["parts"] = {str(name): (int(lines), int(size), int(crc)) for name, (lines, size, crc) in parts.items()}
        return document
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise PartFileError(f"state folder {parts_dir.parent} is damaged: {path} does not parse; "
                            "replay again with a fresh --state-dir") from None


def check_parts_present(parts_dir: Path, resuming: bool) -> None:
    """Before a run: each part the manifest lists is there, at least as long as written, and what was written
    (the first `bytes` of it) has its count of lines and its checksum; PartFileError (one line) if not.

    Whatever lies past that was written after the last snapshot and is cut off by the sink (re-emitted).
    A new run (not `resuming`: nothing snapshot yet) starts an empty manifest, so from then on a missing one
    means parts/ was deleted (the sink is only built once a first record reaches it)."""
    manifest = read_manifest(parts_dir)
    if manifest is None:
        if resuming:
            raise PartFileError(f"state folder {parts_dir.parent} is damaged: {parts_dir / MANIFEST} is missing "
                                "(parts/ deleted?), so the outputs written so far are lost; "
                                "replay again with a fresh --state-dir")
        parts_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(parts_dir, {}, closed=False, sync=True)
        return
    for name, (lines, size, crc) in sorted(manifest["parts"].items()):
        path = parts_dir / name
        with _open_part(path) as handle:
            actual = os.fstat(handle.fileno()).st_size
            if actual < size:
                raise _damaged(path, f"has {actual:,} bytes of the {size:,} written (cut short?)")
            count, running, left = 0, 0, size
            while left:
                block = handle.read(min(left, 1 << 20))
                if not block:
                    break
                count += block.count(b"\n")
                running = zlib.crc32(block, running)
                left -= len(block)
        if count != lines or running != crc:
            raise _damaged(path, f"does not match what was written ({count:,} lines, checksum {running:08x}; "
                                 f"written: {lines:,} lines, checksum {crc:08x})")


# -- reading and merging --------------------------------------------------------------------------------


def _open_part(path: Path) -> BinaryIO:
    """A part file for reading; a missing one is a damaged state folder, said in one line."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise _damaged(path, "is missing (deleted?)") from None


def _damaged(path: Path, detail: str) -> PartFileError:
    return PartFileError(f"state folder {path.parent.parent} is damaged: part file {path} {detail}; "
                         "replay again with a fresh --state-dir")


def _checked_lines(path: Path, state: PartState) -> Iterator[tuple[int, int, bytes]]:
    """The records of a part file as (seq, sub, the record's JSON text as written: keys sorted), checked against
    what the sink wrote: size, lines, CRC-32, and each line's shape (`[seq,sub,{...}]`; a line that is damaged
    within its record is caught by the checksum, at the part's end, before any output file is in place)."""
    lines, size, crc = state
    with _open_part(path) as handle:
        actual = os.fstat(handle.fileno()).st_size
        if actual != size:
            raise _damaged(path, f"has {actual:,} bytes, and {size:,} were written "
                                 f"({'cut short' if actual < size else 'appended to'}?)")
        count, running = 0, 0
        for line in handle:
            count += 1
            running = zlib.crc32(line, running)
            first = line.find(b",")
            second = line.find(b",", first + 1)
            try:
                if first < 0 or not line.startswith(b"[") or line[second + 1:second + 2] != b"{" \
                        or not line.endswith(b"}]\n"):
                    raise ValueError("not [seq, sub, record]")
                seq, sub = int(line[1:first]), int(line[first + 1:second])
            except ValueError as error:
                raise _damaged(path, f"line {count:,} does not parse ({str(error).splitlines()[0][:80]})") from None
            yield seq, sub, line[second + 1:-2]
        if count != lines or running != crc:
            raise _damaged(path, f"does not match what was written ({count:,} lines, checksum {running:08x}; "
                                 f"written: {lines:,} lines, checksum {crc:08x})")


class Parts:
    """The part files of a finished run, checked against their manifest, and merged one stream at a time."""

    def __init__(self, parts_dir: Path, work_dir: Path, chunk_bytes: int | None = None) -> None:
        self.parts_dir = Path(parts_dir)
        self.work_dir = Path(work_dir)
        self.chunk_bytes = chunk_bytes if chunk_bytes is not None else CHUNK_BYTES
        manifest = read_manifest(self.parts_dir)
        if manifest is None:
            raise PartFileError(f"state folder {self.parts_dir.parent} is damaged: {self.parts_dir / MANIFEST} "
                                "is missing (deleted?); replay again with a fresh --state-dir")
        # Closed by this run's sink, or (when no record reached the sink this run, so nothing was re-emitted
        # either) as the last snapshot left it: either way each part must be exactly what it lists.
        self.parts: dict[str, PartState] = manifest["parts"]
        for name in self.parts:
            if not (self.parts_dir / name).is_file():
                raise _damaged(self.parts_dir / name, "is missing (deleted?)")

    def records(self, stream: str) -> Iterator[bytes]:
        """`stream`'s records in (seq, sub) order as output lines (sorted keys, newline), a record written twice
        under one sort key once."""
        names = sorted(name for name in self.parts if stream_of(name) == stream)
        with _Sorter(self.work_dir, self.chunk_bytes) as sorter:
            ordinal = 0
            for name in names:
                for seq, sub, record in _checked_lines(self.parts_dir / name, self.parts[name]):
                    sorter.add(seq, sub, ordinal, record + b"\n")
                    ordinal += 1
            key: tuple[int, int] | None = None
            at_key: set[bytes] = set()
            for seq, sub, payload in sorter.sorted():
                if (seq, sub) != key:
                    key, at_key = (seq, sub), {payload}
                    yield payload
                elif payload not in at_key:  # another record under the same key: kept, in the order written
                    at_key.add(payload)
                    yield payload

    def loaded(self, stream: str) -> Iterator[dict[str, Any]]:
        """`stream`'s records in sort order, decoded (the run totals: a record a stop and stage)."""
        return (orjson.loads(line) for line in self.records(stream))


def records_unchecked(parts_dir: Path, stream: str) -> list[dict[str, Any]]:
    """The records of `stream` in sort order, read as they are (a part may end torn after a crash)."""
    found: list[tuple[int, int, dict[str, Any]]] = []
    for part in sorted(parts_dir.glob(part_name(stream).replace(".w0.", ".w*."))):
        with part.open("rb") as handle:
            for line in handle:
                try:
                    seq, sub, record = orjson.loads(line)
                except (orjson.JSONDecodeError, ValueError):
                    continue
                found.append((seq, sub, record))
    found.sort(key=lambda entry: (entry[0], entry[1]))
    return [record for _, _, record in found]


class _Sorter:
    """(seq, sub, ordinal, payload) in any order in; sorted out, holding at most about `chunk_bytes` in memory."""

    def __init__(self, work_dir: Path, chunk_bytes: int) -> None:
        self.work_dir = work_dir
        self.chunk_bytes = chunk_bytes
        self.chunk: list[tuple[int, int, int, bytes]] = []
        self.size = 0
        self.runs: list[Path] = []
        self.last_in_run: tuple[int, int, int] | None = None
        self.folder: Path | None = None

    def __enter__(self) -> _Sorter:
        return self

    def __exit__(self, *_: Any) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def add(self, seq: int, sub: int, ordinal: int, payload: bytes) -> None:
        self.chunk.append((seq, sub, ordinal, payload))
        self.size += len(payload) + 100
        if self.size >= self.chunk_bytes:
            self._spill()

    def _spill(self) -> None:
        """Sort the chunk and write it to a run file: appended to the last run when it sorts after it
        (input already in order makes one run), else a new run."""
        self.chunk.sort()
        if self.folder is None:
            try:
                self.folder = Path(tempfile.mkdtemp(prefix="merge-", dir=self.work_dir))
            except OSError as error:
                raise _work_error(error, self.work_dir) from None
        first = self.chunk[0][:3]
        if not self.runs or self.last_in_run is None or first <= self.last_in_run:
            self.runs.append(self.folder / f"run-{len(self.runs):05d}")
        try:
            with self.runs[-1].open("ab") as handle:
                handle.writelines(b"%d %d %d " % (seq, sub, ordinal) + payload
                                  for seq, sub, ordinal, payload in self.chunk)
        except OSError as error:
            raise _work_error(error, self.work_dir) from None
        self.last_in_run = self.chunk[-1][:3]
        self.chunk, self.size = [], 0

    def sorted(self) -> Iterator[tuple[int, int, bytes]]:
        if not self.runs:
            self.chunk.sort()
            for seq, sub, _ordinal, payload in self.chunk:
                yield seq, sub, payload
            return
        if self.chunk:
            self._spill()
        for seq, sub, _ordinal, payload in heapq.merge(*(_read_run(run) for run in self.runs)):
            yield seq, sub, payload


def _read_run(path: Path) -> Iterator[tuple[int, int, int, bytes]]:
    with path.open("rb") as handle:
        for line in handle:
            seq, sub, ordinal, payload = line.split(b" ", 3)
            yield int(seq), int(sub), int(ordinal), payload


def _work_error(error: OSError, folder: Path) -> OutputError:
    if error.errno == errno.ENOSPC:
        return OutputError(f"no space left on the disk of {folder} sorting the outputs ({mib(free_bytes(folder))} "
                           "free); the output files were not changed")
    return OutputError(f"cannot sort the outputs in {folder} ({error.strerror or error}); "
                       "the output files were not changed")
