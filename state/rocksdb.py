"""RocksDB backend (rocksdict) for operator state.

Options follow DESIGN.md section 5: a bloom filter makes the common
"key not there" lookup cost 0.34 µs instead of 3 µs, and writes go in one
WriteBatch per snapshot. One store is opened per process and state folder,
shared by every shard and worker thread of that process.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Mapping

from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch, WriteOptions


class RocksDBStore:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        options.set_max_background_jobs(1)  # two cores: compaction must not starve the pipeline
        self.path = path
        self._db = Rdict(str(path), options)
        self._write_options = WriteOptions()

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self._db.get(keys) if keys else []

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch, self._write_options)

    def scan(self, start: bytes, end: bytes, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._db.iter()
        if reverse:
            iterator.seek_for_prev(end)
            if iterator.valid() and iterator.key() >= end:
                iterator.prev()
            while iterator.valid() and iterator.key() >= start:
                yield iterator.key(), iterator.value()
                iterator.prev()
        else:
            iterator.seek(start)
            while iterator.valid() and iterator.key() < end:
                yield iterator.key(), iterator.value()
                iterator.next()

    def delete_range(self, start: bytes, end: bytes) -> None:
        self._db.delete_range(start, end)

    def approximate_keys(self) -> int:
        return self._db.property_int_value("rocksdb.estimate-num-keys") or 0

    def compact(self) -> None:
        self._db.compact_range(None, None)

    def close(self) -> None:
        self._db.flush()
        self._db.close()


_open_stores: dict[Path, RocksDBStore] = {}
_lock = threading.Lock()


def open_store(path: Path) -> RocksDBStore:
    """The process's store for `path`, opened on first use (RocksDB allows one opener per folder)."""
    path = Path(path).resolve()
    with _lock:
        if path not in _open_stores:
            _open_stores[path] = RocksDBStore(path)
        return _open_stores[path]


def close_all_stores() -> None:
    with _lock:
        for store in _open_stores.values():
            store.close()
        _open_stores.clear()
