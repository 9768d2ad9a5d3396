"""What Python's garbage collector costs a replay: every collection timed, by generation.

    python benchmarks/real_mix.py MIX --copies 10
    python benchmarks/bench_gc.py MIX/recording --stores MIX/stores.csv --out /tmp/t.jsonl --quiet
    python benchmarks/bench_gc.py DIR/recording --stores DIR/stores.csv --config DIR/bench.toml \\
        --out /tmp/t.jsonl --quiet --stop-after 400000          # the live traffic (bench_live.py --write-recording)

The arguments are `omnitrigger replay`'s; the replay runs in this process, one process (the collector
settings are the flow's own, omnitrigger/runner/process.py). A `gc.callbacks` hook times each collection and
counts what it freed. At the end it prints, per generation: collections, seconds, objects collected, and the
run's CPU time. Objects collected that do not grow with `--stop-after` come from start-up, not from the flow.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class CollectionTimes:
    """Every collection's duration and freed objects, by generation, from `gc.callbacks`."""

    def __init__(self) -> None:
        self.count: Counter[int] = Counter()
        self.seconds: Counter[int] = Counter()
        self.collected: Counter[int] = Counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.count[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started
        self.collected[generation] += info["collected"]


def main(argv: list[str]) -> int:
    from omnitrigger.cli import main as omnitrigger_main

    times = CollectionTimes()
    sys.argv = ["omnitrigger", "replay", *argv]  # the CLI's own entry: its errors stay one line
    gc.callbacks.append(times)
    cpu = time.process_time()
    try:
        omnitrigger_main()
    except SystemExit as done:
        if done.code:
            return int(done.code)
    finally:
        gc.callbacks.remove(times)
    cpu = time.process_time() - cpu
    print(f"garbage collector, replay in one process: {cpu:.2f} s of CPU")
    for generation in sorted(times.count):
        print(f"  generation {generation}: {times.count[generation]:,} collections, "
              f"{times.seconds[generation]:.3f} s ({100 * times.seconds[generation] / cpu:.1f} %), "
              f"{times.collected[generation]:,} objects collected")
    total = sum(times.seconds.values())
    print(f"  in all: {total:.3f} s, {100 * total / cpu:.1f} % of the CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
