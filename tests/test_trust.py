"""Facts about the customer that must not be lost or ignored (issue 14), each through a whole replay.

Every test writes a small recording, replays it with `run_replay` on real RocksDB and reads the
output files: returns are not purchases, a till purchase a few minutes late still cancels, a
purchase that arrives after its reminder went out retracts it, and an in-store offer needs the
customer's location consent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import kcat_envelope, records, replay, write_lines
from omnitrigger.config import Config

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_764_000_000_000
CONFIG = Config()


def cart_shopper(recording: Path, *, receipts: list[dict[str, Any]], pings: list[dict[str, Any]] | None = None,
                 consents: tuple[str, ...] = ("push",), web: list[dict[str, Any]] | None = None) -> None:
    """Anna (cookie c1, loyalty card L1) adds P1 to her cart at T0; `receipts` are the till's records, in file order."""
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": f"k-{channel}", "ts": T0 - HOUR, "ids": {"cookie_id": "c1"}, "channel": channel,
         "status": "granted"} for channel in consents])
    write_lines(recording / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 - HOUR + 1, "ids": {"cookie_id": "c1", "loyalty_id": "L1"},
         "source": "loyalty_card"}])
    write_lines(recording / "web.events.jsonl", web if web is not None else [
        {"event_id": "w-add", "type": "add_to_cart", "ts": T0, "channel": "web", "ids": {"cookie_id": "c1"},
         "product_id": "P1"},
        # Someone else, hours later: the clock passes every deadline.
        {"event_id": "w-tick", "type": "view_item", "ts": T0 + 3 * HOUR, "channel": "web",
         "ids": {"cookie_id": "c9"}, "product_id": "P9"}])
    write_lines(recording / "pos.receipts.jsonl", receipts)
    if pings is not None:
        write_lines(recording / "geo.pings.jsonl", pings)


def receipt(number: int, ts_ms: int, loyalty: str, *items: tuple[str, int], **fields: Any) -> dict[str, Any]:
    return {"terminal_id": "T1", "receipt_no": number, "ts": ts_ms, "store_id": "S1", "ids": {"loyalty_id": loyalty},
            "items": [{"product_id": product, "qty": qty, "price": 9.9} for product, qty in items], **fields}


def rules_and_reasons(files: dict[str, bytes]) -> tuple[list[str], list[tuple[str, str]]]:
    return ([t["rule"] for t in records(files["triggers"])],
            [(s["rule"], s["reason"]) for s in records(files["suppressed"])])


# -- returns ------------------------------------------------------------------------------------------


def test_a_returned_line_does_not_cancel_the_cart_reminder(tmp_path: Path) -> None:
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 10 * MINUTE, "L1", ("P1", -1))])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert rules_and_reasons(files) == (["cart_abandoned"], [])
    [event] = [e for e in records(files["events"]) if e["topic"] == "pos.receipts"]
    assert event["event"]["items"][0]["qty"] == -1  # the return is an event, not a dead letter


def test_a_receipt_of_type_return_does_not_cancel(tmp_path: Path) -> None:
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 10 * MINUTE, "L1", ("P1", 1), type="return")])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert rules_and_reasons(files) == (["cart_abandoned"], [])


def test_a_sale_at_the_till_cancels(tmp_path: Path) -> None:
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 10 * MINUTE, "L1", ("P1", 1), type="sale")])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert rules_and_reasons(files) == ([], [("cart_abandoned", "purchased")])


# -- the purchase grace -----------------------------------------------------------------------------------


def test_a_till_purchase_four_minutes_late_still_cancels(tmp_path: Path) -> None:
    """Bought at minute 58, delivered after a receipt of minute 62: the 60-minute reminder waits out the 5-minute grace."""
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 62 * MINUTE, "L7", ("P7", 1)),
                                             receipt(2, T0 + 58 * MINUTE, "L1", ("P1", 1))])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert rules_and_reasons(files) == ([], [("cart_abandoned", "purchased")])


def test_without_the_grace_the_late_purchase_is_too_late(tmp_path: Path) -> None:
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 62 * MINUTE, "L7", ("P7", 1)),
                                             receipt(2, T0 + 58 * MINUTE, "L1", ("P1", 1))])
    _, files = replay(tmp_path, tmp_path / "rec", config=Config(purchase_grace_s=0))
    assert rules_and_reasons(files) == (["cart_abandoned"], [])


