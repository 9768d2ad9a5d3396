"""Reading a kcat recording whose file interleaves several partitions, in CPU µs per record read.

    python benchmarks/bench_recording.py [--records 100000] [--partitions 1 4 12] [--rounds 3]

Writes one `geo.pings.jsonl` of `--records` kcat envelopes (the lines `kcat -C -J` writes), spread
round-robin over N partitions in one file, for each N of `--partitions`, and reads it through
`RecordingReader` as a replay does: the prescan that finds the file's partitions, one stream per
partition merged by event time, decoding and contract checks included. With one partition the file
is one stream; with more, each partition's cursor skips the others' lines (omnitrigger/io/recording.py
`_PartitionCursor`). Also the prescan alone (`file_partitions`) on the one-partition file. The figure
is the best round's `time.process_time` (CPU, not wall) divided by the records, the files alternating
round by round so that a noisy, shared machine slows them alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnitrigger.pii import Pseudonymizer  # noqa: E402
from omnitrigger.io.recording import RecordingReader, file_partitions  # noqa: E402
from omnitrigger.schemas import Contracts  # noqa: E402

T0 = 1_764_000_000_000


def write_recording(folder: Path, records: int, partitions: int) -> Path:
    folder.mkdir(parents=True)
    offsets = [0] * partitions
    with (folder / "geo.pings.jsonl").open("wb") as handle:
        for n in range(records):
            partition, ts = n % partitions, T0 + n * 100
            ping = {"event_id": f"g{n}", "ts": ts, "ids": {"device_id": f"d{n % 500}"}, "lat": 60.1699,
                    "lon": 24.9384, "accuracy_m": 10, "source": "gps"}
            handle.write(orjson.dumps({"topic": "geo.pings", "partition": partition, "offset": offsets[partition],
                                       "tstype": "create", "ts": ts, "broker": 0, "key": None,
                                       "payload": orjson.dumps(ping).decode()}) + b"\n")
            offsets[partition] += 1
    return folder


def read_all(folder: Path) -> float:
    """CPU seconds to read every record of the recording at `folder`."""
    started = time.process_time()
    reader = RecordingReader(folder, Contracts(), pseudonymizer=Pseudonymizer(b"k" * 32))
    while reader.read_batch(1000):
        pass
    reader.close()
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 4, 12])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.records < 1000 or min(args.partitions) < 1 or args.rounds < 1:
        print("bench_recording: --records must be at least 1000, --partitions and --rounds at least 1",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-recording-") as temp:
        folders = {n: write_recording(Path(temp) / f"p{n}", args.records, n) for n in args.partitions}
        best: dict[int, float] = {}
        prescan = float("inf")
        for _ in range(args.rounds):
            for partitions, folder in folders.items():
                best[partitions] = min(best.get(partitions, float("inf")), read_all(folder))
            started = time.process_time()
            file_partitions(folders[min(folders)] / "geo.pings.jsonl")
            prescan = min(prescan, time.process_time() - started)
        print(f"{args.records:,} kcat pings in one file; CPU µs a record read (best of {args.rounds}):")
        for partitions in args.partitions:
            print(f"  {partitions:>3} partition(s) in the file: {best[partitions] / args.records * 1e6:6.2f}")
        print(f"  of which the prescan (file_partitions), {min(folders)} partition(s): "
              f"{prescan / args.records * 1e6:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
