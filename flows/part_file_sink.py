"""Bytewax sink writing each output stream to a part file, merged after the run (omnitrigger/io/outputs.py).

Lines are `[seq, sub, record]`: the sort key travels with the record, so the
merge can put every stream in one deterministic order whatever stage wrote
it. The record is encoded with sorted keys, as the output files hold it, so the
merge takes its bytes as they are (no decoding and encoding again at the end of
a run, when nothing else runs). One partition, "outputs", built on one process (`here`; in a cluster,
process 0, so every process's records travel to it through Bytewax and no
folder is shared between machines), one part file a stream. The flow hands it
each stage's records already encoded as lines (`encode_outputs`, on the
process that made them), so what crosses to process 0 is bytes.

The partition is stateful: its snapshot is each part's (lines, bytes,
crc32) after the epoch's records were written and flushed. Built again on
resume, it cuts every part back to the committed snapshot's size and goes on
from that count and checksum, because Bytewax re-emits exactly what came
after that snapshot: the part files hold each record once (bar the
end-of-input records a `--stop-after` run writes at each stop), with no torn
tail, and a part that is missing or shorter than its snapshot is refused.
`parts/manifest.json` follows each snapshot and is marked closed at the end.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from omnitrigger.io.outputs import MANIFEST, PartFileError, PartState, part_name, write_manifest
from omnitrigger.records import Emitted

PARTITION = "outputs"

#: What a partition's close() could not do, for the runner (omnitrigger/runner/process.py) to raise once the flow has returned.
CLOSE_ERRORS: list[Exception] = []


class EncodedOutputs(NamedTuple):
    """A stage's output records as part-file lines, `{stream: (lines, how many)}`, encoded where they were made.

    The flow encodes each stage's outputs before they travel to the one writer (flows/replay_flow.py), so
    what crosses processes in a cluster is bytes, which pickle for nearly nothing, and the writer's process
    (process 0, the busiest) neither unpickles the records nor encodes them.
    """

    lines: dict[str, tuple[bytes, int]]


def encode_outputs(emitted: list[Emitted]) -> EncodedOutputs:
    """`emitted` as part-file lines `[seq, sub, record]` (the record's keys sorted, as the output files have
    them), grouped by stream in their order."""
    lines: dict[str, list[bytes]] = {}
    dumps, sorted_keys = orjson.dumps, orjson.OPT_SORT_KEYS
    for record in emitted:
        seq, sub = record.sort_key
        lines.setdefault(record.stream, []).append(dumps([seq, sub, record.record], option=sorted_keys))
    return EncodedOutputs({stream: (b"\n".join(chunk) + b"\n", len(chunk)) for stream, chunk in lines.items()})


class _PartFiles(StatefulSinkPartition):
    """The part files of one run, resumed at `resume_state` ({part name: (lines, bytes, crc32)}; None: new)."""

    def __init__(self, parts_dir: Path, worker_index: int = 0, resume_state: dict[str, PartState] | None = None) -> None:
        self.parts_dir = Path(parts_dir)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.states: dict[str, PartState] = dict(resume_state or {})
        self._files: dict[str, BinaryIO] = {}
        self._changed = False
        # The manifest first: it never claims more than the parts hold, even if we die while cutting them back.
        write_manifest(self.parts_dir, self.states, closed=False)
        for path in self.parts_dir.glob("*.w*.jsonl"):
            if path.name not in self.states:
                path.unlink()  # written after the last committed snapshot, or by a run that never committed one
        for name, (_lines, size, _crc) in self.states.items():
            path = self.parts_dir / name
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                raise PartFileError(f"state folder {self.parts_dir.parent} is damaged: part file {path} is missing "
                                    "(deleted?); replay again with a fresh --state-dir") from None
            if actual < size:
                raise PartFileError(f"state folder {self.parts_dir.parent} is damaged: part file {path} has "
                                    f"{actual:,} bytes of the {size:,} written (cut short?); "
                                    "replay again with a fresh --state-dir")
            if actual > size:
                os.truncate(path, size)  # the killed run's records after the snapshot: re-emitted now

    def _file(self, stream: str) -> tuple[str, BinaryIO]:
        name = part_name(stream)
        handle = self._files.get(name)
        if handle is None:
            handle = (self.parts_dir / name).open("ab")
            self._files[name] = handle
            self.states.setdefault(name, (0, 0, 0))
        return name, handle

    def write_batch(self, items: list[EncodedOutputs]) -> None:
        """Append each stream's lines (`encode_outputs`, done by the flow where the records were made)."""
        lines: dict[str, list[bytes]] = {}
        counts: dict[str, int] = {}
        for encoded in items:
            for stream, (data, count) in encoded.lines.items():
                lines.setdefault(stream, []).append(data)
                counts[stream] = counts.get(stream, 0) + count
        for stream, chunks in lines.items():
            name, handle = self._file(stream)
            data = b"".join(chunks)
            handle.write(data)
            count, size, crc = self.states[name]
            self.states[name] = (count + counts[stream], size + len(data), zlib.crc32(data, crc))
        for handle in self._files.values():
            handle.flush()
        self._changed = self._changed or bool(lines)

    def snapshot(self) -> dict[str, PartState]:
        """Each part's (lines, bytes, crc32) with every record of the epoch written (flushed to the OS)."""
        if self._changed:
            write_manifest(self.parts_dir, self.states, closed=False)
            self._changed = False
        return dict(self.states)

    def close(self) -> None:
        """Flush, fsync and close the parts, and mark the manifest closed. Never raises: Bytewax also calls it
        while unwinding from a failed step, where an exception aborts the process (SIGABRT, no cause given);
        what fails is kept in CLOSE_ERRORS for the caller of the flow to report."""
        try:
            for handle in self._files.values():
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            self._files.clear()
            write_manifest(self.parts_dir, self.states, closed=True, sync=True)
        except Exception as error:  # noqa: BLE001 (reported after the flow, see above)
            CLOSE_ERRORS.append(error)
            for handle in self._files.values():
                try:
                    handle.close()
                except OSError:
                    pass
            self._files.clear()


class PartFileSink(FixedPartitionedSink):
    """Every output record of the run, written as part files in `parts_dir` by the one process where `here`."""

    def __init__(self, parts_dir: Path, here: bool = True) -> None:
        self.parts_dir = Path(parts_dir)
        self.here = here

    def list_parts(self) -> list[str]:
        return [PARTITION] if self.here else []

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _PartFiles:
        return _PartFiles(self.parts_dir, 0, resume_state)


__all__ = ["CLOSE_ERRORS", "MANIFEST", "EncodedOutputs", "PartFileSink", "encode_outputs"]
