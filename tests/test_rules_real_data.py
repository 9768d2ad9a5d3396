"""The triggers of a replay of real data equal an independent computation of docs/semantics.md's rules.

The recording (tests/recordings.py `omnichannel_recording`): real Taobao clickstream, real bakery
receipts, real GeoLife GPS traces carried by shoppers' phones, stores where those traces dwell, and
the identity links and consents documented there.

The independent side reads what the replay says about identity and visits (each checked against
its own independent computation in test_identity.py and test_visits.py) and recomputes the rules
and the policy from the events: in-store offer candidates with a SQL query in SQLite, abandonment
and policy with a plain pass over the events in input order. Customers touched by a merge are left
out of the exact comparison (their pre-merge triggers went out under the id they had then, which
an after-the-fact computation cannot know); tests/test_rules.py covers merges scenario by scenario.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from conftest import records, replay
from geolife import write_stores_csv
from omnitrigger.config import Config
from recordings import omnichannel_recording

CONFIG = Config()
PRIORITY = ("auth_id", "loyalty_id", "email", "phone", "cookie_id", "device_id")
KIND_ORDER = {"cart_abandoned": "A", "browse_abandoned": "B"}


def quiet_hours_end(ts_ms: int) -> int:
    """21:00-09:00 Helsinki time, the default quiet hours: a deadline inside moves to 09:00 local."""
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Europe/Helsinki")
    local = datetime.fromtimestamp(ts_ms // 60_000 * 60, tz=timezone.utc).astimezone(zone)
    if 9 <= local.hour < 21:
        return ts_ms
    day = local.date() + timedelta(days=1 if local.hour >= 21 else 0)
    return int(datetime(day.year, day.month, day.day, 9, tzinfo=zone).timestamp() * 1000)


class IndependentRules:
    """docs/semantics.md's rules, written plainly: dictionaries, a heap of deadlines, SQLite for the offers."""

    def __init__(self, config: Config) -> None:
        self.delay = {"cart_abandoned": int(config.cart_abandoned_after_s * 1000),
                      "browse_abandoned": int(config.browse_abandoned_after_s * 1000)}
        self.lookback = int(config.offer_lookback_s * 1000)
        self.lateness = int(config.rules_lateness_s * 1000)
        self.grace = int(config.purchase_grace_s * 1000)
        self.pending: dict[tuple[str, str, Any], tuple[int, int, list[str]]] = {}
        self.deadlines: list[tuple[int, str, str, bytes, Any]] = []
        self.last_purchase: dict[tuple[str, Any], int] = {}
        self.consent: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
        self.fired: dict[str, list[int]] = defaultdict(list)
        self.fired_product: dict[tuple[str, str, Any], int] = {}
        self.max_ts = 0
        self.watermark = 0
        self.position = 0
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE views (customer TEXT, product TEXT, ts INTEGER, event_id TEXT, pos INTEGER)")
        self.db.execute("CREATE TABLE purchases (customer TEXT, product TEXT, ts INTEGER, pos INTEGER)")
        self.triggers: list[dict[str, Any]] = []
        self.suppressed: list[dict[str, Any]] = []

    # the clock: the latest event time minus the lateness; a deadline fires once the clock has passed it plus the
    # purchase grace, in (time, rule, customer, product) order
    def clock(self, ts_ms: int) -> None:
        if ts_ms > self.max_ts:
            self.max_ts = ts_ms
            self.advance(ts_ms - self.lateness)

    def advance(self, watermark: int) -> None:
        self.watermark = max(self.watermark, watermark)
        while self.deadlines and self.deadlines[0][0] <= self.watermark - self.grace:
            deadline, kind, customer, _, product = heapq.heappop(self.deadlines)
            for rule in ("cart_abandoned", "browse_abandoned"):
                entry = self.pending.get((rule, customer, product))
                if entry is not None and entry[0] == deadline and KIND_ORDER[rule] == kind:
                    self.fire(rule, customer, product, entry)

    def fire(self, rule: str, customer: str, product: Any, entry: tuple[int, int, list[str]]) -> None:
        """A due deadline; a cart one takes the customer's cart deadlines due within 10 minutes after it along."""
        del self.pending[(rule, customer, product)]
        group = [(entry[1], product, entry[2])]
        if rule == "cart_abandoned":
            for (other_rule, other_customer, other), (deadline, set_ts, evidence) in list(self.pending.items()):
                if other_rule == rule and other_customer == customer and entry[0] <= deadline <= entry[0] + 600_000:
                    del self.pending[(other_rule, other_customer, other)]
                    group.append((set_ts, other, evidence))
            group.sort(key=lambda item: (-item[0], orjson.dumps(item[1])))
        self.decide(rule, customer, [item[1] for item in group], entry[0], None,
                    [event_id for *_, ids in group for event_id in ids])

    def schedule(self, rule: str, customer: str, product: Any, ts: int, evidence: list[str]) -> None:
        deadline = quiet_hours_end(ts + self.delay[rule])
        if deadline + self.grace <= self.watermark:
            self.suppressed.append({"rule": rule, "customer_id": customer, "ts_ms": deadline, "reason": "late_event",
                                    "products": [product]})
            return
        self.pending[(rule, customer, product)] = (deadline, ts, evidence)
        heapq.heappush(self.deadlines, (deadline, KIND_ORDER[rule], customer, orjson.dumps(product), product))

    def cancel(self, rule: str, customer: str, product: Any, ts: int, reason: str) -> None:
        entry = self.pending.get((rule, customer, product))
        if entry is not None and entry[1] <= ts < entry[0]:  # set before it, due after it
            del self.pending[(rule, customer, product)]
            self.suppressed.append({"rule": rule, "customer_id": customer, "ts_ms": ts, "reason": reason,
                                    "products": [product]})

    def bought_since(self, customer: str, product: Any, ts: int) -> bool:
        return self.last_purchase.get((customer, product), -1) >= ts

    # the events
    def view(self, customer: str, product: Any, ts: int, event_id: str) -> None:
        self.db.execute("INSERT INTO views VALUES (?, ?, ?, ?, ?)", (customer, orjson.dumps(product).decode(), ts,
                                                                     event_id, self.position))
        if ("browse_abandoned", customer, product) not in self.pending and not self.bought_since(customer, product, ts):
            self.schedule("browse_abandoned", customer, product, ts, [event_id])

    def add(self, customer: str, product: Any, ts: int, event_id: str) -> None:
        if self.bought_since(customer, product, ts):
            return
        entry = self.pending.get(("cart_abandoned", customer, product))
        if entry is not None and entry[1] > ts:
            return
        if entry is not None and entry[0] <= ts:  # due already (waiting out the grace): it fires as it stands
            self.fire("cart_abandoned", customer, product, entry)
            entry = None
        evidence = (entry[2] if entry else [])[-9:] + [event_id]
        self.schedule("cart_abandoned", customer, product, ts, evidence)
        self.cancel("browse_abandoned", customer, product, ts, "moved_to_cart")  # the add replaces the browse one

    def purchase(self, customer: str, products: list[Any], ts: int) -> None:
        for product in dict.fromkeys(products):
            self.last_purchase[(customer, product)] = max(self.last_purchase.get((customer, product), -1), ts)
            self.db.execute("INSERT INTO purchases VALUES (?, ?, ?, ?)", (customer, orjson.dumps(product).decode(),
                                                                          ts, self.position))
            for rule in ("cart_abandoned", "browse_abandoned"):
                self.cancel(rule, customer, product, ts, "purchased")

    def visit(self, customer: str, visit: dict[str, Any], ts: int) -> None:
        rows = self.db.execute("""
            WITH last_views AS (
                SELECT product, max(ts) AS last_view FROM views
                WHERE customer = :c AND pos < :pos GROUP BY product)
            SELECT lv.product, lv.last_view, (SELECT event_id FROM views v WHERE v.customer = :c AND v.product = lv.product
                                              AND v.ts = lv.last_view AND v.pos < :pos ORDER BY v.pos DESC LIMIT 1)
            FROM last_views lv
            WHERE lv.last_view >= :v - :lookback AND lv.last_view < :v
              AND NOT EXISTS (SELECT 1 FROM purchases p WHERE p.customer = :c AND p.product = lv.product
                              AND p.ts >= lv.last_view AND p.pos < :pos)
            """, {"c": customer, "pos": self.position, "v": ts, "lookback": self.lookback}).fetchall()
        if not rows:
            return
        chosen = sorted(((last, str(orjson.loads(product)), orjson.loads(product), event_id)
                         for product, last, event_id in rows), reverse=True)[:5]
        self.decide("store_visit_offer", customer, [product for _, _, product, _ in chosen], ts, visit["store_id"],
                    [visit["visit_id"]] + [event_id for *_, event_id in chosen])

    def consent_change(self, customer: str, channel: str, status: str, ts: int) -> None:
        current = self.consent[customer].get(channel)
        if current is None or current[1] <= ts:
            self.consent[customer][channel] = (status, ts)

    # the policy: kill switch (none disabled here), location consent for offers, channel consent, then caps
    def decide(self, rule: str, customer: str, products: list[Any], ts: int, store: str | None,
               evidence: list[str]) -> None:
        consent = self.consent[customer]
        channel = next((c for c in ("push", "email", "sms") if consent.get(c, ("",))[0] == "granted"), None)
        reason = None
        if rule == "store_visit_offer" and consent.get("location", ("",))[0] != "granted":
            reason = "no_location_consent"  # the offer uses where the customer is
        elif channel is None:
            reason = "consent_revoked" if any(consent.get(c, ("",))[0] == "revoked" for c in ("push", "email", "sms")) \
                else "no_consent"
        elif sum(ts - 86_400_000 < t <= ts for t in self.fired[customer]) >= 3:
            reason = "customer_cap"
        else:
            allowed = [p for p in products if not (ts - 86_400_000 < self.fired_product.get((customer, "*", str(p)),
                                                                                            -10**15) <= ts)]
            if not allowed:
                reason = "product_cap"
            else:
                products = allowed
        record = {"rule": rule, "customer_id": customer, "ts_ms": ts, "products": products}
        if reason is not None:
            self.suppressed.append({**record, "reason": reason})
            return
        self.fired[customer].append(ts)
        for product in products:
            self.fired_product[(customer, "*", str(product))] = max(ts, self.fired_product.get((customer, "*", str(product)), ts))
        self.triggers.append({**record, "channel": channel, "store_id": store, "evidence": evidence})