def test_the_trigger_time_stays_the_deadline(tmp_path: Path) -> None:
    cart_shopper(tmp_path / "rec", receipts=[])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    [trigger] = records(files["triggers"])
    assert trigger["ts_ms"] == T0 + HOUR


def test_a_purchase_after_the_deadline_does_not_cancel(tmp_path: Path) -> None:
    """Bought at minute 62, within the grace but after the reminder was due: the reminder stands (it converted)."""
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 62 * MINUTE, "L1", ("P1", 1))])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert rules_and_reasons(files) == (["cart_abandoned"], [])


# -- location consent ---------------------------------------------------------------------------------------


def store_visit(recording: Path, consents: tuple[str, ...]) -> None:
    """Anna views P1 online, then her phone (device d1, linked to her cookie) dwells 3 minutes in store S1."""
    pings = [{"event_id": f"g-{n}", "ts": T0 + 2 * HOUR + n * 30_000, "ids": {"device_id": "d1"}, "lat": 60.1690,
              "lon": 24.9320, "accuracy_m": 10, "source": "gps"} for n in range(7)]
    web = [{"event_id": "w-view", "type": "view_item", "ts": T0, "channel": "app", "ids": {"cookie_id": "c1",
                                                                                            "device_id": "d1"},
            "product_id": "P1"}]
    cart_shopper(recording, receipts=[], pings=pings, consents=consents, web=web)


def test_an_in_store_offer_needs_location_consent(tmp_path: Path) -> None:
    store_visit(tmp_path / "rec", consents=("push",))
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    triggers, reasons = rules_and_reasons(files)
    assert "store_visit_offer" not in triggers
    assert ("store_visit_offer", "no_location_consent") in reasons


def test_with_location_consent_the_offer_goes_out(tmp_path: Path) -> None:
    store_visit(tmp_path / "rec", consents=("push", "location"))
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    [offer] = [t for t in records(files["triggers"]) if t["rule"] == "store_visit_offer"]
    assert offer["products"] == ["P1"] and offer["channel"] == "push"  # location is a purpose, never a channel


def test_a_revoked_location_consent_stops_the_offer(tmp_path: Path) -> None:
    store_visit(tmp_path / "rec", consents=("push", "location"))
    with (tmp_path / "rec" / "consent.changes.jsonl").open("ab") as handle:
        import orjson
        handle.write(orjson.dumps(kcat_envelope("consent.changes", 0, 9, {
            "event_id": "k-off", "ts": T0 + HOUR, "ids": {"device_id": "d1"}, "channel": "location",
            "status": "revoked"}, T0 + HOUR)) + b"\n")
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert ("store_visit_offer", "no_location_consent") in rules_and_reasons(files)[1]


def test_location_consent_can_be_switched_off_in_the_config(tmp_path: Path) -> None:
    store_visit(tmp_path / "rec", consents=("push",))
    _, files = replay(tmp_path, tmp_path / "rec", config=Config(require_location_consent=False))
    assert "store_visit_offer" in rules_and_reasons(files)[0]


# -- also found, tried as a new user would ------------------------------------------------------------------


