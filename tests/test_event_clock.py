"""One record cannot move the event-time clock for everyone (issue 13, defect 3).

A replay of the real-data mix with one view dated years ahead, anywhere in its file, gives the clean
run's triggers, suppressions, visits and identities, plus one `timestamp_in_future` dead letter: the
record is judged against the stream's own clock, not the wall clock. A real gap in the data (every
file moves on by weeks) is not a future date. A record whose event time is past its own Kafka
timestamp by more than `max_clock_skew` (a device clock 20 hours fast) is a dead letter too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import conftest
from conftest import kcat_envelope, records, replay, write_lines
from geolife import write_stores_csv
from omnitrigger.config import Config
from omnitrigger.io.live_input import MessageDecoder
from omnitrigger.pii import Pseudonymizer
from omnitrigger.io.recording import LineDecoder
from omnitrigger.schemas import Contracts
from recordings import omnichannel_recording

DAY_MS = 86_400_000
FUTURE_MS = 1_793_613_600_000  # 2026-11-03: nine years after the Taobao clickstream of 2017
CONFIG = Config(quiet_hours="")  # deadlines at any hour: this is about the clock


def future_view(event_id: str, device: str = "dev-future") -> dict[str, Any]:
    return {"event_id": event_id, "type": "view_item", "ts": FUTURE_MS, "channel": "web",
            "ids": {"device_id": device}, "product_id": "p-future"}


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    real_data = conftest.real_data.__wrapped__()  # the conftest fixture's body: skip (or fail in CI) without the data
    base = tmp_path_factory.mktemp("clock")
    recording = base / "clean"
    _, stores = omnichannel_recording(real_data, recording, users=40, receipts=200, trace_days=1)
    return recording, write_stores_csv(base / "stores.csv", stores)


def with_inserted(source: Path, target: Path, topic: str, where: str, line: bytes) -> Path:
    """A copy of the recording `source` with `line` inserted into `topic`'s file (first, middle or last)."""
    target.mkdir(parents=True)
    for path in source.glob("*.jsonl"):
        lines = path.read_bytes().splitlines()
        if path.name == f"{topic}.jsonl":
            at = {"first": 0, "middle": len(lines) // 2, "last": len(lines)}[where]
            lines.insert(at, line)
        (target / path.name).write_bytes(b"".join(item + b"\n" for item in lines))
    return target


@pytest.mark.parametrize("topic,where", [("web.events", "middle"), ("web.events", "first"),
                                         ("geo.pings", "middle"), ("geo.pings", "first")])
def test_one_future_record_changes_nothing_but_itself(tmp_path: Path, mix, topic: str, where: str) -> None:
    """The run equals one where that line is any other dead letter (a broken line keeps the same input position)."""
    recording, stores_file = mix
    body = future_view("w-future") if topic == "web.events" else {
        "event_id": "g-future", "ts": FUTURE_MS, "ids": {"device_id": "dev-future"}, "lat": 39.98, "lon": 116.31,
        "accuracy_m": 10, "source": "gps"}
    poisoned = with_inserted(recording, tmp_path / "poisoned", topic, where, orjson.dumps(body))
    broken = with_inserted(recording, tmp_path / "broken", topic, where, b"{not json")
    summary, files = replay(tmp_path, poisoned, name="poisoned", stores=stores_file, config=CONFIG)
    _, expected = replay(tmp_path, broken, name="broken", stores=stores_file, config=CONFIG)

    letters = records(files["dead_letter"])
    assert [(letter["reason"], letter["topic"]) for letter in letters] == [("timestamp_in_future", topic)]
    assert orjson.loads(letters[0]["raw"])["event_id"] == body["event_id"]
    assert [letter["offset"] for letter in letters] == [letter["offset"] for letter in records(expected["dead_letter"])]
    for stream in ("triggers", "suppressed", "visits", "identities", "refused_links", "duplicates", "events"):
        assert files[stream] == expected[stream], stream
    assert records(files["triggers"]) and records(files["identities"])
    assert summary.dead_letters_by_reason == {"timestamp_in_future": 1}


def test_a_bare_line_is_not_judged_against_the_wall_clock(tmp_path: Path) -> None:
    """Recorded data from any time replays: only the stream's own clock bounds a bare line."""
    lines = [{"event_id": f"w-{n}", "type": "view_item", "ts": FUTURE_MS + 400 * DAY_MS + n * 60_000,
              "channel": "web", "ids": {"device_id": "d1"}, "product_id": "p1"} for n in range(3)]
    recording = tmp_path / "rec"
    write_lines(recording / "web.events.jsonl", lines)
    summary, files = replay(tmp_path, recording, config=CONFIG)
    assert records(files["dead_letter"]) == []
    assert summary.records_read == 3


def test_a_gap_in_all_the_data_is_not_a_future_date(tmp_path: Path) -> None:
    """Every file moves on by 40 days: the records after the gap are events, and the clock follows them."""
    day0 = 1_700_000_000_000
    day40 = day0 + 40 * DAY_MS
    recording = tmp_path / "rec"
    web = [{"event_id": "w-1", "type": "add_to_cart", "ts": day0, "channel": "web", "ids": {"cookie_id": "c1"},
            "product_id": "p1"},
           {"event_id": "w-2", "type": "add_to_cart", "ts": day40, "channel": "web", "ids": {"cookie_id": "c2"},
            "product_id": "p2"},
           {"event_id": "w-3", "type": "view_item", "ts": day40 + 2 * 3_600_000, "channel": "web",
            "ids": {"cookie_id": "c3"}, "product_id": "p3"}]
    consents = [{"event_id": f"k-{n}", "ts": ts, "ids": {"cookie_id": cookie}, "channel": "email", "status": "granted"}
                for n, (ts, cookie) in enumerate([(day0 - 1000, "c1"), (day40 - 1000, "c2")])]
    links = [{"event_id": "l-1", "ts": day40 + 1000, "ids": {"cookie_id": "c2", "auth_id": "a2"}, "source": "login"}]
    write_lines(recording / "web.events.jsonl", web)
    write_lines(recording / "consent.changes.jsonl", consents)
    write_lines(recording / "identity.links.jsonl", links)
    _, files = replay(tmp_path, recording, config=CONFIG)
    assert records(files["dead_letter"]) == []
    assert sorted(trigger["products"][0] for trigger in records(files["triggers"])) == ["p1", "p2"]


def test_the_inputs_last_record_may_move_the_clock_on(tmp_path: Path) -> None:
    """A record that nothing follows holds nothing back: it is taken as it is, so a recording can end with one
    record weeks later to let the clock pass the pending deadlines (the live tests' sentinel does this)."""
    day0 = 1_700_000_000_000
    recording = tmp_path / "rec"
    write_lines(recording / "web.events.jsonl", [
        {"event_id": "w-1", "type": "add_to_cart", "ts": day0, "channel": "web", "ids": {"cookie_id": "c1"},
         "product_id": "p1"},
        {"event_id": "w-2", "type": "view_item", "ts": day0 + 20 * DAY_MS, "channel": "web",
         "ids": {"cookie_id": "c9"}, "product_id": "p9"}])
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": "k-1", "ts": day0 - 1000, "ids": {"cookie_id": "c1"}, "channel": "email", "status": "granted"}])
    _, files = replay(tmp_path, recording, config=CONFIG)
    assert records(files["dead_letter"]) == []
    assert [trigger["products"] for trigger in records(files["triggers"])] == [["p1"]]


def test_a_lone_jump_at_the_start_of_a_file_does_not_hold_the_file_back(tmp_path: Path) -> None:
    """A first line years ahead of the rest of its file is a dead letter; the file's records keep their places."""
    base = 1_700_000_000_000
    recording = tmp_path / "rec"
    web = [future_view("w-0", "d1")] + [
        {"event_id": f"w-{n}", "type": "add_to_cart", "ts": base + n * 60_000, "channel": "web",
         "ids": {"device_id": "d1"}, "product_id": f"p{n}"} for n in range(1, 4)]
    pings = [{"event_id": f"g-{n}", "ts": base + n * 60_000 + 30_000, "ids": {"device_id": "d2"}, "lat": 60.0,
              "lon": 24.0, "accuracy_m": 10, "source": "gps"} for n in range(1, 4)]
    write_lines(recording / "web.events.jsonl", web)
    write_lines(recording / "geo.pings.jsonl", pings)
    _, files = replay(tmp_path, recording, config=CONFIG)
    assert [letter["reason"] for letter in records(files["dead_letter"])] == ["timestamp_in_future"]
    events = records(files["events"])
    assert [event["event"]["event_id"] for event in events] == ["w-1", "g-1", "w-2", "g-2", "w-3", "g-3"]


def test_an_event_time_past_its_kafka_timestamp_by_more_than_the_skew_is_a_dead_letter(tmp_path: Path) -> None:
    """A device clock 20 hours fast, in an enveloped recording: the Kafka timestamp is the producer's clock."""
    kafka_ts = 1_700_000_000_000
    recording = tmp_path / "rec"
    ok = {"event_id": "w-ok", "type": "view_item", "ts": kafka_ts + 10 * 60_000, "channel": "app",
          "ids": {"device_id": "d1"}, "product_id": "p1"}
    fast = {**ok, "event_id": "w-fast", "ts": kafka_ts + 20 * 3_600_000}
    write_lines(recording / "web.events.jsonl", [kcat_envelope("web.events", 0, 0, ok, kafka_ts),
                                                 kcat_envelope("web.events", 0, 1, fast, kafka_ts)])
    _, files = replay(tmp_path, recording, config=CONFIG)
    letters = records(files["dead_letter"])
    assert [(letter["reason"], letter["offset"]) for letter in letters] == [("timestamp_in_future", 1)]
    assert [event["event"]["event_id"] for event in records(files["events"])] == ["w-ok"]


def test_live_decoder_judges_event_time_against_the_kafka_timestamp_with_the_skew() -> None:
    decoder = MessageDecoder(LineDecoder(Contracts(max_future_ms=DAY_MS), 262_144, None, Pseudonymizer(b"k" * 32),
                                         max_clock_skew_ms=15 * 60_000))
    kafka_ts = 1_700_000_000_000
    body = {"event_id": "w-1", "type": "view_item", "channel": "app", "ids": {"device_id": "d1"}, "product_id": "p1"}
    _, fine = decoder.decode("web.events", "web.events", 0, 1, orjson.dumps({**body, "ts": kafka_ts + 60_000}),
                             None, kafka_ts, 0)
    _, fast = decoder.decode("web.events", "web.events", 0, 2, orjson.dumps({**body, "ts": kafka_ts + 20 * 3_600_000}),
                             None, kafka_ts, 0)
    assert type(fine).__name__ == "Event"
    assert fast.record["reason"] == "timestamp_in_future"
