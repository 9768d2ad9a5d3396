"""The real-data mix, scaled up: `copies` shifted copies of the recording the real-data tests replay.

    python benchmarks/real_mix.py OUT_DIR --copies 10      # writes OUT_DIR/recording/ and OUT_DIR/stores.csv

Copy 0 is tests/recordings.py `omnichannel_recording`: real Taobao clickstream,
bakery receipts and GeoLife GPS traces of 114 shoppers, identity links,
consents, and stores where the traces dwell (52,780 records). Copy k > 0 is
the same records with:

  * every identifier, event id, store id and till terminal id suffixed `~k`
    (emails as `name+k@domain`, phones with k as two more digits; up to 99 copies), so copy k
    is a separate population of shoppers, devices, tills and stores;
  * latitudes and longitudes of pings and stores shifted by whole degrees
    (k mod 8 degrees north, k div 8 degrees east), so each copy's shoppers
    visit that copy's stores only;
  * event times and products unchanged: the copies shop at the same moments
    from one catalogue, so the event rate per second of event time grows with
    the number of copies, as it does on a sale day.

Each topic's file merges the copies by event time (each copy keeps its own
order), so the recording has the real data's lateness and redeliveries, k
times over. Output counts grow about k-fold (H3 cells are not exactly the same
shape a few degrees away, so visits may differ slightly between copies).
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123")

from geolife import write_stores_csv  # noqa: E402
from recordings import omnichannel_recording  # noqa: E402

_SUFFIXED_FIELDS = ("event_id", "store_id", "terminal_id")


def build_scaled_mix(real_data: Path, out_dir: Path, copies: int) -> dict[str, Any]:
    """Write `out_dir/recording/*.jsonl` and `out_dir/stores.csv`; returns counts (records per topic, stores)."""
    base = out_dir / "base"
    recording = out_dir / "recording"
    recording.mkdir(parents=True, exist_ok=True)
    _, stores = omnichannel_recording(real_data, base)
    counts: dict[str, Any] = {}
    for path in sorted(base.glob("*.jsonl")):
        bodies = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        streams = [[(body["ts"], copy_body(body, k)) for body in bodies] for k in range(copies)]
        with (recording / path.name).open("wb") as handle:
            for _, body in heapq.merge(*streams, key=lambda pair: pair[0]):
                handle.write(orjson.dumps(body) + b"\n")
        counts[path.stem] = len(bodies) * copies
        path.unlink()
    base.rmdir()
    scaled_stores = [(copy_id(store_id, k), name, *shift(lat, lon, k), radius)
                     for k in range(copies) for store_id, name, lat, lon, radius in stores]
    write_stores_csv(out_dir / "stores.csv", scaled_stores)
    counts["stores"] = len(scaled_stores)
    return counts


def copy_body(body: dict[str, Any], k: int) -> dict[str, Any]:
    """Record `body` as copy k has it (copy 0 is the record itself)."""
    if k == 0:
        return body
    out = dict(body)
    for field in _SUFFIXED_FIELDS:
        if field in out:
            out[field] = copy_id(out[field], k)
    if "ids" in out:
        out["ids"] = {kind: copy_identifier(kind, value, k) for kind, value in out["ids"].items()}
    if "lat" in out and "lon" in out:
        out["lat"], out["lon"] = shift(out["lat"], out["lon"], k)
    return out


def copy_id(value: Any, k: int) -> Any:
    return value if k == 0 else f"{value}~{k}"


def copy_identifier(kind: str, value: str, k: int) -> str:
    if k == 0:
        return value
    if kind == "email" and "@" in value:
        name, _, domain = value.partition("@")
        return f"{name}+{k}@{domain}"
    if kind == "phone":
        return f"+{''.join(ch for ch in value if ch.isdigit())}{k:02d}"  # 12 digits + 2: still E.164
    return f"{value}~{k}"


def shift(lat: float, lon: float, k: int) -> tuple[float, float]:
    return round(lat + (k % 8), 6), round(lon + (k // 8), 6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (real data)")
    args = parser.parse_args()
    if not 1 <= args.copies <= 99:
        print("real_mix: --copies must be 1 to 99", file=sys.stderr)
        return 2
    real_data = args.shared / "data" / "real"
    if not real_data.is_dir():
        print(f"real_mix: real data not found at {real_data} (use --shared)", file=sys.stderr)
        return 2
    counts = build_scaled_mix(real_data, args.out_dir, args.copies)
    print(orjson.dumps(counts).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
