"""The command line: the demo runs, and every user error is one clear line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_lines, write_stores


def omnitrigger(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnitrigger", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("omnitrigger: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_demo_prints_its_summary() -> None:
    result = omnitrigger("demo")
    assert result.returncode == 0, result.stderr
    for expected in ("records read:", "dead letters:", "duplicates dropped:", "triggers:", "suppressed:", "events/s:"):
        assert expected in result.stdout
    assert "duplicates dropped: 0" not in result.stdout


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    folder = tmp_path / "recording"
    write_lines(folder / "consent.changes.jsonl", [
        {"event_id": "c1", "ts": "2026-11-02T10:00:00.000Z", "ids": {"device_id": "d1"}, "channel": "push",
         "status": "granted"}])
    return folder


def test_replay_writes_outputs_and_summary(tmp_path: Path, recording: Path) -> None:
    stores = write_stores(tmp_path / "stores.csv")
    result = omnitrigger("replay", str(recording), "--stores", str(stores), "--out", str(tmp_path / "t.jsonl"),
                         "--dead-letter", str(tmp_path / "dl.jsonl"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "consent.changes: 1" in result.stdout
    assert (tmp_path / "t.jsonl").read_bytes() == b""
    assert (tmp_path / "dl.jsonl").read_bytes() == b""


@pytest.mark.parametrize("args, code, fragments", [
    (["replay"], 2, ["Missing argument 'RECORDING_DIR'", "omnitrigger replay --help"]),
    (["replay", "{rec}", "--out", "x.jsonl"], 2, ["Missing option '--stores'"]),
    (["replay", "{rec}", "--stores", "{stores}", "--out", "x", "--bogus"], 2, ["--bogus"]),
    (["replay", "{rec}", "--stores", "{stores}", "--out", "x", "--processes", "0"], 2, ["--processes"]),
    (["replay", "{tmp}/nowhere", "--stores", "{stores}", "--out", "x"], 1, ["recording folder not found"]),
    (["replay", "{tmp}", "--stores", "{stores}", "--out", "x"], 1, ["no recorded topics"]),
    (["replay", "{rec}", "--stores", "{tmp}/missing.csv", "--out", "x"], 1, ["stores file not found"]),
    (["replay", "{rec}", "--stores", "{bad_stores}", "--out", "x"], 1, ["line 3", "lat"]),
    (["replay", "{rec}", "--stores", "{stores}", "--out", "x", "--config", "{tmp}/none.toml"], 1,
     ["config file not found"]),
    (["replay", "{rec}", "--stores", "{stores}", "--out", "x", "--config", "{bad_config}"], 1,
     ["unknown setting dedup.retenshun"]),
    (["replay", "{rec}", "--stores", "{stores}", "--out", "x", "--config", "{bad_spill}"], 1,
     ["spill_entries", "whole number"]),
    (["frobnicate"], 2, ["No such command"]),
])
def test_user_errors_are_one_line(tmp_path: Path, recording: Path, args: list[str], code: int,
                                  fragments: list[str]) -> None:
    stores = write_stores(tmp_path / "stores.csv")
    bad_stores = tmp_path / "bad_stores.csv"
    bad_stores.write_text("store_id,name,lat,lon\nA,ok,60.1,24.9\nB,bad,north,24.9\n")
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text('[dedup]\nretenshun = "7d"\n')
    bad_spill = tmp_path / "bad_spill.toml"
    bad_spill.write_text("[state]\nspill_entries = -1\n")
    values = {"rec": recording, "stores": stores, "tmp": tmp_path, "bad_stores": bad_stores, "bad_config": bad_config,
              "bad_spill": bad_spill}
    result = omnitrigger(*[arg.format(**values) for arg in args], cwd=tmp_path)
    assert_one_line_error(result, code, *fragments)


def test_state_dir_of_another_recording_is_refused(tmp_path: Path, recording: Path) -> None:
    stores = write_stores(tmp_path / "stores.csv")
    state = tmp_path / "state"
    first = omnitrigger("replay", str(recording), "--stores", str(stores), "--out", str(tmp_path / "a.jsonl"),
                        "--state-dir", str(state), "--quiet")
    assert first.returncode == 0, first.stderr
    other = tmp_path / "other"
    write_lines(other / "consent.changes.jsonl", [])
    result = omnitrigger("replay", str(other), "--stores", str(stores), "--out", str(tmp_path / "b.jsonl"),
                         "--state-dir", str(state), "--quiet")
    assert_one_line_error(result, 1, "state folder", "recording")


def _through_panic_filter(stderr: bytes) -> bytes:
    from omnitrigger.cli.panics import _PANIC_FILTER

    return subprocess.run([sys.executable, "-I", "-S", "-c", _PANIC_FILTER], input=stderr, capture_output=True,
                          timeout=30, check=True).stdout


def test_the_panic_filter_drops_a_panics_message_and_backtrace_and_keeps_our_lines() -> None:
    """A panic whose message is not Bytewax's usual one (the recovery store's SQLite finding the disk full)
    and its backtrace are dropped whole; the error line and log lines around it pass, as written."""
    report = (b'{"level": "info", "msg": "replay started"}\n'
              b"thread '<unnamed>' panicked at src/recovery.rs:712:18:\n"
              b"called `Result::unwrap()` on an `Err` value: SqliteFailure(Error { code: DiskFull, extended_code: 13 },"
              b' Some("database or disk is full"))\n'
              b"stack backtrace:\n"
              b"   0: rust_begin_unwind\n"
              b"             at /rustc/a28077b/library/std/src/panicking.rs:597:5\n"
              b"   3: <bytewax::recovery::SerializedSnapshotWriter as bytewax::timely::Writer>::write_batch\n"
              b"note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n"
              b"omnitrigger: error: no space left on the disk of state folder s (0.3 MiB free)\n")
    assert _through_panic_filter(report) == (b'{"level": "info", "msg": "replay started"}\n'
                                             b"omnitrigger: error: no space left on the disk of state folder s "
                                             b"(0.3 MiB free)\n")
    without_backtrace = (b"thread 'main' panicked at src/run.rs:1:1:\n"
                         b"a message\nof two lines\n"
                         b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
                         b"omnitrigger: error: the step failed\n")
    assert _through_panic_filter(without_backtrace) == b"omnitrigger: error: the step failed\n"
    assert _through_panic_filter(b"plain line\n") == b"plain line\n"
