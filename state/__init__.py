"""Operator state: a key-value store interface, its RocksDB backend, and per-shard views.

`store.py` is the interface, `rocksdb.py` the backend (rocksdict),
`cache.py` the eviction rule of every in-memory cache in front of it, and
`shard_state.py` the view each stateful operator uses: buffered writes that
reach RocksDB only when Bytewax snapshots the shard, an undo log so a resume
can roll RocksDB back to Bytewax's committed epoch, and per-key expiry in
event time.
"""

from omnitrigger.state.rocksdb import RocksDBStore, open_store, close_all_stores
from omnitrigger.state.shard_state import ShardState, StateError
from omnitrigger.state.store import KeyValueStore

__all__ = ["KeyValueStore", "RocksDBStore", "ShardState", "StateError", "open_store", "close_all_stores"]
