"""The seeds' other journeys as rules declared in TOML (issue 16), through whole replays on real RocksDB:
abandoned checkout (an abandonment table), replenishment from a product catalogue, and a welcome after a
customer's first identification. Each is switched on by its `[rules.<name>]` table alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import records, replay, write_lines
from omnitrigger.config import ConfigError, load_config

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z, 18:00 in Helsinki


def consent(ids: dict[str, str], ts_ms: int = T0 - HOUR) -> dict[str, Any]:
    return {"event_id": f"k-{sorted(ids.values())[0]}", "ts": ts_ms, "ids": ids, "channel": "push",
            "status": "granted"}


def web(n: int, kind: str, ts_ms: int, cookie: str = "c1", **fields: Any) -> dict[str, Any]:
    return {"event_id": f"w-{n}", "type": kind, "ts": ts_ms, "channel": "web", "ids": {"cookie_id": cookie}, **fields}


def tick(ts_ms: int) -> dict[str, Any]:
    """Someone else's view: moves the event-time clock."""
    return web(999, "view_item", ts_ms, cookie="c-tick", product_id="P-tick")


def config_file(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "rules.toml"
    path.write_text('[policy]\nquiet_hours = ""\n' + text)
    return load_config(path)


def mine(files: dict[str, bytes], stream: str, rule: str) -> list[dict[str, Any]]:
    return [record for record in records(files[stream]) if record["rule"] == rule]


CHECKOUT = '''
[rules.checkout_abandoned]
kind = "abandonment"
starts_on = ["begin_checkout"]
cancelled_by = ["purchase"]
after = "30m"
'''


def test_an_abandoned_checkout_reminds_after_30_minutes_unless_bought(tmp_path: Path) -> None:
    basket = [{"product_id": "P1", "qty": 1, "price": 20.0}, {"product_id": "P2", "qty": 2, "price": 5.0}]
    write_lines(tmp_path / "rec" / "consent.changes.jsonl", [consent({"cookie_id": "c1"}), consent({"cookie_id": "c2"})])
    write_lines(tmp_path / "rec" / "web.events.jsonl", [
        web(1, "begin_checkout", T0, items=basket),
        web(2, "begin_checkout", T0, cookie="c2", items=basket[:1]),
        web(3, "purchase", T0 + 10 * MINUTE, cookie="c2", items=basket[:1]),  # c2 bought: cancelled
        tick(T0 + 3 * HOUR)])
    config = config_file(tmp_path, CHECKOUT)
    _, files = replay(tmp_path, tmp_path / "rec", config=config)
    triggers = mine(files, "triggers", "checkout_abandoned")
    assert [(t["products"], t["ts_ms"]) for t in triggers] == [(["P1"], T0 + 30 * MINUTE),
                                                               (["P2"], T0 + 30 * MINUTE)]
    [cancelled] = mine(files, "suppressed", "checkout_abandoned")
    assert cancelled["reason"] == "purchased" and cancelled["products"] == ["P1"]
    assert cancelled["purchase_channel"] == "web"
    # Without the table there is no such rule.
    _, without = replay(tmp_path, tmp_path / "rec", name="without", config=config_file(tmp_path, ""))
    assert mine(without, "triggers", "checkout_abandoned") == []


def receipt(number: int, ts_ms: int, *products: str) -> dict[str, Any]:
    return {"terminal_id": "T1", "receipt_no": number, "ts": ts_ms, "store_id": "S1", "ids": {"loyalty_id": "L1"},
            "items": [{"product_id": product, "qty": 1, "price": 4.5} for product in products]}


def test_replenishment_follows_the_catalogue_and_restarts_when_bought_again(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("product_id,category,repurchase_days\nCOFFEE,coffee,30\nBEANS,coffee,\n,coffee,45\n"
                       "SOFA,furniture,\n")
    rec = tmp_path / "rec"
    write_lines(rec / "consent.changes.jsonl", [consent({"loyalty_id": "L1"})])
    write_lines(rec / "pos.receipts.jsonl", [
        receipt(1, T0, "COFFEE", "BEANS", "SOFA"),
        receipt(2, T0 + 20 * DAY, "COFFEE"),  # bought again before its reminder: a new one from here
        receipt(3, T0 + 100 * DAY, "TEA")])  # moves the clock; tea has no interval
    config = config_file(tmp_path, '[rules.replenishment]\nkind = "replenishment"\n')
    _, files = replay(tmp_path, rec, config=config.with_overrides(catalog_file=str(catalog)))
    sent = [(t["products"], t["ts_ms"]) for t in mine(files, "triggers", "replenishment")]
    assert sent == [(["BEANS"], T0 + 45 * DAY), (["COFFEE"], T0 + 50 * DAY)]  # beans: the category's 45 days
    [cancelled] = mine(files, "suppressed", "replenishment")
    assert cancelled["reason"] == "purchased" and cancelled["products"] == ["COFFEE"]
    assert cancelled["purchase_channel"] == "pos" and cancelled["ts_ms"] == T0 + 20 * DAY


def test_replenishment_without_a_catalogue_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text('[rules.replenishment]\nkind = "replenishment"\n')
    write_lines(tmp_path / "rec" / "pos.receipts.jsonl", [receipt(1, T0, "COFFEE")])
    (tmp_path / "stores.csv").write_text("store_id,name,lat,lon\nS1,A,60.1,24.9\n")
    args = [sys.executable, "-m", "omnitrigger", "replay", str(tmp_path / "rec"), "--stores", str(tmp_path / "stores.csv"),
            "--out", str(tmp_path / "t.jsonl"), "--config", str(tmp_path / "rules.toml"), "--quiet"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 1 and "needs the product catalogue: give --catalog FILE" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "catalog.csv").write_text("product_id,category,repurchase_days\nCOFFEE,coffee,thirty\n")
    result = subprocess.run(args + ["--catalog", str(tmp_path / "catalog.csv")], capture_output=True, text=True)
    assert result.returncode == 1 and "line 2: repurchase_days" in result.stderr and "Traceback" not in result.stderr


WELCOME = '[rules.welcome]\nkind = "welcome"\n'


def link(n: int, ts_ms: int, **ids: str) -> dict[str, Any]:
    return {"event_id": f"l-{n}", "ts": ts_ms, "ids": ids, "source": "login"}


def test_a_welcome_after_the_first_sign_in_once_per_customer(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    write_lines(rec / "consent.changes.jsonl", [consent({"cookie_id": "c1"}), consent({"cookie_id": "c2"})])
    write_lines(rec / "identity.links.jsonl", [
        link(1, T0, cookie_id="c1", auth_id="anna"),  # first sign-in: a welcome 10 minutes later
        link(2, T0 + DAY, auth_id="anna", loyalty_id="L1"),  # a card later: no second welcome
        link(3, T0 + 2 * DAY, cookie_id="c2", device_id="d2")])  # no account, no card: no welcome
    write_lines(rec / "web.events.jsonl", [tick(T0 + 3 * DAY)])
    _, files = replay(tmp_path, rec, config=config_file(tmp_path, WELCOME))
    [welcome] = mine(files, "triggers", "welcome")
    assert welcome["ts_ms"] == T0 + 10 * MINUTE and welcome["products"] == [] and welcome["evidence"] == ["l-1"]
    assert welcome["recipient"] == {"auth_id": ["anna"]}


def test_a_pending_welcome_moves_to_the_customer_it_merges_into(tmp_path: Path) -> None:
    """Anna signs up on her phone (device d1, a customer of its own), and five minutes later the same account
    signs in on her laptop, whose cookie was seen first: the phone's customer merges into the laptop's, and the
    welcome pending on the phone's goes out once, to the merged customer."""
    rec = tmp_path / "rec"
    write_lines(rec / "consent.changes.jsonl", [consent({"cookie_id": "c1"})])
    write_lines(rec / "web.events.jsonl", [web(1, "view_item", T0 - 30 * MINUTE, product_id="P1"),
                                           tick(T0 + 3 * DAY)])
    write_lines(rec / "identity.links.jsonl", [link(1, T0, device_id="d1", auth_id="anna"),
                                               link(2, T0 + 5 * MINUTE, cookie_id="c1", auth_id="anna")])
    _, files = replay(tmp_path, rec, config=config_file(tmp_path, WELCOME))
    [welcome] = mine(files, "triggers", "welcome")
    laptop = next(i["customer_id"] for i in records(files["identities"]) if i["value"] == "c1")
    assert welcome["customer_id"] == laptop and welcome["ts_ms"] == T0 + 10 * MINUTE
    assert mine(files, "suppressed", "welcome") == []


def test_a_table_that_cannot_be_a_rule_is_one_line(tmp_path: Path) -> None:
    for text, expected in [
            ('[rules.x]\nkind = "abandonment"\nafter = "1h"\n', "rules.x: a rule of kind 'abandonment' needs starts_on"),
            ('[rules.x]\nkind = "abandonment"\nstarts_on = ["jump"]\nafter = "1h"\n', "rules.x.starts_on"),
            ('[rules.cart_abandoned]\nkind = "welcome"\n', "built-in rule of kind 'abandonment'"),
            ('[rules.cart_abandoned]\nafter_all = "1h"\n', "unknown setting 'after_all'"),
            ('[rules]\ndisabled = ["checkout_abandoned"]\n', "rules.disabled"),
            ('[rules.x]\nkind = "welcome"\nstate_code = "T"\n', "state_code: 'T' is taken")]:
        path = tmp_path / "bad.toml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as error:
            assert expected in str(error), (text, str(error))
        else:
            raise AssertionError(f"accepted: {text}")
    path.write_text(CHECKOUT + '[rules]\ndisabled = ["checkout_abandoned"]\n[rules.cart_abandoned]\nafter = "45m"\n')
    config = load_config(path)
    assert config.disabled_rules == ("checkout_abandoned",)
    from omnitrigger.operators.rules import configured_rules

    cart = next(rule for rule in configured_rules(config) if rule.name == "cart_abandoned")
    assert cart.after_ms == 45 * MINUTE


def test_omnitrigger_rules_lists_every_rule_with_its_kind_and_state_code(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(CHECKOUT + WELCOME)
    result = subprocess.run([sys.executable, "-m", "omnitrigger", "rules", "--config", str(path), "--json"],
                            capture_output=True, text=True, check=True)
    import orjson

    listed = {rule["rule"]: rule for rule in orjson.loads(result.stdout)}
    assert list(listed) == ["cart_abandoned", "browse_abandoned", "store_visit_offer", "checkout_abandoned", "welcome"]
    assert listed["cart_abandoned"]["state_code"] == "A" and listed["checkout_abandoned"]["state_code"] == "a"
    assert listed["checkout_abandoned"]["after"] == 1800.0 and listed["welcome"]["kind"] == "welcome"


def test_the_shipped_journeys_file_loads_and_declares_each_journey() -> None:
    from omnitrigger.operators.rules import configured_rules

    config = load_config(Path(__file__).resolve().parents[1] / "deploy" / "journeys.toml")
    kinds = {rule.name: rule.kind for rule in configured_rules(config)}
    assert kinds["checkout_abandoned"] == "abandonment" and kinds["welcome"] == "welcome"
    assert kinds["replenishment"] == "replenishment"
