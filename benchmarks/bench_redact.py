"""Redaction time on adversarial lines, and what PII redaction costs a clean record.

    python benchmarks/bench_redact.py [--size 262000] [--repeat 5] [--old]

Issue 13, defect 2: the old email pattern backtracked quadratically over a run
without whitespace or quotes (40 KB: 7 s; 262 KB, the default max_record_bytes:
about 5 minutes). For each adversarial line of `--size` bytes this prints the
best of `--repeat` runs of `redact_text` (the text rules), `redact_raw` (a dead
letter's raw record) and `LineDecoder.decode` (the whole dead-letter path), in
milliseconds; then the decode time of a clean event and of one with an email,
in microseconds. `--old` also times the old pattern on 5 and 10 KB of "a", to
show its growth (4 times the time for twice the size).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Callable

import orjson

os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")

from omnitrigger.pii import Pseudonymizer, key_from_environment, redact_text  # noqa: E402
from omnitrigger.io.recording import LineDecoder  # noqa: E402
from omnitrigger.schemas import Contracts  # noqa: E402

OLD_EMAIL_SHAPE = re.compile(rb"[^\s\"'<>@,;:]+@[^\s\"'<>@,;:]+\.[A-Za-z]{2,}")


def adversarial(size: int) -> dict[str, bytes]:
    """Lines of about `size` bytes that make a backtracking pattern work hard."""
    return {
        "a" * 3: (b"a" * size),
        "a@": b"a@" * (size // 2),
        "a.@": b"a.@" * (size // 3),
        "a@ + a.": b"a@" + b"a." * (size // 2 - 1),
        "+1 ": b"+1 " * (size // 3),
        '"email":': b'"email":' * (size // 8),
        '"0': b'"0' * (size // 2),
        "digits": b"1" * size,
    }


def best_ms(action: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=262_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--old", action="store_true", help="also time the old, quadratic pattern on small lines")
    args = parser.parse_args()

    pseudonymizer = Pseudonymizer(key_from_environment())
    decoder = LineDecoder(Contracts(), 262_144, 2_000_000_000_000, pseudonymizer)  # "now": 2033
    print(f"{'line':>10} {'bytes':>8} {'redact_text ms':>15} {'redact_raw ms':>14} {'decode ms':>10}")
    for name, line in adversarial(args.size).items():
        text = best_ms(lambda: redact_text(line), args.repeat)
        raw = best_ms(lambda: pseudonymizer.redact_raw(line), args.repeat)
        decode = best_ms(lambda: decoder.decode(line + b"\n", "web.events", 0, "web.events.jsonl", 0), args.repeat)
        print(f"{name:>10} {len(line):>8} {text:>15.1f} {raw:>14.1f} {decode:>10.1f}")

    clean = orjson.dumps({"event_id": "w-1", "type": "view_item", "ts": 1_700_000_000_000, "channel": "web",
                          "ids": {"device_id": "dev-1"}, "product_id": "p-1"}) + b"\n"
    with_email = orjson.dumps({"event_id": "w-1", "type": "view_item", "ts": 1_700_000_000_000, "channel": "web",
                               "ids": {"device_id": "dev-1", "email": "ann@example.com"}, "product_id": "p-1",
                               "note": "call +358 40 123 4567"}) + b"\n"
    for name, line in (("clean event", clean), ("event with PII", with_email)):
        count = 20_000
        elapsed = best_ms(lambda: [decoder.decode(line, "web.events", 0, None, 0) for _ in range(count)], args.repeat)
        print(f"decode, {name}: {elapsed * 1000 / count:.2f} µs")

    if args.old:
        for size in (5_000, 10_000):
            line = b"a" * size
            print(f"old pattern, {size} bytes of 'a': {best_ms(lambda: OLD_EMAIL_SHAPE.sub(b'x', line), 1):.0f} ms")


if __name__ == "__main__":
    main()
