"""Email and phone: normalised, keyed-hashed at the edge, and never written or logged raw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kcat_envelope, write_lines, write_stores
from omnitrigger.pii import INVALID, PiiKeyError, Pseudonymizer, key_from_environment, normalise_email, normalise_phone

KEY = b"test-key-0123456789abcdef"


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


def test_protect_rewrites_only_email_and_phone() -> None:
    body = {"ids": {"email": "Ann@Example.com", "phone": "0401234567", "loyalty_id": "L1"}, "note": "ann@example.com"}
    Pseudonymizer(KEY).protect(body)
    assert body["ids"]["loyalty_id"] == "L1"
    assert "@" not in body["ids"]["email"] and body["ids"]["phone"].isalnum() and "040" not in body["ids"]["phone"]


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
    receipts.append(kcat_envelope("pos.receipts", 0, 99, {"terminal_id": "T1", "ids": {"phone": PHONES[1]}}))
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
    assert dead.count("\n") == 3, "the broken records still reach the dead-letter output"
    events = (out / "events.jsonl").read_text()
    assert events.count("\n") == 12, "every valid record is still there, hashed"
    assert raw_pii_found(result.stdout + result.stderr) == []
    written = [path for path in (tmp_path / "state").rglob("*") if path.is_file()] + list(out.iterdir())
    for path in written:
        assert raw_pii_found(path.read_bytes().decode("utf-8", "replace")) == [], path
