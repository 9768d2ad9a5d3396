"""A seeded generator of omnichannel recordings: customers who browse, buy online and in store, and walk by stores.

Used by `omnitrigger demo` and by tests that need a whole-flow recording of
a known shape. Everything derives from `random.Random(seed)`, so the same
seed gives byte-identical files. POS receipts are written as kcat `-J`
envelopes (as if recorded from Kafka, with redeliveries); the other topics
as bare JSON lines, so a recording exercises both formats.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from omnitrigger.records import format_ms

START_MS = 1_791_187_200_000  # 2026-10-05T08:00:00Z: in the past, so no record is "in the future"
MINUTE_MS = 60_000

# A few stores in central Helsinki (coordinates rounded from public maps).
DEMO_STORES = [
    ("S001", "Kamppi", 60.1690, 24.9320, 300),
    ("S002", "Stockmann Centre", 60.1685, 24.9410, 250),
    ("S003", "Forum", 60.1697, 24.9385, 200),
    ("S004", "Kallio", 60.1840, 24.9500, 400),
    ("S005", "Ruoholahti", 60.1630, 24.9140, 500),
]


@dataclass
class Customer:
    number: int
    device_id: str
    cookie_id: str
    auth_id: str
    loyalty_id: str
    email: str
    phone: str


#: An event time as the recordings write it (the flow's output time format).
iso = format_ms


def _offset_point(lat: float, lon: float, metres: float, bearing_deg: float) -> tuple[float, float]:
    d_lat = metres * math.cos(math.radians(bearing_deg)) / 111_320
    d_lon = metres * math.sin(math.radians(bearing_deg)) / (111_320 * math.cos(math.radians(lat)))
    return round(lat + d_lat, 6), round(lon + d_lon, 6)


class RecordingGenerator:
    def __init__(self, seed: int = 7, customers: int = 40, products: int = 60, duplicate_ratio: float = 0.25) -> None:
        self.rng = random.Random(seed)
        self.products = [f"P{n:04d}" for n in range(products)]
        self.duplicate_ratio = duplicate_ratio
        self.customers = [
            Customer(n, f"dev-{n:04d}", f"ck-{n:04d}", f"user-{n:04d}", f"LOY{n:06d}",
                     f"Customer.{n}@Example.com ", f"+358 40 {n:07d}")
            for n in range(customers)
        ]
        self.topics: dict[str, list[tuple[int, Any]]] = {
            "web.events": [], "pos.receipts": [], "geo.pings": [], "identity.links": [], "consent.changes": []}
        self._event_no = 0
        self._left_carts: list[tuple[Customer, int, str]] = []  # (customer, added at, product): carts not bought

    def _event_id(self, prefix: str) -> str:
        self._event_no += 1
        return f"{prefix}-{self._event_no:07d}"

    def _add(self, topic: str, ts_ms: int, record: Any) -> None:
        self.topics[topic].append((ts_ms, record))

    def generate(self, follow_ups: bool = False) -> "RecordingGenerator":
        """`follow_ups`: some shoppers who left a cart buy it at a till one to four days later (what a
        conversion is; drawn from a generator of their own, so the rest of the recording stays the same)."""
        for customer in self.customers:
            self._customer_story(customer)
        # Two days later one shopper is back: the event-time clock passes the day-long browse deadlines.
        self._web(self.customers[0], START_MS + 2 * 86_400_000, "view_item", self.products[0], anonymous=True)
        if follow_ups:
            rng = random.Random(self.rng.random())
            for customer, added, product in self._left_carts:
                if rng.random() < 0.4:
                    continue
                t = added + rng.randrange(24 * 60, 4 * 24 * 60) * MINUTE_MS
                if rng.random() < 0.5:  # online, in the app
                    self._web(customer, t, "purchase", product)
                    continue
                store = rng.choice(DEMO_STORES)[0]  # at a till, the app's loyalty card scanned
                self._add("identity.links", t - 1000, {
                    "event_id": self._event_id("link"), "ts": iso(t - 1000), "source": "loyalty_card",
                    "ids": {"device_id": customer.device_id, "loyalty_id": customer.loyalty_id}})
                self._add("pos.receipts", t, {
                    "terminal_id": f"{store}-T9", "receipt_no": rng.randrange(100_000, 999_999), "ts": t,
                    "store_id": store, "ids": {"loyalty_id": customer.loyalty_id},
                    "items": [{"product_id": product, "qty": 1, "price": 19.9}], "total": 19.9})
        return self

    def _customer_story(self, c: Customer) -> None:
        rng = self.rng
        t = START_MS + rng.randrange(0, 12 * 60) * MINUTE_MS
        self._add("consent.changes", t, {"event_id": self._event_id("cons"), "ts": iso(t),
                                         "ids": {"device_id": c.device_id}, "channel": "push", "status": "granted"})
        if c.number % 5 != 4:  # four in five let the app use where they are: in-store offers need it
            self._add("consent.changes", t, {"event_id": self._event_id("cons"), "ts": iso(t),
                                             "ids": {"device_id": c.device_id}, "channel": "location",
                                             "status": "granted"})
        if rng.random() < 0.15:  # changes their mind about push messages
            self._add("consent.changes", t + 30 * MINUTE_MS, {
                "event_id": self._event_id("cons"), "ts": iso(t + 30 * MINUTE_MS), "ids": {"device_id": c.device_id},
                "channel": "push", "status": "revoked"})
        viewed = rng.sample(self.products, 4)
        for product in viewed:
            t += rng.randrange(1, 10) * MINUTE_MS
            self._web(c, t, "view_item", product, anonymous=True)
        if rng.random() < 0.6:  # logs in: device, cookie and account become one customer
            t += 2 * MINUTE_MS
            self._add("identity.links", t, {"event_id": self._event_id("link"), "ts": iso(t), "source": "login",
                                            "ids": {"device_id": c.device_id, "auth_id": c.auth_id,
                                                    "email": c.email}, "confidence": 1.0})
        if rng.random() < 0.5:  # adds to cart, and sometimes buys online
            t += 3 * MINUTE_MS
            self._web(c, t, "add_to_cart", viewed[0])
            if rng.random() < 0.4:
                t += 5 * MINUTE_MS
                self._web(c, t, "purchase", viewed[0])
            else:
                self._left_carts.append((c, t, viewed[0]))
        if rng.random() < 0.5:  # later walks into a store and stays
            self._visit(c, t + rng.randrange(60, 600) * MINUTE_MS, rng.choice(DEMO_STORES), minutes=rng.choice([1, 4, 8]))
        if rng.random() < 0.4:  # pays at a till with the loyalty card
            t += rng.randrange(120, 900) * MINUTE_MS
            self._receipt(c, t, rng.choice(DEMO_STORES)[0], [viewed[1], rng.choice(self.products)])
            self._add("identity.links", t, {"event_id": self._event_id("link"), "ts": iso(t), "source": "loyalty_card",
                                            "ids": {"loyalty_id": c.loyalty_id, "auth_id": c.auth_id}})

    def _web(self, c: Customer, t: int, kind: str, product: str, anonymous: bool = False) -> None:
        ids = {"device_id": c.device_id} if anonymous else {"device_id": c.device_id, "auth_id": c.auth_id}
        record: dict[str, Any] = {"event_id": self._event_id("web"), "type": kind, "ts": iso(t),
                                  "channel": self.rng.choice(["web", "app"]), "ids": ids,
                                  "session_id": f"s-{c.number}-{t // 3_600_000}"}
        if kind == "purchase":
            record["items"] = [{"product_id": product, "qty": 1, "price": 19.9}]
            record["order_id"] = f"o-{c.number}-{t}"
        else:
            record["product_id"] = product
        self._add("web.events", t, record)

    def _receipt(self, c: Customer, t: int, store_id: str, products: list[str]) -> None:
        record = {"terminal_id": f"{store_id}-T{self.rng.randrange(1, 4)}", "receipt_no": self.rng.randrange(10_000, 99_999),
                  "ts": t, "store_id": store_id, "ids": {"loyalty_id": c.loyalty_id},
                  "items": [{"product_id": p, "qty": 1, "price": 9.5} for p in products], "total": 9.5 * len(products)}
        self._add("pos.receipts", t, record)

    def _visit(self, c: Customer, t: int, store: tuple, minutes: int) -> None:
        _, _, lat, lon, radius = store
        for step in range(minutes * 2 + 1):  # a ping every 30 s
            distance = self.rng.uniform(0, radius * 0.5)
            p_lat, p_lon = _offset_point(lat, lon, distance, self.rng.uniform(0, 360))
            ts = t + step * 30_000
            self._add("geo.pings", ts, {"event_id": self._event_id("ping"), "ts": iso(ts), "ids": {"device_id": c.device_id},
                                        "lat": p_lat, "lon": p_lon, "accuracy_m": round(self.rng.uniform(5, 40), 1),
                                        "source": "gps"})

    def bad_records(self) -> dict[str, list[bytes]]:
        """One of each kind of bad input, placed mid-file so the records around them are checked too."""
        return {
            "web.events": [b"{not json", b"", b'["an", "array"]', b'"a string"',
                           b'{"event_id": "bad-1", "type": "teleport", "ts": "2026-11-26T09:00:00.000Z", "channel": "web", "ids": {"device_id": "x"}, "product_id": "P1"}',
                           b'{"event_id": "bad-2", "type": "view_item", "ts": "yesterday", "channel": "web", "ids": {"device_id": "x"}, "product_id": "P1"}'],
            "geo.pings": [b'{"event_id": "bad-3", "ts": 1791190000000, "ids": {"device_id": "d"}, "lat": "60.1", "lon": 24.9, "accuracy_m": 5, "source": "gps"}',
                          b'{"event_id": "bad-4", "ts": 1791190000000, "ids": {"device_id": "d"}, "lat": 91.5, "lon": 24.9, "accuracy_m": 5, "source": "gps"}'],
            "pos.receipts": [b'{"topic": "pos.receipts", "partition": 1, "offset": 99999, "ts": 1791190000000, "key": null, "payload": "{oops"}'],
        }

    def write(self, recording_dir: Path, with_bad_records: bool = True) -> dict[str, int]:
        """Write `<topic>.jsonl` files; returns lines written per topic."""
        recording_dir.mkdir(parents=True, exist_ok=True)
        bad = self.bad_records() if with_bad_records else {}
        written: dict[str, int] = {}
        for topic, rows in self.topics.items():
            rows = sorted(rows, key=lambda row: row[0])
            lines = self._receipt_lines(rows) if topic == "pos.receipts" else [orjson.dumps(record) for _, record in rows]
            for n, line in enumerate(bad.get(topic, [])):
                lines.insert(min(len(lines), (n + 1) * max(1, len(lines) // (len(bad[topic]) + 1))), line)
            (recording_dir / f"{topic}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
            written[topic] = len(lines)
        return written

    def _receipt_lines(self, rows: list[tuple[int, Any]]) -> list[bytes]:
        """kcat -J envelopes over 2 partitions; some receipts redelivered later (CDC replays)."""
        lines: list[bytes] = []
        offsets = [0, 0]
        deliveries = [record for _, record in rows]
        for record in list(deliveries):
            if self.rng.random() < self.duplicate_ratio:
                deliveries.insert(min(len(deliveries), deliveries.index(record) + self.rng.randrange(1, 6)), record)
        for record in deliveries:
            partition = hash_partition(str(record["terminal_id"]))
            envelope = {"topic": "pos.receipts", "partition": partition, "offset": offsets[partition],
                        "tstype": "create", "ts": record["ts"] + 1500, "broker": 1,
                        "key": str(record["terminal_id"]), "payload": orjson.dumps(record).decode()}
            offsets[partition] += 1
            lines.append(orjson.dumps(envelope))
        return lines

    def write_stores(self, path: Path) -> None:
        lines = ["store_id,name,lat,lon,radius_m"] + [f"{s},{n},{lat},{lon},{r}" for s, n, lat, lon, r in DEMO_STORES]
        path.write_text("\n".join(lines) + "\n")


def hash_partition(key: str, partitions: int = 2) -> int:
    return sum(key.encode()) % partitions
