"""Live delivery through librdkafka's mock cluster (issue 15): a backlog days old never reaches the triggers
topic late, and identity changes are published to the compacted identities topic.

The recording is dated from the wall clock: a shopper three days ago, whose reminders fall due while the
backlog is read, and a customer active in the last two hours, whose reminder is due ten minutes ago. Read
live from the start, the backlog fires its deadlines in event-time order as a replay does (the heartbeat
holds the clock while records remain unread): every trigger of the replay comes out as a `stale`
suppression with its trigger id, every cancellation as in the replay, and only the recent reminder is sent.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from conftest import records, replay, write_lines
from kafka_fixtures import (  # noqa: F401
    LiveJob, create_topics, free_port, live_config, mock_kafka, scrape, wait_for_counts,
)
from omnitrigger.config import Config
from omnitrigger.io.kafka_tools import output_topics, publish
from omnitrigger.records import IDENTITIES, SUPPRESSED, TRIGGERS

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
STORES = "store_id,name,lat,lon,radius_m\nS1,Kamppi,60.1690,24.9320,300\n"


def web(n: int, kind: str, ts_ms: int, product: str, **ids: str) -> dict[str, Any]:
    return {"event_id": f"w-{n}", "type": kind, "ts": ts_ms, "channel": "web", "ids": ids, "product_id": product}


def consent(n: int, ts_ms: int, **ids: str) -> dict[str, Any]:
    return {"event_id": f"k-{n}", "ts": ts_ms, "ids": ids, "channel": "push", "status": "granted"}


def backlog(recording: Path, now_ms: int) -> None:
    old = now_ms - 3 * DAY
    write_lines(recording / "consent.changes.jsonl", [
        consent(1, old - HOUR, cookie_id="c1"), consent(2, old - HOUR, cookie_id="c2"),
        consent(3, now_ms - 2 * HOUR, auth_id="u3")])  # u3: a customer of its own until the login below
    purchase = {"event_id": "w-4", "type": "purchase", "ts": old + 30 * MINUTE, "channel": "web",
                "ids": {"cookie_id": "c2"}, "items": [{"product_id": "P2", "qty": 1, "price": 9.9}]}
    write_lines(recording / "web.events.jsonl", [
        web(1, "add_to_cart", old, "P1", cookie_id="c1"),  # due three days ago: stale
        web(2, "add_to_cart", old, "P2", cookie_id="c2"), purchase,  # bought: cancelled, as in the replay
        web(3, "view_item", old + HOUR, "P5", cookie_id="c1"),  # a browse reminder due two days ago: stale
        web(5, "view_item", old + 2 * HOUR, "P6", cookie_id="c4"),  # c4: no consent of its own
        # The login merges u3's customer into c4's (seen first): u3's id is tombstoned on the identities topic.
        web(6, "add_to_cart", now_ms - 70 * MINUTE, "P3", cookie_id="c4", auth_id="u3"),  # due 10 min ago: sent
        web(7, "view_item", now_ms - 20 * HOUR, "P4", cookie_id="c5")])  # a browse reminder due in 4 hours


def job_config(path: Path, prefix: str, metrics_port: int) -> Path:
    path.write_text("\n".join([
        "[kafka]", f'topic_prefix = "{prefix}"', f"metrics_port = {metrics_port}", 'metrics_bind = "127.0.0.1"',
        'heartbeat_interval = "0.2s"', "merge_wait = 1.0",
        "[policy]", 'max_delay = "15m"', 'quiet_hours = ""']) + "\n")  # at night in Helsinki, no deferral
    return path


def test_a_backlog_days_old_is_read_in_event_time_and_sends_nothing_stale(tmp_path: Path,
                                                                           mock_kafka: Any) -> None:  # noqa: F811
    now_ms = int(time.time() * 1000)
    recording = tmp_path / "rec"
    backlog(recording, now_ms)
    stores = tmp_path / "stores.csv"
    stores.write_text(STORES)
    _, replayed = replay(tmp_path, recording, stores=stores, config=Config(quiet_hours=""))
    replay_triggers = records(replayed["triggers"])
    assert {tuple(t["products"]) for t in replay_triggers} == {("P1",), ("P5",)}  # P3 is not due in the replay

    config = live_config("backlog.")
    create_topics(mock_kafka, config)
    publish(recording, mock_kafka.bootstrap_servers, config)
    port = free_port()
    job = LiveJob(mock_kafka.bootstrap_servers, stores, tmp_path / "state",
                  job_config(tmp_path / "job.toml", config.kafka_topic_prefix, port), tmp_path / "job.log")
    topics = output_topics(config)
    try:
        live = wait_for_counts(mock_kafka.bootstrap_servers, topics,
                               {TRIGGERS: 1, SUPPRESSED: len(records(replayed["suppressed"])) + 2}, job=job)
        metrics = scrape(port)
        job.wait_for_log("caught up with the input")
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]

    [sent] = [message["value"] for message in live[TRIGGERS]]
    assert sent["products"] == ["P3"] and sent["rule"] == "cart_abandoned"
    assert sent["ts_ms"] == now_ms - 10 * MINUTE
    emitted_ms = int(datetime.fromisoformat(sent["emitted_at"].replace("Z", "+00:00")).timestamp() * 1000)
    assert emitted_ms - sent["ts_ms"] <= 15 * MINUTE, "nothing reaches the topic more than max_delay late"
    assert sent["recipient"] == {"auth_id": ["u3"]}  # push: the account the login brought in

    suppressed = [message["value"] for message in live[SUPPRESSED]]
    stale = sorted((s for s in suppressed if s["reason"] == "stale"), key=lambda s: s["trigger_id"])
    assert [s["trigger_id"] for s in stale] == sorted(t["trigger_id"] for t in replay_triggers)
    assert all(s["delay_s"] > 15 * 60 for s in stale)
    strip = {"emitted_at", "delay_s", "reason", "recipient"}
    assert sorted(orjson.dumps({k: v for k, v in s.items() if k not in strip}, option=orjson.OPT_SORT_KEYS)
                  for s in stale) == sorted(orjson.dumps({k: v for k, v in t.items() if k not in strip},
                                                         option=orjson.OPT_SORT_KEYS) for t in replay_triggers)
    # Every other suppression (the purchase's cancellation, c4's browse reminder without consent) as replayed:
    # read in event time, the purchase still cancels its cart reminder (a clock moved to the wall would not).
    others = sorted(orjson.dumps({k: v for k, v in s.items() if k != "emitted_at"}, option=orjson.OPT_SORT_KEYS)
                    for s in suppressed if s["reason"] != "stale")
    assert others == sorted(orjson.dumps({k: v for k, v in s.items() if k != "emitted_at"},
                                         option=orjson.OPT_SORT_KEYS) for s in records(replayed["suppressed"]))
    assert ("purchased", ["P2"]) in [(s["reason"], s["products"]) for s in suppressed]
    assert metrics['omnitrigger_stale_triggers_total{rule="cart_abandoned"}'] == 1
    assert metrics['omnitrigger_stale_triggers_total{rule="browse_abandoned"}'] == 1
    assert metrics['omnitrigger_pending_deadlines{rule="browse_abandoned"}'] == 1  # c5's, due in 4 hours

    # The identities topic, compacted (the latest value per key), is the replay's --identities by customer.
    latest: dict[str, Any] = {}
    for message in live[IDENTITIES]:
        latest[message["key"]] = message["value"]
    tombstoned = [key for key, value in latest.items() if value is None]
    assert len(tombstoned) == 1
    folded = sorted((entry["type"], entry["value"], customer) for customer, value in latest.items()
                    if value is not None for entry in value["identifiers"])
    assert folded == sorted((r["type"], r["value"], r["customer_id"]) for r in records(replayed["identities"]))
    assert ("auth_id", "u3", sent["customer_id"]) in folded


def test_max_delay_shorter_than_the_grace_is_refused_in_one_line(tmp_path: Path) -> None:
    from omnitrigger.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text('[policy]\nmax_delay = "5m"\n')
    try:
        load_config(path)
    except ConfigError as error:
        assert "policy.max_delay" in str(error) and "purchase_grace" in str(error)
    else:
        raise AssertionError("a max_delay every reminder exceeds must be refused")
    path.write_text('[policy]\nmax_delay = "0"\n')
    assert load_config(path).max_delay_s == 0


def test_a_job_runs_without_the_optional_inventory_topic(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    """inventory.levels is optional: a cluster without it starts (one info line) and sends what it sends."""
    from kafka_fixtures import config_file
    from omnitrigger.io.kafka_tools import input_topics

    now_ms = int(time.time() * 1000)
    recording = tmp_path / "rec"
    backlog(recording, now_ms)
    stores = tmp_path / "stores.csv"
    stores.write_text(STORES)
    config = live_config("nostock.")
    for topic in [*input_topics(config).values(), *output_topics(config).values()]:
        if not topic.endswith("inventory.levels"):
            mock_kafka.create_topic(topic, 2)
    publish(recording, mock_kafka.bootstrap_servers, config)
    job = LiveJob(mock_kafka.bootstrap_servers, stores, tmp_path / "state", config_file(tmp_path / "job.toml", config),
                  tmp_path / "job.log")
    try:
        live = wait_for_counts(mock_kafka.bootstrap_servers, {TRIGGERS: output_topics(config)[TRIGGERS]},
                               {TRIGGERS: 2}, job=job)
        [line] = job.lines_with("optional input topic not found")
        assert line["topic"] == "nostock.inventory.levels"
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    assert len(live[TRIGGERS]) >= 2  # max_delay off in live_config: the backlog's reminders go out


def test_live_publishes_conversions_as_a_replay_writes_them(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    """Issue 17 live: a cart reminder, then the product bought at a till two days later: the conversion is on
    omnitrigger.conversions, equal to the replay's record, and counted in omnitrigger_conversions_total."""
    from kafka_fixtures import config_file
    from omnitrigger.records import CONVERSIONS

    old = int(time.time() * 1000) - 10 * DAY
    recording = tmp_path / "rec"
    write_lines(recording / "consent.changes.jsonl", [consent(1, old - HOUR, cookie_id="c1")])
    write_lines(recording / "identity.links.jsonl", [{"event_id": "l-1", "ts": old - HOUR + 1, "source": "loyalty_card",
                                                      "ids": {"cookie_id": "c1", "loyalty_id": "L1"}}])
    write_lines(recording / "web.events.jsonl", [web(1, "add_to_cart", old, "P1", cookie_id="c1"),
                                                 web(2, "view_item", old + 3 * DAY, "P9", cookie_id="c-tick")])
    write_lines(recording / "pos.receipts.jsonl", [
        {"terminal_id": "T1", "receipt_no": 7, "ts": old + 2 * DAY, "store_id": "S1", "ids": {"loyalty_id": "L1"},
         "items": [{"product_id": "P1", "qty": 1, "price": 9.9}]}])
    stores = tmp_path / "stores.csv"
    stores.write_text(STORES)
    _, replayed = replay(tmp_path, recording, stores=stores, config=Config(quiet_hours="", max_delay_s=0))
    [expected] = records(replayed["conversions"])
    assert expected["purchase_channel"] == "pos" and expected["arm"] == "treated"
    port = free_port()
    config = live_config("convert.", kafka_metrics_port=port, kafka_metrics_bind="127.0.0.1")
    create_topics(mock_kafka, config)
    publish(recording, mock_kafka.bootstrap_servers, config)
    path = config_file(tmp_path / "job.toml", config)
    path.write_text(path.read_text() + 'quiet_hours = ""\n')  # the file ends in its [policy] table
    job = LiveJob(mock_kafka.bootstrap_servers, stores, tmp_path / "state", path, tmp_path / "job.log")
    try:
        live = wait_for_counts(mock_kafka.bootstrap_servers, output_topics(config), {CONVERSIONS: 1}, job=job)
        metrics = scrape(port)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    [message] = live[CONVERSIONS]
    assert {k: v for k, v in message["value"].items() if k != "emitted_at"} == \
        {k: v for k, v in expected.items() if k != "emitted_at"}
    assert message["key"] == expected["customer_id"]
    assert metrics['omnitrigger_conversions_total{arm="treated",channel="pos",rule="cart_abandoned"}'] == 1


