"""Where Bytewax runs each stage: the keys the stages go by, and the hash that places a key on a worker.

Bytewax sends a stateful key to worker `siphash13(key) % workers` (Rust's
DefaultHasher with zero keys; `worker_of`, checked against Bytewax in
tests/test_cluster.py). omnitrigger numbers a cluster's processes so that
process 0 is the sequencer's worker (omnitrigger/runner/cluster.py), and
names the other keys so that, on a cluster of 2 to 8 processes, none of
them lands there: process 0 reads and decodes the input and runs the
sequencer (dedup, identity), the most work of any one key, and the
history stage (visits, history, the clock) and the rules shards spread over
the other processes. The
names are fixed, whatever the process count, because a key's snapshot in
the recovery store goes by its name: a cluster resumes with another count.
A rules shard's RocksDB folder keeps its plain name (`rules-0000`,
operators/router.py `shard_key`); its Bytewax key is `rules_key`.
"""

from __future__ import annotations

import functools
import itertools

#: The sequencer: dedup, identity (every input batch goes to it).
SEQUENCER_KEY = "sequencer"
#: The history stage: visits, history, the event-time clock and the router, after the sequencer.
HISTORY_KEY = "history"
#: The cluster sizes for which the keys after the sequencer's avoid its worker.
KEPT_APART_FOR = range(2, 9)

_MASK = (1 << 64) - 1


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3, the hash of Rust's `std::collections::hash_map::DefaultHasher` (zero keys for `::new()`)."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    whole = len(data) - len(data) % 8
    for start in range(0, whole, 8):
        word = int.from_bytes(data[start:start + 8], "little")
        v3 ^= word
        sip_round()
        v0 ^= word
    last = int.from_bytes(data[whole:], "little") | ((len(data) & 0xFF) << 56)
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The Bytewax worker a stateful step sends `key` to (Rust hashes a str as its bytes and 0xFF)."""
    return siphash13(key.encode() + b"\xff") % workers


def apart_from_sequencer(key: str) -> bool:
    """Whether `key` lands on another worker than the sequencer's, on every cluster of `KEPT_APART_FOR`."""
    return all(worker_of(key, workers) != worker_of(SEQUENCER_KEY, workers) for workers in KEPT_APART_FOR)


@functools.lru_cache(maxsize=None)
def rules_key(shard: int) -> str:
    """The Bytewax key of rules shard `shard`: `rules-NNNN`, or `rules-NNNN.K` with the least K that keeps it
    apart from the sequencer (`apart_from_sequencer`)."""
    for suffix in itertools.count():
        key = f"rules-{shard:04d}" if suffix == 0 else f"rules-{shard:04d}.{suffix}"
        if apart_from_sequencer(key):
            return key
    raise AssertionError("unreachable")


def shards_apart_from(stage_key: str, shards: int, processes: int) -> frozenset[int]:
    """The rules shards (of `shards`) whose keys Bytewax runs on another worker than `stage_key`'s, on a
    cluster of `processes` (one worker each; none alone). A batch routed to one of them is pickled, so it
    crosses packed (flows/stage.py): a list of records would cost its sender a Python call a record."""
    if processes <= 1:
        return frozenset()
    here = worker_of(stage_key, processes)
    return frozenset(shard for shard in range(shards) if worker_of(rules_key(shard), processes) != here)
