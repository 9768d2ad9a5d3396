"""Live operations (issue 18), through librdkafka's mock cluster: what an on-call engineer looks at.

- /healthz answers while the job runs; /readyz answers 503 with its reasons
  (no statistics yet, partitions behind `[kafka] ready_max_lag`, brokers
  unreachable) and 200 once every input partition is caught up.
- The metrics added: duplicates by topic, refused links by reason, late
  pings, the snapshot age and `omnitrigger_build_info{version, config_hash}`,
  with the values a replay of the same recording counts.
- Refused links and duplicates are published to their own topics with the
  records a replay writes to --refused-links and --duplicates.
- A "progress" line every `[kafka] progress_interval`; a kill-switch change
  in the control file is logged with what changed; a broker outage is one
  line when the brokers go and one when they are back.
- deploy/'s dashboard and alert rules name only metrics the registry has.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from kafka_fixtures import (  # noqa: F401  (mock_kafka is a fixture)
    PARTITIONS, create_topics, free_port, live_config, mock_kafka, read_topic, scrape, wait_for_counts, wait_until,
)
from omnitrigger import __version__, metrics
from omnitrigger.config import load_config
from omnitrigger.io.kafka_tools import input_topics, output_topics, publish
from omnitrigger.records import DUPLICATES, REFUSED_LINKS, TRIGGERS
from omnitrigger.runner.replay import ReplayOptions, run_replay
from test_live import single_partition_recording, start_job

REPO = Path(__file__).resolve().parents[1]


def recording_with_refusals(folder: Path, customers: int = 40) -> tuple[Path, Path]:
    """The live tests' recording (it has 4 redelivered receipts) plus a link refused for low confidence, one
    refused for a blocked value, and a ping late by 18 minutes (before the last, days-later ping)."""
    recording, stores = single_partition_recording(folder, customers)
    with (recording / "identity.links.jsonl").open("ab") as handle:
        handle.write(orjson.dumps({"event_id": "link-lowconf", "ts": "2026-10-06T11:00:00.000Z", "source": "crm",
                                   "ids": {"device_id": "dev-0001", "email": "someone.else@example.com"},
                                   "confidence": 0.5}) + b"\n")
        handle.write(orjson.dumps({"event_id": "link-blocked", "ts": "2026-10-06T11:01:00.000Z", "source": "login",
                                   "ids": {"device_id": "dev-0002", "auth_id": "unknown"}}) + b"\n")
    pings = recording / "geo.pings.jsonl"
    lines = pings.read_bytes().splitlines()
    lines.insert(len(lines) - 1, orjson.dumps({
        "event_id": "ping-late", "ts": "2026-10-06T02:30:00.000Z", "ids": {"device_id": "dev-0031"},
        "lat": 60.168621, "lon": 24.940397, "accuracy_m": 10.0, "source": "gps"}))
    pings.write_bytes(b"".join(line + b"\n" for line in lines))
    return recording, stores


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of GET `path` on the job's metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(port, "/readyz")
    return status, json.loads(body)


def as_set(records: list[dict[str, Any]]) -> set[bytes]:
    """Records compared as sets (live publishes across partitions), less any wall-clock field."""
    return {orjson.dumps({key: value for key, value in record.items() if key != "emitted_at"},
                         option=orjson.OPT_SORT_KEYS) for record in records}


def test_a_job_reports_health_new_metrics_topics_and_progress(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    brokers = mock_kafka.bootstrap_servers
    recording, stores = recording_with_refusals(tmp_path)
    port = free_port()
    config = live_config("ops.", kafka_metrics_port=port, kafka_metrics_bind="127.0.0.1",
                         kafka_progress_interval_s=1.0)
    create_topics(mock_kafka, config)
    paths = {stream: tmp_path / f"replay-{stream}.jsonl" for stream in (TRIGGERS, REFUSED_LINKS, DUPLICATES)}
    summary = run_replay(ReplayOptions(recording_dir=recording, stores=stores, out=paths[TRIGGERS],
                                       refused_links=paths[REFUSED_LINKS], duplicates=paths[DUPLICATES]))
    replayed = {stream: [orjson.loads(line) for line in path.read_bytes().splitlines()]
                for stream, path in paths.items()}
    assert summary.late_pings == 1 and summary.refused_links_by_reason == {"blocked_value": 1, "low_confidence": 1}
    assert summary.duplicates_by_topic == {"pos.receipts": 4}
    outputs = output_topics(config)
    assert outputs[REFUSED_LINKS] == "ops.omnitrigger.refused_links"
    assert outputs[DUPLICATES] == "ops.omnitrigger.duplicates"

    # Published before the job starts, as in tests/test_live.py: read as a backlog, the records are merged in
    # the replay's order whatever the timing of their arrival.
    sent = publish(recording, brokers, config)
    job = start_job(tmp_path, mock_kafka, config, stores)
    try:
        job.wait_for_log("reading input")
        assert get(port, "/healthz") == (200, b'{"alive":true}\n')
        assert get(port, "/nothing")[0] == 404
        live = wait_for_counts(brokers, outputs, {stream: len(records) for stream, records in replayed.items()},
                               job=job)
        assert {stream: len(live[stream]) for stream in replayed} == \
            {stream: len(records) for stream, records in replayed.items()}

        def settled() -> dict[str, float] | None:
            values = scrape(port)
            read = sum(value for name, value in values.items() if name.startswith("omnitrigger_events_in_total"))
            return values if read == sum(sent.values()) and readyz(port)[0] == 200 else None

        values = wait_until(settled, what="every record read and the job ready", job=job)
        status, body = readyz(port)
        assert body == {"ready": True, "max_lag": 1000, "partitions": len(input_topics(config)) * PARTITIONS,
                        "lag_total": 0}
        wait_until(lambda: [line for line in job.lines_with("progress") if line["records_in_total"] == sum(sent.values())
                            and line["triggers_out_total"] == len(replayed[TRIGGERS])], what="a final progress line",
                   job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]

    # The topics hold what the replay's --refused-links and --duplicates files hold.
    for stream in (REFUSED_LINKS, DUPLICATES):
        assert as_set([message["value"] for message in live[stream]]) == as_set(replayed[stream]), stream
        assert all(message["key"] is None for message in live[stream])
    # The metrics count what the replay's summary counts.
    assert values['omnitrigger_duplicates_total{topic="pos.receipts"}'] == 4
    assert values['omnitrigger_refused_links_total{reason="blocked_value"}'] == 1
    assert values['omnitrigger_refused_links_total{reason="low_confidence"}'] == 1
    assert values["omnitrigger_late_pings_total"] == 1
    assert values['omnitrigger_ignored_identifiers_total{type="auth_id"}'] == 1
    assert 0 <= values["omnitrigger_snapshot_age_seconds"] < 10, "epochs of 1 s: a snapshot every second or so"
    job_config = load_config(tmp_path / "job.toml")
    build = f'omnitrigger_build_info{{config_hash="{metrics.config_hash(job_config)}",version="{__version__}"}}'
    assert values[build] == 1
    assert job.lines_with("starting")[0]["config_hash"] == metrics.config_hash(job_config)
    assert sum(value for name, value in values.items() if name.startswith("omnitrigger_consumer_lag_messages{")) == 0

    # Progress lines: one a second, each with what came in and went out since the one before.
    progress = job.lines_with("progress")
    assert len(progress) >= 2
    for line in progress:
        assert {"records_in", "records_in_total", "triggers_out", "triggers_out_total", "dead_letters",
                "consumer_lag", "snapshot_age_s", "interval_s"} <= set(line), line
        assert line["level"] == "info" and line["logger"] == "omnitrigger.live.source"
    assert sum(line["records_in"] for line in progress) == progress[-1]["records_in_total"]
    assert sum(line["triggers_out"] for line in progress) == progress[-1]["triggers_out_total"]
    assert any(line["records_in"] > 0 for line in progress) and any(line["records_in"] == 0 for line in progress)


def test_config_hash_follows_the_settings_not_the_run_time_fields(tmp_path: Path) -> None:
    config = live_config("hash.")
    assert re.fullmatch(r"[0-9a-f]{12}", metrics.config_hash(config))
    assert metrics.config_hash(config) == metrics.config_hash(config.with_overrides(stores_file="/x/stores.csv",
                                                                                   wall_clock=True))
    assert metrics.config_hash(config) != metrics.config_hash(config.with_overrides(max_triggers_per_customer=4))


def test_readyz_says_why_it_is_not_ready_and_a_broker_outage_is_two_lines(tmp_path: Path,
                                                                         mock_kafka: Any) -> None:  # noqa: F811
    brokers = mock_kafka.bootstrap_servers
    recording, stores = single_partition_recording(tmp_path, customers=300)
    port = free_port()
    # Fetches of about 1 KiB a partition: with the round trip slowed below, the backlog takes many seconds to
    # read however fast the machine is, so the lag shows in the consumer's statistics (once a second).
    config = live_config("ready.", kafka_metrics_port=port, kafka_metrics_bind="127.0.0.1", kafka_ready_max_lag=50,
                         kafka_client_properties=(("max.partition.fetch.bytes", "1024"),))
    create_topics(mock_kafka, config)
    publish(recording, brokers, config)
    mock_kafka.set_rtt(250)  # every request a quarter second from the first fetch on: the backlog is read slowly
    job = start_job(tmp_path, mock_kafka, config, stores)
    try:
        job.wait_for_log("reading input")
        try:
            status, body = wait_until(lambda: (answer := readyz(port))[0] == 503 and "behind" in answer[1]
                                      and answer, what="not ready: partitions behind", job=job)
        finally:
            mock_kafka.set_rtt(0)
        assert any("50 or more messages behind" in reason for reason in body["reasons"]), body
        assert all(part["lag"] >= 50 for part in body["behind"]) and body["lag_total"] >= 50
        assert get(port, "/healthz")[0] == 200  # alive all along
        wait_until(lambda: readyz(port)[0] == 200, timeout=120, what="ready once caught up", job=job)

        mock_kafka.set_down()
        try:
            status, body = wait_until(lambda: (answer := readyz(port))[0] == 503 and answer,
                                      what="not ready: brokers away", job=job)
            assert "brokers unreachable" in body["reasons"], body
            wait_until(lambda: job.lines_with("brokers unreachable"), what="the outage line", job=job)
            time.sleep(3)
            assert get(port, "/healthz")[0] == 200
        finally:
            mock_kafka.set_up()
        wait_until(lambda: readyz(port)[0] == 200, timeout=60, what="ready after the outage", job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    assert len(job.lines_with("brokers unreachable")) == 1
    assert len(job.lines_with("brokers reachable again")) == 1


def test_a_kill_switch_change_is_logged_with_what_changed(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    brokers = mock_kafka.bootstrap_servers
    recording, stores = single_partition_recording(tmp_path)
    port = free_port()
    control = tmp_path / "control.json"
    control.write_text('{"disabled_rules": []}')
    config = live_config("kill.", kafka_metrics_port=port, kafka_metrics_bind="127.0.0.1",
                         control_file=str(control))
    create_topics(mock_kafka, config)
    job = start_job(tmp_path, mock_kafka, config, stores)
    try:
        job.wait_for_log("reading input")
        control.write_text('{"disabled_rules": ["cart_abandoned"]}')
        publish(recording, brokers, config)  # the rules read the control file as they decide
        changed = wait_until(lambda: job.lines_with("kill switch changed"), what="the kill-switch line", job=job)
        assert wait_until(lambda: scrape(port).get('omnitrigger_rule_disabled{rule="cart_abandoned"}') == 1,
                          what="the kill-switch gauge", job=job)
    finally:
        assert job.stop() == 0, job.log_path.read_text()[-3000:]
    assert len(changed) == 1
    assert changed[0]["level"] == "warning" and changed[0]["logger"] == "omnitrigger.policy"
    assert changed[0]["path"] == str(control)
    assert changed[0]["switched_off"] == ["cart_abandoned"] and changed[0]["switched_on"] == []
    assert changed[0]["disabled_rules"] == ["cart_abandoned"]
    triggers = read_topic(brokers, output_topics(config)[TRIGGERS])
    assert triggers and all(message["value"]["rule"] != "cart_abandoned" for message in triggers)


# -- deploy/: the dashboard and the alert rules ---------------------------------------------------


def read_rule_file(path: Path) -> dict[str, Any]:
    """Prometheus' rule file, read as the YAML it is written in: block mappings and lists, plain or quoted
    scalars, and `|` blocks (the project has no YAML library, and this file needs no more)."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    position = 0

    def scalar(text: str) -> Any:
        text = text.strip()
        if text[:1] in "\"'":
            return json.loads(text) if text[0] == '"' else text[1:-1].replace("''", "'")
        return text

    def block(indent: int) -> Any:
        nonlocal position
        if lines[position].lstrip().startswith("- ") and len(lines[position]) - len(lines[position].lstrip()) == indent:
            items = []
            while position < len(lines) and len(lines[position]) - len(lines[position].lstrip()) == indent \
                    and lines[position].lstrip().startswith("- "):
                # A list item: its first key sits two columns in; read it as a mapping at that indent.
                lines[position] = " " * (indent + 2) + lines[position].lstrip()[2:]
                items.append(block(indent + 2))
            return items
        mapping: dict[str, Any] = {}
        while position < len(lines) and len(lines[position]) - len(lines[position].lstrip()) == indent:
            key, _, rest = lines[position].strip().partition(":")
            assert _, f"{path}: not a mapping line: {lines[position]!r}"
            position += 1
            rest = rest.strip()
            if rest in ("|", "|-", ">", ">-"):
                text = []
                while position < len(lines) and len(lines[position]) - len(lines[position].lstrip()) > indent:
                    text.append(lines[position].strip())
                    position += 1
                mapping[key] = ("\n" if rest.startswith("|") else " ").join(text)
            elif rest:
                mapping[key] = scalar(rest)
            else:
                child = len(lines[position]) - len(lines[position].lstrip())
                mapping[key] = block(child)
        return mapping

    document = block(0)
    assert position == len(lines), f"{path}: could not read line {lines[position]!r}"
    return document


