"""Store visits: the H3 store index at its radius edges, the noise cases of issue 4, lateness, state, and
the real GeoLife traces against an independent computation of the definition (docs/semantics.md, Store visits)."""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import h3.api.basic_int as h3
import pytest

from conftest import REAL_DATA
from geolife import load_rows, ping_bodies, place_stores
from omnitrigger.config import Config
from omnitrigger.operators import OPERATORS
from omnitrigger.operators.store_index import StoreIndex, store_index_for
from omnitrigger.operators.visits import VISIT_CONFIRMED, Visits
from omnitrigger.records import VISITS, Emitted, Event
from omnitrigger.schemas import Contracts
from omnitrigger.schemas.validator import SchemaCompiler
from omnitrigger.state import RocksDBStore, ShardState
from omnitrigger.io.stores import Store

R = 6_371_008.8  # the sphere of the definition (mean Earth radius)
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
CONTRACTS = Contracts()
CHECK_VISIT = SchemaCompiler().compile_file("visit.schema.json")
HEL = (60.1690, 24.9320)  # a store in central Helsinki


# -- independent geometry (not the index's code) -------------------------------


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dlat = math.radians(lat2 - lat1)
    dlon = math.radians(lon2 - lon1)
    a = math.sin(dlat / 2) ** 2 + math.cos(math.radians(lat1)) * math.cos(math.radians(lat2)) * math.sin(dlon / 2) ** 2
    return 2 * R * math.asin(math.sqrt(a))


def destination(lat: float, lon: float, bearing_deg: float, distance_m: float) -> tuple[float, float]:
    """The point `distance_m` from (lat, lon) along the great circle at `bearing_deg`."""
    phi, lam, theta, delta = math.radians(lat), math.radians(lon), math.radians(bearing_deg), distance_m / R
    phi2 = math.asin(math.sin(phi) * math.cos(delta) + math.cos(phi) * math.sin(delta) * math.cos(theta))
    lam2 = lam + math.atan2(math.sin(theta) * math.sin(delta) * math.cos(phi),
                            math.cos(delta) - math.sin(phi) * math.sin(phi2))
    return math.degrees(phi2), (math.degrees(lam2) + 540) % 360 - 180


# -- helpers ----------------------------------------------------------------------


