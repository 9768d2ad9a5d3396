"""Email and phone: normalised, keyed-hashed at the edge, and never written or logged raw (issue 13, defect 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import kcat_envelope, write_lines, write_stores
from omnitrigger.pii import (INVALID, REDACTED, PiiKeyError, Pseudonymizer, key_from_environment, normalise_email,
                             normalise_phone, pii_kind, redact_key, redact_text)
from omnitrigger.io.recording import LineDecoder
from omnitrigger.schemas import Contracts

KEY = b"test-key-0123456789abcdef"
REFERENCE_MS = 2_000_000_000_000  # "now" for bare lines: 2033


@pytest.mark.parametrize("raw, expected", [
    ("+358 40 123 4567", "358401234567"),
    ("00358401234567", "358401234567"),
    ("040-123 4567", "358401234567"),
    ("(040) 1234567", "358401234567"),
    ("358401234567", "358401234567"),
    ("401234567", "358401234567"),
    ("+44 20 7946 0958", "442079460958"),
    ("12", None),
    ("+0123456789", None),
    ("phone", None),
    ("+1234567890123456", None),
])
def test_phone_normalises_to_e164_digits(raw: str, expected: str | None) -> None:
    assert normalise_phone(raw, "358") == expected


@pytest.mark.parametrize("raw, expected", [
    ("  Ann.Lee@Example.COM ", "ann.lee@example.com"),
    ("ann@example.com", "ann@example.com"),
    ("not-an-email", None),
    ("@example.com", None),
    ("ann@localhost", None),
])
def test_email_normalises_trimmed_and_lower_case(raw: str, expected: str | None) -> None:
    assert normalise_email(raw) == expected


def test_spellings_of_one_identifier_hash_alike_and_keys_differ() -> None:
    pseudonymizer = Pseudonymizer(KEY)
    assert pseudonymizer.protect_value("email", " ANN@example.com") == pseudonymizer.protect_value("email", "ann@example.com")
    assert pseudonymizer.protect_value("phone", "+358 40 123 4567") == pseudonymizer.protect_value("phone", "0401234567")
    assert pseudonymizer.protect_value("phone", "0401234567") != Pseudonymizer(b"another-key-0123456789").protect_value(
        "phone", "0401234567")
    assert pseudonymizer.protect_value("email", "ann@example.com") != pseudonymizer.protect_value("phone", "ann@example.com")
    assert pseudonymizer.protect_value("phone", "n/a") == INVALID
    assert len(pseudonymizer.protect_value("email", "ann@example.com")) == 32


def test_protect_hashes_ids_email_and_phone_and_leaves_the_other_ids() -> None:
    body = {"ids": {"email": "Ann@Example.com", "phone": "0401234567", "loyalty_id": "L1"}, "note": "ann@example.com"}
    Pseudonymizer(KEY).protect(body)
    assert body["ids"]["loyalty_id"] == "L1"
    assert "@" not in body["ids"]["email"] and body["ids"]["phone"].isalnum() and "040" not in body["ids"]["phone"]
    assert body["note"] == REDACTED


@pytest.mark.parametrize("name, kind", [
    ("email", "email"), ("customer_email", "email"), ("emailAddress", "email"), ("e-mail", "email"),
    ("E_Mail", "email"), ("emails", "email"), ("phone", "phone"), ("phone_number", "phone"), ("mobilePhone", "phone"),
    ("telephone", "phone"), ("msisdn", "phone"), ("mobile", "phone"), ("MSISDN", "phone"),
    ("smartphone_model", None), ("iphone", None), ("headphones", None), ("channel", None), ("product_id", None),
])
def test_field_names_that_hold_an_email_or_a_phone(name: str, kind: str | None) -> None:
    assert pii_kind(name) == kind


def test_unknown_fields_of_a_valid_event_are_redacted_anywhere_and_the_rest_is_untouched() -> None:
    """Defect 5: emails and phones outside ids.email/ids.phone were kept raw in events, part files and RocksDB."""
    pseudonymizer = Pseudonymizer(KEY)
    body = {"event_id": "w1", "type": "view_item", "ts": "2026-11-25T16:00:00.123+02:00", "channel": "web",
            "product_id": "P-1", "ids": {"device_id": "d1", "email": "ann@example.com", "msisdn": "+358401234567"},
            "note": "mail Ann.Lee@Example.com or call +358 40 123 4567 today",
            "customer_email": "Bob@Example.org", "mobilePhone": 358501234567, "emailVerified": True,
            "profile": {"contact": {"phone_number": "050 123 4567", "alt": ["carol.k@shop.fi", "+44 20 7946 0958"]},
                        "phones": ["0401234567", "0501234567"], "ann@example.com": "a key that is an email"},
            "items": [{"product_id": "P-2", "qty": 1, "price": 2.5, "buyer": "dave@example.com"}],
            "order_ref": "0401234567"}
    pseudonymizer.protect(body, orjson.dumps(body))
    hashed = pseudonymizer.protect_value
    assert body["ids"] == {"device_id": "d1", "email": hashed("email", "ann@example.com"),
                           "msisdn": hashed("phone", "+358401234567")}
    assert body["note"] == f"mail {REDACTED} or call {REDACTED} today"
    assert body["customer_email"] == hashed("email", "bob@example.org")  # links like ids.email would
    assert body["mobilePhone"] == hashed("phone", "358501234567") and body["emailVerified"] is True
    assert body["profile"] == {
        "contact": {"phone_number": hashed("phone", "0501234567"), "alt": [REDACTED, REDACTED]},
        "phones": [hashed("phone", "0401234567"), hashed("phone", "0501234567")],
        REDACTED: "a key that is an email"}
    assert body["items"] == [{"product_id": "P-2", "qty": 1, "price": 2.5, "buyer": REDACTED}]
    # What the rules need is untouched; a national number under a name that says nothing is not recognised.
    assert (body["event_id"], body["type"], body["ts"], body["channel"], body["product_id"], body["order_ref"]) == (
        "w1", "view_item", "2026-11-25T16:00:00.123+02:00", "web", "P-1", "0401234567")


def test_a_clean_record_skips_the_walk_and_an_escaped_at_sign_does_not() -> None:
    """The pre-check on the raw bytes must find everything the walk would change, "\\u0040" included."""
    pseudonymizer = Pseudonymizer(KEY)
    raw = b'{"event_id":"w1","ids":{"device_id":"d1"},"note":"ann\\u0040example.com","Phone":"0401234567"}'
    body = orjson.loads(raw)
    pseudonymizer.protect(body, raw)
    assert body["note"] == REDACTED and body["Phone"] == pseudonymizer.protect_value("phone", "0401234567")
    clean = {"event_id": "w1", "ids": {"device_id": "d1"}, "product_id": "P1", "ts": 1}
    pseudonymizer.protect(copy := dict(clean), orjson.dumps(clean))
    assert copy == clean


@pytest.mark.parametrize("key, expected", [
    ("0509876543", REDACTED), ("+358 40 123 4567", REDACTED), ("(040) 1234567", REDACTED),
    ("ann@example.com", REDACTED), ("customer:+358401234567", f"customer:{REDACTED}"),
    ("cust-42", "cust-42"), ("1764000000000", "1764000000000"), (12345678, "12345678"),
    ({"phone": "0401234567"}, '{"phone":"[redacted]"}'),
])
def test_a_kafka_key_is_masked_when_it_looks_like_an_email_or_a_phone(key: object, expected: str) -> None:
    assert redact_key(key) == expected


def test_dead_letters_mask_the_key_the_detail_and_the_rejected_value() -> None:
    """A phone number as the Kafka key, and an email or a phone in a field that rejects it, are masked everywhere."""
    decoder = LineDecoder(Contracts(), 262_144, REFERENCE_MS, Pseudonymizer(KEY))
    web = {"event_id": "w1", "type": "view_item", "ts": 1_764_000_000_000, "channel": "web",
           "ids": {"device_id": "d1"}, "product_id": "P1"}
    for n, bad in enumerate([{**web, "channel": "ann@example.com"}, {**web, "type": "0509876543"},
                             {**web, "channel": "+358 50 987 6543"}]):
        for line in (orjson.dumps(bad),
                     orjson.dumps(kcat_envelope("web.events", 0, n, bad, 1_764_000_000_000) | {"key": "0509876543"})):
            _, _, _, _, letter, is_event = decoder.decode(line, "web.events", n, "web.events.jsonl", 0)
            assert not is_event and letter["reason"] == "invalid_value", letter
            assert letter["detail"].startswith(("channel: '[redacted]' is not one of", "type: '[redacted]' is not one of"))
            assert letter.get("key", REDACTED) == REDACTED
            text = orjson.dumps(letter).decode()
            assert "ann@example.com" not in text and "9876543" not in text, text


def test_free_text_keeps_what_is_not_an_email_or_a_phone() -> None:
    kept = ["2026-11-25T16:00:00+02:00", "1e+12345678", "see channel email", "+358", "user@localhost", "a@b"]
    assert [redact_text(text) for text in kept] == kept
    assert redact_text("phone: 040 123 4567, ok") == f"phone: {REDACTED}, ok"
    assert redact_text(b'\\"email\\":\\"ann@example.com\\"') == b'\\"email\\":\\"' + REDACTED.encode() + b'\\"'


def test_redaction_of_raw_records_json_envelopes_and_garbage() -> None:
    pseudonymizer = Pseudonymizer(KEY)
    hashed = pseudonymizer.protect_value("email", "ann@example.com")
    bare = pseudonymizer.redact_raw('{"ids": {"email": "ann@example.com", "phone": "+358401234567"}, "ts": 5}')
    assert "ann@example.com" not in bare and "358401234567" not in bare and hashed in bare
    envelope = pseudonymizer.redact_raw(
        '{"topic":"web.events","payload":"{\\"ids\\":{\\"phone\\":\\"0401234567\\"}}","offset":1}')
    assert "0401234567" not in envelope
    garbage = pseudonymizer.redact_raw(b'{"ids": {"email": "ann@example.com", "phone": "0401234567"  BROKEN')
    assert b"ann@example.com" not in garbage and b"0401234567" not in garbage and b"BROKEN" in garbage


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNITRIGGER_PII_KEY", raising=False)
    with pytest.raises(PiiKeyError, match="OMNITRIGGER_PII_KEY is not set"):
        key_from_environment()
    monkeypatch.setenv("OMNITRIGGER_PII_KEY", "short")
    with pytest.raises(PiiKeyError, match="at least 16"):
        key_from_environment()
    monkeypatch.setenv("OMNITRIGGER_PII_KEY", "a" * 16)  # defect 12: long enough, and no secret
    with pytest.raises(PiiKeyError, match="only 1 different characters") as refused:
        key_from_environment()
    assert "\n" not in str(refused.value)
    monkeypatch.setenv("OMNITRIGGER_PII_KEY", "abababababababababab")
    with pytest.raises(PiiKeyError, match="only 2 different characters, which is guessable; use at least 8"):
        key_from_environment()
    monkeypatch.setenv("OMNITRIGGER_PII_KEY", "abcdefghabcdefgh")
    assert key_from_environment() == b"abcdefghabcdefgh"


def test_replay_without_a_key_is_one_clear_line(tmp_path: Path) -> None:
    recording = tmp_path / "recording"
    write_lines(recording / "web.events.jsonl", [])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "omnitrigger", "replay", str(recording), "--stores",
                             str(write_stores(tmp_path / "stores.csv")), "--out", str(tmp_path / "t.jsonl")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()] and result.stderr.startswith("omnitrigger: error: OMNITRIGGER_PII_KEY is not set")


EMAILS = ["Ann.Lee@Example.com", "bob@example.org", "carol.k@shop.fi"]
PHONES = ["+358 40 123 4567", "0509876543", "+44 20 7946 0958"]


def pii_recording(recording: Path) -> None:
    """Events, receipts, links and consents carrying emails and phones, plus broken records that carry them too."""
    base = 1_764_000_000_000
    web, receipts, links, consents = [], [], [], []
    for n, (email, phone) in enumerate(zip(EMAILS, PHONES)):
        ts = base + n * 60_000
        web.append({"event_id": f"w{n}", "type": "view_item", "ts": ts, "channel": "web", "product_id": f"P{n}",
                    "ids": {"device_id": f"d{n}", "email": email}})
        receipts.append(kcat_envelope("pos.receipts", 0, n, {
            "terminal_id": "T1", "receipt_no": str(n), "ts": ts + 1000, "store_id": "S1",
            "items": [{"product_id": f"P{n}", "qty": 1, "price": 2.5}], "ids": {"phone": phone}}, ts + 1000))
        links.append({"event_id": f"l{n}", "ts": ts + 2000, "source": "crm", "ids": {"email": email, "phone": phone}})
        consents.append({"event_id": f"c{n}", "ts": ts + 3000, "channel": "email", "status": "granted",
                         "ids": {"email": email}})
    web.append({"event_id": "broken", "type": "view_item", "ts": "yesterday", "channel": "web",
                "ids": {"email": EMAILS[0], "phone": PHONES[0]}})
    # Defect 5: PII outside ids.email/ids.phone. Unknown fields of a valid event, free text included ...
    web.append({"event_id": "extra", "type": "view_item", "ts": base + 5_000, "channel": "app", "product_id": "P9",
                "ids": {"device_id": "d9"}, "note": f"reach me at {EMAILS[1]} or {PHONES[2]}",
                "customer_email": EMAILS[0], "profile": {"contact": {"mobile": PHONES[1]}, "emails": [EMAILS[2]]}})
    # ... values a dead letter's detail echoes ...
    web.append({"event_id": "echo-email", "type": "view_item", "ts": base, "channel": EMAILS[1], "product_id": "P1",
                "ids": {"device_id": "d1"}})
    web.append({"event_id": "echo-phone", "type": PHONES[1], "ts": base, "channel": "web", "product_id": "P1",
                "ids": {"device_id": "d1"}})
    # ... and a Kafka key that is a phone number.
    receipts.append(kcat_envelope("pos.receipts", 0, 99, {"terminal_id": "T1", "ids": {"phone": PHONES[1]}})
                    | {"key": PHONES[1]})
    write_lines(recording / "web.events.jsonl", web + [b'{"ids": {"email": "' + EMAILS[2].encode() + b'", broken'])
    write_lines(recording / "pos.receipts.jsonl", receipts)
    write_lines(recording / "identity.links.jsonl", links)
    write_lines(recording / "consent.changes.jsonl", consents)


def raw_pii_found(text: str) -> list[str]:
    forms = []
    for email in EMAILS:
        forms += [email, email.lower()]
    for phone in PHONES:
        digits = "".join(ch for ch in phone if ch.isdigit())
        forms += [phone, digits, digits[-7:]]
    return [form for form in forms if form in text]


def test_no_raw_email_or_phone_in_any_output_or_log_line(tmp_path: Path) -> None:
    recording = tmp_path / "recording"
    pii_recording(recording)
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--dead-letter", "--visits", "--suppressed", "--identities", "--duplicates", "--events"]
    command = [sys.executable, "-m", "omnitrigger", "replay", str(recording), "--stores",
               str(write_stores(tmp_path / "stores.csv")), "--out", str(out / "triggers.jsonl"),
               "--state-dir", str(tmp_path / "state")]
    for flag in flags:
        command += [flag, str(out / f"{flag.strip('-')}.jsonl")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    dead = (out / "dead-letter.jsonl").read_text()
    assert dead.count("\n") == 5, "the broken records still reach the dead-letter output"
    events = (out / "events.jsonl").read_text()
    assert events.count("\n") == 13, "every valid record is still there, hashed"
    assert '"key":"[redacted]"' in dead and "reach me at [redacted] or [redacted]" in events
    assert raw_pii_found(result.stdout + result.stderr) == []
    written = [path for path in (tmp_path / "state").rglob("*") if path.is_file()] + list(out.iterdir())
    for path in written:
        assert raw_pii_found(path.read_bytes().decode("utf-8", "replace")) == [], path
