"""The whole replay flow on the scaled-up real-data mix: events/s and peak memory, 1 process and a cluster.

    python benchmarks/bench_replay.py [--copies 10] [--processes 1 2] [--timeline 0.5] [--stages] [--json FILE]

The recording is `real_mix.py`'s: the real-data mix (Taobao clickstream,
bakery receipts, GeoLife traces, 52,780 records) times `--copies`, each copy a
separate population of shoppers and stores (10 copies: 527,800 records, 130
stores). Each run is `omnitrigger replay` in a fresh state folder, as a user
runs it, all outputs written; events/s is the replay's own figure (records
over the run's wall time, start-up included) and peak RSS is that of its
largest process. The triggers of every process count are compared with the
first run's: they must be byte-identical. While each runs, each process's Bytewax worker thread's CPU is
read from /proc: against the run's time it says how busy each process of a cluster kept; `--timeline`
prints that share step by step (start-up, both busy, one draining alone at the end). `--stages` times
every call into each stage in each process (benchmarks/stage_times.py): which stage the time went to, and
what each process waited for at an epoch's end.

A replay has no per-record latency worth the name (it reads as fast as the
flow takes records); latency percentiles are live mode's, `bench_live.py`.
The floor is ~10 µs an event for a Python flow (docs/design.md#per-event-cost-floor).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stage_times  # noqa: E402
from results import Figures  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Email and phone are hashed with this key; a benchmark has no secret to protect.
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")

FLOOR_US = 10.0
_RATE = re.compile(r"events/s: ([\d,]+) \(([\d,]+) records in ([\d.]+) s")


class WorkerThreads:
    """The CPU seconds of each Bytewax worker thread (`timely:work-*`) under `root`, read from /proc while it runs.

    A cluster's processes are the replay's children; each runs the flow on one worker thread, so its CPU
    against the run's time says how busy that process kept (Linux only; empty elsewhere). One process runs
    the flow on its main thread (`flow_on_main`): that thread, its start-up and the finish included, is read.
    """

    def __init__(self, root: int, every_s: float = 0.25, flow_on_main: bool = False) -> None:
        self.root, self.every_s, self.flow_on_main = root, every_s, flow_on_main
        self.seconds: dict[tuple[int, int], float] = {}  # (pid, tid) -> CPU seconds, the latest reading
        self.started = time.monotonic()
        self.readings: list[tuple[float, dict[tuple[int, int], float]]] = []  # (seconds since start, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> list[float]:
        """Each process's worker thread's CPU seconds, by process id (so in start order: process 0 first)."""
        self._stop.set()
        self._thread.join()
        by_process: dict[int, float] = {}
        for (pid, _tid), seconds in self.seconds.items():  # the worker of each process: its busiest such thread
            by_process[pid] = max(by_process.get(pid, 0.0), seconds)
        return [by_process[pid] for pid in sorted(by_process)]

    def _poll(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(self.every_s):
            for pid in self._tree():
                for task in Path(f"/proc/{pid}/task").glob("*"):
                    try:
                        main = self.flow_on_main and task.name == str(pid) == str(self.root)
                        if not main and not (task / "comm").read_text().startswith("timely:work"):
                            continue
                        fields = (task / "stat").read_text().rsplit(") ", 1)[1].split()
                    except (OSError, IndexError):
                        continue
                    self.seconds[(pid, int(task.name))] = (int(fields[11]) + int(fields[12])) / tick
            self.readings.append((time.monotonic() - self.started, dict(self.seconds)))

    def timeline(self, step_s: float) -> list[tuple[float, list[float]]]:
        """(seconds since start, each process's worker busy share of the step), a step of about `step_s` each:
        where in a run the processes worked and where they waited."""
        rows: list[tuple[float, list[float]]] = []
        last_at, last = 0.0, {}
        for at, seconds in self.readings:
            if at - last_at < step_s:
                continue
            busy = {}
            for (pid, tid), value in seconds.items():
                share = (value - last.get((pid, tid), 0.0)) / (at - last_at)
                busy[pid] = max(busy.get(pid, 0.0), share)
            rows.append((at, [busy[pid] for pid in sorted(busy)]))
            last_at, last = at, seconds
        return rows

    def _tree(self) -> list[int]:
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            todo.extend(int(child) for child in children)
        return found


def run_replay(work: Path, recording: Path, stores: Path, processes: int, config: Path | None = None,
               timeline_s: float | None = None, stages: bool = False) -> tuple[int, float, float, float, str, list[float]]:
    """(records, seconds, CPU seconds of every process of the run, peak RSS MiB of the largest process (wait4),
    sha256 of the triggers, CPU seconds of each process's worker thread) of a fresh replay. A one-machine
    cluster's processes are children the replay waits for, so wait4's usage counts them too. With
    `timeline_s`, prints each process's worker busy share every `timeline_s` seconds of the run; with `stages`,
    times each stage's calls in each process and prints where the time went (stage_times.py)."""
    out = work / f"out-{processes}"
    out.mkdir()
    command = [sys.executable, "-m", "omnitrigger", "replay", str(recording), "--stores", str(stores),
               "--out", str(out / "triggers.jsonl"), "--suppressed", str(out / "suppressed.jsonl"),
               "--visits", str(out / "visits.jsonl"), "--dead-letter", str(out / "dead.jsonl"),
               "--state-dir", str(work / f"state-{processes}"), "--processes", str(processes), "--quiet",
               *(["--config", str(config)] if config is not None else [])]
    log = work / f"replay-{processes}.log"
    trace = work / f"stages-{processes}"
    if stages:
        trace.mkdir()
    with log.open("w") as handle:
        started = time.time()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True,
                                   env=stage_times.environment(trace) if stages else None)
        workers = WorkerThreads(process.pid, every_s=0.1 if timeline_s is not None else 0.25,
                                flow_on_main=processes == 1)
        _, status, usage = os.wait4(process.pid, 0)
        worker_seconds = workers.stop()
    if timeline_s is not None:
        for at, shares in workers.timeline(timeline_s):
            print(f"  {at:5.1f} s  " + "  ".join(f"process {number} {share:4.0%}" for number, share in enumerate(shares)))
    if stages:
        print("\n".join(stage_times.report(trace, started, timeline_s or 0.5)))
    process.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"bench_replay: the replay failed ({process.returncode}): {text.strip()[-500:]}")
    match = _RATE.search(text)
    if match is None:
        raise SystemExit(f"bench_replay: no events/s line in the replay's summary:\n{text}")
    records, seconds = int(match[2].replace(",", "")), float(match[3])
    digest = hashlib.sha256((out / "triggers.jsonl").read_bytes()).hexdigest()
    return records, seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, digest, worker_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=10, help="copies of the real-data mix (1 to 99)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to run")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (real data)")
    parser.add_argument("--config", type=Path, help="a config file for every replay (e.g. another [replay] "
                                                    "epoch_interval), to compare settings")
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    parser.add_argument("--timeline", type=float, metavar="SECONDS",
                        help="also print each process's worker busy share every SECONDS of each run")
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage's calls in each process: their seconds, their share of each "
                             "step (of --timeline SECONDS, else 0.5) and the epoch ends' snapshots "
                             "(benchmarks/stage_times.py)")
    args = parser.parse_args()
    if args.timeline is not None and args.timeline <= 0:
        print("bench_replay: --timeline must be a positive number of seconds", file=sys.stderr)
        return 2
    if args.config is not None and not args.config.is_file():
        print(f"bench_replay: config file not found: {args.config}", file=sys.stderr)
        return 2
    real_data = args.shared / "data" / "real"
    if not real_data.is_dir():
        print(f"bench_replay: real data not found at {real_data} (use --shared)", file=sys.stderr)
        return 2
    if not 1 <= args.copies <= 99 or min(args.processes) < 1:
        print("bench_replay: --copies must be 1 to 99 and --processes at least 1", file=sys.stderr)
        return 2
    figures = Figures("bench_replay", f"python benchmarks/bench_replay.py --copies {args.copies} "
                                      f"--processes {' '.join(map(str, args.processes))}")
    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-replay-") as temp:
        work = Path(temp)
        started = time.perf_counter()
        # Built by its own process: this one stays small, so the replays' peak RSS (wait4) is theirs alone
        # (a child's maximum starts at its parent's size when it is forked).
        made = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "real_mix.py"), str(work),
                               "--copies", str(args.copies), "--shared", str(args.shared)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            print(f"bench_replay: building the mix failed: {made.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
        counts = orjson.loads(made.stdout)
        total = sum(value for key, value in counts.items() if key != "stores")
        print(f"recording: {total:,} records, {counts['stores']} stores ({args.copies} copies of the real-data mix), "
              f"built in {time.perf_counter() - started:.1f} s")
        first_digest = None
        for processes in args.processes:
            records, seconds, cpu, rss, digest, workers = run_replay(work, work / "recording", work / "stores.csv",
                                                                      processes, args.config, args.timeline,
                                                                      args.stages)
            first_digest = first_digest or digest
            same = "identical to the first run's" if digest == first_digest else "DIFFERENT from the first run's"
            rate = records / seconds
            print(f"replay, {processes} process(es): {rate:,.0f} events/s ({seconds:.1f} s, "
                  f"{seconds / records * 1e6:.1f} µs an event, {seconds / records * 1e6 / FLOOR_US:.1f}x the "
                  f"{FLOOR_US:.0f} µs floor); CPU {cpu / records * 1e6:.1f} µs an event (all processes); "
                  f"peak RSS {rss:,.0f} MiB; triggers {same}")
            if workers and processes == 1:  # the main thread: its start-up and the finish are outside `seconds`
                print(f"  the main thread (it runs the flow), CPU s with start-up and finish: {workers[0]:.1f} s "
                      f"({workers[0] / seconds:.0%} of the run's time)")
            elif workers:
                print("  each process's worker thread, CPU s and busy for the run's time: " + ", ".join(
                    f"process {number} {busy:.1f} s ({busy / seconds:.0%})" for number, busy in enumerate(workers)))
            figures.add(f"full replay, {processes} process{'es' if processes > 1 else ''} "
                        f"({records:,} records)", round(rate), "events/s")
            figures.add(f"full replay, {processes} process{'es' if processes > 1 else ''}: ratio to the "
                        f"{FLOOR_US:.0f} µs floor", round(seconds / records * 1e6 / FLOOR_US, 1), "x")
            figures.add(f"full replay, {processes} process{'es' if processes > 1 else ''}: CPU an event",
                        round(cpu / records * 1e6, 1), "µs")
            figures.add(f"full replay, {processes} process{'es' if processes > 1 else ''}: peak RSS",
                        round(rss), "MiB")
            if digest != first_digest:
                figures.write(args.json)
                return 1
    figures.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
