"""The v1 contracts: every kind of bad input becomes a dead letter, good input goes on untouched.

Three levels: `Contracts.check` on decoded bodies, `RecordingReader` on a
recording folder (dead letters keep their source and their original bytes),
and one replay through `run_replay` with every bad kind interleaved between
good records. A cross-check holds the compiled validators to the
`jsonschema` reference implementation.
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from omnitrigger.config import Config, ConfigError, load_config
from omnitrigger.io.recording import RecordingReader
from omnitrigger.records import Emitted, Event
from omnitrigger.runner.replay import ReplayOptions, run_replay
from omnitrigger.schemas import SCHEMA_DIR, Contracts, ContractViolation
from omnitrigger.schemas.acceptor import compile_acceptor
from omnitrigger.schemas.validator import SchemaCompiler

from conftest import kcat_envelope, write_stores

REFERENCE_MS = 1_795_622_400_123  # 2026-11-25T16:00:00.123Z: "now" for bare lines
REFERENCE_RFC3339 = "2026-11-25T16:00:00.123Z"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


# -- good bodies ---------------------------------------------------------------

def web_event(n: int, **fields: Any) -> dict[str, Any]:
    """A valid view_item web event, number n (its ts grows with n)."""
    body = {"event_id": f"w-{n}", "type": "view_item", "ts": REFERENCE_MS - HOUR_MS + n * 1000,
            "channel": "web", "ids": {"cookie_id": f"c-{n}"}, "product_id": f"p-{n}"}
    body.update(fields)
    return body


def geo_ping(n: int, **fields: Any) -> dict[str, Any]:
    """A valid GPS ping, number n (its ts grows with n)."""
    body = {"event_id": f"g-{n}", "ts": REFERENCE_MS - HOUR_MS + n * 1000, "ids": {"device_id": f"d-{n}"},
            "lat": 60.1699, "lon": 24.9384, "accuracy_m": 12.5, "source": "gps"}
    body.update(fields)
    return body


GOOD = {"web.events": web_event, "geo.pings": geo_ping}


def without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in names}


def with_literal(body: dict[str, Any], name: str, literal: bytes) -> bytes:
    """The JSON line of `body` with field `name` spelled as `literal` (for values orjson cannot write)."""
    return orjson.dumps({**body, name: "@@literal@@"}).replace(b'"@@literal@@"', literal)


def envelope(topic: str, partition: int, offset: int, payload: Any, kafka_ts: int = REFERENCE_MS) -> bytes:
    """A `kcat -C -J` line."""
    return orjson.dumps(kcat_envelope(topic, partition, offset, payload, kafka_ts))


def nested(levels: int) -> Any:
    """A value of `levels` nested objects and arrays, alternating, around one string."""
    value: Any = "leaf"
    for level in range(levels):
        value = {"n": value} if level % 2 else [value]
    return value


# -- the bad-input corpus --------------------------------------------------------

@dataclass(frozen=True)
class Bad:
    """One bad line and the dead letter it must become."""

    name: str
    topic: str
    line: bytes
    reason: str
    source: tuple[int, int] | None = None  # (partition, offset) of a kcat envelope; None for a bare line
    raw: bytes | None = None  # what the dead letter keeps, when it is not the whole line (an envelope's payload)

    @property
    def kept_bytes(self) -> bytes:
        return self.line if self.raw is None else self.raw


def bad_corpus() -> list[Bad]:
    too_far = REFERENCE_MS + DAY_MS + 1
    old_kafka_ts = REFERENCE_MS - 10 * DAY_MS
    return [
        Bad("not_json", "web.events", b'{"event_id": "w-900", "type": "view_item"', "invalid_json"),
        Bad("empty_line", "web.events", b"", "empty_line"),
        Bad("blank_line", "geo.pings", b"  \t ", "empty_line"),
        Bad("json_array", "web.events", orjson.dumps([web_event(901)]), "not_an_object"),
        Bad("json_string", "geo.pings", b'"g-902"', "not_an_object"),
        Bad("missing_channel", "web.events", orjson.dumps(without(web_event(903), "channel")), "missing_field"),
        Bad("missing_device_id", "geo.pings", orjson.dumps(geo_ping(904, ids={"cookie_id": "c"})), "missing_field"),
        Bad("lat_as_string", "geo.pings", orjson.dumps(geo_ping(905, lat="60.17")), "wrong_type"),
        Bad("unparseable_ts", "web.events", orjson.dumps(web_event(906, ts="yesterday at noon")), "invalid_timestamp"),
        Bad("future_ts_bare", "web.events", orjson.dumps(web_event(907, ts=too_far)), "timestamp_in_future"),
        # 9 days before the reader's reference, but a day and 1 ms after its own Kafka timestamp.
        Bad("future_ts_envelope", "geo.pings",
            envelope("geo.pings", 2, 40, geo_ping(908, ts=old_kafka_ts + DAY_MS + 1), kafka_ts=old_kafka_ts),
            "timestamp_in_future", source=(2, 40),
            raw=orjson.dumps(geo_ping(908, ts=old_kafka_ts + DAY_MS + 1))),
        # orjson refuses all of these while parsing, so they never reach the validator's
        # non_finite_number check (test_non_finite_numbers_are_rejected_by_the_validator covers that).
        Bad("lat_nan", "geo.pings", with_literal(geo_ping(909), "lat", b"NaN"), "invalid_json"),
        Bad("lat_infinity", "geo.pings", with_literal(geo_ping(910), "lat", b"Infinity"), "invalid_json"),
        Bad("lat_minus_infinity", "geo.pings", with_literal(geo_ping(911), "lat", b"-Infinity"), "invalid_json"),
        Bad("lat_1e999", "geo.pings", with_literal(geo_ping(912), "lat", b"1e999"), "invalid_json"),
        Bad("lat_out_of_range", "geo.pings", orjson.dumps(geo_ping(913, lat=90.5)), "out_of_range"),
        Bad("unknown_type", "web.events", orjson.dumps(web_event(914, type="click")), "invalid_value"),
        Bad("one_megabyte", "web.events", orjson.dumps(web_event(915, padding="x" * 1_048_576)), "record_too_large"),
        Bad("invalid_utf8", "web.events", orjson.dumps(web_event(916)).replace(b'"w-916"', b'"w-\xff\xfe916"'),
            "invalid_utf8"),
        Bad("payload_not_json", "web.events", envelope("web.events", 1, 17, "this is {not json"),
            "invalid_payload_json", source=(1, 17), raw=b"this is {not json"),
        Bad("payload_null", "web.events", envelope("web.events", 1, 18, None), "empty_payload", source=(1, 18)),
        # Issue 13, defect 1: 253 levels in an unknown field stopped the flow in the journal (orjson writes 254).
        Bad("nested_253_deep", "web.events", orjson.dumps(web_event(917, extra=nested(253))), "too_deep"),
        Bad("nested_33_deep", "geo.pings", orjson.dumps(geo_ping(918, extra=nested(32))), "too_deep"),
        # Past the 1,024 levels orjson reads: too deep as well, not "invalid JSON".
        Bad("nested_5000_deep", "web.events", with_literal(web_event(919), "extra", b"[" * 5000 + b"]" * 5000),
            "too_deep"),
    ]


BAD = bad_corpus()


# -- reading helpers -------------------------------------------------------------

def write_recording(folder: Path, files: dict[str, list[bytes]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for topic, lines in files.items():
        (folder / f"{topic}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    return folder


def read_all(recording: Path, reference_ms: int = REFERENCE_MS) -> tuple[list[Event], list[dict[str, Any]]]:
    """Every event and dead letter of a recording, in merged order."""
    reader = RecordingReader(recording, Contracts(), reference_ms=reference_ms)
    items: list[Event | Emitted] = []
    try:
        while batch := reader.read_batch(100):
            items.extend(batch)
    finally:
        reader.close()
    return ([item for item in items if type(item) is Event],
            [item.record for item in items if type(item) is Emitted])


def kept_bytes(letter: dict[str, Any]) -> bytes:
    """The original bytes a dead letter keeps, from `raw` or `raw_base64` (never both)."""
    assert ("raw" in letter) != ("raw_base64" in letter), letter.keys()
    return letter["raw"].encode() if "raw" in letter else base64.b64decode(letter["raw_base64"])


def violation_reason(topic: str, body: Any, reference_ms: int = REFERENCE_MS) -> str | None:
    """The reason `Contracts.check` rejects `body` with, or None if it passes."""
    try:
        Contracts().check(topic, body, reference_ms)
    except ContractViolation as violation:
        return violation.reason
    return None


# -- (a) the reader, one bad line at a time --------------------------------------------

@pytest.mark.parametrize("bad", BAD, ids=[bad.name for bad in BAD])
def test_reader_turns_bad_line_into_dead_letter(tmp_path: Path, bad: Bad) -> None:
    """A bad line between two good ones: one dead letter with reason, source and original bytes; both good events pass."""
    make = GOOD[bad.topic]
    before, after = make(1), make(2)
    recording = write_recording(tmp_path / "rec", {bad.topic: [orjson.dumps(before), bad.line, orjson.dumps(after)]})

    events, letters = read_all(recording)

    assert [(event.body, event.offset) for event in events] == [(before, 0), (after, 2)]
    assert len(letters) == 1
    letter = letters[0]
    partition, offset = bad.source or (0, 1)  # a bare line's offset is its line number
    assert letter["reason"] == bad.reason, letter["detail"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (bad.topic, partition, offset)
    assert letter["source_file"] == f"{bad.topic}.jsonl"
    assert letter["detail"]
    assert kept_bytes(letter) == bad.kept_bytes


def test_invalid_utf8_is_kept_as_base64(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 cannot go in a JSON string: the dead letter keeps them as raw_base64."""
    bad = next(bad for bad in BAD if bad.reason == "invalid_utf8")
    _, [letter] = read_all(write_recording(tmp_path / "rec", {"web.events": [bad.line]}))
    assert "raw" not in letter
    assert base64.b64decode(letter["raw_base64"]) == bad.line