class Pings:
    """Builds geo.pings events in arrival order, each checked against the geo.pings contract."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, device: str, ts_ms: int, lat: float, lon: float, accuracy: float = 10.0, source: str = "gps",
            customer: str | None = None) -> Event:
        seq = len(self.events)
        body = {"event_id": f"p{seq}", "ts": ts_ms, "ids": {"device_id": device}, "lat": lat, "lon": lon,
                "accuracy_m": accuracy, "source": source}
        assert CONTRACTS.check("geo.pings", body, reference_ms=ts_ms) == ts_ms
        event = Event(seq, "geo.pings", 0, seq, ts_ms, body, customer)
        self.events.append(event)
        return event

    def stay(self, device: str, start_ms: int, seconds: int, every_s: int, lat: float, lon: float, **kw: Any) -> None:
        for offset in range(0, seconds + 1, every_s):
            self.add(device, start_ms + offset * 1000, lat, lon, **kw)


#: These tests are about visit detection; the location-consent filter on the visits output is
#: policy, tested through whole replays in tests/test_trust.py.
DETECTION = Config(require_location_consent=False)

class Run:
    """The operator on RocksDB through ShardState, committing after every batch."""

    def __init__(self, tmp_path: Path, stores: list[Store], config: Config = DETECTION, name: str = "db") -> None:
        self.store = RocksDBStore(tmp_path / name)
        self.state = ShardState(self.store, Visits.name, 0)
        self.index = StoreIndex(stores)
        self.config = config
        self.operator = Visits(self.state, config, index=self.index)
        self.events: list[Event] = []
        self.emitted: list[Emitted] = []

    def feed(self, events: list[Event], batch_size: int = 100) -> "Run":
        for start in range(0, len(events), batch_size):
            result = self.operator.on_events(events[start:start + batch_size])
            self.events += result.events
            self.emitted += result.emitted
            self.state.commit()
        return self

    def eof(self, end_seq: int) -> list[Emitted]:
        return self.operator.on_eof(end_seq).emitted

    @property
    def visits(self) -> list[dict[str, Any]]:
        return [e.record for e in self.emitted if e.stream == VISITS]

    @property
    def confirmations(self) -> list[Event]:
        return [e for e in self.events if e.topic == VISIT_CONFIRMED]


def store(store_id: str, lat: float, lon: float, radius: float = 500.0) -> Store:
    return Store(store_id, store_id, lat, lon, radius)


def iso(ts_ms: int) -> str:
    from omnitrigger.operators.visits import format_ms
    return format_ms(ts_ms)


# -- the index ---------------------------------------------------------------------


@pytest.mark.parametrize("lat", [0.0, 39.99, 60.169, -33.87, 71.0, 84.5])
def test_index_finds_every_store_just_inside_and_none_just_outside(lat: float) -> None:
    lon = 24.93 if lat >= 0 else 151.2
    for radius in (1.0, 30.0, 100.0, 499.0, 500.0, 999.9, 1000.0):
        index = StoreIndex([store("S", lat, lon, radius)])
        for bearing in range(0, 360, 10):
            inside = destination(lat, lon, bearing + 0.5, radius - 0.01)
            outside = destination(lat, lon, bearing + 0.5, radius + 0.01)
            found = index.stores_near(*inside)
            assert [s for s, _ in found] == ["S"], (radius, bearing)
            assert found[0][1] == pytest.approx(radius - 0.01, abs=1e-4)
            assert index.stores_near(*outside) == [], (radius, bearing)


def test_index_at_a_pentagon_and_across_many_random_stores_matches_brute_force() -> None:
    pentagon = h3.cell_to_latlng(sorted(h3.get_pentagons(9))[3])
    rng = random.Random(4)
    stores = [store("P", *pentagon, 1000.0)]
    for n in range(300):
        stores.append(store(f"S{n:03d}", 39.9 + rng.uniform(-0.05, 0.05), 116.4 + rng.uniform(-0.05, 0.05),
                            rng.choice([20.0, 80.0, 150.0, 500.0, 1000.0, rng.uniform(1, 1000)])))
    index = StoreIndex(stores)
    for _ in range(5_000):
        centre = rng.choice(stores)
        lat, lon = destination(centre.lat, centre.lon, rng.uniform(0, 360), rng.uniform(0, 1.2) * centre.radius_m)
        expected = sorted((haversine(lat, lon, s.lat, s.lon), s.store_id)
                          for s in stores if haversine(lat, lon, s.lat, s.lon) <= s.radius_m)
        found = index.stores_near(lat, lon)
        assert [s for s, _ in found] == [s for _, s in expected]
        assert [d for _, d in found] == pytest.approx([d for d, _ in expected], abs=1e-5)


def test_index_is_built_once_per_stores_file(tmp_path: Path) -> None:
    path = tmp_path / "stores.csv"
    path.write_text("store_id,name,lat,lon,radius_m\nS1,Kamppi,60.1690,24.9320,300\nS2,Kallio,60.1840,24.9500,\n")
    assert store_index_for(path) is store_index_for(str(path))
    assert [s.radius_m for s in store_index_for(path).stores] == [300.0, 500.0]


# -- the definition, case by case ------------------------------------------------------


def test_three_minute_stay_gives_one_visit_confirmed_at_the_first_ping_past_two_minutes(tmp_path: Path) -> None:
    pings = Pings()
    pings.add("d1", T0 - 60_000, *destination(*HEL, 90, 900))  # outside, before
    pings.stay("d1", T0, 180, 10, *destination(*HEL, 45, 120), customer="c1")  # 0, 10, ..., 180 s
    pings.add("d1", T0 + 190_000, *destination(*HEL, 45, 620))  # outside: ends it
    run = Run(tmp_path, [store("S1", *HEL)]).feed(pings.events, batch_size=7)

    confirming = next(e for e in pings.events if e.ts_ms == T0 + 130_000)  # dwell 120 s is not > 120 s
    [confirmation] = run.confirmations
    assert run.events.index(confirmation) == run.events.index(confirming) + 1
    assert confirmation.seq == confirming.seq and confirmation.ts_ms == T0 + 130_000
    assert confirmation.customer == "c1"
    assert confirmation.body["store_id"] == "S1" and confirmation.body["start"] == iso(T0)
    assert [e for e in run.events if e.topic != VISIT_CONFIRMED] == pings.events  # every event goes on unchanged
    [visit] = run.visits
    assert visit == {"visit_id": confirmation.body["visit_id"], "device_id": "d1", "customer_id": "c1",
                     "store_id": "S1", "start": iso(T0), "confirmed_at": iso(T0 + 130_000),
                     "end": iso(T0 + 180_000), "dwell_s": 180.0, "pings": 19, "ended_by": "exit"}
    CHECK_VISIT(visit)
    [ended] = [e for e in run.emitted if e.stream == VISITS]
    assert ended.sort_key == (pings.events[-1].seq, 0)


def test_jitter_with_150_m_accuracy_gives_no_visit(tmp_path: Path) -> None:
    rng = random.Random(7)
    pings = Pings()
    for n in range(60):  # ten minutes around the store, every 10 s, all reported at 150 m
        pings.add("d1", T0 + n * 10_000, *destination(*HEL, rng.uniform(0, 360), rng.uniform(0, 150)), accuracy=150.0)
    pings.add("d1", T0 + 700_000, *destination(*HEL, 0, 2000))
    run = Run(tmp_path, [store("S1", *HEL)]).feed(pings.events)
    assert run.visits == [] and run.confirmations == [] and run.eof(len(pings.events)) == []
    assert run.operator.stats()["inaccurate_pings"] == 60


def test_drive_by_at_50_km_h_gives_no_visit(tmp_path: Path) -> None:
    pings = Pings()
    speed = 50 / 3.6
    for n in range(0, 200):  # a straight road through the store's centre, a ping every 2 s
        pings.add("d1", T0 + n * 2000, *destination(*HEL, 90, -1400 + speed * n * 2))
    run = Run(tmp_path, [store("S1", *HEL, 500.0)]).feed(pings.events)
    assert run.visits == [] and run.confirmations == [] and run.eof(len(pings.events)) == []
    assert 30 < sum(1 for e in pings.events if haversine(e.body["lat"], e.body["lon"], *HEL) <= 500) < 40


def test_a_single_ping_inside_gives_no_visit(tmp_path: Path) -> None:
    pings = Pings()
    pings.add("d1", T0, *destination(*HEL, 0, 1500))
    pings.add("d1", T0 + 60_000, *HEL)
    pings.add("d1", T0 + 120_000, *destination(*HEL, 0, 1500))
    run = Run(tmp_path, [store("S1", *HEL)]).feed(pings.events)
    assert run.visits == [] and run.confirmations == []


def test_exactly_two_minutes_is_not_enough(tmp_path: Path) -> None:
    pings = Pings()
    pings.stay("d1", T0, 120, 30, *HEL)
    pings.add("d1", T0 + 150_000, *destination(*HEL, 0, 1500))
    run = Run(tmp_path, [store("S1", *HEL)]).feed(pings.events)
    assert run.visits == [] and run.confirmations == []


def test_mall_with_two_stores_80_m_apart_one_visit_each(tmp_path: Path) -> None:
    a = HEL
    b = destination(*a, 90, 80)
    stores = [store("A", *a, 50.0), store("B", *b, 50.0)]
    pings = Pings()
    pings.stay("d1", T0, 180, 15, *destination(*a, 270, 10))  # 3 min in A (90 m from B)
    pings.stay("d1", T0 + 200_000, 240, 15, *destination(*b, 90, 5))  # then 4 min in B
    pings.add("d1", T0 + 460_000, *destination(*a, 0, 900))
    run = Run(tmp_path, stores).feed(pings.events)
    assert [(v["store_id"], v["start"], v["end"], v["ended_by"]) for v in run.visits] == [
        ("A", iso(T0), iso(T0 + 180_000), "exit"), ("B", iso(T0 + 200_000), iso(T0 + 440_000), "exit")]
    assert [c.body["store_id"] for c in run.confirmations] == ["A", "B"]


def test_overlapping_stores_each_get_their_visit_confirmed_at_the_same_ping(tmp_path: Path) -> None:
    a = HEL
    b = destination(*a, 90, 80)
    stores = [store("B", *b, 100.0), store("A", *a, 100.0)]
    middle = destination(*a, 90, 40)
    pings = Pings()
    pings.stay("d1", T0, 150, 10, *middle)  # inside both
    pings.stay("d1", T0 + 160_000, 100, 10, *destination(*b, 90, 30))  # then inside B only (110 m from A)
    pings.add("d1", T0 + 400_000, *destination(*a, 0, 900))
    run = Run(tmp_path, stores).feed(pings.events)
    confirmations = run.confirmations
    assert [c.body["store_id"] for c in confirmations] == ["A", "B"]
    assert confirmations[0].seq == confirmations[1].seq == next(e.seq for e in pings.events if e.ts_ms == T0 + 130_000)
    assert [(v["store_id"], v["end"], v["pings"]) for v in run.visits] == [
        ("A", iso(T0 + 150_000), 16), ("B", iso(T0 + 260_000), 27)]
    assert run.emitted[0].sort_key == (next(e.seq for e in pings.events if e.ts_ms == T0 + 160_000), 0)


def test_a_gap_over_five_minutes_splits_a_visit_and_five_minutes_does_not(tmp_path: Path) -> None:
    pings = Pings()
    pings.stay("d1", T0, 150, 10, *HEL)
    pings.stay("d1", T0 + 150_000 + 301_000, 150, 10, *HEL)  # 301 s of silence: a new visit
    pings.stay("d2", T0, 150, 10, *HEL)
    pings.stay("d2", T0 + 150_000 + 300_000, 30, 10, *HEL)  # exactly 300 s: the same visit
    pings.events.sort(key=lambda e: (e.ts_ms, e.seq))
    pings.events[:] = [e._replace(seq=n, offset=n) for n, e in enumerate(pings.events)]
    run = Run(tmp_path, [store("S1", *HEL)]).feed(pings.events)
    open_visits = [e.record for e in run.eof(len(pings.events))]
    by_device = sorted((v["device_id"], v["start"], v["end"], v["ended_by"]) for v in run.visits + open_visits)
    assert by_device == [
        ("d1", iso(T0), iso(T0 + 150_000), "gap"),
        ("d1", iso(T0 + 451_000), None, "open"),
        ("d2", iso(T0), None, "open"),
    ]
    [d2] = [v for v in open_visits if v["device_id"] == "d2"]
    assert d2["dwell_s"] == 480.0 and d2["pings"] == 20


def test_a_quiet_device_has_its_visit_ended_by_the_watermark_and_is_forgotten(tmp_path: Path) -> None:
    pings = Pings()
    pings.stay("quiet", T0, 180, 20, *HEL)
    for n in range(1, 60):  # another device far away keeps the clock moving
        pings.add("other", T0 + 180_000 + n * 10_000, *destination(*HEL, 0, 5000))
    run = Run(tmp_path, [store("S1", *HEL)])
    run.feed(pings.events, batch_size=1)
    # The visit can continue until 180 + 300 s, and a ping may be up to 120 s late: it ends once the clock is past 600 s.
    [ended] = [e for e in run.emitted if e.stream == VISITS]
    trigger = next(e for e in pings.events if e.ts_ms > T0 + 600_000)
    assert ended.sort_key == (trigger.seq, 0) and trigger.ts_ms == T0 + 610_000
    assert ended.record["ended_by"] == "timeout" and ended.record["end"] == iso(T0 + 180_000)
    assert run.state.get(b"dquiet") is None and run.state.get(b"dother") is not None


def test_cell_pings_are_dropped_unless_configured_and_do_not_end_a_visit(tmp_path: Path) -> None:
    pings = Pings()
    pings.stay("d1", T0, 300, 20, *HEL, source="cell", accuracy=50.0)
    run = Run(tmp_path, [store("S1", *HEL)], name="default").feed(pings.events)
    assert run.confirmations == [] and run.operator.stats()["excluded_source_pings"] == 16
    with_cell = Run(tmp_path, [store("S1", *HEL)], DETECTION.with_overrides(excluded_sources=()), name="with-cell").feed(pings.events)
    assert len(with_cell.confirmations) == 1

    mixed = Pings()
    for n in range(0, 19):  # wifi inside, interleaved with cell fixes 3 km away: the cell ones are ignored
        mixed.add("d1", T0 + n * 10_000, *HEL, source="wifi", accuracy=40.0)
        mixed.add("d1", T0 + n * 10_000 + 5000, *destination(*HEL, 0, 3000), source="cell", accuracy=80.0)
    mixed.add("d1", T0 + 200_000, *destination(*HEL, 0, 3000), source="gps", accuracy=80.0)
    run = Run(tmp_path, [store("S1", *HEL)], name="mixed").feed(mixed.events)
    assert [(v["start"], v["end"], v["pings"]) for v in run.visits] == [(iso(T0), iso(T0 + 180_000), 19)]


def test_late_pings_are_counted_and_reordered_ones_applied(tmp_path: Path) -> None:
    # With the default lateness (120 s) no reordered ping can confirm a visit by moving its start back
    # (the dwell it adds is under the lateness); a longer lateness lets it.
    config = DETECTION.with_overrides(allowed_lateness_s=300)
    pings = Pings()
    pings.stay("d1", T0 + 100_000, 100, 10, *HEL)  # 100..200 s inside: dwell 100 s, not confirmed
    pings.add("d1", T0 + 150_000, *HEL)  # reordered, within the visit: one more ping
    late = pings.add("d1", T0 + 60_000, *HEL)  # reordered, before the start: dwell becomes 140 s
    pings.add("d2", T0 + 400_000, *destination(*HEL, 0, 5000))  # the clock moves to 400 s (watermark 100 s)
    pings.add("d1", T0 + 90_000, *HEL)  # late: older than the watermark
    pings.add("d1", T0 + 290_000, *destination(*HEL, 0, 2000))  # on time, outside: ends the visit
    run = Run(tmp_path, [store("S1", *HEL)], config).feed(pings.events, batch_size=3)
    [confirmation] = run.confirmations
    assert confirmation.seq == late.seq and confirmation.ts_ms == T0 + 200_000  # at the device's latest ping
    assert run.events.index(confirmation) == run.events.index(late) + 1
    [visit] = run.visits
    assert (visit["start"], visit["confirmed_at"], visit["end"], visit["pings"], visit["dwell_s"]) == (
        iso(T0 + 60_000), iso(T0 + 200_000), iso(T0 + 200_000), 13, 140.0)
    assert run.operator.stats()["late_pings"] == 1 and run.operator.stats()["reordered_pings"] == 2


def test_with_the_default_lateness_a_ping_two_minutes_behind_is_late(tmp_path: Path) -> None:
    pings = Pings()
    pings.stay("d1", T0, 150, 10, *HEL)
    pings.add("d1", T0 + 30_000, *HEL)  # 120 s behind the clock: on time (reordered)
    pings.add("d1", T0 + 29_999, *HEL)  # 1 ms more: late
    run = Run(tmp_path, [store("S1", *HEL)]).feed(pings.events)
    assert run.operator.stats()["late_pings"] == 1 and run.operator.stats()["reordered_pings"] == 1
    [open_visit] = [e.record for e in run.eof(99)]
    assert open_visit["pings"] == 17


def test_a_reordered_ping_never_reopens_or_ends_a_visit(tmp_path: Path) -> None:
    config = DETECTION.with_overrides(allowed_lateness_s=300)
    pings = Pings()
    pings.add("d1", T0, *destination(*HEL, 0, 2000))
    pings.stay("d1", T0 + 30_000, 150, 10, *HEL)  # a visit 30..180 s, preceded by the ping at 0 outside
    pings.add("d1", T0 + 100_000, *destination(*HEL, 0, 2000))  # reordered, outside: does not end it
    pings.add("d1", T0 + 20_000, *HEL)  # reordered, after the ping before the start: new start 20 s
    pings.add("d1", T0 - 10_000, *HEL)  # reordered, before the ping that preceded the start: no effect
    pings.add("d1", T0 + 240_000, *destination(*HEL, 0, 2000))  # ends it
    pings.add("d1", T0 + 200_000, *HEL)  # reordered, after the visit ended: does not reopen it
    run = Run(tmp_path, [store("S1", *HEL)], config).feed(pings.events)
    [visit] = run.visits
    assert (visit["start"], visit["end"], visit["pings"], visit["ended_by"]) == (
        iso(T0 + 20_000), iso(T0 + 180_000), 17, "exit")
    assert run.eof(99) == [] and run.operator.stats()["reordered_pings"] == 4


# -- real data: GeoLife against an independent computation ------------------------------


@pytest.fixture(scope="module")
def geolife() -> tuple[list[dict[str, Any]], list[Store]]:
    if not REAL_DATA.is_dir():
        if os.environ.get("OMNITRIGGER_REQUIRE_REAL_DATA"):
            pytest.fail(f"real data not found at {REAL_DATA}")
        pytest.skip(f"real data not found at {REAL_DATA}")
    rows = load_rows(REAL_DATA)
    return ping_bodies(rows), [Store(*row) for row in place_stores(rows)]


def offline_visits(bodies: list[dict[str, Any]], stores: list[Store], config: Config = DETECTION) -> list[tuple]:
    """The definition, computed plainly: per device in time order, per store, a scan over the kept pings."""
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for body in bodies:
        if body["source"] not in config.excluded_sources and body["accuracy_m"] <= config.max_accuracy_m:
            by_device[body["ids"]["device_id"]].append(body)
    gap, dwell = config.visit_max_gap_s * 1000, config.visit_min_dwell_s * 1000
    found = []
    for device, pings in by_device.items():
        pings.sort(key=lambda body: body["ts"])  # stable: equal times keep arrival order
        for s in stores:
            degrees = s.radius_m / 111_000 * 1.5
            current = None
            previous_ts = None
            for body in pings:
                ts = body["ts"]
                inside = (abs(body["lat"] - s.lat) < degrees
                          and haversine(body["lat"], body["lon"], s.lat, s.lon) <= s.radius_m)
                if current is not None and (ts - previous_ts > gap or not inside):
                    found.append(current)
                    current = None
                if inside:
                    if current is None:
                        current = {"device": device, "store": s.store_id, "start": ts, "last": ts, "pings": 1,
                                   "confirmed": None}
                    else:
                        current["last"] = ts
                        current["pings"] += 1
                        if current["confirmed"] is None and ts - current["start"] > dwell:
                            current["confirmed"] = ts
                previous_ts = ts
            if current is not None:
                found.append(current)
    return sorted((v["device"], v["store"], v["start"], v["confirmed"], v["last"], v["pings"])
                  for v in found if v["confirmed"] is not None)


def operator_visits(records: list[dict[str, Any]]) -> list[tuple]:
    from datetime import datetime

    def ms(text: str) -> int:
        return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)

    return sorted((r["device_id"], r["store_id"], ms(r["start"]), ms(r["confirmed_at"]),
                   ms(r["start"]) + round(r["dwell_s"] * 1000), r["pings"]) for r in records)


def test_geolife_visits_match_an_independent_computation(tmp_path: Path, geolife) -> None:
    bodies, stores = geolife
    events = [Event(n, "geo.pings", 0, n, body["ts"], body) for n, body in enumerate(bodies)]
    run = Run(tmp_path, stores).feed(events, batch_size=1000)
    records = run.visits + [e.record for e in run.eof(len(events))]
    for record in records:
        CHECK_VISIT(record)
    expected = offline_visits(bodies, stores)
    assert len(expected) >= 100, "the stores must see a non-trivial number of real visits"
    assert len({v[1] for v in expected}) >= 8
    assert operator_visits(records) == expected
    assert len(run.confirmations) == len(expected)
    assert len({r["visit_id"] for r in records}) == len(records)
    stats = run.operator.stats()
    assert stats["late_pings"] == stats["reordered_pings"] == 0 and stats["inaccurate_pings"] > 1000


def test_geolife_devices_lagging_within_the_lateness_give_the_same_visits(tmp_path: Path, geolife) -> None:
    """Each device's pings arrive in order, but devices lag each other by up to 100 s (allowed: 120 s)."""
    bodies, stores = geolife
    lag = {f"geolife-{n:03d}": (n * 37) % 101 * 1000 for n in range(11)}
    arrival = sorted(bodies, key=lambda body: (body["ts"] + lag[body["ids"]["device_id"]], body["event_id"]))
    events = [Event(n, "geo.pings", 0, n, body["ts"], body) for n, body in enumerate(arrival)]
    run = Run(tmp_path, stores).feed(events, batch_size=1000)
    records = run.visits + [e.record for e in run.eof(len(events))]
    assert run.operator.stats()["late_pings"] == 0
    assert operator_visits(records) == offline_visits(bodies, stores)