def test_a_report_over_the_recorded_output_topics_equals_the_replays(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    """Issue 17: `omnitrigger record --outputs` writes the live output topics to files named by topic, and
    `omnitrigger report` over them gives the replay's numbers (those that need no input events)."""
    import shutil
    import subprocess
    import sys

    from kafka_fixtures import config_file
    from test_report import report_numbers

    old = int(time.time() * 1000) - 10 * DAY
    recording = tmp_path / "rec"
    write_lines(recording / "consent.changes.jsonl", [consent(n, old - HOUR, cookie_id=f"c{n}") for n in range(1, 9)])
    write_lines(recording / "identity.links.jsonl", [
        {"event_id": f"l-{n}", "ts": old - HOUR + 1, "source": "loyalty_card",
         "ids": {"cookie_id": f"c{n}", "loyalty_id": f"L{n}"}} for n in range(1, 9)])
    write_lines(recording / "web.events.jsonl", [
        *(web(n, "add_to_cart", old + n * MINUTE, "P1", cookie_id=f"c{n}") for n in range(1, 9)),
        web(99, "view_item", old + 5 * DAY, "P9", cookie_id="c-tick")])
    write_lines(recording / "pos.receipts.jsonl", [
        {"terminal_id": "T1", "receipt_no": n, "ts": old + 2 * DAY + n, "store_id": "S1", "ids": {"loyalty_id": f"L{n}"},
         "items": [{"product_id": "P1", "qty": 1, "price": 9.9}]} for n in (1, 2, 3, 5, 8)])
    stores = tmp_path / "stores.csv"
    stores.write_text(STORES)
    settings = Config(quiet_hours="", max_delay_s=0, holdout=0.4)
    replay(tmp_path, recording, stores=stores, config=settings)
    replayed = tmp_path / "run"
    (replayed / "events.jsonl").unlink()  # the live topics carry no input events: compare like with like
    config = live_config("reported.")
    create_topics(mock_kafka, config)
    publish(recording, mock_kafka.bootstrap_servers, config)
    path = config_file(tmp_path / "job.toml", config)
    path.write_text(path.read_text() + 'quiet_hours = ""\nholdout = 0.4\n')
    job = LiveJob(mock_kafka.bootstrap_servers, stores, tmp_path / "state", path, tmp_path / "job.log")
    expected_conversions = len(records((replayed / "conversions.jsonl").read_bytes()))
    try:
        wait_for_counts(mock_kafka.bootstrap_servers, output_topics(config), {"conversions": expected_conversions},
                        job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    recorded = tmp_path / "recorded"
    cli = [sys.executable, "-m", "omnitrigger"]
    result = subprocess.run([*cli, "record", "--brokers", mock_kafka.bootstrap_servers, "--outputs", "--out",
                             str(recorded), "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (recorded / "reported.omnitrigger.conversions.jsonl").is_file()
    pages = {}
    for name, folder in (("replay", replayed), ("live", recorded)):
        result = subprocess.run([*cli, "report", str(folder), "--html", str(tmp_path / f"{name}.html")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        pages[name] = report_numbers(tmp_path / f"{name}.html")
    assert expected_conversions > 0 and pages["live"]["conversion_rates"]["recorded"]
    for section in ("activity", "suppression_reasons", "conversion_rates", "conversions_by_channel", "visits"):
        assert pages["live"][section] == pages["replay"][section], section
    shutil.rmtree(recorded)
