"""The msgspec fast path of decoding (`Contracts.check_json`, schemas/structs.py) against today's path.

`TodaysLineDecoder` with `Contracts(structs=False)` decodes the way every
record went before: orjson, the depth check, the generated acceptor and, on a
rejection, the closure validator that names the reason. The fast path must give the same answer,
byte for byte, on every line: the real-data mix, the fuzzed recording, the
bad-input corpus, the mutated bodies of the contract tests and the edge cases
where msgspec and orjson read JSON differently (duplicate keys, integers past
64 bits, escapes). And the Structs must be the schema files' fields, no more,
no fewer, with the same required ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from omnitrigger.io.live_input import MessageDecoder
from omnitrigger.pii import Pseudonymizer
from omnitrigger.io.recording import LineDecoder, _as_int, _dead_letter, _loads
from omnitrigger.schemas import INPUT_TOPICS, SCHEMA_DIR, Contracts, ContractViolation
from omnitrigger.schemas.contracts import LATEST_TS_MS
from omnitrigger.schemas.structs import LENIENT_TOPIC_TYPES, MAX_DEPTH, TOPIC_TYPES

from conftest import kcat_envelope
from recordings import omnichannel_recording
from test_contracts import BAD, PALETTE, REFERENCE_MS, VALID_EXAMPLES, corpus, envelope, geo_ping, nested, web_event
from test_fuzz import FuzzedRecording
from test_robust_records import ADVERSARIAL, deep_field, nested_json

KEY = b"omnitrigger-test-key-0123456789"
INVENTORY = {"event_id": "v-1", "store_id": "S1", "product_id": "p-1", "qty": 3, "ts": REFERENCE_MS}
EXAMPLES = {**{topic: VALID_EXAMPLES[topic] for topic in INPUT_TOPICS if topic in VALID_EXAMPLES},
            "inventory.levels": [INVENTORY, {**INVENTORY, "store_id": 7, "product_id": 8, "qty": -1.5}]}


class TodaysLineDecoder(LineDecoder):
    """The decoder as it was before the msgspec fast path (commit 2200ba4), to compare against."""

    def decode(self, line: bytes, file_topic: str, line_no: int, source_file: str | None,
               last_ts: int, stream_clock_ms: int | None = None) -> tuple[int, str, int, int, Any, bool]:
        """Commit 2200ba4's `LineDecoder.decode`, verbatim."""
        topic, partition, offset = file_topic, 0, line_no
        raw: bytes | str = line
        key = None
        reference_ms = self.reference_ms
        if stream_clock_ms is not None:
            reference_ms = stream_clock_ms if reference_ms is None else min(reference_ms, stream_clock_ms)
        max_future_ms = None
        try:
            size = len(line) - (2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0)
            if size > self.max_record_bytes:
                raise ContractViolation("record_too_large", f"{size} bytes exceeds max_record_bytes {self.max_record_bytes}")
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                value = _loads(line.strip(), "invalid_json")  # says why; an empty line is its own reason
            if type(value) is dict and "payload" in value and "topic" in value and "offset" in value:
                envelope_topic = value["topic"]
                # A string, as kcat writes it; anything else (a hand-made line) keeps the file's topic.
                topic = envelope_topic if type(envelope_topic) is str else file_topic
                partition = _as_int(value.get("partition"), 0)
                offset = _as_int(value.get("offset"), line_no)
                key = value.get("key")
                kafka_ts = value.get("ts")
                if type(kafka_ts) is int and kafka_ts > 0:
                    reference_ms = kafka_ts
                    max_future_ms = self.max_clock_skew_ms
                payload = value["payload"]
                raw = payload if isinstance(payload, str) else line.strip()
                if payload is None:
                    raise ContractViolation("empty_payload", "the envelope's payload is null")
                value = _loads(payload.encode(), "invalid_payload_json") if isinstance(payload, str) else payload
            ts_ms = self.contracts.check(file_topic, value, LATEST_TS_MS if reference_ms is None else reference_ms,
                                         line, max_future_ms=max_future_ms)
            self.pseudonymizer.protect(value, line)
        except ContractViolation as violation:
            record = _dead_letter(violation, self.pseudonymizer.redact_raw(raw), topic, partition, offset,
                                  source_file, key)
            return last_ts, topic, partition, offset, record, False
        return ts_ms, topic, partition, offset, value, True


