"""Live, through librdkafka's mock cluster: a till purchase that arrives after its reminder went out is
published to the retractions topic (issue 14), as a replay of the same records writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import records, replay
from kafka_fixtures import create_topics, live_config, mock_kafka, wait_for_counts  # noqa: F401
from omnitrigger.io.kafka_tools import output_topics, publish
from omnitrigger.records import RETRACTIONS, TRIGGERS
from test_live import start_job
from test_trust import MINUTE, T0, cart_shopper, receipt

STORES = "store_id,name,lat,lon,radius_m\nS1,Kamppi,60.1690,24.9320,300\n"


def test_live_publishes_a_retraction_for_a_purchase_that_arrives_after_its_reminder(tmp_path: Path,
                                                                                     mock_kafka: Any) -> None:  # noqa: F811
    recording = tmp_path / "rec"
    cart_shopper(recording, receipts=[receipt(1, T0 + 70 * MINUTE, "L7", ("P7", 1)),
                                      receipt(2, T0 + 58 * MINUTE, "L1", ("P1", 1))])
    stores = tmp_path / "stores.csv"
    stores.write_text(STORES)
    _, replayed = replay(tmp_path, recording, stores=stores)
    [expected] = records(replayed["retractions"])
    config = live_config("retract.")
    create_topics(mock_kafka, config)
    publish(recording, mock_kafka.bootstrap_servers, config)
    job = start_job(tmp_path, mock_kafka, config, stores)
    try:
        live = wait_for_counts(mock_kafka.bootstrap_servers, output_topics(config), {TRIGGERS: 1, RETRACTIONS: 1},
                               job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    [message] = live[RETRACTIONS]
    got = {key: value for key, value in message["value"].items() if key != "emitted_at"}
    assert got == {key: value for key, value in expected.items() if key != "emitted_at"}
    assert message["key"] == expected["customer_id"]
    assert [m["value"]["trigger_id"] for m in live[TRIGGERS]] == [expected["trigger_id"]]