def test_a_control_file_naming_an_unknown_rule_is_refused_and_logged(tmp_path: Path, caplog) -> None:
    import logging

    import orjson

    cart_shopper(tmp_path / "rec", receipts=[])
    control = tmp_path / "control.json"
    control.write_bytes(orjson.dumps({"disabled_rules": ["cart_abandon"]}))  # a typo
    with caplog.at_level(logging.WARNING, logger="omnitrigger.policy"):
        _, files = replay(tmp_path, tmp_path / "rec", name="typo", config=Config(control_file=str(control)))
    assert rules_and_reasons(files)[0] == ["cart_abandoned"]  # nothing was switched off, and it says so
    [refusal] = {record.getMessage() for record in caplog.records if record.levelno == logging.ERROR}
    assert "unknown rule names" in refusal
    assert any(record.fields.get("unknown") == ["cart_abandon"] for record in caplog.records
               if record.levelno == logging.ERROR)

    other = tmp_path / "control-ok.json"
    other.write_bytes(orjson.dumps({"disabled_rules": ["cart_abandoned"]}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="omnitrigger.policy"):
        _, files = replay(tmp_path, tmp_path / "rec", name="ok", config=Config(control_file=str(other)))
    assert rules_and_reasons(files) == ([], [("cart_abandoned", "rule_disabled")])
    assert [record.fields["switched_off"] for record in caplog.records
            if record.getMessage() == "kill switch changed"] == [["cart_abandoned"]]
    from omnitrigger import metrics
    assert metrics.REGISTRY.get_sample_value("omnitrigger_rule_disabled", {"rule": "cart_abandoned"}) == 1.0
    assert metrics.REGISTRY.get_sample_value("omnitrigger_rule_disabled", {"rule": "browse_abandoned"}) == 0.0


def test_a_stores_file_with_a_decimal_comma_or_no_rows_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    cart_shopper(tmp_path / "rec", receipts=[])
    for name, text, says in [
            ("comma.csv", "store_id,name,lat,lon,radius_m\nS001,Kamppi,60,169,24.932,300\n", "line 2: 6 fields"),
            ("empty.csv", "store_id,name,lat,lon,radius_m\n", "no stores")]:
        (tmp_path / name).write_text(text)
        result = subprocess.run([sys.executable, "-m", "omnitrigger", "replay", str(tmp_path / "rec"), "--stores",
                                 str(tmp_path / name), "--out", str(tmp_path / "t.jsonl")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("omnitrigger: error: "), result.stderr
        assert says in result.stderr


def test_the_demo_does_not_name_an_output_folder_it_deletes(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "omnitrigger", "demo"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMNITRIGGER_PII_KEY": "demo-test-key-0123456789"})
    assert result.returncode == 0, result.stderr
    assert "outputs in" not in result.stdout and "--keep DIR" in result.stdout
    kept = subprocess.run([sys.executable, "-m", "omnitrigger", "demo", "--keep", str(tmp_path / "kept")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMNITRIGGER_PII_KEY": "demo-test-key-0123456789"})
    assert f"outputs in {tmp_path / 'kept' / 'out'}" in kept.stdout and (tmp_path / "kept" / "out").is_dir()


def test_recording_files_compressed_prefixed_or_misnamed(tmp_path: Path, caplog) -> None:
    """`.jsonl.gz` is read, `prod.pos.receipts.jsonl` is pos.receipts with `topic_prefix = "prod."`, and files no
    topic reads are named in one warning, not skipped without a word."""
    import gzip
    import logging

    cart_shopper(tmp_path / "plain", receipts=[receipt(1, T0 + 10 * MINUTE, "L1", ("P1", 1))])
    _, expected = replay(tmp_path, tmp_path / "plain", name="plain", config=CONFIG)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for path in (tmp_path / "plain").iterdir():
        data = path.read_bytes()
        if path.name == "web.events.jsonl":
            (renamed / "web.events.jsonl.gz").write_bytes(gzip.compress(data))
        elif path.name == "pos.receipts.jsonl":
            (renamed / "prod.pos.receipts.jsonl").write_bytes(data)
        else:
            (renamed / path.name).write_bytes(data)
    (renamed / "pos_receipts.jsonl").write_bytes(b"")
    (renamed / "notes.txt").write_text("recorded on Monday")
    with caplog.at_level(logging.WARNING, logger="omnitrigger.recording"):
        _, files = replay(tmp_path, renamed, name="renamed", config=Config(kafka_topic_prefix="prod."))
    assert files == expected
    [warning] = {record.getMessage() for record in caplog.records if record.name == "omnitrigger.recording"}
    assert "notes.txt" in warning and "pos_receipts.jsonl" in warning


# -- blank identifiers ----------------------------------------------------------------------------------------


def test_a_receipt_with_an_empty_phone_is_a_purchase_not_a_dead_letter(tmp_path: Path) -> None:
    from omnitrigger import metrics

    before = metrics.REGISTRY.get_sample_value("omnitrigger_ignored_identifiers_total", {"type": "phone"}) or 0.0
    for name, blank in [("empty", ""), ("null", None), ("spaces", "   "), ("n_a", "N/A")]:
        rec = tmp_path / f"rec-{name}"
        sale = receipt(1, T0 + 10 * MINUTE, "L1", ("P1", 1))
        sale["ids"]["phone"] = blank
        cart_shopper(rec, receipts=[sale])
        summary, files = replay(tmp_path, rec, name=name, config=CONFIG)
        assert records(files["dead_letter"]) == [], name
        assert rules_and_reasons(files) == ([], [("cart_abandoned", "purchased")]), name
        [refusal] = records(files["refused_links"])
        assert refusal["reason"] == "blocked_value" and refusal["identifiers"][0][0] == "phone", refusal
    assert metrics.REGISTRY.get_sample_value("omnitrigger_ignored_identifiers_total", {"type": "phone"}) >= before + 4


def test_an_add_to_cart_with_an_empty_cookie_still_counts(tmp_path: Path) -> None:
    web = [{"event_id": "w-add", "type": "add_to_cart", "ts": T0, "channel": "web",
            "ids": {"cookie_id": "c1", "device_id": ""}, "product_id": "P1"},
           {"event_id": "w-tick", "type": "view_item", "ts": T0 + 3 * HOUR, "channel": "web",
            "ids": {"cookie_id": "c9"}, "product_id": "P9"}]
    cart_shopper(tmp_path / "rec", receipts=[], web=web)
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert records(files["dead_letter"]) == []
    assert rules_and_reasons(files)[0] == ["cart_abandoned"]


def test_blank_placeholders_never_link_two_customers(tmp_path: Path) -> None:
    """Two shoppers who both typed "N/A" (or nothing) for a phone stay two customers."""
    rec = tmp_path / "rec"
    write_lines(rec / "pos.receipts.jsonl", [
        {**receipt(n, T0 + n * MINUTE, f"L{n}", ("P1", 1)), "ids": {"loyalty_id": f"L{n}", "phone": blank}}
        for n, blank in enumerate(["N/A", "N/A", "", " ", None])])
    _, files = replay(tmp_path, rec, config=CONFIG)
    identities = records(files["identities"])
    assert len({identity["customer_id"] for identity in identities}) == 5
    assert {identity["type"] for identity in identities} == {"loyalty_id"}


def test_a_wrong_type_is_still_a_dead_letter_and_raw_keeps_empty_values(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    numeric = receipt(1, T0, "L1", ("P1", 1))
    numeric["ids"]["phone"] = 358401234567
    broken = receipt(2, T0, "L2", ("P1", 1))
    broken["ids"]["phone"] = ""
    del broken["store_id"]
    write_lines(rec / "pos.receipts.jsonl", [numeric, broken])
    _, files = replay(tmp_path, rec, config=CONFIG)
    letters = records(files["dead_letter"])
    assert [letter["reason"] for letter in letters] == ["wrong_type", "missing_field"]
    assert '"phone":""' in letters[1]["raw"]


# -- facts that must survive a merge --------------------------------------------------------------------------

DAY = 24 * HOUR


def consents_then_merge(recording: Path, on_cookie: str, on_phone_a_day_later: str) -> None:
    """SMS consent of cookie c1 on day 0 and of phone P on day 1; a login links them on day 40, then c1 adds P1."""
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0, "ids": {"cookie_id": "c1"}, "channel": "sms", "status": on_cookie},
        {"event_id": "k-2", "ts": T0 + DAY, "ids": {"phone": "+358401112223"}, "channel": "sms",
         "status": on_phone_a_day_later}])
    write_lines(recording / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 + 40 * DAY, "ids": {"cookie_id": "c1", "phone": "+358401112223"},
         "source": "login"}])
    write_lines(recording / "web.events.jsonl", [
        {"event_id": "w-add", "type": "add_to_cart", "ts": T0 + 40 * DAY + MINUTE, "channel": "web",
         "ids": {"cookie_id": "c1"}, "product_id": "P1"},
        {"event_id": "w-tick", "type": "view_item", "ts": T0 + 40 * DAY + 3 * HOUR, "channel": "web",
         "ids": {"cookie_id": "c9"}, "product_id": "P9"}])


def test_an_opt_out_older_than_the_journal_survives_a_merge(tmp_path: Path) -> None:
    """Cookie c1 grants SMS on day 0, phone P revokes SMS on day 1, a login links them on day 40: no SMS."""
    consents_then_merge(tmp_path / "rec", "granted", "revoked")
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert records(files["dead_letter"]) == []
    assert [t for t in records(files["triggers"]) if t["products"] == ["P1"]] == []
    assert ("cart_abandoned", "consent_revoked") in rules_and_reasons(files)[1]


def test_a_later_grant_on_the_other_identifier_wins_after_the_merge(tmp_path: Path) -> None:
    consents_then_merge(tmp_path / "rec", "revoked", "granted")
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    [trigger] = [t for t in records(files["triggers"]) if t["products"] == ["P1"]]
    assert trigger["channel"] == "sms"


def long_browse(recording: Path, *, bought_on_day: int | None = None) -> None:
    """A view on day 0 by cookie c1; account A (seen first, on day -1) logs in on c1's browser on day 35."""
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0 - DAY, "ids": {"auth_id": "A"}, "channel": "push", "status": "granted"}])
    web = [{"event_id": "w-view", "type": "view_item", "ts": T0, "channel": "web", "ids": {"cookie_id": "c1"},
            "product_id": "P1"}]
    if bought_on_day is not None:
        web.append({"event_id": "w-buy", "type": "purchase", "ts": T0 + bought_on_day * DAY, "channel": "web",
                    "ids": {"cookie_id": "c1"}, "items": [{"product_id": "P1", "qty": 1, "price": 5.0}]})
    web.append({"event_id": "w-tick", "type": "view_item", "ts": T0 + 41 * DAY, "channel": "web",
                "ids": {"cookie_id": "c9"}, "product_id": "P9"})
    write_lines(recording / "web.events.jsonl", web)
    write_lines(recording / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 + 35 * DAY, "ids": {"auth_id": "A", "cookie_id": "c1"}, "source": "login"}])


