"""bench_gc.py: a whole replay in this process with every garbage collection timed, and the CLI's one-line errors."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

from geolife import write_stores_csv
from recordings import omnichannel_recording

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_gc  # noqa: E402


def test_a_collection_is_counted_under_its_generation() -> None:
    times = bench_gc.CollectionTimes()
    gc.callbacks.append(times)
    try:
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle only the collector frees
        del garbage
        gc.collect(1)
    finally:
        gc.callbacks.remove(times)
    assert times.count[1] == 1 and times.collected[1] >= 2 and times.seconds[1] > 0


def test_a_replay_prints_the_collectors_share(real_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _, stores = omnichannel_recording(real_data, tmp_path / "recording", users=20, receipts=50, trace_days=1)
    stores_file = write_stores_csv(tmp_path / "stores.csv", stores)
    out = tmp_path / "triggers.jsonl"
    assert bench_gc.main([str(tmp_path / "recording"), "--stores", str(stores_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "events/s:" in printed  # the replay ran whole, summary and all
    assert "garbage collector, replay in one process:" in printed
    assert "  in all: " in printed and "% of the CPU" in printed


def test_a_wrong_flag_is_the_clis_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_gc.main([str(tmp_path), "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("omnitrigger: error:") and "--no-such-flag" in err
