"""bench_live.py --config: a TOML file's settings go over the live benchmark's job config, and a wrong file or
value is one line (exit 2) before any broker or job starts."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_live  # noqa: E402


def run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["bench_live.py", *args])
    return bench_live.main()


def test_a_configs_settings_go_over_the_benchmarks_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "compare.toml"
    config.write_text('[state]\nspill_entries = 0\n[kafka]\nbatch_wait = "20ms"\n')
    assert run(monkeypatch, "--write-recording", str(tmp_path / "out"), "--rate", "1000", "--duration", "0.1",
               "--config", str(config)) == 0
    written = tomllib.loads((tmp_path / "out" / "bench.toml").read_text())
    assert written["state"] == {"spill_entries": 0}
    assert written["kafka"]["batch_wait"] == "20ms"  # the override, not the benchmark's default
    assert written["kafka"]["topic_prefix"] == bench_live.PREFIX  # the benchmark's own settings stay
    assert written["rules"]["cart_abandoned_after"] == "30s"


@pytest.mark.parametrize("text, says", [
    ("[state]\nspill_entries = -1\n", "spill_entries"),  # a value the job refuses
    ("[state]\nno_such_key = 1\n", "no_such_key"),
    ("spill_entries = 0\n", "is not a table"),  # a key outside any table
    ("[state\n", "compare.toml"),  # not TOML
    (None, "compare.toml"),  # no file
])
def test_a_wrong_config_is_one_line_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], text: str | None,
                                                           says: str) -> None:
    config = tmp_path / "compare.toml"
    if text is not None:
        config.write_text(text)
    started = []
    monkeypatch.setattr(bench_live, "MockCluster", lambda *a, **k: started.append(1))
    for mode in (["--write-recording", str(tmp_path / "out")], ["--steps", ""]):
        assert run(monkeypatch, *mode, "--duration", "0.1", "--config", str(config)) == 2
        error = capsys.readouterr().err
        assert error.startswith("bench_live: ") and says in error and error.count("\n") == 1, error
    assert not started, "no mock cluster starts for a wrong config"
    assert not (tmp_path / "out" / "recording").exists(), "no traffic is written for a wrong config"
