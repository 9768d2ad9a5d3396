"""Instructions each process of a one-machine cluster spends on the flow, counted by callgrind: an A/B measure
for changes to what runs where, which the shared machine's timing noise cannot move.

    python benchmarks/bench_cluster_instructions.py [--processes 2] [--copies 1] [--checkout PATH ...]

For each checkout (this one by default; an older commit as a `git worktree` with its own `.venv`), this runs
`omnitrigger replay --processes N` of the real-data mix (benchmarks/real_mix.py) under
`valgrind --tool=callgrind --trace-children=yes --separate-threads=yes`, in one epoch (`[replay]
epoch_interval = "1000s"`, so the snapshots' count does not depend on how fast valgrind runs), and prints, for
each cluster process, its worker thread's work: the Python it runs (the inclusive count of
`_PyEval_EvalFrameDefault`: every operator, the reader, the sinks), the pickling Bytewax does for items it
sends to other processes (`TdPyAny::serialize`) and the unpickling of what it receives
(`PickleVisitor::visit_bytes`). Not counted: what
Bytewax's worker spends scheduling and polling while it waits for work, which grows with how long it waits
and so depends on timing. Process 0 is the one that decodes the input (msgspec's decoder is in its
profile). The triggers of every checkout are compared: they must be byte-identical.

Needs valgrind (Debian: `apt-get install valgrind`). About 3 minutes a checkout at --copies 1 and 2 processes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_instructions import checked_setup  # noqa: E402
from real_mix import build_scaled_mix  # noqa: E402

_COUNT = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$")
_PYTHON_WORK = "ceval.c:_PyEval_EvalFrameDefault "
_UNPICKLING = "PickleVisitor as serde::de::Visitor>::visit_bytes"
_PICKLING = "TdPyAny as serde::ser::Serialize>::serialize"
_DECODER = "JSONDecoder_decode"


def inclusive_counts(profile: Path) -> dict[str, int]:
    """Inclusive instruction counts of the functions this benchmark reads, from one thread's profile."""
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(profile)],
                            capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in report.splitlines():
        match = _COUNT.match(line)
        if not match:
            continue
        count, name = int(match.group(1).replace(",", "")), match.group(2)
        if "PROGRAM TOTALS" in name:
            found.setdefault("total", count)
        for key, needle in (("python", _PYTHON_WORK), ("unpickling", _UNPICKLING), ("pickling", _PICKLING),
                            ("decoder", _DECODER)):
            if needle in name:
                found.setdefault(key, count)
    return found


def measure(checkout: Path, mix: Path, processes: int, work: Path) -> tuple[list[dict[str, int]], str]:
    """The worker thread's counts of each cluster process, process 0 first, and the triggers' sha256."""
    out = work / "out"
    profiles = work / "callgrind"
    profiles.mkdir(parents=True)
    config = work / "one-epoch.toml"
    config.write_text('[replay]\nepoch_interval = "1000s"\n')
    python = checkout / ".venv" / "bin" / "python" if checkout != REPO else Path(sys.executable)
    subprocess.run([str(python), "-m", "compileall", "-q", *(str(checkout / part) for part in
                                                            ("omnitrigger", "flows", "operators", "state", "schemas"))],
                   capture_output=True, check=False)
    command = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--separate-threads=yes",
               f"--callgrind-out-file={profiles}/cg.%p", str(python), "-m", "omnitrigger", "replay",
               str(mix / "recording"), "--stores", str(mix / "stores.csv"), "--out", str(out / "triggers.jsonl"),
               "--state-dir", str(work / "state"), "--processes", str(processes), "--config", str(config), "--quiet"]
    out.mkdir()
    env = {**os.environ, "OMNITRIGGER_PII_KEY": "omnitrigger-benchmark-key-0123", "PYTHONHASHSEED": "0"}
    run = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"bench_cluster_instructions: the replay failed in {checkout}:\n{run.stderr[-2000:]}")
    workers: list[dict[str, int]] = []
    threads: dict[str, list[Path]] = {}
    for profile in profiles.glob("cg.*-*"):
        pid = profile.name.split(".")[1].split("-")[0]
        threads.setdefault(pid, []).append(profile)
    for pid, files in threads.items():
        with files[0].open("rb") as handle:
            head = handle.read(4096)
        if b"local_cluster" not in head:
            continue  # the replay's own process, the panic filter
        counted = [inclusive_counts(profile) for profile in files]
        worker = max(counted, key=lambda counts: counts.get("python", 0))  # the thread that runs the flow
        workers.append(worker)
    workers.sort(key=lambda counts: -counts.get("decoder", 0))  # process 0 decodes the input
    return workers, hashlib.sha256((out / "triggers.jsonl").read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="the cluster's process count (2 to 8)")
    parser.add_argument("--copies", type=int, default=1, help="copies of the real-data mix (1 to 99)")
    parser.add_argument("--checkout", type=Path, action="append", help="a checkout to measure (repeat; default: this one)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (real data)")
    args = parser.parse_args()
    if not 2 <= args.processes <= 8 or not 1 <= args.copies <= 99:
        print("bench_cluster_instructions: --processes must be 2 to 8 and --copies 1 to 99", file=sys.stderr)
        return 2
    checked = checked_setup("bench_cluster_instructions", args.shared, args.checkout)
    if checked is None:
        return 2
    real_data, checkouts = checked
    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-cluster-") as folder:
        mix = Path(folder) / "mix"
        counts = build_scaled_mix(real_data, mix, args.copies)
        records = sum(value for key, value in counts.items() if key != "stores")
        print(f"{records:,} records (the real-data mix x{args.copies}), --processes {args.processes}, one epoch; "
              "each process's worker thread, instructions a record (Python work + Bytewax's pickling + unpickling):")
        digests = set()
        for index, checkout in enumerate(checkouts):
            workers, digest = measure(checkout, mix, args.processes, Path(folder) / f"run-{index}")
            digests.add(digest)
            parts = []
            for number, worker in enumerate(workers):
                python, pickling, unpickling = (worker.get(key, 0) for key in ("python", "pickling", "unpickling"))
                parts.append(f"process {number}: {(python + pickling + unpickling) / records / 1000:.1f} k "
                             f"({python / records / 1000:.1f} + {pickling / records / 1000:.1f} + "
                             f"{unpickling / records / 1000:.1f})")
            total = sum(worker.get("python", 0) + worker.get("pickling", 0) + worker.get("unpickling", 0)
                        for worker in workers)
            print(f"  {checkout}: " + "; ".join(parts) + f"; all: {total / records / 1000:.1f} k")
        print("triggers identical across the checkouts" if len(digests) == 1 else "TRIGGERS DIFFER between the checkouts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
