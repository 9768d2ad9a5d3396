"""Merge the part files a run wrote into one deterministic file per output stream.

Each worker appends `[seq, sub, record]` lines to `<stream>.w<worker>.jsonl`.
Merging sorts every stream by (seq, sub), keeps the first of any sort key
seen twice (what a resumed run re-emitted after a crash), skips a torn last
line, and writes records with sorted keys, so two runs of the same input
give byte-identical files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import orjson


def read_stream(parts_dir: Path, stream: str) -> list[dict[str, Any]]:
    """All records of `stream`, in order, each sort key once."""
    by_key: dict[tuple[int, int], dict[str, Any]] = {}
    for part in sorted(parts_dir.glob(f"{stream}.w*.jsonl")):
        for seq, sub, record in _part_lines(part):
            by_key.setdefault((seq, sub), record)
    return [by_key[key] for key in sorted(by_key)]


def _part_lines(part: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    with part.open("rb") as handle:
        for line in handle:
            try:
                seq, sub, record = orjson.loads(line)
            except (orjson.JSONDecodeError, ValueError):
                continue  # the torn tail of a part cut short by a crash; it is re-emitted on resume
            yield seq, sub, record


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for record in records:
            handle.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")


def count_by(records: list[dict[str, Any]], field: str) -> dict[str, int]:
    return dict(sorted(Counter(str(record.get(field)) for record in records).items()))
