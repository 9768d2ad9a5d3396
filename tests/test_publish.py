"""`omnitrigger publish` sends a recording in the replay's order, paced by the replay's clock (issue 13, defect 4).

A record the replay rejects (a bare line dated 52 days ahead, as in the demo recording) is still
sent, at its place in the replay's order, but it neither holds back the rest of its file nor makes
`--speed` wait 52 days of recorded time. Streamed into a live job, the recording gives the replay's
triggers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from conftest import write_lines
from kafka_fixtures import create_topics, live_config, mock_kafka, read_topic  # noqa: F401
from omnitrigger.io.kafka_tools import SENT_HEADER, input_topics, publish
from omnitrigger.pii import Pseudonymizer
from omnitrigger.io.recording import RecordingReader
from omnitrigger.records import Event
from omnitrigger.schemas import Contracts

START_MS = 1_791_187_200_000
DAY_MS = 86_400_000


def recording_with_a_wrong_clock(folder: Path) -> Path:
    """Views and pings a second apart for 40 s, with one view dated 52 days ahead in the middle of its file."""
    web = [{"event_id": f"w-{n}", "type": "view_item", "ts": START_MS + n * 2000, "channel": "web",
            "ids": {"device_id": "d1"}, "product_id": f"p{n}"} for n in range(20)]
    web.insert(10, {**web[10], "event_id": "w-ahead", "ts": START_MS + 52 * DAY_MS})
    pings = [{"event_id": f"g-{n}", "ts": START_MS + n * 2000 + 1000, "ids": {"device_id": "d2"}, "lat": 60.0,
              "lon": 24.0, "accuracy_m": 10, "source": "gps"} for n in range(20)]
    write_lines(folder / "web.events.jsonl", web)
    write_lines(folder / "geo.pings.jsonl", pings)
    return folder


def test_read_lines_gives_the_replays_order_with_each_line_as_recorded(tmp_path: Path) -> None:
    recording = recording_with_a_wrong_clock(tmp_path / "rec")
    make = lambda: RecordingReader(recording, Contracts(), pseudonymizer=Pseudonymizer(b"k" * 32))  # noqa: E731
    items = make().read_batch(1000)
    lines = make().read_lines(1000)
    assert len(items) == len(lines) == 41
    order = [item.body["event_id"] if type(item) is Event else orjson.loads(item.record["raw"])["event_id"]
             for item in items]
    assert [orjson.loads(line)["event_id"] for _, line, _ in lines] == order
    assert order[:4] == ["w-0", "g-0", "w-1", "g-1"]
    assert "w-ahead" in order[19:23]  # at its place in the file, not after every ping
    assert max(merge_ts for _, _, merge_ts in lines) < START_MS + DAY_MS


def test_publish_does_not_wait_for_a_record_dated_weeks_ahead(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    recording = recording_with_a_wrong_clock(tmp_path / "rec")
    config = live_config("pace.")
    create_topics(mock_kafka, config)
    result: dict[str, Any] = {}
    # 40 s of recorded time at speed 20: about 2 s. Paced by the wrong clock it would be 52 days / 20.
    sender = threading.Thread(target=lambda: result.update(publish(recording, mock_kafka.bootstrap_servers, config,
                                                                   speed=20.0)), daemon=True)
    sender.start()
    sender.join(120)
    assert not sender.is_alive(), "publish is still waiting"
    assert result == {"geo.pings": 20, "web.events": 21}
    sent = read_topic(mock_kafka.bootstrap_servers, input_topics(config)["web.events"])
    by_offset = sorted(sent, key=lambda message: message["offset"])
    assert [message["value"]["event_id"] for message in by_offset][9:12] == ["w-9", "w-ahead", "w-10"]
    sent_ms = [int(message["headers"][SENT_HEADER]) for message in by_offset]
    assert sent_ms == sorted(sent_ms)