def decoders(**options: Any) -> tuple[LineDecoder, LineDecoder]:
    """(fast, today's) decoders with the same settings."""
    max_depth = options.pop("max_depth", 32)
    pseudonymizer = Pseudonymizer(KEY)
    return (LineDecoder(Contracts(max_depth=max_depth), 262_144, REFERENCE_MS, pseudonymizer, **options),
            TodaysLineDecoder(Contracts(max_depth=max_depth, structs=False), 262_144, REFERENCE_MS, pseudonymizer,
                              **options))


def outcome(decoder: LineDecoder, line: bytes, topic: str, stream_clock_ms: int | None = None) -> bytes:
    """Everything `decode` returns, as bytes: a body's key order and int/float spelling count."""
    try:
        decoded = decoder.decode(line, topic, 7, "x.jsonl", 123, stream_clock_ms)
    except Exception as error:  # noqa: BLE001 - a crash is an outcome to compare too
        return f"raised {type(error).__name__}".encode()
    return orjson.dumps(decoded, option=orjson.OPT_PASSTHROUGH_DATACLASS)


def assert_same(lines: list[tuple[str, bytes]], **options: Any) -> int:
    """Both decoders give the same on every (topic, line); returns how many lines the Structs vouched for."""
    fast, today = decoders(**options)
    different = [(topic, line[:200]) for topic, line in lines if outcome(fast, line, topic) != outcome(today, line, topic)]
    assert different == []
    return sum(fast.contracts.check_json(topic, line, REFERENCE_MS) is not None for topic, line in lines
               if _no_future_trouble(fast, topic, line))


def _no_future_trouble(decoder: LineDecoder, topic: str, line: bytes) -> bool:
    try:
        decoder.contracts.check_json(topic, line, REFERENCE_MS)
    except ContractViolation:
        return False
    return True


