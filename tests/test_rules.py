"""The trigger rules and the policy, scenario by scenario (docs/semantics.md, Rules and policy), on the real operators."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from omnitrigger.config import Config
from omnitrigger.operators import EventClock, History, Identity, Rules
from omnitrigger.operators.stage_chain import StageChain
from omnitrigger.records import SUPPRESSED, TRIGGERS, VISIT_CONFIRMED, Event, Heartbeat
from omnitrigger.state import RocksDBStore, ShardState

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_764_000_000_000
CONFIG = Config(rules_lateness_s=0, purchase_grace_s=0, quiet_hours="")  # the base semantics; test_trust.py has the grace, test_delivery.py quiet hours


class Shop:
    """Identity, history, the clock and the rules over real RocksDB, one event at a time, each an epoch."""

    def __init__(self, path: Path, config: Config = CONFIG) -> None:
        self.store = RocksDBStore(path)
        self.config = config
        self.states = [ShardState(self.store, name, 0) for name in ("stage", "identity", "history", "clock", "rules")]
        operators = [Identity(self.states[1], config), History(self.states[2], config),
                     EventClock(self.states[3], config), Rules(self.states[4], config)]
        self.chain = StageChain(operators, self.states[0], emit_events=False)
        self.seq = 0
        self.triggers: list[dict[str, Any]] = []
        self.suppressed: list[dict[str, Any]] = []
        self.last: Event | None = None

    def send(self, topic: str, ts_ms: int, ids: dict[str, str], **body: Any) -> Event:
        event = Event(self.seq, topic, 0, self.seq, ts_ms, {"ts": ts_ms, "ids": ids, **body})
        self.seq += 1
        self._run([event])
        return self.last

    def _run(self, items: list[Any]) -> None:
        emitted, events = self.chain.on_batches([items])
        for state in self.states:
            state.commit()
        self.triggers += [e.record for e in emitted if e.stream == TRIGGERS]
        self.suppressed += [e.record for e in emitted if e.stream == SUPPRESSED]
        real = [e for e in events
                if type(e) is Event and (not e.topic.startswith("omnitrigger.") or e.topic == VISIT_CONFIRMED)]
        self.last = real[-1] if real else None

    def web(self, kind: str, ts_ms: int, ids: dict[str, str], product: str | None = None, **body: Any) -> Event:
        fields: dict[str, Any] = {"type": kind, "channel": "web", "event_id": f"w{self.seq}", **body}
        if product is not None:
            fields["product_id"] = product
        return self.send("web.events", ts_ms, ids, **fields)

    def buy_online(self, ts_ms: int, ids: dict[str, str], *products: str) -> Event:
        return self.web("purchase", ts_ms, ids, items=[{"product_id": p, "qty": 1, "price": 9.9} for p in products])

    def receipt(self, ts_ms: int, ids: dict[str, str], *products: str) -> Event:
        return self.send("pos.receipts", ts_ms, ids, terminal_id="T1", receipt_no=str(self.seq), store_id="S1",
                         items=[{"product_id": p, "qty": 1, "price": 9.9} for p in products])

    def consent(self, ts_ms: int, ids: dict[str, str], channel: str, status: str = "granted") -> Event:
        return self.send("consent.changes", ts_ms, ids, channel=channel, status=status, event_id=f"c{self.seq}")

    def link(self, ts_ms: int, ids: dict[str, str], source: str = "login") -> Event:
        return self.send("identity.links", ts_ms, ids, source=source, event_id=f"l{self.seq}")

    def visit(self, ts_ms: int, customer: str, store: str = "S1") -> None:
        body = {"visit_id": f"visit-{self.seq}", "device_id": "d", "customer_id": customer, "store_id": store}
        self._run([Event(self.seq, VISIT_CONFIRMED, -1, -1, ts_ms, body, customer)])
        self.seq += 1

    def tick(self, ts_ms: int) -> None:
        """Any event moves the clock: a ping of an unrelated device."""
        self.send("geo.pings", ts_ms, {"device_id": "clock-mover"}, event_id=f"p{self.seq}", lat=0.0, lon=0.0,
                  accuracy_m=5.0, source="gps")

    def reasons(self) -> list[str]:
        return [record["reason"] for record in self.suppressed]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    instance = Shop(tmp_path / "db")
    yield instance
    instance.close()


ANNA = {"device_id": "anna-phone"}


def test_cart_abandoned_fires_when_the_clock_passes_the_deadline(shop: Shop) -> None:
    anna = shop.consent(T0 - HOUR, ANNA, "push").customer
    add = shop.web("add_to_cart", T0, ANNA, "P1")
    shop.tick(T0 + 60 * MINUTE - 1)
    assert shop.triggers == []
    shop.tick(T0 + 60 * MINUTE)
    [trigger] = shop.triggers
    assert (trigger["rule"], trigger["customer_id"], trigger["channel"], trigger["products"]) == (
        "cart_abandoned", anna, "push", ["P1"])
    assert trigger["ts_ms"] == T0 + HOUR and trigger["evidence"] == [add.body["event_id"]]
    assert trigger["ts"] == "2025-11-24T17:00:00.000Z" and trigger["emitted_at"] == trigger["ts"]


def test_a_later_add_moves_the_deadline_and_the_id_is_deterministic(shop: Shop, tmp_path: Path) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.web("add_to_cart", T0 + 30 * MINUTE, ANNA, "P1")
    shop.tick(T0 + 61 * MINUTE)
    assert shop.triggers == []
    shop.tick(T0 + 90 * MINUTE)
    [trigger] = shop.triggers
    assert trigger["ts_ms"] == T0 + 90 * MINUTE and len(trigger["evidence"]) == 2
    again = Shop(tmp_path / "again")
    again.consent(T0 - HOUR, ANNA, "push")
    again.web("add_to_cart", T0, ANNA, "P1")
    again.web("add_to_cart", T0 + 30 * MINUTE, ANNA, "P1")
    again.tick(T0 + 2 * HOUR)
    assert again.triggers == shop.triggers
    again.close()


def test_removal_from_the_cart_cancels_and_says_so(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.web("remove_from_cart", T0 + 10 * MINUTE, ANNA, "P1")
    shop.tick(T0 + 2 * HOUR)
    assert shop.triggers == [] and shop.reasons() == ["removed_from_cart"]


def test_an_online_purchase_cancels_cart_and_browse(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("view_item", T0, ANNA, "P1")
    shop.web("add_to_cart", T0 + MINUTE, ANNA, "P1")
    shop.buy_online(T0 + 20 * MINUTE, ANNA, "P1")
    shop.tick(T0 + 2 * DAY)
    assert shop.triggers == []
    assert sorted((r["rule"], r["reason"], r.get("purchase_channel")) for r in shop.suppressed) == [
        ("browse_abandoned", "moved_to_cart", None), ("cart_abandoned", "purchased", "web")]  # the add took the view


def test_a_till_purchase_under_a_loyalty_card_linked_to_the_browsing_device_cancels(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("view_item", T0, ANNA, "P1")
    shop.web("add_to_cart", T0 + MINUTE, ANNA, "P1")
    shop.link(T0 + 2 * MINUTE, {"device_id": "anna-phone", "auth_id": "anna"})
    shop.link(T0 + 3 * MINUTE, {"auth_id": "anna", "loyalty_id": "L-17"}, source="loyalty_card")
    receipt = shop.receipt(T0 + 40 * MINUTE, {"loyalty_id": "L-17"}, "P1", "P9")
    shop.tick(T0 + 2 * DAY)
    assert shop.triggers == []
    assert sorted((r["rule"], r["reason"], r["customer_id"], r.get("purchase_channel")) for r in shop.suppressed) == [
        ("browse_abandoned", "moved_to_cart", receipt.customer, None),  # the add replaced the browse reminder
        ("cart_abandoned", "purchased", receipt.customer, "pos")]


def test_a_purchase_of_another_product_cancels_nothing(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.receipt(T0 + 5 * MINUTE, ANNA, "P2")
    shop.tick(T0 + 2 * HOUR)
    assert [t["products"] for t in shop.triggers] == [["P1"]]


def test_browse_abandoned_fires_a_day_after_the_first_view(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "email")
    first = shop.web("view_item", T0, ANNA, "P1")
    shop.web("view_item", T0 + 5 * HOUR, ANNA, "P1")  # pending already: does not move it
    shop.tick(T0 + DAY)
    [trigger] = shop.triggers
    assert (trigger["rule"], trigger["ts_ms"], trigger["channel"], trigger["evidence"]) == (
        "browse_abandoned", T0 + DAY, "email", [first.body["event_id"]])


def test_store_visit_offer_lists_recent_unbought_views_most_recent_first(shop: Shop) -> None:
    anna = shop.consent(T0 - 2 * DAY, ANNA, "push").customer
    shop.consent(T0 - 2 * DAY, ANNA, "location")
    shop.web("view_item", T0 - 25 * HOUR, ANNA, "OLD")  # outside [v - 24 h, v)
    for n in range(7):
        shop.web("view_item", T0 + n * MINUTE, ANNA, f"P{n}")
    shop.buy_online(T0 + 10 * MINUTE, ANNA, "P6")  # bought after its view: not offered
    shop.receipt(T0 + 11 * MINUTE, ANNA, "P0")
    shop.web("view_item", T0 + 12 * MINUTE, ANNA, "P0")  # viewed again after buying: offered again
    shop.visit(T0 + 2 * HOUR, anna)
    [offer] = [t for t in shop.triggers if t["rule"] == "store_visit_offer"]
    assert offer["products"] == ["P0", "P5", "P4", "P3", "P2"]
    assert offer["store_id"] == "S1" and offer["evidence"][0].startswith("visit-") and len(offer["evidence"]) == 6


def test_no_offer_when_nothing_qualifies(shop: Shop) -> None:
    anna = shop.consent(T0 - HOUR, ANNA, "push").customer
    shop.web("view_item", T0, ANNA, "P1")
    shop.buy_online(T0 + MINUTE, ANNA, "P1")
    shop.visit(T0 + HOUR, anna)
    assert [t for t in shop.triggers if t["rule"] == "store_visit_offer"] == []
    assert "store_visit_offer" not in {r["rule"] for r in shop.suppressed}


def test_consent_order_and_revocation(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "sms")
    shop.consent(T0 - HOUR, ANNA, "email")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.tick(T0 + HOUR)
    assert shop.triggers[-1]["channel"] == "email", "push, then email, then sms"
    shop.consent(T0 + 2 * HOUR, ANNA, "push")
    shop.web("add_to_cart", T0 + 2 * HOUR, ANNA, "P2")
    shop.tick(T0 + 3 * HOUR)
    assert shop.triggers[-1]["channel"] == "push"
    for channel in ("push", "email", "sms"):
        shop.consent(T0 + 4 * HOUR, ANNA, channel, "revoked")
    shop.web("add_to_cart", T0 + 4 * HOUR, ANNA, "P3")
    shop.tick(T0 + 6 * HOUR)
    assert len(shop.triggers) == 2 and shop.reasons() == ["consent_revoked"]


def test_no_consent_at_all_is_suppressed(shop: Shop) -> None:
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.tick(T0 + 2 * HOUR)
    assert shop.triggers == [] and shop.reasons() == ["no_consent"]


def test_kill_switch_in_the_config(tmp_path: Path) -> None:
    shop = Shop(tmp_path / "db", CONFIG.with_overrides(disabled_rules=("cart_abandoned",)))
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.tick(T0 + 2 * HOUR)
    assert shop.triggers == [] and shop.reasons() == ["rule_disabled"]
    shop.close()


def test_kill_switch_in_a_control_file_flips_while_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import omnitrigger.operators.policy as policy

    monkeypatch.setattr(policy, "CONTROL_CHECK_INTERVAL_S", 0.0)
    control = tmp_path / "control.json"
    control.write_bytes(orjson.dumps({"disabled_rules": []}))
    shop = Shop(tmp_path / "db", CONFIG.with_overrides(control_file=str(control)))
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.tick(T0 + HOUR)
    control.write_bytes(orjson.dumps({"disabled_rules": ["cart_abandoned"]}))
    os.utime(control, (1, 1))  # a different mtime, whatever the file system's resolution
    shop.web("add_to_cart", T0 + 2 * HOUR, ANNA, "P2")
    shop.tick(T0 + 3 * HOUR)
    assert [t["products"] for t in shop.triggers] == [["P1"]] and shop.reasons() == ["rule_disabled"]
    shop.close()


def test_at_most_three_triggers_per_customer_per_rolling_day(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    for n in range(5):
        shop.web("add_to_cart", T0 + n * HOUR, ANNA, f"P{n}")
    shop.tick(T0 + 6 * HOUR)
    assert len(shop.triggers) == 3 and shop.reasons() == ["customer_cap", "customer_cap"]
    shop.web("add_to_cart", T0 + 24 * HOUR, ANNA, "P9")  # fires at 25 h: the first trigger (1 h) is out of the window
    shop.tick(T0 + 26 * HOUR)
    assert len(shop.triggers) == 4


def test_one_trigger_per_customer_rule_and_product_per_day(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.tick(T0 + HOUR)
    shop.web("add_to_cart", T0 + 2 * HOUR, ANNA, "P1")
    shop.tick(T0 + 3 * HOUR)
    assert len(shop.triggers) == 1 and shop.reasons() == ["product_cap"]
    shop.web("add_to_cart", T0 + 24 * HOUR, ANNA, "P1")
    shop.tick(T0 + 26 * HOUR)
    assert len(shop.triggers) == 2


def test_late_events_within_the_lateness_count_and_later_ones_are_reported(tmp_path: Path) -> None:
    shop = Shop(tmp_path / "db", Config(rules_lateness_s=300))
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop.tick(T0 + HOUR + 2 * MINUTE)  # the clock is 3 minutes short of the deadline
    shop.buy_online(T0 + 50 * MINUTE, ANNA, "P1")  # later than the lateness, but the deadline has not fired
    shop.tick(T0 + 2 * HOUR)
    assert shop.triggers == [] and shop.reasons() == ["purchased"]
    shop.web("add_to_cart", T0 + 10 * MINUTE, ANNA, "P2")  # its deadline passed long ago
    assert shop.reasons() == ["purchased", "late_event"]
    shop.tick(T0 + 3 * HOUR)
    assert shop.triggers == []
    shop.close()


def test_an_idle_live_source_still_fires_deadlines(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    shop.web("add_to_cart", T0, ANNA, "P1")
    shop._run([Heartbeat(T0 + 59 * MINUTE)])
    assert shop.triggers == []
    shop._run([Heartbeat(T0 + 61 * MINUTE)])
    assert [t["rule"] for t in shop.triggers] == ["cart_abandoned"]


def test_a_merge_brings_the_anonymous_cart_to_the_account_with_its_consent(shop: Shop) -> None:
    account = shop.link(T0 - DAY, {"device_id": "anna-laptop", "auth_id": "anna"})
    shop.consent(T0 - DAY, {"auth_id": "anna"}, "push")
    phone = shop.web("add_to_cart", T0, {"device_id": "anna-phone-2"}, "P1")  # anonymous: no consent
    assert phone.customer != account.customer
    shop.link(T0 + 10 * MINUTE, {"device_id": "anna-phone-2", "auth_id": "anna"})
    shop.tick(T0 + 2 * HOUR)
    [trigger] = shop.triggers
    assert trigger["customer_id"] == account.customer and trigger["channel"] == "push"
    assert shop.reasons() == []


def test_a_purchase_on_the_account_cancels_the_merged_devices_cart(shop: Shop) -> None:
    shop.link(T0 - DAY, {"device_id": "anna-laptop", "auth_id": "anna"})
    shop.consent(T0 - DAY, {"auth_id": "anna"}, "push")
    shop.web("add_to_cart", T0, {"device_id": "anna-phone-2"}, "P1")
    shop.buy_online(T0 + 5 * MINUTE, {"auth_id": "anna"}, "P1")  # bought on the account before the merge
    shop.link(T0 + 10 * MINUTE, {"device_id": "anna-phone-2", "auth_id": "anna"})
    shop.tick(T0 + 2 * HOUR)
    assert shop.triggers == []


def test_expired_rule_state_is_deleted_from_the_store(shop: Shop) -> None:
    shop.consent(T0 - HOUR, ANNA, "push")
    for n in range(200):
        shop.web("view_item", T0 + n, ANNA, f"P{n}")  # 200 views, 200 browse deadlines
    shop.tick(T0 + 2 * DAY)
    shop.tick(T0 + 4 * DAY)
    rules_state = shop.states[4]
    keys = [key for key, _ in rules_state.scan(b"", b"\xff", now_ms=0)]
    assert not any(key.startswith(b"V") for key in keys), "views past the offer lookback are gone"
    assert len(keys) < 20, keys[:20]
