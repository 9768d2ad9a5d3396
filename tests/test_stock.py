"""Stock-aware rules from the optional input topic inventory.levels (issue 16), through whole replays:
back_in_stock for a product looked at while it was out of stock, and in-store offers that leave out what
the store has too few of (the pharmacy case: fewer than 3 units, no offer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import records, replay, write_lines
from omnitrigger.config import Config
from test_trust import T0, cart_shopper

MINUTE = 60_000
HOUR = 60 * MINUTE


def level(n: int, ts_ms: int, store: str, product: str, qty: float) -> dict[str, Any]:
    return {"event_id": f"s-{n}", "ts": ts_ms, "store_id": store, "product_id": product, "qty": qty}


def look(n: int, ts_ms: int, cookie: str, product: str) -> dict[str, Any]:
    return {"event_id": f"w-{n}", "type": "view_item", "ts": ts_ms, "channel": "web", "ids": {"cookie_id": cookie},
            "product_id": product}


BACK_IN_STOCK = Config(quiet_hours="", rule_tables=(("back_in_stock", (("kind", "back_in_stock"),)),))


def test_a_product_looked_at_while_out_of_stock_is_announced_when_it_is_back(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    write_lines(rec / "consent.changes.jsonl", [
        {"event_id": f"k-{c}", "ts": T0 - 3 * HOUR, "ids": {"cookie_id": c}, "channel": "push", "status": "granted"}
        for c in ("c1", "c2", "c3")])
    write_lines(rec / "inventory.levels.jsonl", [
        level(1, T0 - HOUR, "online", "P1", 0),
        level(2, T0 - HOUR, "online", "P2", 8),
        level(3, T0 + 2 * HOUR, "online", "P1", 5),   # back: c1 hears of it
        level(4, T0 + 3 * HOUR, "online", "P1", 0),
        level(5, T0 + 4 * HOUR, "online", "P1", 3)])  # back again: nobody waits any more
    write_lines(rec / "web.events.jsonl", [
        look(1, T0 - 2 * HOUR, "c3", "P1"),  # before anyone knew it was out: no wait
        look(2, T0, "c1", "P1"),
        look(3, T0, "c2", "P1"),
        look(4, T0, "c1", "P2"),  # in stock: no wait
        {"event_id": "w-5", "type": "purchase", "ts": T0 + HOUR, "channel": "web", "ids": {"cookie_id": "c2"},
         "items": [{"product_id": "P1", "qty": 1, "price": 9.0}]},  # c2 found it elsewhere: no message
        look(6, T0 + 2 * 24 * HOUR, "c-tick", "P9")])
    _, files = replay(tmp_path, rec, config=BACK_IN_STOCK)
    [trigger] = [t for t in records(files["triggers"]) if t["rule"] == "back_in_stock"]
    c1 = next(i["customer_id"] for i in records(files["identities"]) if i["value"] == "c1")
    assert trigger["customer_id"] == c1 and trigger["products"] == ["P1"]
    assert trigger["ts_ms"] == T0 + 2 * HOUR and trigger["evidence"] == ["w-2", "s-3"]
    # Same outputs whatever the batch size (the levels reach every rules shard in order).
    _, small = replay(tmp_path, rec, name="small", config=BACK_IN_STOCK.with_overrides(batch_size=2))
    assert small == files


def test_an_in_store_offer_leaves_out_what_the_store_has_too_few_of(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    pings = [{"event_id": f"g-{n}", "ts": T0 + 2 * HOUR + n * 30_000, "ids": {"device_id": "d1"}, "lat": 60.1690,
              "lon": 24.9320, "accuracy_m": 10, "source": "gps"} for n in range(7)]
    web = [{"event_id": f"w-{product}", "type": "view_item", "ts": T0 + n * MINUTE, "channel": "app",
            "ids": {"cookie_id": "c1", "device_id": "d1"}, "product_id": product}
           for n, product in enumerate(("P1", "P2", "P3"))]
    cart_shopper(rec, receipts=[], pings=pings, consents=("push", "location"), web=web)
    write_lines(rec / "inventory.levels.jsonl", [level(1, T0 - HOUR, "S1", "P1", 2),   # two left: not offered
                                                 level(2, T0 - HOUR, "S1", "P2", 10),
                                                 level(3, T0 - HOUR, "S2", "P1", 50)])  # another store's
    stores = tmp_path / "stores.csv"
    stores.write_text("store_id,name,lat,lon,radius_m\nS1,Kamppi,60.1690,24.9320,300\nS2,Far,61.0,25.0,300\n")
    _, files = replay(tmp_path, rec, stores=stores, config=Config(rule_tables=(
        ("store_visit_offer", (("min_stock", 3),)),)))
    [offer] = [t for t in records(files["triggers"]) if t["rule"] == "store_visit_offer"]
    assert offer["products"] == ["P3", "P2"]  # P3: no level known, so not left out
    _, off = replay(tmp_path, rec, name="off", stores=stores, config=Config())
    [offer] = [t for t in records(off["triggers"]) if t["rule"] == "store_visit_offer"]
    assert offer["products"] == ["P3", "P2", "P1"]


def test_a_broken_stock_level_is_a_dead_letter(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    write_lines(rec / "inventory.levels.jsonl", [{"ts": T0, "store_id": "online", "product_id": "P1", "qty": "many"},
                                                 level(2, T0 + 1, "online", "P1", 4)])
    summary, files = replay(tmp_path, rec, config=BACK_IN_STOCK)
    [dead] = records(files["dead_letter"])
    assert dead["reason"] == "wrong_type" and dead["topic"] == "inventory.levels" and dead["offset"] == 0