def test_envelope_timestamp_is_the_future_reference(tmp_path: Path) -> None:
    """An enveloped record is judged against its Kafka timestamp, not the reader's: days ahead of the reader is fine."""
    ahead = REFERENCE_MS + 5 * DAY_MS
    body = geo_ping(1, ts=ahead)
    recording = write_recording(tmp_path / "rec", {"geo.pings": [envelope("geo.pings", 0, 7, body, kafka_ts=ahead)]})
    events, letters = read_all(recording)
    assert letters == []
    assert [(event.body, event.partition, event.offset, event.ts_ms) for event in events] == [(body, 0, 7, ahead)]


def test_future_limit_is_one_day_after_the_reference() -> None:
    """A ts exactly one day after the reference passes; one millisecond more is timestamp_in_future."""
    assert violation_reason("web.events", web_event(1, ts=REFERENCE_MS + DAY_MS)) is None
    assert violation_reason("web.events", web_event(1, ts=REFERENCE_MS + DAY_MS + 1)) == "timestamp_in_future"


def test_unknown_fields_are_kept(tmp_path: Path) -> None:
    """Fields and identifier types the contract does not name travel on in the event body."""
    body = web_event(1, utm_source="newsletter", experiment={"arm": "b", "weights": [1, 2]},
                     ids={"cookie_id": "c-1", "tiktok_id": "t-1"})
    events, letters = read_all(write_recording(tmp_path / "rec", {"web.events": [orjson.dumps(body)]}))
    assert letters == []
    assert [event.body for event in events] == [body]


