"""One message per intent (issue 15, first part), through whole replays on real RocksDB.

A cart filled in a few minutes gives one reminder listing its products; an add to cart replaces the
product's browse reminder; one message per (customer, product) per product cap window across rules.
Each has a setting that switches it off, and the tests show both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import records, replay, write_lines
from omnitrigger.config import Config

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_764_000_000_000


def shopper(recording: Path, web: list[dict[str, Any]]) -> None:
    """Cookie c1 with push consent; `web` are its events, then someone else's view much later moves the clock."""
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0 - HOUR, "ids": {"cookie_id": "c1"}, "channel": "push", "status": "granted"}])
    tick = {"event_id": "w-tick", "type": "view_item", "ts": T0 + 3 * 24 * HOUR, "channel": "web",
            "ids": {"cookie_id": "c9"}, "product_id": "P9"}
    write_lines(recording / "web.events.jsonl", [*web, tick])


def event(n: int, kind: str, ts_ms: int, product: str) -> dict[str, Any]:
    return {"event_id": f"w-{n}", "type": kind, "ts": ts_ms, "channel": "web", "ids": {"cookie_id": "c1"},
            "product_id": product}


def mine(files: dict[str, bytes], stream: str) -> list[dict[str, Any]]:
    return [r for r in records(files[stream]) if r["products"] != ["P9"]]


def test_a_cart_filled_in_seconds_gives_one_reminder(tmp_path: Path) -> None:
    shopper(tmp_path / "rec", [event(1, "add_to_cart", T0, "P1"), event(2, "add_to_cart", T0 + 2000, "P2"),
                               event(3, "add_to_cart", T0 + 4000, "P3"),
                               event(4, "add_to_cart", T0 + 30 * MINUTE, "P4")])  # 30 minutes later: its own
    _, files = replay(tmp_path, tmp_path / "rec", config=Config())
    first, second = mine(files, "triggers")
    assert first["rule"] == "cart_abandoned" and first["products"] == ["P3", "P2", "P1"]  # most recent first
    assert first["ts_ms"] == T0 + HOUR and first["evidence"] == ["w-3", "w-2", "w-1"]
    assert second["products"] == ["P4"]
    _, apart = replay(tmp_path, tmp_path / "rec", name="apart", config=Config(cart_group_window_s=0))
    assert [t["products"] for t in mine(apart, "triggers")][:3] == [["P1"], ["P2"], ["P3"]]


def test_an_add_to_cart_replaces_the_browse_reminder(tmp_path: Path) -> None:
    shopper(tmp_path / "rec", [event(1, "view_item", T0, "P1"), event(2, "add_to_cart", T0 + MINUTE, "P1")])
    _, files = replay(tmp_path, tmp_path / "rec", config=Config())
    assert [t["rule"] for t in mine(files, "triggers")] == ["cart_abandoned"]
    assert [(s["rule"], s["reason"]) for s in mine(files, "suppressed")] == [("browse_abandoned", "moved_to_cart")]
    _, both = replay(tmp_path, tmp_path / "rec", name="both",
                     config=Config(add_cancels_browse=False, cross_rule_product_cap=False))
    assert [t["rule"] for t in mine(both, "triggers")] == ["cart_abandoned", "browse_abandoned"]


def test_one_message_per_product_across_rules(tmp_path: Path) -> None:
    """Viewed, carted and left: with the add not cancelling the browse reminder, the product cap still holds it."""
    shopper(tmp_path / "rec", [event(1, "view_item", T0, "P1"), event(2, "add_to_cart", T0 + MINUTE, "P1")])
    _, files = replay(tmp_path, tmp_path / "rec", config=Config(add_cancels_browse=False))
    assert [t["rule"] for t in mine(files, "triggers")] == ["cart_abandoned"]
    assert [(s["rule"], s["reason"]) for s in mine(files, "suppressed")] == [("browse_abandoned", "product_cap")]


# -- quiet hours ------------------------------------------------------------------------------------------------

EVENING = 1_764_101_400_000  # 2025-11-25T20:10:00Z = 22:10 in Helsinki


def test_a_reminder_due_at_night_waits_for_nine_in_the_morning(tmp_path: Path) -> None:
    """Added at 22:10 Helsinki time: due 23:10, inside 21:00-09:00, so it goes out at 09:00 the next morning."""
    shopper(tmp_path / "rec", [event(1, "add_to_cart", EVENING, "P1")])
    _, files = replay(tmp_path, tmp_path / "rec", config=Config())
    [trigger] = mine(files, "triggers")
    assert trigger["ts"] == "2025-11-26T07:00:00.000Z"  # 09:00 in Helsinki (UTC+2)
    _, off = replay(tmp_path, tmp_path / "rec", name="off", config=Config(quiet_hours=""))
    assert mine(off, "triggers")[0]["ts_ms"] == EVENING + HOUR


def test_a_purchase_before_the_deferred_time_still_cancels(tmp_path: Path) -> None:
    buy = {"event_id": "w-buy", "type": "purchase", "ts": EVENING + 8 * HOUR, "channel": "web",
           "ids": {"cookie_id": "c1"}, "items": [{"product_id": "P1", "qty": 1, "price": 2.0}]}
    shopper(tmp_path / "rec", [event(1, "add_to_cart", EVENING, "P1"), buy])  # bought at 06:10, before 09:00
    _, files = replay(tmp_path, tmp_path / "rec", config=Config())
    assert mine(files, "triggers") == []
    assert [(s["rule"], s["reason"]) for s in mine(files, "suppressed")] == [("cart_abandoned", "purchased")]