def test_state_is_per_device_and_bounded(tmp_path: Path, geolife) -> None:
    bodies, stores = geolife
    events = [Event(n, "geo.pings", 0, n, body["ts"], body) for n, body in enumerate(bodies[:40_000])]
    run = Run(tmp_path, stores).feed(events, batch_size=1000)
    assert 0 < len(run.state.scan(b"d", b"e")) <= 11
    last = events[-1]
    quiet = Pings()
    quiet.add("late-comer", last.ts_ms + 3_600_000, 0.0, 0.0)
    run.feed([quiet.events[0]._replace(seq=last.seq + 1)])
    assert [key for key, _ in run.state.scan(b"d", b"e")] == [b"dlate-comer"]


def test_crash_and_rollback_give_the_uninterrupted_output(tmp_path: Path, geolife) -> None:
    bodies, stores = geolife
    events = [Event(n, "geo.pings", 0, n, body["ts"], body) for n, body in enumerate(bodies[:30_000])]
    reference = Run(tmp_path, stores, name="reference").feed(events, batch_size=500)
    assert reference.visits
    store_ = RocksDBStore(tmp_path / "crashing")
    state = ShardState(store_, Visits.name, 0)
    index = StoreIndex(stores)
    operator = Visits(state, DETECTION, index=index)
    out: list[Event] = []
    emitted: list[Emitted] = []
    crashes = {3_000, 11_500, 29_500}
    position = 0
    while position < len(events):
        batch = events[position:position + 500]
        result = operator.on_events(batch)
        if position in crashes:  # processed, never committed: roll back, rebuild, feed it again
            crashes.discard(position)
            committed = state.generation
            state = ShardState(store_, Visits.name, 0)
            state.rollback_to(committed)
            operator = Visits(state, DETECTION, index=index)
            continue
        out += result.events
        emitted += result.emitted
        state.commit()
        position += 500
    assert not crashes
    assert out == reference.events and emitted == reference.emitted
    assert operator.stats() == reference.operator.stats()


def test_visits_is_a_registered_operator() -> None:
    assert OPERATORS["visits"] is Visits