def test_nesting_depth_limit_is_max_depth_levels_with_or_without_the_raw_bytes() -> None:
    """The body counts as a level; with `raw` the bracket count decides cheaply, without it the walk does."""
    contracts = Contracts()
    assert contracts.max_depth == Config().max_depth == 32
    fits, too_deep = web_event(1, extra=nested(31)), web_event(1, extra=nested(32))
    for raw in (None, True):
        assert contracts.check("web.events", fits, REFERENCE_MS, orjson.dumps(fits) if raw else None)
        with pytest.raises(ContractViolation, match="more than max_depth 32 levels") as refused:
            contracts.check("web.events", too_deep, REFERENCE_MS, orjson.dumps(too_deep) if raw else None)
        assert refused.value.reason == "too_deep"
    brackets_in_strings = web_event(1, note="{[" * 100)  # the count over-counts; the walk then clears it
    assert contracts.check("web.events", brackets_in_strings, REFERENCE_MS, orjson.dumps(brackets_in_strings))
    assert violation_reason("web.events", web_event(1, extra=nested(100_000))) == "too_deep"


def test_max_depth_comes_from_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "omnitrigger.toml"
    config_file.write_text("[contracts]\nmax_depth = 4\n")
    config = load_config(config_file)
    assert config.max_depth == 4
    contracts = Contracts(max_depth=config.max_depth)
    assert contracts.check("web.events", web_event(1, extra=nested(3)), REFERENCE_MS)  # the body is a level
    with pytest.raises(ContractViolation, match="max_depth 4"):
        contracts.check("web.events", web_event(1, extra=nested(4)), REFERENCE_MS)
    for bad in ("0", "201", '"deep"'):
        config_file.write_text(f"[contracts]\nmax_depth = {bad}\n")
        with pytest.raises(ConfigError, match="contracts.max_depth: expected a whole number of levels from 1 to 200"):
            load_config(config_file)


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_the_line_terminator_does_not_count_toward_max_record_bytes(tmp_path: Path, terminator: bytes) -> None:
    """Issue 13, defect 12: a record of exactly max_record_bytes was refused for its newline."""

    def exactly(n: int, size: int) -> bytes:
        body = web_event(n)
        line = orjson.dumps({**body, "pad": "x" * (size - len(orjson.dumps(body)) - len(',"pad":""'))})
        assert len(line) == size
        return line

    recording = tmp_path / "rec"
    recording.mkdir()
    (recording / "web.events.jsonl").write_bytes(  # the last line has no terminator at all
        exactly(1, 1000) + terminator + exactly(2, 1001) + terminator + exactly(3, 1000))
    reader = RecordingReader(recording, Contracts(), max_record_bytes=1000, reference_ms=REFERENCE_MS)
    items = reader.read_batch(10)
    reader.close()
    assert [type(item) for item in items] == [Event, Emitted, Event]
    assert items[1].record["reason"] == "record_too_large"
    assert items[1].record["detail"] == "1001 bytes exceeds max_record_bytes 1000"


