"""Instructions per record of the flow's stages, counted by callgrind: an A/B measure the machine's noise cannot move.

    python benchmarks/bench_instructions.py [--copies 1] [--checkout PATH ...]
    python benchmarks/bench_instructions.py --recording DIR --stores FILE [--commit-every 10000] [--checkout PATH ...]

Timings on this shared 2-core machine move by 10 to 20 % between identical runs; instruction counts
move by about 0.05 %. For each checkout (this one by default; an older commit as a `git worktree`, with
its own `.venv` if it has one) this runs, under `valgrind --tool=callgrind`, the stages bench_stages.py
times, in one process: the recording reader (decode, contracts, PII hashing, merge), the sequencer's
stage chain (dedup, identity, visits, history, clock, counters), the router, the 16 rules shards and the
commits, over the real-data mix (benchmarks/real_mix.py), committing every 30,000 records as a replay's
epochs do, with the flow's garbage-collector settings. It prints the main thread's instructions, the
same for a 100-record mix (start-up: interpreter, imports, store index), and the difference per record.
Python files are compiled first, so no checkout pays for compiling. RocksDB's background threads are
left out: their work depends on timing.

`--recording` counts another recording instead of the mix: the live benchmark's traffic, written by
`bench_live.py --rate 10000 --duration 6 --write-recording DIR` (60,000 records, every customer new, so every
record writes state; about 5 minutes a checkout), with `--commit-every 10000` for a live job's 1 s epochs.

Needs valgrind (Debian: `apt-get install valgrind`). About 2 minutes a checkout at --copies 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMIT_EVERY = 30_000  # records between commits by default: a replay's epochs on the mix
START_UP_RECORDS = 20  # lines of each recording file in the start-up mix


def pipeline(checkout: Path, mix: Path, commit_every: int = COMMIT_EVERY) -> None:
    """The stages over the mix in `mix`, with the modules of `checkout` (run inside callgrind)."""
    import gc
    import time

    sys.path[:0] = [str(checkout), str(checkout / "benchmarks")]
    os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")
    from omnitrigger.config import Config
    from omnitrigger.operators import Dedup, EventClock, History, Identity, Rules, Visits
    from omnitrigger.operators.router import ShardRouter
    from omnitrigger.operators.stage_chain import StageChain
    from omnitrigger.recording import RecordingReader  # the flat name: an older checkout has only that one
    from omnitrigger.schemas import Contracts
    from omnitrigger.state import RocksDBStore, ShardState

    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-instructions-") as work:
        config = Config(stores_file=str(mix / "stores.csv"))
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)  # as omnitrigger/runner/process.py runs a flow
        reader = RecordingReader(mix / "recording", Contracts(), reference_ms=2_000_000_000_000)
        store = RocksDBStore(Path(work) / "db")
        factories = [Dedup, Identity, Visits, History, EventClock]
        counter_state = ShardState(store, "stage", 0)
        states = [ShardState(store, factory.name, 0) for factory in factories]
        chain = StageChain([factory(state, config) for factory, state in zip(factories, states)], counter_state,
                           False)
        router = ShardRouter(config.rule_shards)
        rules: dict[int, Rules] = {}
        records = outputs = since_commit = 0
        started = time.process_time()
        while True:
            batch = reader.read_batch(1000)
            last = not batch
            if batch:
                records += len(batch)
                since_commit += len(batch)
                out, events = chain.on_batches([batch])
                outputs += len(out)
                for shard, shard_events in sorted(router.route(events).items()):
                    if shard not in rules:
                        rules[shard] = Rules(ShardState(store, Rules.name, shard), config)
                    outputs += len(rules[shard].on_events(shard_events).emitted)
            if since_commit >= commit_every or last:
                since_commit = 0
                for state in [counter_state, *states, *(shard_rules.state for shard_rules in rules.values())]:
                    state.commit()
            if last:
                break
        reader.close()
        store.close()
        print(f"records {records} outputs {outputs} cpu_s {time.process_time() - started:.2f}")


def main_thread_instructions(python: str, checkout: Path, mix: Path, work: Path, name: str,
                             commit_every: int = COMMIT_EVERY) -> tuple[int, str]:
    """(instructions of the main thread, the pipeline's own output line) for one callgrind run."""
    out_file = work / f"callgrind.{name}"
    command = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out_file}",
               python, str(Path(__file__).resolve()), "--pipeline", str(checkout), str(mix),
               "--commit-every", str(commit_every)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if result.returncode != 0:
        raise SystemExit(f"bench_instructions: {name}: the run failed:\n{result.stderr[-2000:]}")
    main_thread = work / f"callgrind.{name}-01"
    summary = re.search(r"^summary: (\d+)", main_thread.read_text(errors="replace"), re.MULTILINE)
    if summary is None:
        raise SystemExit(f"bench_instructions: no summary line in {main_thread}")
    return int(summary.group(1)), result.stdout.strip().splitlines()[-1]