def test_a_pending_deadline_older_than_the_journal_moves_to_the_winner(tmp_path: Path) -> None:
    long_browse(tmp_path / "rec")
    config = Config(browse_abandoned_after_s=40 * 86_400)
    _, files = replay(tmp_path, tmp_path / "rec", config=config)
    [trigger] = [t for t in records(files["triggers"]) if t["products"] == ["P1"]]
    assert trigger["rule"] == "browse_abandoned" and trigger["ts_ms"] == T0 + 40 * DAY
    [account] = {i["customer_id"] for i in records(files["identities"]) if i["type"] == "auth_id"}
    assert trigger["customer_id"] == account


def test_and_the_purchase_that_cancels_it_moves_with_it(tmp_path: Path) -> None:
    long_browse(tmp_path / "rec", bought_on_day=2)
    _, files = replay(tmp_path, tmp_path / "rec", config=Config(browse_abandoned_after_s=40 * 86_400))
    assert [t for t in records(files["triggers"]) if t["products"] == ["P1"]] == []


def test_the_journal_keeps_rule_facts_not_raw_events(tmp_path: Path) -> None:
    """No identifiers and no unknown fields in the journal: only what a rule reads."""
    from omnitrigger.operators.history import rule_fact

    body = {"event_id": "w1", "type": "purchase", "ts": T0, "channel": "app", "ids": {"email": "x"},
            "items": [{"product_id": "P1", "qty": 2, "price": 3.0, "note": "gift"}], "utm": {"campaign": "c"}}
    assert rule_fact("web.events", body) == {"event_id": "w1", "type": "purchase", "channel": "app",
                                             "items": [{"product_id": "P1", "qty": 2}]}


