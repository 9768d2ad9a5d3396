"""kill -9 in the middle of a replay, resume from the same state folder: the outputs equal an uninterrupted run's.

The replay is killed once the events part file has grown past each of a few
marks, so every kill lands mid-stream with RocksDB, Bytewax's recovery store
and the part files at different points; the resumed run must roll RocksDB
back to the committed snapshot and merge away what was written twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from omnitrigger.demo.generator import RecordingGenerator

OUTPUTS = ("events", "duplicates", "dead-letter", "out", "suppressed", "visits", "identities", "refused-links")


def replay_command(recording: Path, stores: Path, out_dir: Path, state: Path | None, config: Path) -> list[str]:
    command = [sys.executable, "-m", "omnitrigger", "replay", str(recording), "--stores", str(stores),
               "--config", str(config), "--quiet"]
    for flag in OUTPUTS:
        command += [f"--{flag}", str(out_dir / f"{flag}.jsonl")]
    if state is not None:
        command += ["--state-dir", str(state)]
    return command


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("spill_entries", [0, 1], ids=["writes-at-snapshots", "spills-every-batch"])
def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_outputs(tmp_path: Path,
                                                                              spill_entries: int) -> None:
    """Kills land between the stages' snapshots; with `[state] spill_entries = 1` the RocksDB of the sequencer and
    the history stage also holds the unclosed epoch's writes at each kill (ShardState.spill): the resume undoes them."""
    recording = tmp_path / "recording"
    generator = RecordingGenerator(seed=3, customers=2500, products=800).generate()
    generator.write(recording)
    stores = tmp_path / "stores.csv"
    generator.write_stores(stores)
    config = tmp_path / "small-epochs.toml"
    config.write_text('[replay]\nbatch_size = 50\nepoch_interval = "0.05s"\n'
                      f'[state]\nspill_entries = {spill_entries}\n')

    reference = tmp_path / "reference"
    subprocess.run(replay_command(recording, stores, reference, None, config), check=True, capture_output=True)
    total_events = lines_in(reference / "events.jsonl")

    state = tmp_path / "state"
    resumed = tmp_path / "resumed"
    kills = 0
    for fraction in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85):
        process = subprocess.Popen(replay_command(recording, stores, resumed, state, config),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while lines_in(state / "parts" / "events.w0.jsonl") < fraction * total_events:
            assert process.poll() is None, "the replay ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills == 6

    finished = subprocess.run(replay_command(recording, stores, resumed, state, config), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    for flag in OUTPUTS:
        assert (resumed / f"{flag}.jsonl").read_bytes() == (reference / f"{flag}.jsonl").read_bytes(), flag
    assert lines_in(resumed / "events.jsonl") == total_events
    triggers = [orjson.loads(line) for line in (resumed / "out.jsonl").read_bytes().splitlines()]
    rules = {trigger["rule"] for trigger in triggers}
    assert rules == {"cart_abandoned", "browse_abandoned", "store_visit_offer"}
    assert len({trigger["trigger_id"] for trigger in triggers}) == len(triggers), "no trigger id twice"
    assert lines_in(resumed / "visits.jsonl") > 0 and lines_in(resumed / "identities.jsonl") > 0


def test_a_replay_stopped_twice_and_resumed_gives_the_uninterrupted_outputs(tmp_path: Path) -> None:
    """--stop-after ends a run cleanly, so end-of-input outputs (visits still open) are written at each stop;
    the resumed run's files must still equal one uninterrupted run's, identities and visits included."""
    from conftest import replay

    recording = tmp_path / "recording"
    generator = RecordingGenerator(seed=5, customers=300, products=200).generate()
    generator.write(recording)
    stores = tmp_path / "stores.csv"
    generator.write_stores(stores)
    _, whole = replay(tmp_path, recording, name="whole", stores=stores)
    state = tmp_path / "state"
    total = sum(1 for path in recording.glob("*.jsonl") for _ in path.open("rb"))
    for stop in (total // 3, 2 * total // 3):
        replay(tmp_path, recording, name=f"part-{stop}", stores=stores, state_dir=state, stop_after=stop)
    _, resumed = replay(tmp_path, recording, name="resumed", stores=stores, state_dir=state)
    assert resumed == whole
    assert whole["visits"] and whole["identities"] and whole["triggers"]


def test_a_replay_snapshots_every_30_s_and_a_live_job_every_1_s_unless_the_file_says(tmp_path: Path) -> None:
    """A replay's crash re-runs at most one epoch, which costs only time; a live job's re-run is what a crash
    can re-send, so it keeps 1 s (omnitrigger/config.py `Config.epoch_s`). `[replay] epoch_interval` sets both."""
    from omnitrigger.config import Config, load_config

    assert Config().epoch_s == 30.0
    assert Config(wall_clock=True).epoch_s == 1.0
    path = tmp_path / "omnitrigger.toml"
    path.write_text('[replay]\nepoch_interval = "2s"\n')
    configured = load_config(path)
    assert configured.epoch_s == 2.0 and configured.with_overrides(wall_clock=True).epoch_s == 2.0
