"""Measuring what the triggers do (issue 17), through whole replays on real RocksDB: a deterministic control
group per rule, and conversions online and at the tills within [metrics] conversion_window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import orjson

from conftest import records, replay, write_lines
from omnitrigger.config import Config
from omnitrigger.schemas import SCHEMA_DIR

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z, 18:00 in Helsinki
CONFIG = Config(quiet_hours="")


def carts(recording: Path, cookies: list[str], *, receipts: list[dict[str, Any]] = (),
          web: list[dict[str, Any]] = ()) -> None:
    """Each cookie (with a loyalty card of the same number) grants push and adds P1 at T0; the clock then
    moves on ten days."""
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": f"k-{c}", "ts": T0 - HOUR, "ids": {"cookie_id": c}, "channel": "push", "status": "granted"}
        for c in cookies])
    write_lines(recording / "identity.links.jsonl", [
        {"event_id": f"l-{c}", "ts": T0 - HOUR + 1, "ids": {"cookie_id": c, "loyalty_id": f"L-{c}"},
         "source": "loyalty_card"} for c in cookies])
    write_lines(recording / "web.events.jsonl", [
        *({"event_id": f"w-{c}", "type": "add_to_cart", "ts": T0, "channel": "web", "ids": {"cookie_id": c},
           "product_id": "P1"} for c in cookies), *web,
        {"event_id": "w-tick", "type": "view_item", "ts": T0 + 10 * DAY, "channel": "web",
         "ids": {"cookie_id": "c-tick"}, "product_id": "P9"}])
    write_lines(recording / "pos.receipts.jsonl", list(receipts))


def till(number: int, ts_ms: int, cookie: str, product: str = "P1", qty: int = 2) -> dict[str, Any]:
    return {"terminal_id": "T7", "receipt_no": number, "ts": ts_ms, "store_id": "S1", "ids": {"loyalty_id": f"L-{cookie}"},
            "items": [{"product_id": product, "qty": qty, "price": 4.5}]}


def holdout(share: float) -> Config:
    return CONFIG.with_overrides(rule_tables=(("cart_abandoned", (("holdout", share),)),))


def test_the_control_group_is_the_configured_share_and_exactly_reproducible(tmp_path: Path) -> None:
    cookies = [f"c{n:05d}" for n in range(10_000)]
    carts(tmp_path / "rec", cookies)
    _, first = replay(tmp_path, tmp_path / "rec", name="one", config=holdout(0.1))
    held = [s for s in records(first["suppressed"]) if s["reason"] == "holdout"]
    sent = records(first["triggers"])
    assert len(held) + len(sent) == 10_000
    assert 880 <= len(held) <= 1120  # 10 % of 10,000, within four standard deviations (30)
    _, second = replay(tmp_path, tmp_path / "rec", name="two", config=holdout(0.1).with_overrides(batch_size=7))
    assert second["suppressed"] == first["suppressed"] and second["triggers"] == first["triggers"]
    # A held-out trigger is exactly the trigger that would have gone out: same id, products and time.
    _, none = replay(tmp_path, tmp_path / "rec", name="none", config=CONFIG)
    would = {t["trigger_id"]: t for t in records(none["triggers"])}
    for record in held:
        assert {k: record[k] for k in ("rule", "customer_id", "products", "ts_ms", "channel")} == \
            {k: would[record["trigger_id"]][k] for k in ("rule", "customer_id", "products", "ts_ms", "channel")}
    # Another salt draws another group of the same size.
    salted = CONFIG.with_overrides(rule_tables=(("cart_abandoned", (("holdout", 0.1), ("holdout_salt", "2026-q4"))),))
    _, other = replay(tmp_path, tmp_path / "rec", name="salted", config=salted)
    other_held = {s["customer_id"] for s in records(other["suppressed"]) if s["reason"] == "holdout"}
    assert 880 <= len(other_held) <= 1120 and other_held != {s["customer_id"] for s in held}


def conversions(files: dict[str, bytes]) -> list[dict[str, Any]]:
    schema = orjson.loads((SCHEMA_DIR / "conversion.schema.json").read_bytes())
    out = records(files["conversions"])
    for record in out:
        jsonschema.validate(record, schema)
    return out


def test_a_till_purchase_two_days_after_a_reminder_converts_and_eight_days_after_does_not(tmp_path: Path) -> None:
    carts(tmp_path / "rec", ["c1", "c2"], receipts=[till(1, T0 + HOUR + 2 * DAY, "c1"),
                                                    till(2, T0 + HOUR + 8 * DAY, "c2")])
    summary, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    [conversion] = conversions(files)
    [reminder] = [t for t in records(files["triggers"]) if t["customer_id"] == conversion["customer_id"]]
    assert conversion["trigger_id"] == reminder["trigger_id"] and conversion["arm"] == "treated"
    assert conversion["purchase_channel"] == "pos" and conversion["store_id"] == "S1"
    assert conversion["product"] == "P1" and conversion["amount"] == 9.0 and conversion["delay_s"] == 2 * 86_400
    assert conversion["evidence"] == ["T7/1"]
    assert summary.conversions_by_arm == {"treated": 1}
    _, shorter = replay(tmp_path, tmp_path / "rec", name="window", config=CONFIG.with_overrides(
        conversion_window_s=86_400.0))
    assert records(shorter["conversions"]) == []


def test_a_held_out_customers_purchase_counts_in_the_control_arm(tmp_path: Path) -> None:
    cookies = [f"c{n}" for n in range(40)]
    carts(tmp_path / "probe", cookies)
    _, probe = replay(tmp_path, tmp_path / "probe", name="probe", config=holdout(0.5))
    held = {s["customer_id"] for s in records(probe["suppressed"]) if s["reason"] == "holdout"}
    identities = {i["customer_id"]: i["value"] for i in records(probe["identities"]) if i["type"] == "cookie_id"}
    held_cookie = next(identities[c] for c in sorted(held))
    sent_cookie = next(identities[t["customer_id"]] for t in records(probe["triggers"]))
    web_purchase = {"event_id": "w-buy", "type": "purchase", "ts": T0 + 3 * DAY, "channel": "app",
                    "ids": {"cookie_id": sent_cookie}, "items": [{"product_id": "P1", "qty": 1, "price": 12.0}]}
    carts(tmp_path / "rec", cookies, receipts=[till(1, T0 + 2 * DAY, held_cookie)], web=[web_purchase])
    _, files = replay(tmp_path, tmp_path / "rec", config=holdout(0.5))
    by_arm = {c["arm"]: c for c in conversions(files)}
    assert set(by_arm) == {"holdout", "treated"}
    assert by_arm["holdout"]["customer_id"] in held and by_arm["holdout"]["purchase_channel"] == "pos"
    assert by_arm["treated"]["purchase_channel"] == "app" and by_arm["treated"]["store_id"] is None


def test_a_purchase_before_the_reminders_time_is_a_retraction_not_a_conversion(tmp_path: Path) -> None:
    """Bought at minute 58, the receipt delivered after one of minute 70 (the reminder, due at 60 with a 5-minute
    grace, had gone out): a retraction, and no conversion."""
    carts(tmp_path / "rec", ["c1", "c2"], receipts=[till(1, T0 + 70 * MINUTE, "c2", product="P7"),
                                                    till(2, T0 + 58 * MINUTE, "c1")])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    [retraction] = records(files["retractions"])
    assert retraction["reason"] == "purchased_before_due" and retraction["products"] == ["P1"]
    assert conversions(files) == []


def test_the_winners_assignment_holds_after_a_merge(tmp_path: Path) -> None:
    """c-new's customer is merged into c-old's (seen first): the trigger is decided for the winner, so the
    winner's draw, and nothing about the loser's, decides whether it is held out."""
    from omnitrigger.operators.rules import configured_rules
    from omnitrigger.operators.rules.host import held_out

    rec = tmp_path / "rec"
    write_lines(rec / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0 - 2 * HOUR, "ids": {"cookie_id": "c-old"}, "channel": "push", "status": "granted"}])
    write_lines(rec / "web.events.jsonl", [
        {"event_id": "w-1", "type": "add_to_cart", "ts": T0, "channel": "web", "ids": {"cookie_id": "c-new"},
         "product_id": "P1"},
        {"event_id": "w-tick", "type": "view_item", "ts": T0 + 2 * DAY, "channel": "web", "ids": {"cookie_id": "c-t"},
         "product_id": "P9"}])
    write_lines(rec / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 + 5 * MINUTE, "ids": {"cookie_id": "c-old", "auth_id": "anna"}, "source": "login"},
        {"event_id": "l-2", "ts": T0 + 6 * MINUTE, "ids": {"cookie_id": "c-new", "auth_id": "anna"}, "source": "login"}])
    config = holdout(0.5)
    _, files = replay(tmp_path, rec, config=config)
    winner = next(i["customer_id"] for i in records(files["identities"]) if i["value"] == "c-old")
    rule = next(r for r in configured_rules(config) if r.name == "cart_abandoned")
    decided = [r for r in records(files["triggers"]) + records(files["suppressed"]) if r["rule"] == "cart_abandoned"]
    assert [r["customer_id"] for r in decided] == [winner]
    assert (decided[0].get("reason") == "holdout") == held_out(rule, winner, 0.5)


def test_a_control_group_larger_than_half_or_a_blank_salt_is_one_line(tmp_path: Path) -> None:
    from omnitrigger.config import ConfigError, load_config

    for text, expected in [('[policy]\nholdout = 0.7\n', "policy.holdout: expected a share of customers from 0 to 0.5"),
                           ('[rules.cart_abandoned]\nholdout = -0.1\n', "rules.cart_abandoned.holdout"),
                           ('[rules.cart_abandoned]\nholdout = 0.1\nholdout_salt = ""\n',
                            "rules.cart_abandoned.holdout_salt: expected a non-empty string")]:
        path = tmp_path / "c.toml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as error:
            assert expected in str(error), str(error)
        else:
            raise AssertionError(f"accepted: {text}")
