"""RocksDB backend (rocksdict) for operator state.

Options follow docs/design.md#rocksdb-through-rocksdict: a bloom filter makes the common
"key not there" lookup cost 0.34 µs instead of 3 µs, and writes go in one
WriteBatch per snapshot. The table files' bloom filters do not cover the
memtable, where a lookup of an absent key is a skiplist seek (2 µs once it
holds a few hundred thousand keys): MEMTABLE_BLOOM_RATIO gives the memtable
one too (0.25 µs; benchmarks/bench_rocksdb.py). The flow looks up absent keys
about once a record (a new receipt or web event id in dedup, a new identifier,
the old values the undo log reads at a commit for keys written for the first time). One store is opened per Bytewax shard key (the
sequencer, each rules shard: rocksdb/<key>/ in the state folder), by the
process that runs that key, so a key's state does not depend on which process
ran it before (omnitrigger/runner/state_folder.py).

Memory is bounded whatever the size of the state (benchmarks/bench_memory.py)
and whatever the number of stores a process opens (17 by default): every store
of a process shares one block cache of BLOCK_CACHE_BYTES, which holds the data
blocks read and also the index and bloom filter blocks, which RocksDB otherwise
keeps outside any bound, one set per table file, so they grow with the data;
indexes and filters are partitioned so only their top level stays pinned and a
state larger than the cache pages them in as it pages data. Memtables of every
store together are at most MAX_WRITE_BUFFERS x WRITE_BUFFER_BYTES (one shared
write buffer manager), allocated in ARENA_BLOCK_BYTES blocks, so a store that
holds little costs little.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Mapping

from rocksdict import (
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteBatch, WriteBufferManager,
    WriteOptions,
)

BLOCK_CACHE_BYTES = 256 << 20
WRITE_BUFFER_BYTES = 32 << 20
MAX_WRITE_BUFFERS = 2
#: Memtable allocation unit (RocksDB's default is an eighth of the write buffer, 4 MiB, for each store).
ARENA_BLOCK_BYTES = 1 << 20
#: A memtable's bloom filter, as a fraction of the write buffer (0.64 MiB a memtable): absent-key lookups
#: in the memtable at a tenth of their cost. 0: none.
MEMTABLE_BLOOM_RATIO = 0.02

#: Levels of RocksDB's LSM tree (its default) and how many of the first are not compressed. The flow writes every
#: entity it touched once an epoch, with an undo record, so most bytes it writes are rewritten or deleted while
#: they are in the memtable flushes (L0) and the first compactions (L1); compressing them there cost 37 % of
#: RocksDB's background CPU on the live benchmark's traffic (docs/design.md#rocksdb-through-rocksdict). Deeper
#: levels, where a large state settles, are LZ4 (as fast as Snappy, RocksDB's default, and as small).
NUM_LEVELS = 7
UNCOMPRESSED_LEVELS = 2

_shared: tuple[Cache, WriteBufferManager] | None = None
_shared_lock = threading.Lock()


def _shared_memory() -> tuple[Cache, WriteBufferManager]:
    """The block cache and the memtable budget every store of this process shares (made on first use, kept
    for the life of the process: a cache must outlive the databases using it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = (Cache(BLOCK_CACHE_BYTES), WriteBufferManager(MAX_WRITE_BUFFERS * WRITE_BUFFER_BYTES, False))
        return _shared


def describe_options() -> str:
    """The memory settings, for a benchmark to print."""
    return (f"block cache {BLOCK_CACHE_BYTES >> 20} MiB shared by every store of a process (LRU, index and filter "
            f"blocks included, partitioned, top level and L0 pinned), memtables {MAX_WRITE_BUFFERS} x "
            f"{WRITE_BUFFER_BYTES >> 20} MiB a store and {MAX_WRITE_BUFFERS * WRITE_BUFFER_BYTES >> 20} MiB for all "
            f"of a process's stores, 10-bit bloom filter, memtable bloom {MEMTABLE_BLOOM_RATIO:g} of the write buffer, "
            f"levels 0 to {UNCOMPRESSED_LEVELS - 1} uncompressed and LZ4 below, 1 background job")


class RocksDBStore:
    def __init__(self, path: Path, bulk_load: bool = False, memtable_bloom_ratio: float = MEMTABLE_BLOOM_RATIO) -> None:
        """`bulk_load`: for a benchmark filling a new store fast (no compaction, no WAL until `compact`);
        the files it writes have the same table format as the flow's. `memtable_bloom_ratio`: for a
        benchmark to compare."""
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._cache, buffers = _shared_memory()  # the cache must outlive the database: it is kept for good
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(self._cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(MAX_WRITE_BUFFERS)
        options.set_arena_block_size(ARENA_BLOCK_BYTES)
        options.set_write_buffer_manager(buffers)
        options.set_compression_per_level([DBCompressionType.none()] * UNCOMPRESSED_LEVELS
                                          + [DBCompressionType.lz4()] * (NUM_LEVELS - UNCOMPRESSED_LEVELS))
        options.set_max_background_jobs(1)  # two cores: compaction must not starve the pipeline
        if memtable_bloom_ratio > 0:
            options.set_memtable_prefix_bloom_ratio(memtable_bloom_ratio)
            options.set_memtable_whole_key_filtering(True)  # no prefix extractor: the whole key
        self._write_options = WriteOptions()
        if bulk_load:
            options.set_disable_auto_compactions(True)
            options.set_write_buffer_size(256 << 20)
            options.set_level_zero_slowdown_writes_trigger(1 << 30)
            options.set_level_zero_stop_writes_trigger(1 << 30)
            options.set_max_background_jobs(2)
            self._write_options.disable_wal = True
        self.path = path
        # Naming the default column family makes rocksdict open an existing store with these options;
        # otherwise it reloads the ones in the store's OPTIONS file, with a default 8 MiB block cache.
        self._db = Rdict(str(path), options, column_families={"default": options})

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self._db.get(keys) if keys else []

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        batch = WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete  # bound once: a commit writes a few keys a record
        for key, value in changes.items():
            if value is None:
                delete(key)
            else:
                put(key, value)
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
    """The process's store for `path` (one shard key's folder), opened on first use (RocksDB allows one
    opener per folder) and kept open for the flow."""
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
