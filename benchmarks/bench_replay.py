"""Replay throughput and memory: the whole flow, and each piece alone.

    python benchmarks/bench_replay.py [--customers 20000] [--processes 1]

Prints records/s for: decode+validate alone (RecordingReader), dedup logic
alone (on RocksDB), and the whole replay through Bytewax; plus peak RSS.
The recording comes from the seeded demo generator scaled to --customers
(about 12 records per customer, 25% of receipts redelivered).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from omnitrigger.config import Config
from omnitrigger.demo.generator import RecordingGenerator
from omnitrigger.operators import Dedup
from omnitrigger.recording import RecordingReader
from omnitrigger.records import Event
from omnitrigger.replay import ReplayOptions, run_replay
from omnitrigger.schemas import Contracts
from omnitrigger.state import RocksDBStore, ShardState

# Email and phone are hashed with this key; a benchmark has no secret to protect.
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-") as work:
        work_dir = Path(work)
        started = time.perf_counter()
        generator = RecordingGenerator(seed=1, customers=args.customers, products=5000).generate()
        written = generator.write(work_dir / "recording", with_bad_records=True)
        generator.write_stores(work_dir / "stores.csv")
        total = sum(written.values())
        print(f"recording: {total:,} records ({args.customers:,} customers), generated in "
              f"{time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        reader = RecordingReader(work_dir / "recording", Contracts())
        items = []
        while batch := reader.read_batch(10_000):
            items.extend(batch)
        seconds = time.perf_counter() - started
        print(f"decode + validate + merge (RecordingReader): {total / seconds:,.0f} records/s "
              f"({seconds / total * 1e6:.2f} µs/record)")

        events = [item for item in items if type(item) is Event]
        store = RocksDBStore(work_dir / "dedup-db")
        state = ShardState(store, "dedup", 0)
        dedup = Dedup(state, Config())
        started = time.perf_counter()
        for start in range(0, len(events), 1000):
            dedup.on_events(events[start:start + 1000])
            state.commit()
        seconds = time.perf_counter() - started
        print(f"dedup logic alone (RocksDB, commit per 1,000): {len(events) / seconds:,.0f} events/s "
              f"({seconds / len(events) * 1e6:.2f} µs/event)")
        store.close()

        summary = run_replay(ReplayOptions(recording_dir=work_dir / "recording", stores=work_dir / "stores.csv",
                                           out=work_dir / "triggers.jsonl", processes=args.processes))
        print(f"whole replay, {args.processes} process(es): {summary.records_this_run / summary.seconds:,.0f} "
              f"records/s ({summary.seconds / summary.records_this_run * 1e6:.2f} µs/record, start-up included)")
        print(f"peak RSS of this process: {peak_rss_mib():,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
