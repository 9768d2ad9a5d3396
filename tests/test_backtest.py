"""`omnitrigger backtest` (issue 18): one recording replayed under two configs, compared per rule.

Three shoppers: c1 (push consent) carts P1 and views P2; c3 (no consent) views P5. Switching browse
reminders off turns c1's browse trigger into a `rule_disabled` suppression and changes c3's reason from
`no_consent` to `rule_disabled`; a longer cart delay removes the cart trigger and adds another.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from conftest import write_lines, write_stores
from omnitrigger.backtest import compare_outputs
from test_cli import assert_one_line_error, omnitrigger

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_764_000_000_000  # 18:00 in Helsinki: no deadline below falls in quiet hours


def web(n: int, kind: str, ts_ms: int, product: str, cookie: str) -> dict:
    return {"event_id": f"w-{n}", "type": kind, "ts": ts_ms, "channel": "web", "ids": {"cookie_id": cookie},
            "product_id": product}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("backtest")
    rec = tmp / "rec"
    write_lines(rec / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0 - HOUR, "ids": {"cookie_id": "c1"}, "channel": "push", "status": "granted"}])
    write_lines(rec / "web.events.jsonl", [
        web(1, "add_to_cart", T0, "P1", "c1"),
        web(2, "view_item", T0 + MINUTE, "P2", "c1"),
        web(3, "view_item", T0 + 2 * MINUTE, "P5", "c3"),
        web(4, "view_item", T0 + 3 * 24 * HOUR, "P9", "c9")])  # someone else, days later: every deadline fires
    paths = {"tmp": tmp, "rec": rec, "stores": write_stores(tmp / "stores.csv")}
    for name, text in {"browse_off": '[rules]\ndisabled = ["browse_abandoned"]\n',
                       "cart_later": '[rules]\ncart_abandoned_after = "90m"\n',
                       "defaults": "",
                       "bad_value": '[rules]\ncart_abandoned_after = "soon"\n'}.items():
        (tmp / f"{name}.toml").write_text(text)
        paths[name] = tmp / f"{name}.toml"
    return paths


def backtest_json(setup: dict[str, Path], *args: str) -> dict:
    result = omnitrigger("backtest", str(setup["rec"]), "--stores", str(setup["stores"]), *args, "--json")
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def test_switching_a_rule_off_turns_its_triggers_into_suppressions(setup: dict[str, Path]) -> None:
    doc = backtest_json(setup, "--against", str(setup["browse_off"]))
    assert doc["config_a"] is None and doc["config_b"] == str(setup["browse_off"])
    assert [(c["setting"], c["a"], c["b"]) for c in doc["settings_changed"]] == [
        ("rules.disabled", [], ["browse_abandoned"])]
    browse = doc["rules"]["browse_abandoned"]
    assert (browse["triggers_a"], browse["triggers_b"], browse["unchanged"]) == (1, 0, 0)
    assert browse["removed"]["count"] == 1 and browse["added"]["count"] == 0
    assert browse["became_suppressed"]["by_reason"] == {"rule_disabled": 1}
    [customer] = browse["became_suppressed"]["examples"]
    assert customer.startswith("cus_") and browse["removed"]["examples"] == [customer]
    assert browse["reason_changed"]["by_reason"] == {"no_consent -> rule_disabled": 1}  # c3, never sent either way
    assert browse["suppressions_added"]["count"] == browse["suppressions_removed"]["count"] == 0
    cart = doc["rules"]["cart_abandoned"]
    assert (cart["triggers_a"], cart["triggers_b"], cart["unchanged"], cart["added"]["count"],
            cart["removed"]["count"]) == (1, 1, 1, 0, 0)
    assert doc["totals_a"]["triggers"] == 2 and doc["totals_b"]["triggers"] == 1


def test_the_reverse_change_turns_suppressions_into_triggers(setup: dict[str, Path]) -> None:
    doc = backtest_json(setup, "--config", str(setup["browse_off"]), "--against", str(setup["defaults"]))
    browse = doc["rules"]["browse_abandoned"]
    assert browse["added"]["count"] == 1 and browse["became_trigger"]["by_reason"] == {"rule_disabled": 1}
    assert browse["reason_changed"]["by_reason"] == {"rule_disabled -> no_consent": 1}


def test_a_later_cart_deadline_removes_one_trigger_and_adds_another(setup: dict[str, Path]) -> None:
    result = omnitrigger("backtest", str(setup["rec"]), "--stores", str(setup["stores"]),
                         "--against", str(setup["cart_later"]), "--keep", str(setup["tmp"] / "kept"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert 'settings changed: rules.cart_abandoned_after: "1h" -> "90m"' in text
    assert "cart_abandoned: triggers 1 -> 1, suppressed 0 -> 0 (0 triggers unchanged)" in text
    assert "  triggers added: 1; e.g. cus_" in text and "  triggers removed: 1; e.g. cus_" in text
    assert "  of those, the same customer and products at another time: 1 (+30m: 1); e.g. cus_" in text
    assert "browse_abandoned: triggers 1 -> 1, suppressed 1 -> 1: unchanged" in text
    kept = setup["tmp"] / "kept"
    [before] = [orjson.loads(line) for line in (kept / "a" / "triggers.jsonl").read_bytes().splitlines()
                if b"cart_abandoned" in line]
    [after] = [orjson.loads(line) for line in (kept / "b" / "triggers.jsonl").read_bytes().splitlines()
               if b"cart_abandoned" in line]
    assert after["ts_ms"] - before["ts_ms"] == 30 * MINUTE and after["trigger_id"] != before["trigger_id"]
    assert (kept / "a" / "retractions.jsonl").is_file() and (kept / "b" / "suppressed.jsonl").is_file()


def test_the_same_config_changes_nothing(setup: dict[str, Path]) -> None:
    doc = backtest_json(setup, "--against", str(setup["defaults"]))
    assert doc["settings_changed"] == []
    for rule, diff in doc["rules"].items():
        assert diff["added"]["count"] == diff["removed"]["count"] == diff["reason_changed"]["count"] == 0, rule


@pytest.mark.parametrize("args, code, fragment", [
    (["--against", "{tmp}/none.toml"], 1, "config file not found"),
    (["--against", "{bad_value}"], 1, "rules.cart_abandoned_after"),
    (["--config", "{tmp}/none.toml", "--against", "{defaults}"], 1, "config file not found"),
    ([], 2, "Missing option '--against'"),
])
def test_wrong_files_and_values_are_one_line(setup: dict[str, Path], args: list[str], code: int,
                                             fragment: str) -> None:
    values = {"tmp": setup["tmp"], "bad_value": setup["bad_value"], "defaults": setup["defaults"]}
    result = omnitrigger("backtest", str(setup["rec"]), "--stores", str(setup["stores"]),
                         *[arg.format(**values) for arg in args])
    assert_one_line_error(result, code, fragment)


def test_a_missing_recording_or_stores_file_is_one_line(setup: dict[str, Path]) -> None:
    missing = omnitrigger("backtest", str(setup["tmp"] / "nowhere"), "--stores", str(setup["stores"]),
                          "--against", str(setup["defaults"]))
    assert_one_line_error(missing, 1, "recording folder not found")
    stores = omnitrigger("backtest", str(setup["rec"]), "--stores", str(setup["tmp"] / "none.csv"),
                         "--against", str(setup["defaults"]))
    assert_one_line_error(stores, 1, "stores file not found")


def test_suppressions_match_by_their_tuple_when_ids_differ(tmp_path: Path) -> None:
    """compare_outputs alone: a suppression whose trigger_id changed but whose (rule, customer, products, ts)
    did not is a reason change, not one removed and one added."""
    suppressed = {"rule": "cart_abandoned", "customer_id": "cus_a", "products": ["P1"], "ts_ms": 5}
    write_lines(tmp_path / "a" / "suppressed.jsonl", [{**suppressed, "trigger_id": "x1", "reason": "customer_cap"}])
    write_lines(tmp_path / "b" / "suppressed.jsonl", [{**suppressed, "trigger_id": "x2", "reason": "product_cap"}])
    report = compare_outputs(tmp_path / "a", tmp_path / "b")
    cart = report.rules["cart_abandoned"]
    assert cart.reason_changed.by_reason == {"customer_cap -> product_cap": 1}
    assert cart.reason_changed.examples == ["cus_a"]
    assert cart.suppressions_added.count == cart.suppressions_removed.count == 0
    assert report.totals_a == {"triggers": 0, "suppressed": 1, "retractions": 0}


def test_a_control_group_and_its_conversions_in_a_backtest(tmp_path: Path) -> None:
    """B holds every cart customer out (a share of 0.5 that takes c1, by its hash, or not): the cart trigger
    becomes a `holdout` suppression or stays, and the till purchase two days later converts in that arm."""
    rec = tmp_path / "rec"
    write_lines(rec / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0 - HOUR, "ids": {"cookie_id": "c1"}, "channel": "push", "status": "granted"}])
    write_lines(rec / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 - HOUR + 1, "ids": {"cookie_id": "c1", "loyalty_id": "L1"}, "source": "loyalty_card"}])
    write_lines(rec / "web.events.jsonl", [web(1, "add_to_cart", T0, "P1", "c1"),
                                           web(4, "view_item", T0 + 3 * 24 * HOUR, "P9", "c9")])
    write_lines(rec / "pos.receipts.jsonl", [
        {"terminal_id": "T1", "receipt_no": 1, "ts": T0 + 2 * 24 * HOUR, "store_id": "S1",
         "ids": {"loyalty_id": "L1"}, "items": [{"product_id": "P1", "qty": 1, "price": 3.0}]}])
    stores = write_stores(tmp_path / "stores.csv")
    for salt in ("a", "b", "c", "d", "e", "f"):  # a salt whose draw holds c1 out
        (tmp_path / "held.toml").write_text(f'[rules.cart_abandoned]\nholdout = 0.5\nholdout_salt = "{salt}"\n')
        result = omnitrigger("backtest", str(rec), "--stores", str(stores), "--against", str(tmp_path / "held.toml"),
                             "--json")
        assert result.returncode == 0, result.stderr
        cart = orjson.loads(result.stdout)["rules"]["cart_abandoned"]
        if cart["triggers_b"] == 0:
            break
    assert cart["became_suppressed"]["by_reason"] == {"holdout": 1}
    assert cart["conversions_a"] == {"treated": 1} and cart["conversions_b"] == {"holdout": 1}
    text = omnitrigger("backtest", str(rec), "--stores", str(stores), "--against", str(tmp_path / "held.toml"))
    assert "conversions: treated 1 -> holdout 1" in text.stdout
