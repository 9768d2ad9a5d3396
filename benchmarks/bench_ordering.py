"""The per-record cost of the partitioned order (state/ordering.py): stamping, and the frontier merge.

    python benchmarks/bench_ordering.py [--records 1000000] [--senders 4] [--batch 1000]

Issue 19. Prints, in CPU time (time.process_time) per record: `PartitionStamper.stamp`
over `--senders` partitions whose event times run late now and then, `encode_key`,
and push + release through one `FrontierMerge` of `--senders` senders, each delivering its
records in batches of `--batch` in a random sender order, the merge released after each
batch. Targets: stamping under 0.5 µs, the merge under 1.5 µs. Asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import time

from omnitrigger.state.ordering import FINISHED, FrontierMerge, PartitionStamper, encode_key


def synthetic_times(count: int, rng: random.Random) -> list[int]:
    """Event times a few ms apart, one in ten up to 5 s late: a partition as Kafka would hold it."""
    ts, times = 1_795_622_400_000, []
    for _ in range(count):
        ts += rng.randrange(0, 20)
        times.append(ts - rng.randrange(0, 5000) if rng.random() < 0.1 else ts)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(19)
    per = args.records // args.senders
    times = [synthetic_times(per, rng) for _ in range(args.senders)]
    total = per * args.senders

    stampers = [PartitionStamper("web.events", sender) for sender in range(args.senders)]
    keys = []
    start = time.process_time()
    for stamper, partition_times in zip(stampers, times):
        stamp = stamper.stamp
        keys.append([stamp(ts) for ts in partition_times])
    stamp_s = time.process_time() - start

    start = time.process_time()
    for partition_keys in keys:
        for key in partition_keys:
            encode_key(key)
    encode_s = time.process_time() - start

    batches = [(sender, [(key, n) for n, key in enumerate(keys[sender][at:at + args.batch])])
               for sender in range(args.senders) for at in range(0, per, args.batch)]
    by_sender: dict[int, list] = {}
    for sender, batch in batches:
        by_sender.setdefault(sender, []).append(batch)
    order = [sender for sender, sender_batches in by_sender.items() for _ in sender_batches]
    rng.shuffle(order)  # senders' batches interleave at random; each sender's stay in order (FIFO per pair)
    deliveries = [(sender, by_sender[sender].pop(0)) for sender in order]

    merge = FrontierMerge(range(args.senders))
    released = 0
    start = time.process_time()
    for sender, batch in deliveries:
        push = merge.push
        for key, record in batch:
            push(sender, key, record)
        released += len(merge.release())
    for sender in range(args.senders):
        merge.advance(sender, FINISHED)
    released += len(merge.release())
    merge_s = time.process_time() - start
    if released != total:
        print(f"released {released} of {total} records")

    print(f"{total:,} records, {args.senders} partitions/senders, batches of {args.batch}")
    print(f"stamp                 {stamp_s / total * 1e6:6.3f} µs/record (target < 0.5)")
    print(f"encode_key            {encode_s / total * 1e6:6.3f} µs/record")
    print(f"merge push + release  {merge_s / total * 1e6:6.3f} µs/record (target < 1.5)")


if __name__ == "__main__":
    main()
