"""A state folder of another layout, or a damaged one, is refused with one line before the flow starts.

Reused with another `[rules] shards`, `--processes` (live; a replay on one
machine may change it), operator list, PII key or state format, a state folder would not fail: it would route customers to
shards that never saw them, or hash identifiers to values the state never
held. layout.json records what fixes the layout (omnitrigger/runner/state_folder.py)
and each mismatch is one line. A damaged store (garbage or truncated RocksDB
files, a deleted RocksDB folder, a broken recovery store, a bad block found
while running, a folder in use) is one line too, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from kafka_fixtures import config_file, create_topics, live_config, mock_kafka  # noqa: F401  (a fixture)
from omnitrigger.config import Config
from omnitrigger.demo.generator import RecordingGenerator
from omnitrigger.runner.live import prepare_state_dir
from omnitrigger.runner.replay import ReplayOptions, run_replay
from omnitrigger.state import RocksDBStore, close_all_stores
from omnitrigger.runner.state_folder import FORMAT_VERSION, StateFolderError, claim_folder, release_locks


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A recording, its stores and a state folder stopped half way (so a rerun resumes and reads state)."""
    folder = tmp_path_factory.mktemp("made")
    generator = RecordingGenerator(seed=7, customers=40).generate()
    generator.write(folder / "recording")
    generator.write_stores(folder / "stores.csv")
    run_replay(ReplayOptions(recording_dir=folder / "recording", stores=folder / "stores.csv",
                             out=folder / "first.jsonl", state_dir=folder / "state", stop_after=200))
    return {"recording": folder / "recording", "stores": folder / "stores.csv", "state": folder / "state"}


@pytest.fixture
def state(made: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(made["state"], copy)
    return copy


def resume(made: dict[str, Path], state: Path, tmp_path: Path, **options: Any) -> None:
    run_replay(ReplayOptions(recording_dir=made["recording"], stores=made["stores"], out=tmp_path / "t.jsonl",
                             state_dir=state, **options))


def refused(made: dict[str, Path], state: Path, tmp_path: Path, **options: Any) -> str:
    with pytest.raises(StateFolderError) as error:
        resume(made, state, tmp_path, **options)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"state folder {state} ")
    return message


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnitrigger", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RUST_BACKTRACE": "0", **(env or {})})