# -- visits without location consent ---------------------------------------------------------------------------


def test_a_visit_without_location_consent_is_not_written(tmp_path: Path) -> None:
    store_visit(tmp_path / "without", consents=("push",))
    summary, files = replay(tmp_path, tmp_path / "without", name="without", config=CONFIG)
    assert records(files["visits"]) == []
    store_visit(tmp_path / "with", consents=("push", "location"))
    _, allowed = replay(tmp_path, tmp_path / "with", name="with", config=CONFIG)
    [visit] = records(allowed["visits"])
    assert visit["store_id"] == "S1"


# -- retractions ------------------------------------------------------------------------------------------------


def test_a_purchase_arriving_after_its_reminder_went_out_retracts_it(tmp_path: Path) -> None:
    """Bought at minute 58 at the till, delivered after a receipt of minute 70: the reminder went out at minute 60
    (the grace passed at 65), so the purchase gives a retraction a sender can cancel the queued message with."""
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 70 * MINUTE, "L7", ("P7", 1)),
                                             receipt(2, T0 + 58 * MINUTE, "L1", ("P1", 1))])
    summary, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    [trigger] = records(files["triggers"])
    [retraction] = records(files["retractions"])
    assert retraction["trigger_id"] == trigger["trigger_id"] and retraction["rule"] == "cart_abandoned"
    assert retraction["customer_id"] == trigger["customer_id"] and retraction["products"] == ["P1"]
    assert retraction["purchase_channel"] == "pos" and retraction["purchase_ts_ms"] == T0 + 58 * MINUTE
    assert retraction["reason"] == "purchased_before_due" and retraction["evidence"] == ["T1/2"]
    assert summary.retractions_by_rule == {"cart_abandoned": 1}
    import json

    from jsonschema import Draft202012Validator

    from omnitrigger.schemas import SCHEMA_DIR
    Draft202012Validator(json.loads((SCHEMA_DIR / "retraction.schema.json").read_text())).validate(retraction)