def names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bomnitrigger_[a-z0-9_]+", expression))


def test_the_dashboard_and_the_alerts_name_only_metrics_that_exist() -> None:
    known = metrics.metric_names()
    assert {"omnitrigger_duplicates_total", "omnitrigger_refused_links_total", "omnitrigger_late_pings_total",
            "omnitrigger_snapshot_age_seconds", "omnitrigger_build_info",
            "omnitrigger_trigger_latency_seconds_bucket"} <= known

    rules = read_rule_file(REPO / "deploy" / "prometheus-alerts.yml")
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {"OmnitriggerPartitionLagging", "OmnitriggerDeadLetterRateHigh", "OmnitriggerNoTriggersInBusinessHours",
            "OmnitriggerSnapshotAgeGrowing", "OmnitriggerBrokersUnreachable"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["expr"] and rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"].startswith("docs/monitoring.md"), name
        used = names_in(rule["expr"])
        assert used and used <= known, f"{name}: unknown metrics {sorted(used - known)}"

    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    expressions += [variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"]
                    for variable in dashboard["templating"]["list"] if variable.get("type") == "query"]
    used = set().union(*(names_in(expression) for expression in expressions))
    assert len(expressions) >= 10 and used <= known, f"unknown metrics {sorted(used - known)}"
    # Every metric an on-call engineer needs is on the dashboard.
    assert {"omnitrigger_consumer_lag_messages", "omnitrigger_dead_letters_total", "omnitrigger_triggers_total",
            "omnitrigger_snapshot_age_seconds", "omnitrigger_brokers_reachable", "omnitrigger_duplicates_total",
            "omnitrigger_refused_links_total", "omnitrigger_late_pings_total", "omnitrigger_rule_disabled",
            "omnitrigger_build_info"} <= used


def test_promtool_accepts_the_alerts_their_unit_tests_and_the_dashboard_queries(tmp_path: Path) -> None:
    """Where Prometheus' promtool is installed (`apt-get install prometheus`): the rules load, their unit
    tests (deploy/prometheus-alerts.test.yml) pass, and every dashboard query parses as PromQL."""
    import shutil
    import subprocess

    import pytest

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    for args in (["check", "rules", str(REPO / "deploy" / "prometheus-alerts.yml")],
                 ["test", "rules", str(REPO / "deploy" / "prometheus-alerts.test.yml")]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:query_{index}\n        expr: {json.dumps(expression.replace('$instance', '.*'))}\n"
        for index, expression in enumerate(expressions)))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_batch_wait_above_a_second_is_one_line(tmp_path: Path) -> None:
    """`[kafka] batch_wait` (live batches fill up for that long): the source answers a stop and sends the idle
    heartbeat between batches, so a wait above a second is refused with one line, no traceback."""
    import os
    import subprocess
    import sys

    good = tmp_path / "good.toml"
    good.write_text('[kafka]\nbatch_wait = "10ms"\n')
    assert load_config(good).kafka_batch_wait_s == 0.01
    bad = tmp_path / "bad.toml"
    bad.write_text('[kafka]\nbatch_wait = "2s"\n')
    recording, stores = single_partition_recording(tmp_path, customers=5)
    result = subprocess.run([sys.executable, "-m", "omnitrigger", "replay", str(recording), "--stores", str(stores),
                             "--out", str(tmp_path / "triggers.jsonl"), "--config", str(bad)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMNITRIGGER_PII_KEY": "omnitrigger-test-key-0123456"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "kafka.batch_wait: at most 1s" in lines[0] and "Traceback" not in result.stderr, \
        result.stderr
