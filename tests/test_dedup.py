"""Receipt and web-event dedup, on real bakery receipts, through the whole replay flow."""

from __future__ import annotations

from pathlib import Path

from conftest import records, replay, write_lines
from omnitrigger.config import Config
from recordings import receipts_with_redeliveries, taobao_web_events

# The 1,000 bakery receipts span about 17 days of event time and some copies
# arrive 900 receipts later; a 30-day retention keeps every first delivery.
MONTH_RETENTION = Config(dedup_retention_s=30 * 86_400)


def test_redelivered_receipts_are_dropped_once_each(tmp_path: Path, real_data: Path) -> None:
    """1,000 real receipts with 100 redelivered (some 900 lines later): 1,000 out, 100 duplicates."""
    recording = tmp_path / "recording"
    unique = receipts_with_redeliveries(real_data, recording)
    summary, files = replay(tmp_path, recording, config=MONTH_RETENTION)

    events = records(files["events"])
    assert len(events) == 1000
    assert sorted(e["event"]["receipt_no"] for e in events) == sorted(r["receipt_no"] for r in unique)
    duplicates = records(files["duplicates"])
    assert len(duplicates) == 100
    assert summary.duplicates_by_topic == {"pos.receipts": 100}
    assert summary.read_by_topic == {"pos.receipts": 1100}
    for duplicate in duplicates:  # each points at a first delivery that went through
        assert (duplicate["first_partition"], duplicate["first_offset"]) in {(e["partition"], e["offset"]) for e in events}


def test_resume_half_way_gives_the_same_result(tmp_path: Path, real_data: Path) -> None:
    """Stopping after 550 records and resuming with the same --state-dir gives the uninterrupted outputs."""
    recording = tmp_path / "recording"
    receipts_with_redeliveries(real_data, recording)
    _, whole = replay(tmp_path, recording, name="whole", config=MONTH_RETENTION)

    state = tmp_path / "state"
    first, partial = replay(tmp_path, recording, name="resumed", state_dir=state, stop_after=550,
                            config=MONTH_RETENTION)
    assert first.records_read == 550
    assert len(records(partial["events"])) + len(records(partial["duplicates"])) == 550
    second, resumed = replay(tmp_path, recording, name="resumed", state_dir=state, config=MONTH_RETENTION)
    assert second.records_read == 1100
    assert second.duplicates_by_topic == {"pos.receipts": 100}
    assert resumed == whole


def test_same_receipt_with_other_ts_spelling_is_a_duplicate(tmp_path: Path) -> None:
    """The dedup key uses the parsed time, so RFC 3339 and epoch ms of one instant are the same receipt."""
    receipt = {"terminal_id": "T9", "receipt_no": "77", "store_id": "S1",
               "items": [{"product_id": "p", "qty": 1, "price": 2.5}]}
    recording = tmp_path / "recording"
    write_lines(recording / "pos.receipts.jsonl", [
        {**receipt, "ts": "2026-11-02T10:00:00.250Z"},
        {**receipt, "ts": 1793613600250},
        {**receipt, "ts": "2026-11-02T10:00:00.251Z"},  # another millisecond: another receipt
    ])
    summary, files = replay(tmp_path, recording)
    assert summary.duplicates_by_topic == {"pos.receipts": 1}
    assert [r["offset"] for r in records(files["duplicates"])] == [1]


def test_web_events_dedup_by_event_id_within_retention(tmp_path: Path, real_data: Path) -> None:
    """A web event redelivered within 7 days is dropped; the same id 8 days later is new again."""
    events = taobao_web_events(real_data, limit=200)
    again = dict(events[10])
    late = {**events[20], "ts": events[20]["ts"] + 8 * 86_400_000}
    recording = tmp_path / "recording"
    write_lines(recording / "web.events.jsonl", events + [again, late])
    summary, files = replay(tmp_path, recording)
    assert summary.duplicates_by_topic == {"web.events": 1}
    assert [d["offset"] for d in records(files["duplicates"])] == [len(events)]
    kept_ids = [e["event"]["event_id"] for e in records(files["events"])]
    assert kept_ids.count(events[20]["event_id"]) == 2
