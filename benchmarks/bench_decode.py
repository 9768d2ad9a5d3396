"""Decoding one recorded line, today's path against the msgspec fast path, in CPU µs per record.

    python benchmarks/real_mix.py /tmp/mixB --copies 1      # the real-data mix, if not there yet
    python benchmarks/bench_decode.py /tmp/mixB/recording [--rounds 7]

`LineDecoder.decode` on every line of the recording (bare lines, as the real-data
tests write them; a sample wrapped in kcat envelopes, as `omnitrigger record` writes
them; every line with one unknown field added),
first the old way (tests/test_decode_fast.py `TodaysLineDecoder`, the decoder before the fast path,
with `Contracts(structs=False)`: orjson, the bracket count, the generated acceptor,
then parse_event_time; the PII pre-check over the whole line, an envelope's too) and
then the new way (the msgspec Structs vouch straight from the bytes, orjson decodes
the body once; the PII pre-check over the payload), alternating round by round on
the same lines so that a noisy, shared machine slows both alike.
The figure is the best round's `time.process_time` (CPU, not wall) divided by the
lines. Also the parts on their own: the contract check alone (both ways, from
bytes to a checked body and its time) and the PII step (`Pseudonymizer.protect`).
Prints figures and asserts nothing (tests/test_decode_fast.py checks that both
ways give the same).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")
sys.path.insert(0, str(REPO / "tests"))

from conftest import kcat_envelope  # noqa: E402

from omnitrigger.pii import Pseudonymizer, key_from_environment  # noqa: E402
from omnitrigger.io.recording import LineDecoder  # noqa: E402
from omnitrigger.schemas import Contracts  # noqa: E402
from test_decode_fast import TodaysLineDecoder  # noqa: E402  (the decoder before the fast path)

REFERENCE_MS = 2_000_000_000_000


def best_of(rounds: int, runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Each run's least CPU seconds over `rounds` rounds, the runs taking turns within each round."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recording", type=Path, help="a recording folder (benchmarks/real_mix.py writes one)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    lines = [(path.name.removesuffix(".jsonl"), line) for path in sorted(args.recording.glob("*.jsonl"))
             for line in path.read_bytes().splitlines(keepends=True)]
    if not lines:
        print(f"bench_decode: no <topic>.jsonl files in {args.recording}", file=sys.stderr)
        return 2
    enveloped = [(topic, orjson.dumps(kcat_envelope(topic, 0, n, line.decode().rstrip("\n"), REFERENCE_MS)))
                 for n, (topic, line) in enumerate(lines[::10])]
    # Each line with one unknown field more (a producer's addition the contracts keep).
    extended = [(topic, line.rstrip(b"\r\n")[:-1] + b',"utm_source":"newsletter"}\n') for topic, line in lines]
    pseudonymizer = Pseudonymizer(key_from_environment())
    old = TodaysLineDecoder(Contracts(structs=False), 262_144, REFERENCE_MS, pseudonymizer)
    new = LineDecoder(Contracts(), 262_144, REFERENCE_MS, pseudonymizer)
    old_check, new_check = old.contracts, new.contracts

    # The decode loops keep what they made in batches of 1,000, dropped when full, as the flow does
    # (RecordingReader.read_batch); the other loops drop each result at once.
    def decoding(decoder: LineDecoder, some: list[tuple[str, bytes]]) -> Callable[[], None]:
        def run() -> None:
            batch: list[Any] = []
            for n, (topic, line) in enumerate(some):
                batch.append(decoder.decode(line, topic, n, "f", 0))
                if len(batch) == 1000:
                    batch = []
        return run

    def check_old() -> None:
        for topic, line in lines:
            old_check.check(topic, orjson.loads(line), REFERENCE_MS, line)

    def check_new() -> None:
        for topic, line in lines:
            new_check.check_json(topic, line, REFERENCE_MS)

    def loads() -> None:
        for _, line in lines:
            orjson.loads(line)

    # Bodies without email or phone in `ids`, so that protecting one again changes nothing.
    bodies = [(body, line) for body, line in ((orjson.loads(line), line) for _, line in lines)
              if not {"email", "phone"} & set(body.get("ids") or ())]

    def protect() -> None:
        for body, line in bodies:
            pseudonymizer.protect(body, line)

    runs: dict[str, Callable[[], Any]] = {
        "decode, old": decoding(old, lines),
        "decode, new": decoding(new, lines),
        "envelopes, old": decoding(old, enveloped),
        "envelopes, new": decoding(new, enveloped),
        "unknown field, old": decoding(old, extended),
        "unknown field, new": decoding(new, extended),
        "check, old": check_old,
        "check, new": check_new,
        "orjson.loads alone": loads,
        "protect (PII)": protect,
    }
    best = best_of(args.rounds, runs)
    counts = {"envelopes, old": len(enveloped), "envelopes, new": len(enveloped), "protect (PII)": len(bodies)}
    print(f"{len(lines):,} lines of {args.recording} ({len(enveloped):,} of them also as kcat envelopes), "
          f"best of {args.rounds} alternating rounds, CPU µs per record ('check': bytes to a checked body "
          f"and its time, old = orjson + Contracts.check, new = Contracts.check_json):")
    for name, seconds in best.items():
        print(f"  {name:22s} {seconds / counts.get(name, len(lines)) * 1e6:6.2f}")
    for part in ("decode", "envelopes", "unknown field", "check"):
        print(f"  {part} new/old: {best[f'{part}, new'] / best[f'{part}, old']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
