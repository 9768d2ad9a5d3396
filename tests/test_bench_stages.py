"""bench_stages.py: each stage alone over a small real-data recording, all of it or one topic's records only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from geolife import write_stores_csv
from recordings import omnichannel_recording

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_stages  # noqa: E402


@pytest.fixture
def small(real_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    _, stores = omnichannel_recording(real_data, tmp_path / "recording", users=20, receipts=50, trace_days=1)
    return tmp_path / "recording", write_stores_csv(tmp_path / "stores.csv", stores)


def _records_line(printed: str) -> str:
    return next(line for line in printed.splitlines() if " records of " in line)


def test_one_topics_records_are_measured_alone(small: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    recording, stores = small
    pings = sum(1 for _ in (recording / "geo.pings.jsonl").open("rb"))
    assert bench_stages.main(["--recording", str(recording), "--stores", str(stores), "--topics", "geo.pings"]) == 0
    line = _records_line(capsys.readouterr().out)
    assert line.startswith(f"{pings:,} records of ") and "(geo.pings only)" in line
    others = ["web.events", "pos.receipts", "consent.changes", "identity.links"]
    assert bench_stages.main(["--recording", str(recording), "--stores", str(stores), "--topics", *others]) == 0
    printed = capsys.readouterr().out
    rest = sum(sum(1 for _ in (recording / f"{topic}.jsonl").open("rb")) for topic in others)
    assert _records_line(printed).startswith(f"{rest:,} records of ")
    rules = next(line for line in printed.splitlines() if line.split()[:1] == ["rules"])
    assert float(rules.split()[1]) > 0  # the web events, receipts and consents reach the rules


def test_a_topic_not_recorded_is_one_line(small: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    recording, stores = small
    assert bench_stages.main(["--recording", str(recording), "--stores", str(stores), "--topics", "inventory.levels"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench_stages: --topics: inventory.levels not recorded in ")
    assert "geo.pings" in err  # what the recording has


def test_a_recording_without_records_is_one_line(small: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, stores = small
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "geo.pings.jsonl").write_bytes(b"")
    assert bench_stages.main(["--recording", str(empty), "--stores", str(stores)]) == 2
    err = capsys.readouterr().err
    assert err == "bench_stages: the recording holds no records\n"
