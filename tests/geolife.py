"""GeoLife GPS traces (real, Beijing, shared/data/real/gps) as geo.pings, and stores placed where they dwell.

The traces are real positions and times; they have no accuracy or source, so
`ping_bodies` marks a fixed, deterministic share of them as bad (accuracy
150 m, or source `cell`) and the rest as gps or wifi fixes: the filter is
exercised on real movement, and the same marks reach the operator and the
independent computation.

Stores (`place_stores`): real Beijing store locations are not in the data,
so stores go where the traces really spend time: the pings are bucketed in
H3 resolution-8 cells (about 0.7 km²), the cells are ranked by the number of
distinct (user, day) pairs with pings there, and a store is put at the mean
position of the pings of each of the top cells, with radii cycling through
100 to 1,000 m. A "mall" twin is added 80 m east of the busiest store, so
overlapping stores occur in real traces.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import h3.api.basic_int as h3

PINGS_FILE = Path("gps") / "geolife_11users_pings.csv.gz"
RADII = (100.0, 250.0, 500.0, 1000.0, 150.0, 300.0, 700.0, 200.0)


def load_rows(real_data: Path, users: tuple[str, ...] | None = None) -> list[tuple[str, int, float, float]]:
    """(user, ts_ms, lat, lon) in time order (ties by user, then file order)."""
    rows = []
    with gzip.open(real_data / PINGS_FILE, "rt", newline="") as handle:
        for n, row in enumerate(csv.DictReader(handle)):
            if users is not None and row["user_id"] not in users:
                continue
            ts_ms = int(datetime.fromisoformat(row["ts_utc"].replace("Z", "+00:00")).timestamp() * 1000)
            rows.append((ts_ms, row["user_id"], n, float(row["lat"]), float(row["lon"])))
    rows.sort()
    return [(user, ts_ms, lat, lon) for ts_ms, user, _, lat, lon in rows]


def ping_bodies(rows: list[tuple[str, int, float, float]]) -> list[dict[str, Any]]:
    """geo.pings bodies: 1 in 29 gets accuracy 150 m, 1 in 31 comes from `cell`, 1 in 5 from wifi."""
    bodies = []
    for n, (user, ts_ms, lat, lon) in enumerate(rows):
        source, accuracy = "gps", 5.0 + n % 11
        if n % 29 == 7:
            accuracy = 150.0
        elif n % 31 == 3:
            source, accuracy = "cell", 60.0
        elif n % 5 == 1:
            source, accuracy = "wifi", 30.0 + n % 40
        bodies.append({"event_id": f"geolife-{user}-{n}", "ts": ts_ms, "ids": {"device_id": f"geolife-{user}"},
                       "lat": lat, "lon": lon, "accuracy_m": accuracy, "source": source})
    return bodies


def place_stores(rows: list[tuple[str, int, float, float]], count: int = 12) -> list[tuple[str, str, float, float, float]]:
    """(store_id, name, lat, lon, radius_m): centroids of the `count` most visited res-8 cells, plus a mall twin."""
    days: dict[int, set[tuple[str, int]]] = defaultdict(set)
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for user, ts_ms, lat, lon in rows:
        cell = h3.latlng_to_cell(lat, lon, 8)
        days[cell].add((user, ts_ms // 86_400_000))
        total = sums[cell]
        total[0] += lat
        total[1] += lon
        total[2] += 1
    ranked = sorted(days, key=lambda cell: (-len(days[cell]), cell))[:count]
    stores = []
    for n, cell in enumerate(ranked):
        lat_sum, lon_sum, pings = sums[cell]
        stores.append((f"G{n:02d}", f"GeoLife spot {n}", round(lat_sum / pings, 6), round(lon_sum / pings, 6),
                       RADII[n % len(RADII)]))
    _, _, lat, lon, _ = stores[0]
    east = 80.0 / (6_371_008.8 * math.cos(math.radians(lat))) * 180 / math.pi
    stores.append(("G00-twin", "Mall twin of spot 0", lat, round(lon + east, 6), 100.0))
    return stores


def write_stores_csv(path: Path, stores: list[tuple[str, str, float, float, float]]) -> Path:
    lines = ["store_id,name,lat,lon,radius_m"] + [f"{s},{name},{lat},{lon},{radius}" for s, name, lat, lon, radius in stores]
    path.write_text("\n".join(lines) + "\n")
    return path
