"""Store-visit throughput and memory: the H3 store index alone, and the visits operator on RocksDB.

    python benchmarks/bench_visits.py [--stores 5000] [--devices 100000] [--pings-per-device 10]

A seeded synthetic metro area of about 100 x 100 km: `--stores` stores
(radius 100 to 1,000 m) and `--devices` devices pinging every 30 s in time
order. A third of the devices start inside a store and stay 3 minutes before
driving off (so visits are confirmed and end), the rest wander at walking to
driving speeds; 10% of pings are reported at 150 m accuracy and 5% come
from `cell`. Events are generated batch by batch, outside the timed part.
Prints the index build, lookups/s of the index alone, pings/s of the
operator alone (commit per 1,000 pings, as an epoch), the visits found, the
state left, and peak RSS.
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import tempfile
import time
from array import array
from pathlib import Path

from omnitrigger.config import Config
from omnitrigger.operators.store_index import StoreIndex
from omnitrigger.operators.visits import VISIT_CONFIRMED, Visits
from omnitrigger.records import Event
from omnitrigger.state import RocksDBStore, ShardState
from omnitrigger.io.stores import Store

from results import Figures

CENTRE = (39.9, 116.4)  # Beijing, where the GeoLife traces are
HALF_SPAN_DEG = (0.45, 0.6)  # about 100 x 100 km
TICK_MS = 30_000
T0 = 1_700_000_000_000
METRES_PER_DEG_LAT = 111_320.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_stores(count: int, rng: random.Random) -> list[Store]:
    return [Store(f"S{n:05d}", f"store {n}", CENTRE[0] + rng.uniform(-1, 1) * HALF_SPAN_DEG[0],
                  CENTRE[1] + rng.uniform(-1, 1) * HALF_SPAN_DEG[1], rng.choice([100.0, 250.0, 500.0, 500.0, 1000.0]))
            for n in range(count)]


class Devices:
    """Positions and velocities (degrees per tick) of every device, in flat arrays."""

    def __init__(self, count: int, stores: list[Store], rng: random.Random) -> None:
        self.count = count
        self.lat = array("d")
        self.lon = array("d")
        self.vlat = array("d")
        self.vlon = array("d")
        self.dwell_ticks = array("i")
        metres_per_deg_lon = METRES_PER_DEG_LAT * math.cos(math.radians(CENTRE[0]))
        for n in range(count):
            speed = rng.uniform(1, 15) * TICK_MS / 1000  # metres a tick
            heading = rng.uniform(0, 2 * math.pi)
            if n % 3 == 0:
                store = stores[n // 3 % len(stores)]
                r = rng.uniform(0, 0.3) * store.radius_m
                self.lat.append(store.lat + r * math.cos(heading) / METRES_PER_DEG_LAT)
                self.lon.append(store.lon + r * math.sin(heading) / metres_per_deg_lon)
                self.dwell_ticks.append(6)
            else:
                self.lat.append(CENTRE[0] + rng.uniform(-1, 1) * HALF_SPAN_DEG[0])
                self.lon.append(CENTRE[1] + rng.uniform(-1, 1) * HALF_SPAN_DEG[1])
                self.dwell_ticks.append(0)
            self.vlat.append(speed * math.cos(heading) / METRES_PER_DEG_LAT)
            self.vlon.append(speed * math.sin(heading) / metres_per_deg_lon)
        # Each device pings at its own offset within the tick; arrival order is time order.
        self.offset_ms = [(n * 7919) % TICK_MS for n in range(count)]
        self.order = sorted(range(count), key=lambda n: (self.offset_ms[n], n))

    def position(self, n: int, tick: int, rng: random.Random) -> tuple[float, float]:
        if tick < self.dwell_ticks[n]:  # standing in the store, with GPS jitter of about 10 m
            return self.lat[n] + rng.gauss(0, 9e-5), self.lon[n] + rng.gauss(0, 1.2e-4)
        moving = tick - self.dwell_ticks[n]
        return self.lat[n] + self.vlat[n] * moving, self.lon[n] + self.vlon[n] * moving


def pings(devices: Devices, ticks: int, rng: random.Random, batch_size: int):
    """Batches of geo.pings events in time order."""
    batch: list[Event] = []
    seq = 0
    for tick in range(ticks):
        base = T0 + tick * TICK_MS
        for n in devices.order:
            lat, lon = devices.position(n, tick, rng)
            roll = rng.random()
            source, accuracy = ("cell", 80.0) if roll < 0.05 else ("gps", 150.0) if roll < 0.15 else ("gps", 12.0)
            ts = base + devices.offset_ms[n]
            body = {"event_id": f"e{seq}", "ts": ts, "ids": {"device_id": f"dev{n:06d}"}, "lat": lat, "lon": lon,
                    "accuracy_m": accuracy, "source": source}
            batch.append(Event(seq, "geo.pings", 0, seq, ts, body))
            seq += 1
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=5_000)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--pings-per-device", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    args = parser.parse_args()
    figures = Figures("bench_visits", f"python benchmarks/bench_visits.py --stores {args.stores} --devices {args.devices}")
    rng = random.Random(args.seed)
    total = args.devices * args.pings_per_device

    stores = make_stores(args.stores, rng)
    started = time.perf_counter()
    index = StoreIndex(stores)
    print(f"store index: {args.stores:,} stores (radius 100 to 1,000 m) -> {index.cell_count:,} H3 res-9 cells, "
          f"built in {time.perf_counter() - started:.1f} s; peak RSS {peak_rss_mib():,.0f} MiB")

    devices = Devices(args.devices, stores, rng)
    points = array("d")
    for batch in pings(devices, args.pings_per_device, random.Random(args.seed + 1), 10_000):
        for event in batch:
            points.append(event.body["lat"])
            points.append(event.body["lon"])
    started = time.perf_counter()
    hits = 0
    stores_near = index.stores_near
    for n in range(0, len(points), 2):
        hits += len(stores_near(points[n], points[n + 1]))
    seconds = time.perf_counter() - started
    print(f"index lookup alone: {total / seconds:,.0f} lookups/s ({seconds / total * 1e6:.2f} µs each; "
          f"{hits / total:.2f} stores contain a ping on average)")
    del points
    figures.add(f"store index lookup alone ({args.stores:,} stores)", round(total / seconds), "lookups/s")

    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-visits-") as work:
        store = RocksDBStore(Path(work) / "db")
        state = ShardState(store, Visits.name, 0)
        operator = Visits(state, Config(), index=index)
        visits = confirmations = 0
        seconds = 0.0
        last_seq = 0
        for batch in pings(devices, args.pings_per_device, random.Random(args.seed + 1), 1000):
            started = time.perf_counter()
            result = operator.on_events(batch)
            state.commit()
            seconds += time.perf_counter() - started
            visits += len(result.emitted)
            confirmations += sum(1 for event in result.events if event.topic == VISIT_CONFIRMED)
            last_seq = batch[-1].seq
        open_visits = len(operator.on_eof(last_seq + 1).emitted)
        print(f"visits operator alone (RocksDB, commit per 1,000): {total / seconds:,.0f} pings/s "
              f"({seconds / total * 1e6:.2f} µs/ping) over {total:,} pings from {args.devices:,} devices")
        print(f"  visits confirmed {confirmations:,}, ended {visits:,}, open at the end {open_visits:,}; "
              f"counters {operator.stats()}")
        figures.add(f"visits operator alone ({args.devices:,} devices)", round(total / seconds), "pings/s")
        print(f"  device records left: {len(state.scan(b'd', b'e')):,} (devices seen in the last gap + lateness)")
        store.close()
    print(f"peak RSS of this process: {peak_rss_mib():,.0f} MiB")
    figures.add("visits benchmark: peak RSS", round(peak_rss_mib()), "MiB")
    figures.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
