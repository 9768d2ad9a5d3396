"""`omnitrigger explain` (issue 18): one customer's state and outputs, after a real replay on real RocksDB.

Anna (cookie c1, email and phone linked by a CRM record, push consent) fills and buys carts over a day;
a stranger's view moves the clock at the end. Explain finds her by her plain email or phone (hashed as
the pipeline hashes them), and shows her identifiers, consents, a pending deadline, the caps in force,
and her triggers, suppressions and cancellations; it also reads the state while another process holds
the RocksDB open for writing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from conftest import records, replay, write_lines
from omnitrigger.config import Config
from test_cli import assert_one_line_error, omnitrigger

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z, 18:00 in Helsinki: no deadline below falls in quiet hours


def web(n: int, kind: str, ts_ms: int, product: str, cookie: str = "c1") -> dict:
    event = {"event_id": f"w-{n}", "type": kind, "ts": ts_ms, "channel": "web", "ids": {"cookie_id": cookie}}
    if kind == "purchase":
        event["items"] = [{"product_id": product, "qty": 1, "price": 5.0}]
    else:
        event["product_id"] = product
    return event


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One replay with --state-dir, shared by the tests (each explain only reads it)."""
    tmp = tmp_path_factory.mktemp("explain")
    rec = tmp / "rec"
    write_lines(rec / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": T0 - HOUR, "ids": {"cookie_id": "c1"}, "channel": "push", "status": "granted"}])
    write_lines(rec / "identity.links.jsonl", [
        {"event_id": "l-1", "ts": T0 - HOUR + 1, "source": "crm",
         "ids": {"cookie_id": "c1", "email": " Anna@Example.com", "phone": "+358 40 123 4567"}}])
    write_lines(rec / "web.events.jsonl", [
        web(1, "add_to_cart", T0, "P1"),  # a cart reminder at T0 + 1 h
        web(2, "add_to_cart", T0 + MINUTE, "P3"),
        web(3, "purchase", T0 + 2 * MINUTE, "P3"),  # cancels P3's reminder: purchased
        web(4, "view_item", T0 + 10 * MINUTE, "P1"),  # its browse reminder, a day on: capped by P1's cart reminder
        web(5, "add_to_cart", T0 + 20 * HOUR, "P4"),  # a reminder at T0 + 21 h: its caps are in force at the end
        web(6, "view_item", T0 + 25 * HOUR, "P2"),  # due T0 + 49 h: still pending at the end
        web(7, "view_item", T0 + 26 * HOUR, "P9", cookie="c9")])  # someone else: the clock ends here
    state = tmp / "state"
    _, files = replay(tmp, rec, name="out", config=Config(), state_dir=state)
    anna = records(files["identities"])
    [customer] = {i["customer_id"] for i in anna if i["type"] == "cookie_id" and i["value"] == "c1"}
    return {"tmp": tmp, "state": state, "out": tmp / "out", "files": files, "customer": customer}


def explain_json(run: dict, *args: str) -> dict:
    result = omnitrigger("explain", "--state-dir", str(run["state"]), *args, "--json")
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def test_explain_by_plain_email_shows_state_and_outputs(run: dict) -> None:
    result = omnitrigger("explain", "--state-dir", str(run["state"]), "--identifier", "email:anna@example.com ",
                         "--out-dir", str(run["out"]))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"customer {run['customer']}" in text
    assert "Anna" not in text and "anna@" not in text  # the email is shown as the state holds it: hashed
    assert "cookie_id: c1" in text and "email: " in text and "phone: " in text
    assert "push: granted at 2025-11-24T15:00:00.000Z" in text
    assert "pending deadlines: 1" in text and "browse_abandoned 'P2': due 2025-11-26T17:00:00.000Z" in text
    assert "customer cap: 1 of 3 triggers in the 24h window (not reached)" in text
    assert "'P4' (any rule)" in text
    assert "triggers: 2" in text and "suppressed: 1" in text and "product_cap" in text
    assert "cancelled: 1" in text and "purchased (web)" in text


def test_json_has_every_section(run: dict) -> None:
    doc = explain_json(run, "--identifier", "email:Anna@Example.com", "--out-dir", str(run["out"]))
    assert doc["customer_id"] == run["customer"]
    assert doc["found_by"]["type"] == "email" and len(doc["found_by"]["value"]) == 32
    assert sorted(i["type"] for i in doc["identifiers"]) == ["cookie_id", "email", "phone"]
    assert doc["consents"] == {"push": {"status": "granted", "ts": "2025-11-24T15:00:00.000Z", "ts_ms": T0 - HOUR}}
    assert doc["consent_ledger"] == doc["consents"]  # history's ledger and the policy's copy agree
    [pending] = doc["pending"]
    assert (pending["rule"], pending["product"], pending["due_ms"]) == ("browse_abandoned", "P2", T0 + 49 * HOUR)
    assert pending["evidence"] == ["w-6"]
    assert doc["customer_cap"]["trigger_times"] == ["2025-11-25T13:00:00.000Z"] and not doc["customer_cap"]["capped"]
    assert [(p["rule"], p["product"]) for p in doc["product_caps"]] == [("*", "P4")]
    triggers = [t for t in records(run["files"]["triggers"]) if t["customer_id"] == run["customer"]]
    assert doc["triggers"] == triggers and [t["products"] for t in triggers] == [["P1"], ["P4"]]
    assert [(s["rule"], s["reason"]) for s in doc["suppressed"]] == [("browse_abandoned", "product_cap")]
    assert [(s["rule"], s["reason"], s["products"]) for s in doc["cancellations"]] == [
        ("cart_abandoned", "purchased", ["P3"])]
    assert doc["retractions"] == []


def test_phone_in_any_format_and_customer_id_find_the_same_customer(run: dict) -> None:
    by_phone = explain_json(run, "--identifier", "phone:040 123 4567")  # the default country code, 358
    by_id = explain_json(run, "--customer", run["customer"])
    assert by_phone["customer_id"] == by_id["customer_id"] == run["customer"]
    assert by_id["identifiers"] == by_phone["identifiers"]
    hashed = next(i["value"] for i in by_id["identifiers"] if i["type"] == "email")
    assert explain_json(run, "--identifier", f"email:{hashed}")["customer_id"] == run["customer"]  # already hashed


def test_product_filter(run: dict) -> None:
    doc = explain_json(run, "--customer", run["customer"], "--product", "P1", "--out-dir", str(run["out"]))
    assert doc["pending"] == [] and doc["product_caps"] == []
    assert [t["products"] for t in doc["triggers"]] == [["P1"]]
    assert [s["reason"] for s in doc["suppressed"]] == ["product_cap"] and doc["cancellations"] == []


@pytest.mark.parametrize("args, code, fragment", [
    (["--identifier", "email:nobody@example.com"], 1, "identifier email (hashed "),
    (["--identifier", "device_id:d-unknown"], 1, "identifier device_id d-unknown not found"),
    (["--customer", "cus_000000000000000000000000"], 1, "customer cus_000000000000000000000000 not found"),
    (["--identifier", "shoe_size:42"], 2, "unknown identifier type 'shoe_size'"),
    (["--identifier", "email:not-an-email"], 1, "cannot be an email"),
    ([], 2, "give one of --customer"),
])
def test_not_found_and_wrong_input_are_one_line(run: dict, args: list[str], code: int, fragment: str) -> None:
    result = omnitrigger("explain", "--state-dir", str(run["state"]), *args)
    assert_one_line_error(result, code, fragment)
    assert "nobody@" not in result.stderr  # a plain email is never echoed


def test_wrong_folders_and_key_are_one_line(run: dict, tmp_path: Path) -> None:
    assert_one_line_error(omnitrigger("explain", "--state-dir", str(tmp_path / "none"), "--customer", "cus_x"), 1,
                          "state folder not found")
    assert_one_line_error(omnitrigger("explain", "--state-dir", str(tmp_path), "--customer", "cus_x"), 1,
                          "not an omnitrigger state folder")
    assert_one_line_error(omnitrigger("explain", "--state-dir", str(run["state"]), "--customer", run["customer"],
                                      "--out-dir", str(tmp_path)), 1, "has neither triggers.jsonl")
    other_key = subprocess.run(
        [sys.executable, "-m", "omnitrigger", "explain", "--state-dir", str(run["state"]), "--identifier",
         "email:anna@example.com"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "OMNITRIGGER_PII_KEY": "another-key-0123456789abcdef"})
    assert_one_line_error(other_key, 1, "another OMNITRIGGER_PII_KEY")


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from omnitrigger.state import RocksDBStore
    store = RocksDBStore(Path(sys.argv[1]))  # the read-write open a running job holds (it takes RocksDB's lock)
    store.write({b"zz-explain-test": b"written by the holder"})
    print("open", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    store.close()
""")


def test_explain_reads_while_another_process_holds_the_database_for_writing(run: dict) -> None:
    from omnitrigger.state import RocksDBStore

    rocksdb = run["state"] / "rocksdb" / "sequencer"
    holder = subprocess.Popen([sys.executable, "-c", _WRITER, str(rocksdb)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(Exception, match="(?i)lock"):
            RocksDBStore(rocksdb)  # a second writer is refused: the holder really has it open
        result = omnitrigger("explain", "--state-dir", str(run["state"]), "--identifier", "cookie_id:c1",
                             "--out-dir", str(run["out"]), "--json")
        assert result.returncode == 0, result.stderr
        doc = orjson.loads(result.stdout)
        assert doc["customer_id"] == run["customer"] and len(doc["pending"]) == 1 and len(doc["triggers"]) == 2
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0


@pytest.mark.cluster
def test_a_cluster_state_folder_explains_the_same(run: dict, tmp_path: Path) -> None:
    """A one-machine cluster keeps one RocksDB store a shard key, opened by the process that ran it: explain
    finds the customer's shard wherever it ran, and says the same as for one process."""
    replay(tmp_path, run["tmp"] / "rec", name="out", config=Config(), state_dir=tmp_path / "state", processes=2)
    alone = explain_json(run, "--customer", run["customer"], "--out-dir", str(run["out"]))
    cluster = explain_json({"state": tmp_path / "state"}, "--customer", run["customer"],
                           "--out-dir", str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "state" / "rocksdb").iterdir()) == \
        ["history", *(f"rules-{shard:04d}" for shard in range(16)), "sequencer"]
    for doc in (alone, cluster):
        doc.pop("state_dir"), doc.pop("out_dir")
    assert cluster == alone and cluster["pending"] and cluster["triggers"]


def test_explain_shows_the_customers_control_groups(run: dict, tmp_path: Path) -> None:
    """With --config naming a holdout, explain says, per rule, whether the customer is held out, as the rules
    decide it (the same hash of the customer id)."""
    from omnitrigger.config import load_config
    from omnitrigger.operators.rules import configured_rules
    from omnitrigger.operators.rules.host import held_out

    config_path = tmp_path / "holdout.toml"
    config_path.write_text('[policy]\nholdout = 0.2\n[rules.cart_abandoned]\nholdout = 0.5\n')
    doc = explain_json(run, "--customer", run["customer"], "--config", str(config_path))
    rules = {rule.name: rule for rule in configured_rules(load_config(config_path))}
    assert [(h["rule"], h["share"]) for h in doc["holdouts"]] == [
        ("cart_abandoned", 0.5), ("browse_abandoned", 0.2), ("store_visit_offer", 0.2)]
    for entry in doc["holdouts"]:
        assert entry["held_out"] == held_out(rules[entry["rule"]], run["customer"], entry["share"])
    assert explain_json(run, "--customer", run["customer"])["holdouts"] == []