# -- Contracts.check: conditional fields and event time -------------------------------------

@pytest.mark.parametrize("body, reason", [
    (without(web_event(1), "product_id"), "missing_field"),
    (without(web_event(1, type="add_to_cart"), "product_id"), "missing_field"),
    (without(web_event(1, type="remove_from_cart"), "product_id"), "missing_field"),
    (without(web_event(1, type="purchase"), "items"), "missing_field"),
    (without(web_event(1, type="purchase", items=[{"product_id": "p", "qty": 1, "price": 9.5}]), "product_id"), None),
    (without(web_event(1, type="begin_checkout"), "product_id"), None),
], ids=["view_item", "add_to_cart", "remove_from_cart", "purchase", "purchase_with_items", "begin_checkout"])
def test_conditional_requirements(body: dict[str, Any], reason: str | None) -> None:
    """Item events need product_id and a purchase needs items; begin_checkout needs neither."""
    assert violation_reason("web.events", body) == reason


def test_both_ts_spellings_give_the_same_time() -> None:
    """RFC 3339 (with Z or an offset) and epoch milliseconds of the same instant give the same ts_ms."""
    contracts = Contracts()
    spellings = [REFERENCE_RFC3339, "2026-11-25T18:00:00.123+02:00", REFERENCE_MS]
    assert {contracts.check("web.events", web_event(1, ts=ts), REFERENCE_MS) for ts in spellings} == {REFERENCE_MS}


@pytest.mark.parametrize("ts", ["2026-11-25T16:00:00.123", "2026-11-25", 1_511_000_000, 1_511_000_000_000_000, "",
                                "16:00", "20261125T160000Z", "2026-W48-3T16:00Z"],
                         ids=["naive", "date_only", "epoch_seconds", "epoch_microseconds", "empty", "time_only",
                              "iso_basic_format", "iso_week_date"])
def test_bad_timestamps(ts: Any) -> None:
    """No offset, epoch seconds or microseconds, or ISO 8601 forms that are not RFC 3339: invalid_timestamp."""
    assert violation_reason("web.events", web_event(1, ts=ts)) == "invalid_timestamp"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["lat", "accuracy_m", "ts"])