def start_up_mix(mix: Path, into: Path) -> Path:
    """The first START_UP_RECORDS lines of each recording file: a run that is nearly all start-up."""
    (into / "recording").mkdir(parents=True)
    shutil.copy(mix / "stores.csv", into / "stores.csv")
    for path in (mix / "recording").iterdir():
        with path.open("rb") as source:
            lines = [line for _, line in zip(range(START_UP_RECORDS), source)]
        (into / "recording" / path.name).write_bytes(b"".join(lines))
    return into


def checked_setup(program: str, shared: Path, checkout_args: list[Path] | None,
                  needs_real_data: bool = True) -> tuple[Path, list[Path]] | None:
    """(the real data, the checkouts to measure) for a callgrind A/B benchmark, or None after one line on stderr:
    valgrind missing, no real data (when `needs_real_data`), or a checkout that is not one (or has no .venv of
    its own)."""
    if shutil.which("valgrind") is None:
        print(f"{program}: valgrind not found (Debian: apt-get install valgrind)", file=sys.stderr)
        return None
    real_data = shared / "data" / "real"
    if needs_real_data and not real_data.is_dir():
        print(f"{program}: real data not found at {real_data} (use --shared)", file=sys.stderr)
        return None
    checkouts = [path.resolve() for path in (checkout_args or [REPO])]
    for checkout in checkouts:
        if not (checkout / "omnitrigger" / "config.py").is_file():
            print(f"{program}: {checkout} is not an omnitrigger checkout", file=sys.stderr)
            return None
        if checkout != REPO and not (checkout / ".venv" / "bin" / "python").exists():
            print(f"{program}: {checkout} has no .venv of its own (python3 -m venv {checkout}/.venv && "
                  f"{checkout}/.venv/bin/pip install -e '{checkout}[test]'): an editable install maps the "
                  "packages to one checkout", file=sys.stderr)
            return None
    return real_data, checkouts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (real data)")
    parser.add_argument("--copies", type=int, default=1, help="copies of the real-data mix (benchmarks/real_mix.py)")
    parser.add_argument("--checkout", type=Path, action="append", default=None, metavar="PATH",
                        help="a checkout to measure (repeat to compare; default: this one)")
    parser.add_argument("--recording", type=Path, metavar="DIR",
                        help="count this recording (a folder of <topic>.jsonl files) instead of the mix")
    parser.add_argument("--stores", type=Path, metavar="FILE", help="with --recording: its stores CSV")
    parser.add_argument("--commit-every", type=int, default=COMMIT_EVERY, metavar="RECORDS",
                        help=f"records between commits (default {COMMIT_EVERY:,}, a replay's epochs on the mix)")
    parser.add_argument("--pipeline", nargs=2, metavar=("CHECKOUT", "MIX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.commit_every < 1:
        print("bench_instructions: --commit-every must be at least 1", file=sys.stderr)
        return 2
    if args.pipeline:
        pipeline(Path(args.pipeline[0]), Path(args.pipeline[1]), args.commit_every)
        return 0
    if args.recording is not None and (not args.recording.is_dir() or args.stores is None
                                       or not args.stores.is_file()):
        print("bench_instructions: --recording needs a folder of <topic>.jsonl files and --stores FILE",
              file=sys.stderr)
        return 2
    checked = checked_setup("bench_instructions", args.shared, args.checkout, needs_real_data=args.recording is None)
    if checked is None:
        return 2
    real_data, checkouts = checked
    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_mix import build_scaled_mix

    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-instructions-") as folder:
        work = Path(folder)
        if args.recording is None:
            build_scaled_mix(real_data, work / "mix", args.copies)
            what = f"the real-data mix x{args.copies}"
        else:  # the pipeline reads <mix>/recording and <mix>/stores.csv
            (work / "mix").mkdir()
            (work / "mix" / "recording").symlink_to(args.recording.resolve())
            (work / "mix" / "stores.csv").symlink_to(args.stores.resolve())
            what = str(args.recording)
        small = start_up_mix(work / "mix", work / "start-up")
        print(f"{what}, reader + stage chain + router + 16 rules shards + commits every "
              f"{args.commit_every:,} records, callgrind, main thread:")
        for n, checkout in enumerate(checkouts):
            venv_python = checkout / ".venv" / "bin" / "python"
            python = str(venv_python) if venv_python.exists() else sys.executable
            subprocess.run([python, "-m", "compileall", "-q", *(str(checkout / part) for part in
                            ("omnitrigger", "operators", "state", "flows", "schemas"))],
                           capture_output=True, check=False)
            total, line = main_thread_instructions(python, checkout, work / "mix", work, f"{n}-mix", args.commit_every)
            start_up, _ = main_thread_instructions(python, checkout, small, work, f"{n}-start", args.commit_every)
            records = int(line.split()[1])
            print(f"  {checkout}: {total / 1e9:.3f} G instructions, start-up {start_up / 1e9:.3f} G, "
                  f"{(total - start_up) / records / 1000:.1f} k a record ({line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
