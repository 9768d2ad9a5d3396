"""A fuzzed recording: no crash, no hang, every input line accounted for, no raw personal data out (issue 13).

A seeded generator writes a few thousand records of many kinds into the five topics: valid events
of every topic, and the same events broken in the ways real feeds and attackers break them (missing
and mistyped fields, odd unicode, deep nesting, long runs without whitespace, invalid UTF-8, NaN,
huge numbers, wrong clocks, kcat envelopes with broken payloads, redelivered receipts, emails and
phones in free text and keys). The replay must finish, and the events, dead letters and duplicates
it writes must add up to exactly the lines read, with the same outputs whatever the batch size.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import orjson

from conftest import kcat_envelope, records, replay
from omnitrigger.config import Config
from omnitrigger.schemas import INPUT_TOPICS

START_MS = 1_700_000_000_000
EMAILS = ["ann.fuzz@example.com", "Bob.Fuzz+tag@mail.example.org"]
PHONES = ["+358 40 765 4321", "0407654322"]


class FuzzedRecording:
    """Seeded records of many kinds for each topic; `kinds` counts what was written, by kind."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.clock = START_MS
        self.kinds: dict[str, int] = {}
        self.pending_duplicates: list[bytes] = []  # receipts to deliver a second time

    # -- valid events -------------------------------------------------------------------------------
    def ids(self) -> dict[str, Any]:
        rng = self.rng
        ids: dict[str, Any] = {"device_id": f"d{rng.randrange(40)}"}
        if rng.random() < 0.3:
            ids["cookie_id"] = f"c{rng.randrange(40)}"
        if rng.random() < 0.1:
            ids["email"] = rng.choice(EMAILS)
        if rng.random() < 0.1:
            ids["phone"] = rng.choice(PHONES)
        if rng.random() < 0.1:
            ids["auth_id"] = f"a{rng.randrange(20)}"
        return ids

    def valid(self, topic: str) -> dict[str, Any]:
        rng = self.rng
        self.n += 1
        self.clock += rng.randrange(0, 20_000)
        ts: Any = self.clock - rng.randrange(0, 120_000)  # a little late, as real feeds are
        if rng.random() < 0.5:
            ts = _rfc3339(ts)
        product = f"p{rng.randrange(15)}"
        if topic == "web.events":
            kind = rng.choice(["view_item", "add_to_cart", "remove_from_cart", "purchase", "begin_checkout"])
            body: dict[str, Any] = {"event_id": f"w-{self.n}", "type": kind, "ts": ts,
                                    "channel": rng.choice(["web", "app"]), "ids": self.ids()}
            if kind == "purchase":
                body["items"] = [{"product_id": product, "qty": 1, "price": 9.5}]
            else:
                body["product_id"] = product
            return body
        if topic == "pos.receipts":
            body = {"terminal_id": f"T{rng.randrange(3)}", "receipt_no": self.n, "ts": ts, "store_id": "S1",
                    "items": [{"product_id": product, "qty": rng.randrange(1, 3), "price": 4.25}]}
            if rng.random() < 0.7:
                body["ids"] = {"loyalty_id": f"L{rng.randrange(20)}"}
            return body
        if topic == "geo.pings":
            return {"event_id": f"g-{self.n}", "ts": ts, "ids": {"device_id": f"d{rng.randrange(40)}"},
                    "lat": 60.169 + rng.uniform(-0.01, 0.01), "lon": 24.932 + rng.uniform(-0.01, 0.01),
                    "accuracy_m": rng.choice([5, 20, 80, 300]), "source": rng.choice(["gps", "wifi", "cell"])}
        if topic == "identity.links":
            return {"event_id": f"l-{self.n}", "ts": ts, "ids": {**self.ids(), "auth_id": f"a{rng.randrange(20)}"},
                    "source": rng.choice(["login", "crm", "app_install", "loyalty_card"])}
        return {"event_id": f"k-{self.n}", "ts": ts, "ids": self.ids(), "channel": rng.choice(["push", "email", "sms"]),
                "status": rng.choice(["granted", "revoked"])}

    # -- the kinds of lines ---------------------------------------------------------------------------
    def line(self, topic: str) -> bytes:
        kind, make = self.rng.choice(list(self._kinds().items()))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return make(topic)

    def _kinds(self) -> dict[str, Callable[[str], bytes]]:
        rng = self.rng
        dumps = orjson.dumps
        valid = self.valid

        def mutated(change: Callable[[dict[str, Any]], None]) -> Callable[[str], bytes]:
            def make(topic: str) -> bytes:
                body = valid(topic)
                change(body)
                return dumps(body)
            return make

        def nested(depth: int) -> Callable[[str], bytes]:
            return lambda topic: dumps({**valid(topic), "extra": _nest(min(depth, 200))}) if depth <= 200 else \
                dumps(valid(topic))[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"

        return {
            **{f"valid_{i}": (lambda topic: dumps(valid(topic))) for i in range(12)},
            "valid_enveloped": lambda topic: dumps(kcat_envelope(topic, rng.randrange(4), self.n, valid(topic),
                                                                 self.clock + 1000)),
            "valid_unknown_fields": mutated(lambda b: b.update(utm={"source": "mail", "n": [1, 2, {"x": None}]})),
            "valid_unicode": mutated(lambda b: b.update(note="Äiti 🛒 \u202e naïve \u0000 end")),
            "email_in_free_text": mutated(lambda b: b.update(note=f"contact {rng.choice(EMAILS)} please")),
            "phone_in_unknown_field": mutated(lambda b: b.update(mobile=rng.choice(PHONES))),
            "blank_identifier": mutated(lambda b: b.setdefault("ids", {}).update(cookie_id="")),
            "missing_ts": mutated(lambda b: b.pop("ts")),
            "missing_ids": mutated(lambda b: b.pop("ids", None) if "event_id" in b else b.pop("items")),
            "ts_garbage": mutated(lambda b: b.update(ts="yesterday")),
            "ts_seconds": mutated(lambda b: b.update(ts=START_MS // 1000)),
            "ts_years_ahead": mutated(lambda b: b.update(ts=START_MS + 3000 * 86_400_000)),
            "ts_float": mutated(lambda b: b.update(ts=START_MS + 0.5)),
            "wrong_type_ids": mutated(lambda b: b.update(ids=["d1"])),
            "wrong_type_number": mutated(lambda b: b.update(ids={"device_id": 12345})),
            "huge_number": lambda topic: dumps(valid(topic))[:-1] + b',"big":1' + b"0" * 400 + b"}",
            "nan": lambda topic: dumps(valid(topic))[:-1] + b',"x":NaN}',
            "deep_30": nested(30),
            "deep_253": nested(253),
            "deep_5000": nested(5000),
            "long_run": lambda topic: b"a@" * rng.randrange(1000, 20000),
            "long_string_field": mutated(lambda b: b.update(blob="x." * 20000 + "@example.com")),
            "too_large": mutated(lambda b: b.update(blob="y" * 270_000)),
            "invalid_utf8": lambda topic: dumps(valid(topic)).replace(b'"ts"', b'"t\xff\xfe"', 1),
            "truncated": lambda topic: dumps(valid(topic))[: rng.randrange(1, 40)],
            "not_an_object": lambda topic: rng.choice([b"[]", b"42", b'"text"', b"null", b"true"]),
            "empty": lambda topic: b"",
            "whitespace": lambda topic: b" \t ",
            "binary": lambda topic: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b""),
            "envelope_bad_payload": lambda topic: dumps(kcat_envelope(topic, 0, self.n, "{nope", self.clock)),
            "envelope_null_payload": lambda topic: dumps(kcat_envelope(topic, 1, self.n, None, self.clock)),
            "envelope_phone_key": lambda topic: dumps({**kcat_envelope(topic, 2, self.n, "{bad", self.clock),
                                                       "key": rng.choice(PHONES)}),
            "envelope_payload_list": lambda topic: dumps(kcat_envelope(topic, 3, self.n, [1, 2], self.clock)),
            "crlf": lambda topic: dumps(valid(topic)) + b"\r",
            "duplicate_receipt": lambda topic: self._redelivery(topic),
        }

    def _redelivery(self, topic: str) -> bytes:
        body = self.valid(topic)
        if topic == "pos.receipts":
            self.pending_duplicates.append(orjson.dumps(body))
        return orjson.dumps(body)

    def write(self, folder: Path, lines_per_topic: int) -> int:
        """Write the recording; returns the number of lines."""
        folder.mkdir(parents=True)
        self.pending_duplicates = []
        total = 0
        for topic in INPUT_TOPICS:
            lines = [self.line(topic) for _ in range(lines_per_topic)]
            if topic == "pos.receipts":
                lines += self.pending_duplicates  # the same receipts delivered again
            (folder / f"{topic}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
            total += len(lines)
        return total


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def _rfc3339(ts_ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def test_fuzzed_recording_accounts_for_every_line(tmp_path: Path) -> None:
    generator = FuzzedRecording(seed=13)
    lines = generator.write(tmp_path / "rec", lines_per_topic=700)
    assert len(generator.kinds) >= 40 and lines >= 3500

    summary, files = replay(tmp_path, tmp_path / "rec", name="a", config=Config(batch_size=1000))
    events, letters, duplicates = (records(files[stream]) for stream in ("events", "dead_letter", "duplicates"))
    assert summary.records_read == lines
    assert len(events) + len(letters) + len(duplicates) == lines
    assert len(duplicates) >= len(generator.pending_duplicates) > 0
    reasons = {letter["reason"] for letter in letters}
    assert {"invalid_json", "too_deep", "record_too_large", "invalid_utf8", "timestamp_in_future",
            "not_an_object", "empty_line", "invalid_payload_json"} <= reasons, reasons
    for letter in letters:
        assert isinstance(letter["offset"], int) and letter["topic"] in INPUT_TOPICS and letter["detail"]

    everything = b"".join(files.values()) + (tmp_path / "a" / "triggers.jsonl").read_bytes()
    for secret in [*EMAILS, *PHONES, "765 4321", "0407654322", "bob.fuzz"]:
        assert secret.encode() not in everything and secret.lower().encode() not in everything, secret

    _, again = replay(tmp_path, tmp_path / "rec", name="b", config=Config(batch_size=7))
    assert again == files