def test_non_finite_numbers_are_rejected_by_the_validator(field: str, value: float) -> None:
    """Should a NaN or infinity get past the parser, the validator still rejects it as non_finite_number."""
    assert violation_reason("geo.pings", geo_ping(1, **{field: value})) == "non_finite_number"


# -- (b) end to end: one replay with every bad kind interleaved -----------------------------------

def interleaved_recording(folder: Path) -> tuple[list[dict[str, Any]], dict[tuple[str, int, int], Bad]]:
    """Per topic: good, bad, good, bad, ..., good. Returns the good bodies and the bad lines by source."""
    good: list[dict[str, Any]] = []
    bad_by_source: dict[tuple[str, int, int], Bad] = {}
    files: dict[str, list[bytes]] = {}
    for topic, make in GOOD.items():
        lines: list[bytes] = []
        bads = [bad for bad in BAD if bad.topic == topic]
        for n in range(len(bads) + 1):
            body = make(n, note="kept") if n == 0 else make(n)
            good.append(body)
            lines.append(orjson.dumps(body))
            if n < len(bads):
                partition, offset = bads[n].source or (0, len(lines))
                bad_by_source[(topic, partition, offset)] = bads[n]
                lines.append(bads[n].line)
        files[topic] = lines
    # one good record in a kcat envelope too
    enveloped = web_event(100)
    good.append(enveloped)
    files["web.events"].append(envelope("web.events", 4, 1000, enveloped))
    write_recording(folder, files)
    return good, bad_by_source


def dead_letter_validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMA_DIR / "dead_letter.schema.json").read_text()))


def test_replay_separates_every_bad_kind_from_good_records(tmp_path: Path) -> None:
    """run_replay: the dead-letter file holds exactly the bad lines, the events file exactly the good bodies."""
    good, bad_by_source = interleaved_recording(tmp_path / "rec")
    out = tmp_path / "out"
    summary = run_replay(ReplayOptions(
        recording_dir=tmp_path / "rec", stores=write_stores(tmp_path / "stores.csv"), out=out / "triggers.jsonl",
        dead_letter=out / "dead_letters.jsonl", events=out / "events.jsonl", state_dir=None,
        config=Config(reference_time_ms=REFERENCE_MS)))

    letters = [orjson.loads(line) for line in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    by_source = {(letter["topic"], letter["partition"], letter["offset"]): letter for letter in letters}
    assert len(by_source) == len(letters) == len(BAD)
    assert by_source.keys() == bad_by_source.keys()
    for source, letter in by_source.items():
        bad = bad_by_source[source]
        assert letter["reason"] == bad.reason, (bad.name, letter["detail"])
        assert letter["source_file"] == f"{bad.topic}.jsonl"
        assert kept_bytes(letter) == bad.kept_bytes, bad.name
    validator = dead_letter_validator()
    for letter in letters:
        validator.validate(letter)

    events = [orjson.loads(line) for line in (out / "events.jsonl").read_bytes().splitlines()]
    by_id = lambda body: body["event_id"]  # noqa: E731
    assert sorted((event["event"] for event in events), key=by_id) == sorted(good, key=by_id)
    assert summary.dead_letters_by_reason == dict(sorted(Counter(bad.reason for bad in BAD).items()))
    assert summary.records_read == len(good) + len(BAD)


# -- the compiled validators against the jsonschema reference --------------------------------------

SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.schema.json"))
LINE_ITEMS = [{"product_id": "p-1", "qty": 2, "price": 9.95}, {"product_id": 17, "qty": 1, "price": 0}]
VALID_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "web.events": [web_event(1, session_id="s-1"), web_event(2, type="begin_checkout", channel="app"),
                   without(web_event(3, type="purchase", items=LINE_ITEMS, order_id=42), "product_id")],
    "geo.pings": [geo_ping(1, consent_id="k-1"), geo_ping(2, lat=-90, lon=180, accuracy_m=0, source="wifi")],
    "pos.receipts": [{"terminal_id": "t-1", "receipt_no": 1001, "ts": REFERENCE_RFC3339, "store_id": "S1",
                      "items": LINE_ITEMS, "ids": {"loyalty_id": "l-1", "phone": "+358"}, "total": 29.85}],
    "identity.links": [{"event_id": "i-1", "ts": REFERENCE_MS, "ids": {"device_id": "d-1", "email": "a@b.fi"},
                        "source": "login", "confidence": 0.9}],
    "consent.changes": [{"event_id": "k-1", "ts": REFERENCE_RFC3339, "ids": {"device_id": "d-1"},
                         "channel": "push", "status": "granted"}],
    "stores": [{"store_id": "S1", "name": "Kamppi", "lat": 60.169, "lon": 24.932, "radius_m": 300}],
}
# Values that break most fields one way or another: wrong types, bounds, sizes, enum members of other fields.
PALETTE: list[Any] = [
    None, True, 0, -1, 1, 1.0, 1.5, -90.5, 90.5, 180.5, 1000, 1000.5, 10**20, "", "x", "x" * 257, "gps", "push",
    "purchase", "view_item", [], [1], [{}], [{"product_id": "p", "qty": 1}], {}, {"device_id": "d"}, {"x": 1},
]


