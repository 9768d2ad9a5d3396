"""Restart time of a resumed replay with a large state: process start to the first processed event.

    python benchmarks/bench_restart.py --customers 1000000
    python benchmarks/bench_restart.py --customers 1000000 10000000 --trials 3

For each size:
  1. `omnitrigger replay` of the demo generator's recording (40 customers) with
     `--state-dir` and `--stop-after 100`: a real state folder (layout.json,
     Bytewax's recovery store, RocksDB) stopped part way;
  2. the identity graph of N synthetic customers (bench_identity.py's CRM
     load: about 2.4 identifiers a customer) is built by running the Identity
     and History operators directly on that folder's RocksDB, in the
     sequencer's namespaces, their writes stored without a new generation, so
     the folder stays consistent with the recovery store (building it through
     the flow runs at about 10k events/s: 17 minutes for 10M);
  3. `omnitrigger replay ... --state-dir` is started again with a later
     `--stop-after` (one trial each), timed from just before the process is
     spawned until the first event of the resumed run reaches the events part
     file (`--events`): interpreter start, imports, the state-folder checks,
     RocksDB open, Bytewax's recovery load and the rollback, then one batch.
The same is measured on the folder before step 2 (no bulk state) as the
baseline. The page cache is warm (the state was just written): a cold disk
adds the read of what the first events touch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omnitrigger.config import Config
from omnitrigger.demo.generator import RecordingGenerator
from omnitrigger.operators import History, Identity
from omnitrigger.state import RocksDBStore, ShardState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_identity import build_events  # noqa: E402
from results import Figures  # noqa: E402

FIRST_STOP = 100
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-bench-key-0123456789")


def replay(work: Path, state: Path, stop_after: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "omnitrigger", "replay", str(work / "recording"), "--stores", str(work / "stores.csv"),
         "--out", str(work / "triggers.jsonl"), "--events", str(work / "events.jsonl"), "--state-dir", str(state),
         "--stop-after", str(stop_after), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def time_to_first_event(work: Path, state: Path, stop_after: int) -> float:
    part = state / "parts" / "events.w0.jsonl"
    before = size(part)
    started = time.perf_counter()
    process = replay(work, state, stop_after)
    while size(part) == before:
        if process.poll() is not None:
            raise SystemExit(f"replay ended before an event was processed: {process.stderr.read().decode()}")
        time.sleep(0.002)
    seconds = time.perf_counter() - started
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"replay failed: {err.decode()}")
    return seconds


def build_identity(state: Path, customers: int) -> float:
    store = RocksDBStore(state / "rocksdb" / "sequencer")  # the sequencer key's store: identity and history
    config = Config()
    states = [ShardState(store, "identity", 0, config.keep_generations),
              ShardState(store, "history", 0, config.keep_generations)]
    identity, history = Identity(states[0], config), History(states[1], config)
    started = time.perf_counter()
    for n, batch in enumerate(build_events(customers)):
        history.on_events(identity.on_events(batch).events)
        for shard in states:
            # Stored as part of the committed generation (not a new one), so Bytewax's snapshot still matches.
            shard.bulk_write()
        if n % 500 == 0 and n:
            print(f"  built {n * 1000:,} customers ({time.perf_counter() - started:.0f} s)", flush=True)
    store.compact()
    store.close()
    return time.perf_counter() - started


def folder_mib(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 2**20


def measure(work: Path, state: Path, first_stop: int, trials: int) -> tuple[list[float], int]:
    times = [time_to_first_event(work, state, first_stop + 20 * (trial + 1)) for trial in range(trials)]
    return times, first_stop + 20 * trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the state folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    args = parser.parse_args()
    figures = Figures("bench_restart", "python benchmarks/bench_restart.py --customers "
                      + " ".join(map(str, args.customers)) + f" --trials {args.trials}")
    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-restart-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        generator = RecordingGenerator(seed=7, customers=40).generate()
        generator.write(work / "recording")
        generator.write_stores(work / "stores.csv")
        for customers in args.customers:
            state = work / f"state-{customers}"
            first = replay(work, state, FIRST_STOP)
            if first.wait() != 0:
                raise SystemExit(first.stderr.read().decode())
            baseline, stop = measure(work, state, FIRST_STOP, args.trials)
            print(f"{customers:,} customers: baseline restart (demo state only) "
                  f"{statistics.median(baseline):.2f} s (trials {', '.join(f'{t:.2f}' for t in baseline)})", flush=True)
            seconds = build_identity(state, customers)
            print(f"  state built in {seconds:.0f} s; RocksDB folder {folder_mib(state / 'rocksdb'):,.0f} MiB", flush=True)
            times, _ = measure(work, state, stop, args.trials)
            print(f"{customers:,} customers: restart to the first processed event "
                  f"{statistics.median(times):.2f} s median (trials {', '.join(f'{t:.2f}' for t in times)})", flush=True)
            figures.add("restart with a small state (demo), to the first processed event", round(statistics.median(baseline), 2), "s")
            figures.add(f"restart with {customers:,} customers of state, to the first processed event",
                        round(statistics.median(times), 2), "s")
    figures.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
