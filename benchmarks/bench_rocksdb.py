"""RocksDB lookups as the flow makes them, with and without the memtable's bloom filter, side by side.

    python benchmarks/bench_rocksdb.py [--keys 200000]

Fills two stores (state/rocksdb.py `RocksDBStore`, the flow's options) with the same `--keys` keys, all
still in the memtable (as between two flushes of a busy shard), one store with the memtable bloom
filter (`MEMTABLE_BLOOM_RATIO`) and one without, then looks up as many absent keys (a new receipt or
web event id in dedup, a new identifier, the old values a commit reads for keys written the first
time), one at a time and 1,000 at a time (a commit's `get_many`), and present keys. Figures are CPU
µs a key, the best of 5 rounds, the two stores alternating.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import xxhash  # noqa: E402

from omnitrigger.state.rocksdb import MEMTABLE_BLOOM_RATIO, RocksDBStore  # noqa: E402


def keys_named(prefix: str, count: int) -> list[bytes]:
    return [b"d" + xxhash.xxh3_128_digest(f"{prefix}{n}".encode()) for n in range(count)]


def cpu_us_a_key(lookups: object, count: int) -> float:
    started = time.process_time()
    lookups()  # type: ignore[operator]
    return (time.process_time() - started) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000, help="keys in each store's memtable (default 200000)")
    args = parser.parse_args()
    if not 1_000 <= args.keys <= 2_000_000:
        print("bench_rocksdb: --keys must be 1000 to 2000000", file=sys.stderr)
        return 2
    present, absent = keys_named("present", args.keys), keys_named("absent", args.keys)
    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-rocksdb-") as folder:
        stores = {f"memtable bloom {MEMTABLE_BLOOM_RATIO:g}": RocksDBStore(Path(folder) / "with"),
                  "no memtable bloom": RocksDBStore(Path(folder) / "without", memtable_bloom_ratio=0)}
        for store in stores.values():
            for start in range(0, args.keys, 10_000):
                store.write({key: b"x" * 40 for key in present[start:start + 10_000]})
        best: dict[tuple[str, str], float] = {}
        for _ in range(5):
            for name, store in stores.items():
                rounds = {
                    "absent, one at a time": lambda: [store.get(key) for key in absent],
                    "absent, 1,000 at a time": lambda: [store.get_many(absent[i:i + 1000])
                                                         for i in range(0, len(absent), 1000)],
                    "present, one at a time": lambda: [store.get(key) for key in present],
                }
                for what, lookups in rounds.items():
                    figure = cpu_us_a_key(lookups, args.keys)
                    best[name, what] = min(best.get((name, what), figure), figure)
        print(f"{args.keys:,} keys in the memtable; CPU µs a lookup (best of 5):")
        print(f"  {'lookup':<26}" + "".join(f"{name:>22}" for name in stores))
        for what in ("absent, one at a time", "absent, 1,000 at a time", "present, one at a time"):
            print(f"  {what:<26}" + "".join(f"{best[name, what]:>22.2f}" for name in stores))
        for store in stores.values():
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