def test_quiet_hours_follow_the_configured_zone(tmp_path: Path) -> None:
    shopper(tmp_path / "rec", [event(1, "add_to_cart", EVENING, "P1")])
    _, files = replay(tmp_path, tmp_path / "rec", config=Config(timezone="America/New_York"))  # 15:10 there
    assert mine(files, "triggers")[0]["ts_ms"] == EVENING + HOUR


# -- deliverable triggers ---------------------------------------------------------------------------------------


def test_a_trigger_names_whom_to_send_it_to_on_its_channel(tmp_path: Path) -> None:
    """Push: the devices and the account; the cookie the reminder came from is no address for a push message."""
    rec = tmp_path / "rec"
    shopper(rec, [event(1, "add_to_cart", T0, "P1")])
    write_lines(rec / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 + MINUTE, "ids": {"cookie_id": "c1", "auth_id": "anna", "device_id": "phone-1"},
         "source": "login"},
        {"event_id": "l-2", "ts": T0 + 2 * MINUTE, "ids": {"auth_id": "anna", "email": "Anna@Example.com"},
         "source": "crm"}])
    _, files = replay(tmp_path, rec, config=Config())
    [trigger] = mine(files, "triggers")
    assert trigger["channel"] == "push"
    assert trigger["recipient"] == {"auth_id": ["anna"], "device_id": ["phone-1"]}
    [email] = [i["value"] for i in records(files["identities"]) if i["type"] == "email"]
    assert "Anna" not in email  # the email is a keyed hash, in identities and in an email recipient alike


def test_an_email_trigger_carries_the_hashed_address(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    write_lines(rec / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0 - HOUR, "ids": {"email": "anna@example.com"}, "channel": "email",
         "status": "granted"}])
    write_lines(rec / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 - HOUR + 1, "ids": {"email": "anna@example.com", "cookie_id": "c1"},
         "source": "crm"}])
    write_lines(rec / "web.events.jsonl", [event(1, "add_to_cart", T0, "P1"), {
        "event_id": "w-tick", "type": "view_item", "ts": T0 + 3 * 24 * HOUR, "channel": "web",
        "ids": {"cookie_id": "c9"}, "product_id": "P9"}])
    _, files = replay(tmp_path, rec, config=Config())
    [trigger] = [t for t in records(files["triggers"]) if t["products"] == ["P1"]]
    [email] = [i["value"] for i in records(files["identities"]) if i["type"] == "email"]
    assert trigger["channel"] == "email" and trigger["recipient"] == {"email": [email]}


def test_in_store_quiet_hours_follow_the_stores_own_time_zone(tmp_path: Path) -> None:
    """With offers held to quiet hours, a visit at 18:02 UTC is 20:02 in Helsinki (the [policy] timezone: the
    offer goes out) and 03:02 in a store whose `timezone` column says Tokyo (quiet). A bad zone is one line."""
    from test_trust import store_visit

    from omnitrigger.io.stores import StoresError, load_stores

    store_visit(tmp_path / "rec", consents=("push", "location"))
    config = Config(offer_quiet_hours=True)
    helsinki = tmp_path / "helsinki.csv"
    helsinki.write_text("store_id,name,lat,lon,radius_m\nS1,Kamppi,60.1690,24.9320,300\n")
    _, evening = replay(tmp_path, tmp_path / "rec", name="evening", stores=helsinki, config=config)
    assert [(t["rule"], t["store_id"]) for t in records(evening["triggers"])] == [("store_visit_offer", "S1")]
    tokyo = tmp_path / "tokyo.csv"
    tokyo.write_text("store_id,name,lat,lon,radius_m,timezone\nS1,Kamppi,60.1690,24.9320,300,Asia/Tokyo\n")
    _, night = replay(tmp_path, tmp_path / "rec", name="night", stores=tokyo, config=config)
    assert records(night["triggers"]) == []
    assert [(s["rule"], s["reason"]) for s in records(night["suppressed"])] == [("store_visit_offer", "quiet_hours")]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("store_id,name,lat,lon,timezone\nS1,Kamppi,60.1690,24.9320,Mars/Olympus\n")
    try:
        load_stores(wrong)
    except StoresError as error:
        assert "line 2" in str(error) and "Mars/Olympus" in str(error)
    else:
        raise AssertionError("an unknown time zone must be refused")


def test_quiet_hours_of_one_window_and_zone_share_their_minutes_and_agree_with_a_fresh_computation() -> None:
    """operators/quiet_hours.py keeps each minute's answer once per (window, zone), shared by a process's shards
    and stores: every answer is what the computation alone gives, and another zone or window keeps its own."""
    import random

    from omnitrigger.operators.quiet_hours import QuietHours

    helsinki, again = QuietHours("21:00-09:00", "Europe/Helsinki"), QuietHours("21:00-09:00", "Europe/Helsinki")
    tokyo = QuietHours("21:00-09:00", "Asia/Tokyo")
    morning = QuietHours("06:00-08:00", "Europe/Helsinki")
    assert helsinki._memo is again._memo and helsinki._memo is not tokyo._memo and helsinki._memo is not morning._memo
    rng = random.Random(5)
    start_ms = 1_711_800_000_000  # 2024-03-30: the spring change to summer time in Helsinki falls in these days
    for _ in range(3_000):
        ts_ms = start_ms + rng.randrange(0, 4 * 86_400_000)
        for quiet in (helsinki, again, tokyo, morning):
            minute_ms = ts_ms // 60_000 * 60_000
            end = quiet._compute(minute_ms)
            assert quiet.defer(ts_ms) == (ts_ms if end is None else end)
    assert helsinki.defer(1_711_843_200_000) == 1_711_864_800_000  # 2024-03-31 00:00 UTC (02:00 local) -> 09:00 EEST
