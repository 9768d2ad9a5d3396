"""The rules shards' sweep of expired customer facts (state/documents.py `Documents.sweep`) in a whole replay.

    python benchmarks/bench_sweep.py [--copies 10] [--epochs 1s 5s] [--shared ../shared]

For each `[replay] epoch_interval`, a one-process `omnitrigger replay` of the real-data mix (real_mix.py)
runs in a child process whose `Documents.sweep` is wrapped to count and time it: sweeps, documents walked,
entries walked (every entry of a swept document's sections that may hold an expired one), entries dropped,
and the seconds spent sweeping, against the replay's wall time. What is dropped must not depend on the
epoch (the state would then depend on the wall clock): the script says whether the counts agree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")


def _child(recording: str, stores: str, work: str, epoch: str) -> None:
    """One replay with the sweep wrapped; prints one line of figures last."""
    import atexit

    from omnitrigger.state import documents

    figures = {"sweeps": 0, "documents": 0, "entries_walked": 0, "dropped": 0, "seconds": 0.0}
    sweep = documents.Documents.sweep

    def counted(self: documents.Documents, cutoff_ms: int) -> int:
        owners = {owner for owner, doc in self._values.items()
                  if doc and 0 < doc.get(documents.INDEXED, 0) <= cutoff_ms}
        start = self.index_prefix
        owners.update(key[len(start) + 8:].decode()
                      for key, _ in self.state.scan(start, start + documents._U64.pack(cutoff_ms + 1)))
        for owner in owners:
            doc = self.get(owner)
            # A section is walked unless its bound (`~` and its name, state/documents.py) says nothing in it is due;
            # a checkout before the bounds has none, so there every entry of the document is walked.
            figures["entries_walked"] += sum(
                len(section) for name, section in (doc or {}).items() if type(section) is dict and
                (doc.get(documents.INDEXED + name) is None or 0 < doc[documents.INDEXED + name] <= cutoff_ms))
        figures["documents"] += len(owners)
        started = time.perf_counter()
        dropped = sweep(self, cutoff_ms)
        figures["seconds"] += time.perf_counter() - started
        figures["sweeps"] += 1
        figures["dropped"] += dropped
        return dropped

    documents.Documents.sweep = counted
    started = time.perf_counter()
    atexit.register(lambda: print("FIGURES", figures["sweeps"], figures["documents"], figures["entries_walked"],
                                  figures["dropped"], f"{figures['seconds']:.3f}",
                                  f"{time.perf_counter() - started:.3f}", flush=True))
    config = Path(work) / f"epoch-{epoch}.toml"
    config.write_text(f'[replay]\nepoch_interval = "{epoch}"\n')
    sys.argv = ["omnitrigger", "replay", recording, "--stores", stores, "--out", str(Path(work) / f"t-{epoch}.jsonl"),
                "--state-dir", str(Path(work) / f"state-{epoch}"), "--config", str(config), "--quiet"]
    from omnitrigger.cli import main

    main()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=10, help="copies of the real-data mix (1 to 99)")
    parser.add_argument("--epochs", nargs="+", default=["1s", "5s"], help="[replay] epoch_interval values to run")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (real data)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    real_data = args.shared / "data" / "real"
    if not real_data.is_dir():
        print(f"bench_sweep: real data not found at {real_data} (use --shared)", file=sys.stderr)
        return 2
    if not 1 <= args.copies <= 99:
        print("bench_sweep: --copies must be 1 to 99", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_mix import build_scaled_mix

    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-sweep-") as work:
        build_scaled_mix(real_data, Path(work), args.copies)
        dropped = set()
        for epoch in args.epochs:
            result = subprocess.run([sys.executable, __file__, "--child", str(Path(work) / "recording"),
                                     str(Path(work) / "stores.csv"), work, epoch],
                                    capture_output=True, text=True)
            line = next((line for line in result.stdout.splitlines() if line.startswith("FIGURES")), None)
            if result.returncode != 0 or line is None:
                print(f"bench_sweep: the replay failed: {(result.stderr or result.stdout).strip()[-500:]}",
                      file=sys.stderr)
                return 1
            sweeps, docs, walked, gone, seconds, wall = line.split()[1:]
            dropped.add(int(gone))
            print(f"epoch {epoch}: {int(sweeps):,} sweeps, {int(docs):,} documents and {int(walked):,} entries "
                  f"walked, {int(gone):,} entries dropped ({int(walked) / max(1, int(gone)):.1f} walked a drop); "
                  f"{float(seconds):.2f} s sweeping of the replay's {float(wall):.1f} s")
        print("dropped the same for every epoch" if len(dropped) == 1 else
              f"dropped differs between epochs: {sorted(dropped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