def test_a_purchase_after_the_trigger_time_is_no_retraction(tmp_path: Path) -> None:
    cart_shopper(tmp_path / "rec", receipts=[receipt(1, T0 + 70 * MINUTE, "L1", ("P1", 1))])
    _, files = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert len(records(files["triggers"])) == 1 and records(files["retractions"]) == []


def test_the_summary_counts_returns_ignored_identifiers_and_unconsented_visits(tmp_path: Path) -> None:
    store_visit(tmp_path / "rec", consents=("push",))
    refund = receipt(1, T0 + 10 * MINUTE, "L1", ("P1", -1))
    refund["ids"]["phone"] = ""
    write_lines(tmp_path / "rec" / "pos.receipts.jsonl", [refund])
    summary, _ = replay(tmp_path, tmp_path / "rec", config=CONFIG)
    assert summary.returns == 1 and summary.ignored_identifiers == {"phone": 1}
    assert summary.visits_without_location_consent == 1
    text = "\n".join(summary.lines())
    assert "returns (cancel nothing): 1" in text and "without location consent, not written: 1" in text


def test_processes_do_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    """From a folder holding a folder named omnitrigger (a checkout, or the Dockerfile's /app), the worker
    processes still import the installed package."""
    import os
    import subprocess
    import sys

    cart_shopper(tmp_path / "rec", receipts=[])
    (tmp_path / "omnitrigger").mkdir()
    (tmp_path / "omnitrigger" / "__init__.py").write_text("raise ImportError('the wrong omnitrigger')\n")
    stores = tmp_path / "stores.csv"
    stores.write_text("store_id,name,lat,lon,radius_m\nS1,Kamppi,60.1690,24.9320,300\n")
    result = subprocess.run([sys.executable, "-P", "-m", "omnitrigger", "replay", "rec", "--stores", "stores.csv",
                             "--out", "t.jsonl", "--processes", "2", "--quiet"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(records((tmp_path / "t.jsonl").read_bytes())) == 1


def test_a_ping_late_within_the_lateness_does_not_change_the_visit_id(tmp_path: Path) -> None:
    """Issue 13, defect 12: the same pings, the first one delivered after the second, give the same visit."""
    pings = [{"event_id": f"g-{n}", "ts": T0 + n * 30_000, "ids": {"device_id": "d1"}, "lat": 60.1690,
              "lon": 24.9320, "accuracy_m": 10, "source": "gps"} for n in range(8)]
    config = Config(require_location_consent=False)
    write_lines(tmp_path / "in-order" / "geo.pings.jsonl", pings)
    write_lines(tmp_path / "late" / "geo.pings.jsonl", [pings[1], pings[0], *pings[2:]])
    _, in_order = replay(tmp_path, tmp_path / "in-order", name="a", config=config)
    _, late = replay(tmp_path, tmp_path / "late", name="b", config=config)
    [first], [second] = records(in_order["visits"]), records(late["visits"])
    assert first["visit_id"] == second["visit_id"] and first["start"] == second["start"]