def replay_cli(made: dict[str, Path], state: Path, tmp_path: Path, *extra: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return cli("replay", str(made["recording"]), "--stores", str(made["stores"]), "--out", str(tmp_path / "t.jsonl"),
               "--state-dir", str(state), "--quiet", *extra, env=env)


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnitrigger: error: state folder "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- another layout -------------------------------------------------------------------------------------


def test_the_layout_records_what_fixes_the_state(made: dict[str, Path]) -> None:
    layout = orjson.loads((made["state"] / "layout.json").read_bytes())
    assert layout["layout_version"] == FORMAT_VERSION
    assert layout["mode"] == "replay" and layout["processes"] == 1 and layout["rule_shards"] == 16
    assert layout["operators"] == ["dedup", "identity", "visits", "history", "clock", "rules"]
    assert len(layout["pii_key_id"]) == 16 and os.environ["OMNITRIGGER_PII_KEY"] not in str(layout)


def test_other_rule_shards_are_refused_on_the_command_line(made: dict[str, Path], state: Path,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "eight.toml"
    config.write_text("[rules]\nshards = 8\n")
    assert_one_line(replay_cli(made, state, tmp_path, "--config", str(config)),
                    "was made with [rules] shards 16, not 8")


def test_a_replay_resumes_with_another_process_count(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    """One RocksDB store a shard key and one recovery partition (state format 5 on): a replay on one machine resumes
    with another --processes (tests/test_cluster.py checks the outputs); layout.json then says the new count."""
    resume(made, state, tmp_path, processes=2)
    assert orjson.loads((state / "layout.json").read_bytes())["processes"] == 2
    assert sorted(path.name for path in (state / "recovery").glob("*.sqlite3")) == ["part-0.sqlite3"]
    assert (state / "rocksdb" / "sequencer" / "CURRENT").is_file()
    assert sorted(path.name for path in (state / "rocksdb").iterdir()) == \
        ["history", *(f"rules-{shard:04d}" for shard in range(16)), "sequencer"]


def test_a_folder_of_the_one_stage_sequencer_is_refused(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    """Format 5 kept history and the clock in the sequencer's key, format 6 visits: their snapshots do not fit
    the stages of format 7, where visits, history and the clock run in the history stage; and a replay of format
    7 read one source part, where format 8 reads one a stream and the sequencer's snapshot holds their merge."""
    layout = orjson.loads((state / "layout.json").read_bytes())
    assert FORMAT_VERSION == 8
    for old in (5, 6, 7):
        (state / "layout.json").write_bytes(orjson.dumps({**layout, "layout_version": old}))
        assert f"was made with state format {old}, and this omnitrigger uses state format 8; use a fresh " \
               "--state-dir" in refused(made, state, tmp_path)


def test_a_live_job_with_another_process_count_is_refused(tmp_path: Path) -> None:
    config = live_config("processes.")
    state = tmp_path / "live-state"
    try:
        prepare_state_dir(state, config)
        close_all_stores()
        release_locks()
        with pytest.raises(StateFolderError, match="was made with --processes 1, not 2; a live job resumes with "
                                                   "the same --processes"):
            prepare_state_dir(state, config, processes=2)
    finally:
        close_all_stores()
        release_locks()


def test_other_operators_are_refused(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    message = refused(made, state, tmp_path, operators=("dedup", "identity"))
    assert "was made with operators dedup,identity,visits,history,clock,rules, not dedup,identity" in message


def test_another_pii_key_is_refused(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    result = replay_cli(made, state, tmp_path, env={"OMNITRIGGER_PII_KEY": "a-different-key-0123456789"})
    assert_one_line(result, "was made with another OMNITRIGGER_PII_KEY")
    assert "a-different-key" not in result.stderr


def test_a_folder_of_an_older_state_format_is_refused(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    # layout.json as omnitrigger 0.2.0 wrote it
    (state / "layout.json").write_bytes(orjson.dumps({"layout_version": 1, "recording": str(made["recording"]),
                                                      "processes": 1}))
    assert f"was made with state format 1, and this omnitrigger uses state format {FORMAT_VERSION}" in \
        refused(made, state, tmp_path)


def test_a_corrupt_layout_file_is_refused(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    (state / "layout.json").write_bytes(b'{"layout_version": ')
    assert "corrupt layout.json" in refused(made, state, tmp_path)


def test_same_layout_other_settings_resume(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    resume(made, state, tmp_path, config=Config(batch_size=7, dedup_retention_s=86_400.0))
    assert (tmp_path / "t.jsonl").read_bytes()


def test_live_refuses_a_replay_folder_and_other_rule_shards(made: dict[str, Path], state: Path,
                                                            tmp_path: Path) -> None:
    with pytest.raises(StateFolderError, match="was made with mode 'replay', not 'live'"):
        prepare_state_dir(state, Config())
    live_state = tmp_path / "live-state"
    try:
        prepare_state_dir(live_state, Config())
    finally:
        close_all_stores()
    try:
        with pytest.raises(StateFolderError, match=r"was made with \[rules\] shards 16, not 32"):
            prepare_state_dir(live_state, Config(rule_shards=32))
        with pytest.raises(StateFolderError, match="was made with input topics"):
            prepare_state_dir(live_state, Config(kafka_topic_prefix="other."))
    finally:
        release_locks()  # the live job holds its folder's lock for as long as it runs; here the test is the job


# -- a damaged store --------------------------------------------------------------------------------------


def rocksdb_files(state: Path, pattern: str) -> list[Path]:
    return sorted((state / "rocksdb" / "sequencer").glob(pattern))  # the sequencer key's store


@pytest.mark.parametrize("damage", ["garbage_manifest", "truncated_sst", "garbage_current"])
def test_damaged_rocksdb_files_are_one_line(made: dict[str, Path], state: Path, tmp_path: Path, damage: str) -> None:
    if damage == "garbage_manifest":
        rocksdb_files(state, "MANIFEST-*")[-1].write_bytes(os.urandom(100))
    elif damage == "truncated_sst":
        sst = rocksdb_files(state, "*.sst")[0]
        os.truncate(sst, sst.stat().st_size // 3)
    else:
        (state / "rocksdb" / "sequencer" / "CURRENT").write_text("garbage\n")
    message = refused(made, state, tmp_path)
    assert "is damaged: RocksDB in " in message and "cannot be opened (" in message, message


def test_a_deleted_rocksdb_folder_is_one_line(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    shutil.rmtree(state / "rocksdb")
    assert "the recovery store has snapshots but" in refused(made, state, tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_a_damaged_recovery_store_is_one_line(made: dict[str, Path], state: Path, tmp_path: Path,
                                              damage: str) -> None:
    part = state / "recovery" / "part-0.sqlite3"
    if damage == "garbage":
        part.write_bytes(os.urandom(4096))
        assert "the recovery store part-0.sqlite3 cannot be read" in refused(made, state, tmp_path)
    else:
        part.unlink()
        assert "the recovery store has no part-0.sqlite3" in refused(made, state, tmp_path)


def test_a_folder_in_use_is_one_line(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    holder = RocksDBStore(state / "rocksdb" / "rules-0003")  # RocksDB's lock: one opener per folder
    try:
        assert "is in use by another omnitrigger process" in refused(made, state, tmp_path)
    finally:
        holder.close()


def test_a_bad_block_found_while_running_is_one_line(made: dict[str, Path], state: Path, tmp_path: Path) -> None:
    """Opening checks the files and the shards' metadata; a damaged data block shows when the flow reads it."""
    sst = rocksdb_files(state, "*.sst")[0]
    # The blocks of the identity records (customers, then identifiers), which the resumed run reads for the
    # customers who come back (a block of keys it never reads stays unread: the bloom filter answers); the
    # shards' metadata that opening checks lies after them, and the size stays, so opening succeeds.
    data = sst.read_bytes()
    start, end = data.index(b'{"first":'), data.rindex(b'["cus_')
    with sst.open("r+b") as handle:
        handle.seek(start)
        handle.write(b"\x00garbage" * ((end - start) // 8 + 1))
    result = replay_cli(made, state, tmp_path, env={"RUST_BACKTRACE": "1"})
    # One line: Bytewax's Rust panic report and backtrace are filtered out of stderr (omnitrigger/cli/panics.py).
    assert_one_line(result, f"state folder {state} is damaged: RocksDB", "Corruption")


def test_live_run_with_a_damaged_store_is_one_line(tmp_path: Path, mock_kafka: Any) -> None:  # noqa: F811
    config = live_config("damaged.")
    create_topics(mock_kafka, config)
    state = tmp_path / "live-state"
    try:
        prepare_state_dir(state, config)
    finally:
        close_all_stores()
        release_locks()
    rocksdb_files(state, "MANIFEST-*")[-1].write_bytes(os.urandom(100))
    stores = tmp_path / "stores.csv"
    RecordingGenerator().write_stores(stores)
    result = cli("run", "--brokers", mock_kafka.bootstrap_servers, "--stores", str(stores), "--state-dir", str(state),
                 "--config", str(config_file(tmp_path / "c.toml", config)))
    assert_one_line(result, "is damaged: RocksDB in ", "cannot be opened")


def test_another_runs_write_probe_does_not_make_a_new_folder_look_foreign(tmp_path: Path) -> None:
    """Two runs setting up one new folder: the other run's write probe, made before it locks, is not "not an
    omnitrigger state folder" (the loser must hear that the folder is in use, from the lock)."""
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / ".write-test-999999").touch()  # another run's probe, in the moment before it removes it
    try:
        assert claim_folder(folder) is True
    finally:
        release_locks()

