"""Bytewax sink writing each output stream to per-worker part files, merged after the run.

Lines are `[seq, sub, record]`: the sort key travels with the record, so
`omnitrigger.outputs.merge_parts` can put every stream in one deterministic
order whatever worker wrote it, and drop what a resumed run wrote twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from omnitrigger.records import Emitted


class _PartFiles(StatelessSinkPartition):
    def __init__(self, parts_dir: Path, worker_index: int) -> None:
        self.parts_dir = parts_dir
        self.worker_index = worker_index
        self._files: dict[str, BinaryIO] = {}

    def _file(self, stream: str) -> BinaryIO:
        handle = self._files.get(stream)
        if handle is None:
            handle = (self.parts_dir / f"{stream}.w{self.worker_index}.jsonl").open("ab")
            self._files[stream] = handle
        return handle

    def write_batch(self, items: list[list[Emitted]]) -> None:
        for emitted_list in items:
            for emitted in emitted_list:
                seq, sub = emitted.sort_key
                self._file(emitted.stream).write(orjson.dumps([seq, sub, emitted.record]) + b"\n")
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


class PartFileSink(DynamicSink):
    def __init__(self, parts_dir: Path) -> None:
        self.parts_dir = Path(parts_dir)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PartFiles:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        return _PartFiles(self.parts_dir, worker_index)