def test_every_line_of_the_real_data_mix_decodes_the_same(real_data: Path, tmp_path: Path) -> None:
    """The 52,780 records the real-data tests replay: same events, same bodies; the Structs vouch for all."""
    recording = tmp_path / "recording"
    omnichannel_recording(real_data, recording)
    lines = [(path.name.removesuffix(".jsonl"), line) for path in sorted(recording.glob("*.jsonl"))
             for line in path.read_bytes().splitlines(keepends=True)]
    assert len(lines) > 50_000
    # As bare lines, as kcat envelopes with the payload a string (what `omnitrigger record` writes), and as
    # bare lines judged against a stream clock that makes some of them future.
    assert assert_same(lines) == len(lines)
    enveloped = [(topic, orjson.dumps(kcat_envelope(topic, 0, n, line.decode().rstrip("\n"),
                                                    REFERENCE_MS - 10**10)))
                 for n, (topic, line) in enumerate(lines[::50])]
    assert_same(enveloped)
    fast, today = decoders()
    clock = orjson.loads(lines[len(lines) // 2][1])["ts"]
    assert [outcome(fast, line, topic, clock) for topic, line in lines[::20]] == \
        [outcome(today, line, topic, clock) for topic, line in lines[::20]]


def test_the_fuzzed_recording_decodes_the_same(tmp_path: Path) -> None:
    """Every kind of line test_fuzz writes (valid, enveloped, unknown fields, PII in free text, bad in 30 ways)."""
    fuzz = FuzzedRecording(seed=19)
    fuzz.write(tmp_path / "fuzz", 400)
    lines = [(path.name.removesuffix(".jsonl"), line) for path in sorted((tmp_path / "fuzz").glob("*.jsonl"))
             for line in path.read_bytes().splitlines(keepends=True)]
    vouched = assert_same(lines)
    assert vouched > len(lines) // 4  # the valid kinds with no unknown field
    # Each line also as the payload of a kcat envelope: the PII pre-check then reads the payload's bytes.
    enveloped = [(topic, envelope(topic, n % 4, n, line.rstrip(b"\r\n").decode("utf-8", "replace"),
                                  1_700_000_000_000 + n * 1000)) for n, (topic, line) in enumerate(lines)]
    assert_same(enveloped)
    assert_same(lines + enveloped, max_clock_skew_ms=60_000)


def test_the_bad_corpus_and_the_adversarial_lines_decode_the_same() -> None:
    lines = [(bad.topic, bad.line) for bad in BAD] + [("web.events", line) for line in ADVERSARIAL.values()]
    lines += [("web.events", deep_field(web_event(n), levels)) for n, levels in enumerate((2, 3, 30, 31, 32, 33, 253))]
    lines += [("geo.pings", b'{"event_id":"g","x":' + nested_json(levels) + b"}") for levels in (100, 2000, 100_000)]
    # Vouched for: the valid records with an unknown field 2, 3, 30 or 31 levels deep, and the 1 MB one
    # (valid too; LineDecoder refuses it on its size before asking).
    assert assert_same(lines) == 5
    for max_depth in (1, 2, MAX_DEPTH, MAX_DEPTH + 1):  # below the Structs' own depth the fast path is off
        assert_same([(topic, orjson.dumps(body)) for topic, bodies in EXAMPLES.items() for body in bodies]
                    + lines[-10:], max_depth=max_depth)


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_the_structs_never_accept_what_the_contract_refuses(topic: str) -> None:
    """On the mutated bodies of test_contracts (every field dropped or set to every palette value) and on
    unknown fields and identifier types: a body the Structs vouch for passes `check` with the same time."""
    contracts = Contracts()
    bodies = corpus(EXAMPLES[topic])
    bodies += [{**body, "extra": value} for body in EXAMPLES[topic] for value in PALETTE]
    bodies += [{**body, "ids": {**body.get("ids", {"device_id": "d"}), key: value}}
               for body in EXAMPLES[topic] for key in ("customer_email", "device_id", "x" * 300)
               for value in ("a@b.fi", None, 1, "y" * 257, {})]
    vouched = 0
    for body in bodies:
        data = json.dumps(body).encode()  # orjson cannot write 10**20
        try:
            fast = contracts.check_json(topic, data, REFERENCE_MS)
        except ContractViolation as violation:
            fast = violation.reason
        try:
            today: Any = contracts.check(topic, orjson.loads(data), REFERENCE_MS, data)
        except ContractViolation as violation:
            today = violation.reason
        if fast is not None:
            vouched += 1
            assert fast == today if isinstance(fast, str) else fast == (orjson.loads(data), today), body
    assert vouched >= len(EXAMPLES[topic]) + 5


EDGE_CASES = [
    # orjson keeps the last of a repeated key; the Structs check every one
    ("web.events", b'{"event_id":"w","type":"view_item","ts":"garbage","channel":"web","ids":{"d":"x"},'
                   b'"product_id":"p","ts":1795622400000}'),
    ("web.events", b'{"event_id":"w","type":"view_item","ts":1795622400000,"channel":"web","ids":{"d":"x"},'
                   b'"product_id":"p","ts":"garbage"}'),
    ("web.events", b'{"event_id":"w","type":"purchase","ts":1795622400000,"channel":"web","ids":{"d":"x"},'
                   b'"items":[{"product_id":"p","qty":1,"price":2}],"type":"view_item"}'),
    ("web.events", b'{"event_id":"w","type":"view_item","ts":1795622400000,"channel":"web","ids":{"d":"x","d":5},'
                   b'"product_id":"p"}'),
    ("identity.links", b'{"event_id":"i","ts":1795622400000,"source":"crm","ids":{"a":"x","a":"y"}}'),
    # integers past 64 bits, which orjson reads as floats
    ("web.events", orjson.dumps(web_event(1, product_id=1)).replace(b'"product_id":1', b'"product_id":1' + b"0" * 30)),
    ("web.events", orjson.dumps(web_event(1)).replace(b'"ts":', b'"ts":1' + b"0" * 30 + b',"t":')),
    ("geo.pings", orjson.dumps(geo_ping(1)).replace(b'"lat":60.1699', b'"lat":1' + b"0" * 30)),
    ("pos.receipts", orjson.dumps(EXAMPLES["pos.receipts"][0]).replace(b'"receipt_no":1001',
                                                                       b'"receipt_no":18446744073709551616')),
    # numbers where integers are asked for, floats that are whole, bounds exactly
    ("web.events", orjson.dumps(web_event(1, ts=1795622400000.0))),
    ("web.events", orjson.dumps(web_event(1, ts=946_684_800_000))),
    ("web.events", orjson.dumps(web_event(1, ts=946_684_799_999))),
    ("geo.pings", orjson.dumps(geo_ping(1, lat=90, lon=-180.0, accuracy_m=-0.0))),
    ("geo.pings", orjson.dumps(geo_ping(1, lat=90.000001))),
    ("identity.links", orjson.dumps({**EXAMPLES["identity.links"][0], "confidence": 1})),
    # RFC 3339 spellings, accepted and not
    *[("web.events", orjson.dumps(web_event(1, ts=ts))) for ts in (
        "2026-11-25T16:00:00Z", "2026-11-25t16:00:00.123456789+02:00", "2026-11-25 16:00:00z", "2026-11-25T16:00:00",
        "2026-W48-3T16:00:00Z", "20261125T160000Z", "2026-11-25T16:00:00.1234567890Z", "2026-02-30T16:00:00Z", "")],
    # lengths in code points, escapes, keys spelled with escapes
    ("web.events", orjson.dumps(web_event(1, event_id="😀" * 256))),
    ("web.events", orjson.dumps(web_event(1, event_id="😀" * 257))),
    ("web.events", orjson.dumps(web_event(1, ids={"cookie_id": "é" * 256}))),
    ("web.events", orjson.dumps(web_event(1)).replace(b'"channel"', b'"chan\\u006eel"')),
    ("web.events", orjson.dumps(web_event(1)).replace(b'"view_item"', b'"view\\u005fitem"')),
    ("web.events", orjson.dumps(web_event(1, event_id="a\\u0040b"))),
    ("web.events", orjson.dumps(web_event(1, note="\u0000"))),
    # PII where a Struct takes it: an unknown identifier type named like an email, phones and emails in ids
    ("web.events", orjson.dumps(web_event(1, ids={"customer_email": "Ann@Example.com", "device_id": "d"}))),
    ("web.events", orjson.dumps(web_event(1, ids={"phone": "+358 40 123 4567", "email": " ann@example.com"}))),
    ("web.events", orjson.dumps(web_event(1, ids={"phone": "+358 40 123 4567"}, product_id="mail: x@y.fi"))),
    ("consent.changes", orjson.dumps({**EXAMPLES["consent.changes"][0], "channel": "email"})),
    # whitespace and terminators around a valid record, JSON the Structs take but the line does not start as
    ("web.events", b"  " + orjson.dumps(web_event(1)) + b" \r\n"),
    ("web.events", orjson.dumps(web_event(1)) + b"\x0c\n"),
    ("web.events", b"\xef\xbb\xbf" + orjson.dumps(web_event(1))),
    ("web.events", orjson.dumps(web_event(1)) + b'{"x":1}'),
    # envelopes: payload text, payload object, a payload the Structs vouch for that is in the future
    ("web.events", envelope("web.events", 3, 9, orjson.dumps(web_event(1)).decode())),
    ("web.events", envelope("web.events", 3, 9, web_event(1))),
    ("web.events", envelope("web.events", 3, 9, orjson.dumps(web_event(1, ts=REFERENCE_MS + 10**9)).decode())),
    ("web.events", envelope("web.events", 3, 9, orjson.dumps(web_event(1, x=nested(40))).decode())),
    ("web.events", orjson.dumps({**web_event(1), "payload": "x", "topic": "t", "offset": 1})),
]


def test_the_edge_cases_decode_the_same() -> None:
    assert_same(EDGE_CASES)
    assert_same(EDGE_CASES, max_clock_skew_ms=0)


def test_an_envelope_never_passes_for_a_bare_record() -> None:
    """The fast path of a whole line skips the envelope test: no contract may have an envelope's fields."""
    for kind in [*TOPIC_TYPES.values(), *LENIENT_TOPIC_TYPES.values()]:
        for info in _struct_infos(kind):
            assert {"payload", "topic", "offset"}.isdisjoint(_fields(info)[0])


def _struct_infos(kind: Any) -> list[msgspec.inspect.StructType]:
    info = msgspec.inspect.type_info(kind)
    return list(info.types) if isinstance(info, msgspec.inspect.UnionType) else [info]


def _fields(info: msgspec.inspect.StructType) -> tuple[set[str], set[str]]:
    return {field.name for field in info.fields}, {field.name for field in info.fields if field.required}


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_the_structs_have_the_schema_files_fields(topic: str) -> None:
    """Field names and required fields as the schema says (web.events: per `type`, with its if/then)."""
    schema = orjson.loads((SCHEMA_DIR / f"{topic}.schema.json").read_bytes())
    properties, required = set(schema["properties"]), set(schema["required"])
    infos = [(info, True) for info in _struct_infos(TOPIC_TYPES[topic])]
    infos += [(info, False) for info in _struct_infos(LENIENT_TOPIC_TYPES[topic])]
    for info, strict in infos:
        names, must = _fields(info)
        tag = info.tag_field
        if tag is not None:  # the tag is the `type` field, required; the if/then adds fields per type
            names, must = names | {tag}, must | {tag}
            extra = {"view_item": {"product_id"}, "add_to_cart": {"product_id"}, "remove_from_cart": {"product_id"},
                     "purchase": {"items"}, "begin_checkout": set()}[info.tag]
        else:
            extra = set()
        assert names == properties
        assert must == required | extra
        assert info.forbid_unknown_fields is strict
    if topic == "web.events":  # one Struct for each member of the `type` enum
        assert [info.tag for info in _struct_infos(TOPIC_TYPES[topic])] == schema["properties"]["type"]["enum"]


def test_live_messages_decode_the_same(tmp_path: Path) -> None:
    """The live decoder (a Kafka message's value, its timestamp the reference) takes the same fast path."""
    fuzz = FuzzedRecording(seed=20)
    fuzz.write(tmp_path / "fuzz", 200)
    lines = [(path.name.removesuffix(".jsonl"), line.rstrip(b"\r\n"))
             for path in sorted((tmp_path / "fuzz").glob("*.jsonl")) for line in path.read_bytes().splitlines()]
    lines += [(topic, line.rstrip(b"\r\n")) for topic, line in EDGE_CASES]
    fast, today = (MessageDecoder(decoder) for decoder in decoders(max_clock_skew_ms=900_000))

    def live(decoder: MessageDecoder, topic: str, value: bytes | None, kafka_ts: int) -> bytes:
        merge_ts, item = decoder.decode(topic, "prod." + topic, 2, 40, value, b"+358 40 123 4567", kafka_ts, 5)
        return orjson.dumps([merge_ts, type(item).__name__, list(item)])

    for kafka_ts in (REFERENCE_MS, 1_700_000_000_000, 1):
        assert [live(fast, topic, line, kafka_ts) for topic, line in lines] == \
            [live(today, topic, line, kafka_ts) for topic, line in lines]
    assert live(fast, "web.events", None, REFERENCE_MS) == live(today, "web.events", None, REFERENCE_MS)