def reference_registry() -> Registry:
    """Every schema file under its $id, so `common.schema.json#/$defs/...` refs resolve."""
    return Registry().with_resources(
        (path.name, Resource.from_contents(json.loads(path.read_text()))) for path in SCHEMA_FILES)


def locations(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every field and array element inside `value`, as key/index paths."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield path + (key,)
        yield from locations(child, path + (key,))


def mutated(body: Any, path: tuple, new: Any = ..., drop: bool = False) -> Any:
    """A deep copy of `body` with the value at `path` replaced by `new`, or removed."""
    copied = copy.deepcopy(body)
    parent = copied
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copied


def corpus(examples: list[dict[str, Any]]) -> list[Any]:
    """The examples, each with every field dropped and every field set to every palette value, plus non-objects."""
    bodies: list[Any] = [None, [], "x", 1, {}]
    for example in examples:
        bodies.append(example)
        for path in locations(example):
            bodies.append(mutated(example, path, drop=True))
            bodies.extend(mutated(example, path, value) for value in PALETTE)
    if "type" in examples[0]:  # web.events: every type with and without product_id and items
        for example in examples:
            for kind in ("view_item", "add_to_cart", "remove_from_cart", "begin_checkout", "purchase"):
                typed = {**example, "type": kind}
                bodies += [typed, without(typed, "product_id"), without(typed, "items"),
                           without(typed, "product_id", "items")]
    return bodies


def compiled_accepts(check: Any, body: Any) -> bool:
    try:
        check(body)
    except ContractViolation:
        return False
    return True


@pytest.mark.parametrize("name", sorted(VALID_EXAMPLES))
def test_compiled_validator_agrees_with_jsonschema(name: str) -> None:
    """On hundreds of mutated bodies, the compiled validator and the generated acceptor each accept exactly
    what Draft202012Validator accepts."""
    file_name = f"{name}.schema.json"
    check = SchemaCompiler().compile_file(file_name)
    reference = Draft202012Validator(json.loads((SCHEMA_DIR / file_name).read_text()), registry=reference_registry())
    bodies = corpus(VALID_EXAMPLES[name])
    verdicts = [(compiled_accepts(check, body), reference.is_valid(body)) for body in bodies]

    disagreements = [(body, ours) for body, (ours, theirs) in zip(bodies, verdicts) if ours != theirs]
    assert disagreements == []
    accept = compile_acceptor(file_name)  # the generated yes/no fast path must say the same on every body
    assert [(body, accept(body)) for body in bodies if accept(body) != reference.is_valid(body)] == []
    assert all(compiled_accepts(check, example) for example in VALID_EXAMPLES[name])
    accepted = sum(ours for ours, _ in verdicts)
    assert len(bodies) >= 30 and accepted > len(VALID_EXAMPLES[name]) and len(bodies) - accepted >= 30


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=[path.name for path in SCHEMA_FILES])
def test_schema_files_are_valid_draft_2020_12(path: Path) -> None:
    """Each *.schema.json declares Draft 2020-12 and is a valid schema of it (check_schema raises otherwise)."""
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
