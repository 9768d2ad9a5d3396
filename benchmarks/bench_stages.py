"""Each stage of the flow alone, in µs per record, on the real-data mix (no Bytewax, no Kafka).

    python benchmarks/bench_stages.py [--shared ../shared] [--copies N] [--commit-every RECORDS]
    python benchmarks/bench_stages.py --recording DIR --stores FILE [--config FILE]   # any recording
    python benchmarks/bench_stages.py --copies 10 --topics geo.pings                 # one kind of record

`--recording` measures another recording instead of the mix, e.g. the live benchmark's traffic
(`bench_live.py --write-recording DIR`: every customer new, so every record writes state).
`--topics` keeps only the records of the topics named (the other files are left out), so what a record of
each kind costs can be told apart: `--topics geo.pings` against the other four topics, say. A cluster is
sized by its own traffic's mix of kinds (benchmarks/README.md, "Each stage alone").

The mix is the one tests/test_rules_real_data.py replays (tests/recordings.py `omnichannel_recording`):
real Taobao clickstream, bakery receipts and GeoLife GPS traces of 114 shoppers, with identity links,
consents and stores where the traces dwell, 52,780 records. Every stage runs the production operator
classes on RocksDB, the sequencer's operators in order, its hand-off, the history stage's operators,
then the router and the 16 rules shards, with the flow's garbage-collector settings,
committing after every 1,000-record batch (`--commit-every`: the flow commits once per epoch, 1 s, so
that overstates commits; `--commit-every 30000` is near a replay's epoch).
µs/record is the stage's time divided by all records, so the column adds up to the per-record cost;
records/s is what the stage alone would sustain; batch P50/P99 is the time the stage took over each
1,000-record batch (its latency contribution when the flow carries batches of that size).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")

from real_mix import build_scaled_mix  # noqa: E402
from results import Figures  # noqa: E402

from omnitrigger.config import ConfigError, load_config  # noqa: E402
from omnitrigger.operators import Dedup, EventClock, History, Identity, Rules, Visits  # noqa: E402
from omnitrigger.flows.stage import handed_on_topics, history_operators  # noqa: E402
from omnitrigger.operators.handoff import Handoff, unpack  # noqa: E402
from omnitrigger.operators.visits import GEO_PINGS  # noqa: E402
from omnitrigger.operators.router import ShardRouter  # noqa: E402
from omnitrigger.io.recording import RecordingError, RecordingReader, recording_files  # noqa: E402
from omnitrigger.runner.process import tune_garbage_collector  # noqa: E402
from omnitrigger.records import Event  # noqa: E402
from omnitrigger.schemas import Contracts  # noqa: E402
from omnitrigger.state import RocksDBStore, ShardState  # noqa: E402


def _pickle_round_trip(value: object) -> float:
    """Seconds to pickle and unpickle `value` (what a cluster pays for an item sent to another process)."""
    started = time.perf_counter()
    pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return time.perf_counter() - started


def _timed_stage(operators: list, states: list[ShardState], commits: str, events: list, commit_now: bool,
                 seconds: dict[str, float]) -> list:
    """One stage's operators over `events`, then its commits if due, each timed into `seconds`; what it passes on."""
    for operator in operators:
        started = time.perf_counter()
        events = operator.on_events(events).events
        seconds[operator.name] += time.perf_counter() - started
    started = time.perf_counter()
    for state in states if commit_now else ():
        state.commit()
    seconds[commits] += time.perf_counter() - started
    return events


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def only_topics(recording: Path, topics: list[str], into: Path) -> Path:
    """A recording of `recording`'s files of `topics` alone (linked, not copied), in the folder `into`; a
    RecordingError naming the topics the recording has if one of `topics` is not among them."""
    files = recording_files(recording)
    missing = [topic for topic in topics if topic not in files]
    if missing:
        raise RecordingError(f"--topics: {', '.join(missing)} not recorded in {recording} "
                             f"(it has {', '.join(files)})")
    into.mkdir()
    for topic in topics:
        (into / files[topic].name).symlink_to(files[topic].resolve())
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (real data)")
    parser.add_argument("--copies", type=int, default=1, help="copies of the real-data mix (benchmarks/real_mix.py)")
    parser.add_argument("--commit-every", type=int, default=1000, metavar="RECORDS",
                        help="commit the state after this many records (default 1000; a replay commits once per "
                             "epoch, 1 s: about 30,000 records)")
    parser.add_argument("--recording", type=Path, metavar="DIR",
                        help="measure this recording (<topic>.jsonl files) instead of the real-data mix")
    parser.add_argument("--stores", type=Path, metavar="FILE", help="with --recording: its stores CSV")
    parser.add_argument("--config", type=Path, metavar="FILE", help="a config file (TOML) for the operators")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC",
                        help="only these topics' records (e.g. geo.pings): what a record of each kind costs")
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    args = parser.parse_args(argv)
    real_data = args.shared / "data" / "real"
    if args.recording is not None and (not args.recording.is_dir() or args.stores is None
                                       or not args.stores.is_file()):
        print("bench_stages: --recording needs a folder of <topic>.jsonl files and --stores FILE", file=sys.stderr)
        return 2
    try:
        base_config = load_config(args.config)
    except ConfigError as error:
        print(f"bench_stages: {error}", file=sys.stderr)
        return 2
    if args.recording is None and not real_data.is_dir():
        print(f"bench_stages: real data not found at {real_data} (use --shared)", file=sys.stderr)
        return 2
    if not 1 <= args.copies <= 99:
        print("bench_stages: --copies must be 1 to 99", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-stages-") as work:
        if args.recording is None:
            recording, stores = Path(work) / "recording", Path(work) / "stores.csv"
            build_scaled_mix(real_data, Path(work), args.copies)  # one copy: the mix the real-data tests replay
        else:
            recording, stores = args.recording, args.stores
        if args.topics:
            try:
                recording = only_topics(recording, args.topics, Path(work) / "topics")
            except RecordingError as error:
                print(f"bench_stages: {error}", file=sys.stderr)
                return 2
        config = dataclasses.replace(base_config, stores_file=str(stores))
        cost: dict[str, float] = {}
        per_batch: dict[str, list[float]] = {}  # each stage's seconds for each 1,000-record batch
        tune_garbage_collector()  # as a flow's process runs: what a stage allocates is collected as there
        started = time.perf_counter()
        reader = RecordingReader(recording, Contracts(), reference_ms=2_000_000_000_000)
        batches = []
        decode_times = per_batch.setdefault("decode, validate, merge", [])
        while True:
            batch_started = time.perf_counter()
            batch = reader.read_batch(1000)
            if not batch:
                break
            decode_times.append(time.perf_counter() - batch_started)
            batches.append(batch)
        reader.close()
        records = sum(map(len, batches))
        if not records:
            print("bench_stages: the recording holds no records", file=sys.stderr)
            return 2
        cost["decode, validate, merge"] = time.perf_counter() - started
        store = RocksDBStore(Path(work) / "db")
        # The sequencer's operators, then the history stage's (flows/replay_flow.py): the sequencer hands the
        # history stage only what it reads, packed (operators/handoff.py), and the history stage unpacks it.
        sequencer_factories, history_factories = [Dedup, Identity], [Visits, History, EventClock]
        sequencer_states = [ShardState(store, factory.name, 0) for factory in sequencer_factories]
        history_states = [ShardState(store, factory.name, 0) for factory in history_factories]
        sequencer = [factory(state, config) for factory, state in zip(sequencer_factories, sequencer_states)]
        history = history_operators(history_factories, history_states, config)
        handoff = Handoff(handed_on_topics(config), ping_topics={GEO_PINGS})
        for name in [*(factory.name for factory in sequencer_factories), "sequencer commits", "hand-off",
                     "unpack", *(operator.name for operator in history), "history commits", "router", "rules",
                     "rules commits"]:
            cost[name] = 0.0
        router = ShardRouter(config.rule_shards)
        rules: dict[int, Rules] = {}
        since_commit = 0
        # What items would cost crossing processes in a cluster (Bytewax pickles what goes to another worker):
        # the hand-off (sequencer -> history stage), the routed batches (history stage -> rules shards), and
        # the decoded input (were the source elsewhere).
        crossing = {"hand-off batches": 0.0, "rules batches": 0.0, "decoded input": 0.0}
        handed_on = 0
        for batch in batches:
            this_batch = dict.fromkeys(cost, 0.0)
            since_commit += len(batch)
            commit_now = since_commit >= args.commit_every or batch is batches[-1]
            if commit_now:
                since_commit = 0
            events = [item for item in batch if type(item) is Event]
            events = _timed_stage(sequencer, sequencer_states, "sequencer commits", events, commit_now, this_batch)
            started = time.perf_counter()
            packed = handoff.packed(events, batch[-1].seq)
            this_batch["hand-off"] += time.perf_counter() - started
            crossing["hand-off batches"] += _pickle_round_trip(packed)
            started = time.perf_counter()
            events = unpack(packed)
            this_batch["unpack"] += time.perf_counter() - started
            handed_on += len(events) - 1  # not the Progress mark
            events = _timed_stage(history, history_states, "history commits", events, commit_now, this_batch)
            started = time.perf_counter()
            routed = router.route(events)
            this_batch["router"] += time.perf_counter() - started
            crossing["rules batches"] += _pickle_round_trip(sorted(routed.items()))
            crossing["decoded input"] += _pickle_round_trip(batch)
            for shard, shard_events in routed.items():
                if shard not in rules:
                    rules[shard] = Rules(ShardState(store, Rules.name, shard), config)
                started = time.perf_counter()
                rules[shard].on_events(shard_events)
                this_batch["rules"] += time.perf_counter() - started
            started = time.perf_counter()
            for shard_rules in rules.values() if commit_now else ():
                shard_rules.state.commit()
            this_batch["rules commits"] += time.perf_counter() - started
            for name, seconds in this_batch.items():
                if name != "decode, validate, merge":
                    cost[name] += seconds
                    per_batch.setdefault(name, []).append(seconds)
        store.close()
    total = sum(cost.values())
    what = ("the real-data mix" if args.recording is None else str(args.recording)) + \
        (f" ({', '.join(args.topics)} only)" if args.topics else "")
    print(f"{records:,} records of {what} in batches of 1,000, committed every {args.commit_every:,}; "
          "each stage alone:")
    print(f"  {'stage':26s} {'µs/record':>9s} {'records/s':>10s} {'batch P50':>10s} {'batch P99':>10s}")
    for name, seconds in cost.items():
        print(f"  {name:26s} {seconds / records * 1e6:9.1f} {records / seconds:10,.0f} "
              f"{percentile(per_batch[name], 0.5) * 1000:8.2f}ms {percentile(per_batch[name], 0.99) * 1000:8.2f}ms")
    print(f"  {'total':26s} {total / records * 1e6:9.1f} {records / total:10,.0f}   "
          f"({total / records * 1e6 / 10:.1f}x the 10 µs floor of docs/design.md#per-event-cost-floor)")
    print("crossing processes, not in the total (pickle + unpickle, as Bytewax between workers of two processes):")
    for name, seconds in crossing.items():
        print(f"  {name:26s} {seconds / records * 1e6:9.1f} µs/record")
    central = sum(cost[name] for name in (*(factory.name for factory in sequencer_factories), "sequencer commits",
                                          "hand-off"))
    print(f"the central stage (the sequencer: {', '.join(factory.name for factory in sequencer_factories)}, its commits "
          f"and the hand-off): {central / records * 1e6:.1f} µs/record; it hands on {handed_on / records:.0%} of the "
          "records (full, pings cut, or as clock marks)")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    figures = Figures("bench_stages", "python benchmarks/bench_stages.py"
                      + (f" --copies {args.copies}" if args.copies != 1 else "")
                      + (f" --commit-every {args.commit_every}" if args.commit_every != 1000 else "")
                      + (f" --recording {args.recording}" if args.recording is not None else "")
                      + (f" --topics {' '.join(args.topics)}" if args.topics else ""))
    for name, seconds in cost.items():
        figures.add(f"stage alone: {name}", round(seconds / records * 1e6, 1), "µs/record")
        figures.add(f"stage alone: {name}, P99 of a 1,000-record batch", round(percentile(per_batch[name], 0.99) * 1000, 2),
                    "ms")
    figures.add("the central stage (sequencer, its commits, the hand-off)", round(central / records * 1e6, 1),
                "µs/record")
    figures.add("stages alone: total", round(total / records * 1e6, 1), "µs/record")
    for name, seconds in crossing.items():
        figures.add(f"crossing processes: {name}", round(seconds / records * 1e6, 1), "µs/record")
    figures.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