def test_triggers_equal_an_independent_computation_on_real_data(tmp_path: Path, real_data: Path) -> None:
    recording = tmp_path / "recording"
    counts, stores = omnichannel_recording(real_data, recording)
    stores_file = write_stores_csv(tmp_path / "geo-stores.csv", stores)
    summary, files = replay(tmp_path, recording, stores=stores_file, config=CONFIG)
    events = records(files["events"])
    visits = records(files["visits"])
    identities = records(files["identities"])
    engine_triggers = records(files["triggers"])
    engine_suppressed = records(files["suppressed"])

    final = {(r["type"], r["value"]): r["customer_id"] for r in identities}
    live_customers = set(final.values())
    merged: set[str] = set()
    for event in events:
        customer = event["customer_id"]
        if customer is not None and customer not in live_customers:  # a customer merged away
            ids = event["event"].get("ids") or {}
            anchor = next((kind, str(ids[kind])) for kind in PRIORITY if kind in ids)
            merged |= {customer, final.get(anchor)}

    confirmations = {(v["device_id"], v["confirmed_at"]): v for v in visits}
    independent = IndependentRules(CONFIG)
    for position, event in enumerate(events):
        independent.position = position
        body, customer, ts = event["event"], event["customer_id"], event["ts_ms"]
        independent.clock(ts)
        if customer is None:
            continue
        if event["topic"] == "web.events":
            kind = body["type"]
            if kind == "view_item":
                independent.view(customer, body["product_id"], ts, body["event_id"])
            elif kind == "add_to_cart":
                independent.add(customer, body["product_id"], ts, body["event_id"])
            elif kind == "remove_from_cart":
                independent.cancel("cart_abandoned", customer, body["product_id"], ts, "removed_from_cart")
            elif kind == "purchase":
                independent.purchase(customer, [item["product_id"] for item in body["items"]], ts)
        elif event["topic"] == "pos.receipts":
            independent.purchase(customer, [item["product_id"] for item in body["items"]], ts)
        elif event["topic"] == "consent.changes":
            independent.consent_change(customer, body["channel"], body["status"], ts)
        elif event["topic"] == "geo.pings":
            from omnitrigger.operators.rules import iso
            visit = confirmations.get((body["ids"]["device_id"], iso(ts)))
            if visit is not None and visit["customer_id"] is not None:
                independent.visit(visit["customer_id"], visit, ts)
    independent.advance(independent.max_ts + independent.grace)  # the end of a replay: every deadline up to the
        # last event time fires

    def mine(record: dict[str, Any]) -> bool:
        return record["customer_id"] not in merged

    expected_triggers = sorted((orjson.dumps(t, option=orjson.OPT_SORT_KEYS) for t in independent.triggers
                                if mine(t)))
    found_triggers = sorted(orjson.dumps({key: t[key] for key in ("rule", "customer_id", "ts_ms", "products", "channel",
                                                                    "store_id", "evidence")}, option=orjson.OPT_SORT_KEYS)
                            for t in engine_triggers if mine(t))
    assert found_triggers == expected_triggers
    expected_suppressed = sorted(orjson.dumps(s, option=orjson.OPT_SORT_KEYS) for s in independent.suppressed if mine(s))
    found_suppressed = sorted(orjson.dumps({key: s[key] for key in ("rule", "customer_id", "ts_ms", "products", "reason")},
                                           option=orjson.OPT_SORT_KEYS) for s in engine_suppressed if mine(s))
    assert found_suppressed == expected_suppressed

    rules = {t["rule"] for t in engine_triggers}
    assert rules == {"cart_abandoned", "browse_abandoned", "store_visit_offer"}, summary.triggers_by_rule
    assert {s["reason"] for s in engine_suppressed} >= {"purchased", "no_consent", "consent_revoked", "customer_cap"}
    compared = sum(mine(t) for t in engine_triggers)
    assert compared >= 0.6 * len(engine_triggers) and compared > 500, (compared, len(engine_triggers), len(merged))
    assert len({t["trigger_id"] for t in engine_triggers}) == len(engine_triggers), "trigger ids are unique"


def test_trigger_and_suppressed_records_keep_their_schemas(tmp_path: Path, real_data: Path) -> None:
    from omnitrigger.schemas.validator import SchemaCompiler

    recording = tmp_path / "recording"
    _, stores = omnichannel_recording(real_data, recording, users=40, receipts=200, trace_days=1)
    _, files = replay(tmp_path, recording, stores=write_stores_csv(tmp_path / "s.csv", stores), config=CONFIG)
    compiler = SchemaCompiler()
    for stream, schema in (("triggers", "trigger.schema.json"), ("suppressed", "suppressed.schema.json"),
                           ("visits", "visit.schema.json")):
        check = compiler.compile_file(schema)
        found = records(files[stream])
        assert found, stream
        for record in found:
            check(record)
