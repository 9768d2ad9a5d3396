"""Faults around the outputs and the state folder (issue 13, defects 8, 9, 11 and 12): each is one line, and
nothing is lost or cut short.

- 8: a kill during the final merge leaves each output file as it was or complete; part files are checked
  (missing, cut short, a NUL byte, a changed byte) and a torn tail is cut back and re-emitted;
- 9: a crash during the first set-up of a state folder leaves one the next run sets up again;
- 11: a full disk, Ctrl-C, SIGTERM, a read-only state folder, an unwritable output, a second process on the
  same state folder: one line each, and the state stays resumable;
- 12: a temporary state folder goes on SIGTERM; state folders are 0700 and output files 0600; the merge
  holds a bounded number of records in memory and writes what an unbounded one would.

Kills and signals are real, sent to real `omnitrigger` processes. The full-disk and read-only cases mount a
small tmpfs (or a read-only bind mount), which needs root; elsewhere they are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from conftest import replay, write_stores
from omnitrigger.io import outputs
from omnitrigger.demo.generator import RecordingGenerator
from omnitrigger.flows.part_file_sink import _PartFiles, encode_outputs
from omnitrigger.io.outputs import PartFileError, Parts
from omnitrigger.records import TRIGGERS, Emitted
from test_crash_resume import OUTPUTS, lines_in, replay_command

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs or a read-only bind mount needs root")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A recording of some 18,000 records and its stores; a slow config (small batches and epochs, so a run
    lasts long enough to be signalled) and a fast one (the defaults; outputs do not depend on them); the
    uninterrupted outputs of every stream, with the finished run's state folder; a state folder stopped half
    way. Tests work on copies of the state folders."""
    folder = tmp_path_factory.mktemp("safety")
    generator = RecordingGenerator(seed=3, customers=1500, products=500).generate()
    written = generator.write(folder / "recording")
    generator.write_stores(folder / "stores.csv")
    (folder / "slow.toml").write_text('[replay]\nbatch_size = 50\nepoch_interval = "0.05s"\n')
    (folder / "fast.toml").write_text("")
    made = {"recording": folder / "recording", "stores": folder / "stores.csv", "slow": folder / "slow.toml",
            "fast": folder / "fast.toml", "reference": folder / "reference", "finished": folder / "finished",
            "half": folder / "half"}
    result = run(made, made["reference"], made["finished"])
    assert result.returncode == 0, result.stderr
    result = run(made, folder / "half-out", made["half"], "--stop-after", str(sum(written.values()) // 2))
    assert result.returncode == 0, result.stderr
    return made


def command(made: dict[str, Path], out_dir: Path, state: Path | None, *extra: str, slow: bool = False) -> list[str]:
    return [*replay_command(made["recording"], made["stores"], out_dir, state, made["slow" if slow else "fast"]),
            *extra]


def run(made: dict[str, Path], out_dir: Path, state: Path | None, *extra: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(made, out_dir, state, *extra), capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def start(made: dict[str, Path], out_dir: Path, state: Path | None, env: dict[str, str] | None = None,
          slow: bool = True) -> subprocess.Popen:
    """A replay in the background (slow: small batches and epochs, so that it can be signalled mid-run)."""
    return subprocess.Popen(command(made, out_dir, state, slow=slow), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def wait_for_lines(path: Path, count: int, process: subprocess.Popen) -> None:
    """Until `path` (a part file) holds `count` lines; the replay must still be running."""
    while lines_in(path) < count:
        assert process.poll() is None, f"the replay ended first: {process.communicate()[1]}"
        time.sleep(0.02)


def one_line(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("omnitrigger: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_reference(made: dict[str, Path], out_dir: Path) -> None:
    for flag in OUTPUTS:
        assert (out_dir / f"{flag}.jsonl").read_bytes() == (made["reference"] / f"{flag}.jsonl").read_bytes(), flag


def copy_of(made: dict[str, Path], which: str, tmp_path: Path) -> Path:
    """A copy of the finished run's state folder ("finished") or of the one stopped half way ("half")."""
    return Path(shutil.copytree(made[which], tmp_path / "state"))


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` made read-only for this user: a read-only bind mount as root, else the write bits removed."""
    if IS_ROOT:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=False)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        yield path
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def fill(folder: Path, leave: int) -> Path:
    """Write a file in `folder` until its disk has about `leave` bytes free (0: until a write fails)."""
    filler = folder / "filler"
    block = b"\0" * (1 << 20)
    with contextlib.suppress(OSError), filler.open("wb") as handle:
        while leave == 0 or shutil.disk_usage(folder).free > leave + len(block):
            handle.write(block)
            handle.flush()
    return filler


# -- 8: outputs replaced whole, part files checked ---------------------------------------------------------


def test_a_kill_during_the_final_merge_leaves_each_output_as_it_was_or_complete(made: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    state = copy_of(made, "finished", tmp_path)  # a finished run: a rerun only merges again
    out = tmp_path / "out"
    killed_in_merge = 0
    for _attempt in range(8):
        out.mkdir(exist_ok=True)
        for flag in OUTPUTS:
            (out / f"{flag}.jsonl").write_bytes(b"old\n")
        process = start(made, out, state, slow=False)
        while process.poll() is None and not list(out.glob(".*.tmp")):
            time.sleep(0.002)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            killed_in_merge += 1
        process.communicate()
        for flag in OUTPUTS:
            data = (out / f"{flag}.jsonl").read_bytes()
            assert data in (b"old\n", (made["reference"] / f"{flag}.jsonl").read_bytes()), flag
        if killed_in_merge:
            break
    assert killed_in_merge, "no run was caught in its merge"
    finished = run(made, out, state)
    assert finished.returncode == 0, finished.stderr
    assert_reference(made, out)
    assert not list(out.glob(".*.tmp")), "the next run removes the temporary files a killed run left"


def test_deleted_parts_are_refused_not_merged_into_fewer_triggers(made: dict[str, Path], tmp_path: Path) -> None:
    state = copy_of(made, "half", tmp_path)
    shutil.rmtree(state / "parts")
    result = run(made, tmp_path / "out", state)
    assert result.returncode == 1
    one_line(result.stderr, f"state folder {state} is damaged", "manifest.json is missing (parts/ deleted?)")
    assert not (tmp_path / "out" / "out.jsonl").exists()


@pytest.mark.parametrize("damage", ["deleted", "cut_short", "nul_byte", "changed_byte"])
def test_a_damaged_part_file_is_refused_with_one_line(made: dict[str, Path], tmp_path: Path, damage: str) -> None:
    state = copy_of(made, "half", tmp_path)
    part = state / "parts" / "triggers.w0.jsonl"
    data = part.read_bytes()
    assert data.count(b"\n") > 100
    if damage == "deleted":
        part.unlink()
        expected = "is missing (deleted?)"
    elif damage == "cut_short":
        part.write_bytes(data[: len(data) // 2])
        expected = "bytes of the"
    else:
        at = data.index(b'"rule":"', len(data) // 2) + len(b'"rule":"')  # inside a trigger's rule name
        part.write_bytes(data[:at] + (b"\0" if damage == "nul_byte" else b"X") + data[at + 1:])
        expected = "does not match what was written"
    result = run(made, tmp_path / "out", state)
    assert result.returncode == 1
    one_line(result.stderr, f"part file {part}", expected, "replay again with a fresh --state-dir")
    assert not (tmp_path / "out" / "out.jsonl").exists()


def _fifty_triggers(parts_dir: Path) -> Path:
    """A closed triggers part of 50 records, as the sink writes it; its path."""
    sink = _PartFiles(parts_dir)
    sink.write_batch([encode_outputs([Emitted(TRIGGERS, (seq, 0), {"rule": "cart_abandoned", "n": seq})
                                      for seq in range(50)])])
    sink.close()
    return parts_dir / "triggers.w0.jsonl"


def test_a_line_damaged_during_the_run_stops_the_merge(tmp_path: Path) -> None:
    """What the merge reads is checked line by line too (damage after the last check before the merge)."""
    part = _fifty_triggers(tmp_path / "parts")
    part.write_bytes(part.read_bytes().replace(b'[7,0,{', b'[7,0,\0'))
    with pytest.raises(PartFileError, match=r"line 8 does not parse"):
        list(Parts(tmp_path / "parts", tmp_path).records(TRIGGERS))


def test_a_record_damaged_within_is_caught_by_the_checksum_before_the_merge_ends(tmp_path: Path) -> None:
    """The merge takes each record's text as the sink wrote it (keys sorted), so damage inside a record, the
    line's shape intact, is not seen line by line: the part's checksum catches it at the part's end, before
    the merge yields any record of the stream (all its parts are read before the sort), so no output file is
    renamed into place."""
    part = _fifty_triggers(tmp_path / "parts")
    data = part.read_bytes()
    assert b'[7,0,{"n":7,"rule":"cart_abandoned"}]' in data  # the record's keys sorted, as an output file has them
    part.write_bytes(data.replace(b'"n":7,', b'"n":8,'))
    with pytest.raises(PartFileError, match=r"does not match what was written"):
        list(Parts(tmp_path / "parts", tmp_path).records(TRIGGERS))


def test_a_torn_tail_is_cut_back_and_re_emitted(made: dict[str, Path], tmp_path: Path) -> None:
    """A kill mid-write leaves half a line (and records after the snapshot) at the end of a part: the resumed
    run cuts the part back to its last snapshot, and the re-emitted records complete it."""
    state = copy_of(made, "half", tmp_path)
    for part in (state / "parts").glob("*.w0.jsonl"):
        with part.open("ab") as handle:
            handle.write(b'[1,2,{"the killed run wrote this":1}]\n[3,4,{"half a li')
    result = run(made, tmp_path / "out", state)
    assert result.returncode == 0, result.stderr
    assert_reference(made, tmp_path / "out")


def test_a_state_folder_of_unchecked_part_files_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    state = copy_of(made, "half", tmp_path)
    layout = orjson.loads((state / "layout.json").read_bytes())
    del layout["part_files"]  # as omnitrigger 0.3.0 wrote it
    (state / "layout.json").write_bytes(orjson.dumps(layout))
    result = run(made, tmp_path / "out", state)
    one_line(result.stderr, "was made by an older omnitrigger, whose output part files carry no counts")


# -- 9: a crash during the first set-up --------------------------------------------------------------------

_CRASH_IN_SETUP = """
import os, signal, sys
from pathlib import Path
import omnitrigger.runner.state_folder as state_folder
from omnitrigger.cli import main

where = sys.argv.pop(1)
calls = {"count": 0}

def crash_after(function):
    def crashing(*args, **kwargs):
        function(*args, **kwargs)
        calls["count"] += 1
        if calls["count"] == int(os.environ.get("CRASH_AT_CALL", "1")):
            os.kill(os.getpid(), signal.SIGKILL)
    return crashing

if where == "init_db_dir":
    import bytewax.recovery
    bytewax.recovery.init_db_dir = crash_after(bytewax.recovery.init_db_dir)
else:
    setattr(state_folder, where, crash_after(getattr(state_folder, where)))
sys.argv = ["omnitrigger"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("where, processes, call", [
    ("init_db_dir", 1, 1), ("write_layout", 1, 1), ("_end_setup", 1, 1),
    ("init_db_dir", 2, 1), ("write_layout", 2, 1),  # a one-machine cluster: the one folder of all its processes
])
def test_a_crash_during_the_first_set_up_leaves_a_folder_the_next_run_takes(tmp_path: Path, where: str,
                                                                           processes: int, call: int) -> None:
    stores = write_stores(tmp_path / "stores.csv")
    recording = tmp_path / "recording"
    RecordingGenerator(seed=9, customers=20).generate().write(recording)
    state = tmp_path / "state"
    base = ["replay", str(recording), "--stores", str(stores), "--state-dir", str(state), "--quiet",
            "--processes", str(processes)]
    crashed = subprocess.run([sys.executable, "-c", _CRASH_IN_SETUP, where, *base, "--out", str(tmp_path / "a.jsonl")],
                             capture_output=True, text=True, env={**os.environ, "CRASH_AT_CALL": str(call)})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert state.is_dir() and any(state.iterdir())
    again = subprocess.run([sys.executable, "-m", "omnitrigger", *base, "--out", str(tmp_path / "b.jsonl")],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    fresh = subprocess.run([sys.executable, "-m", "omnitrigger", *base[:4], "--quiet", "--out",
                            str(tmp_path / "c.jsonl")], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "b.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()
    assert not (state / "setup-in-progress").exists()


# -- 11: error paths ---------------------------------------------------------------------------------------


def test_ctrl_c_is_one_line_exit_130_and_the_state_folder_resumes(made: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = tmp_path / "out"
    process = start(made, out, state, env={"RUST_BACKTRACE": "1"})
    wait_for_lines(state / "parts" / "events.w0.jsonl", 5000, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    one_line(stderr, "interrupted (SIGINT)", "the replay stopped at a snapshot", f"resume from state folder {state}")
    assert not (out / "out.jsonl").exists()
    resumed = run(made, out, state)
    assert resumed.returncode == 0, resumed.stderr
    assert_reference(made, out)


@pytest.mark.cluster
def test_ctrl_c_stops_a_one_machine_cluster_at_a_snapshot(made: dict[str, Path], tmp_path: Path) -> None:
    """--processes 2: the signal is passed on; process 0 ends the input, the cluster stops at a snapshot."""
    state = tmp_path / "state"
    out = tmp_path / "out"
    process = subprocess.Popen([*command(made, out, state, slow=True), "--processes", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(state / "parts" / "events.w0.jsonl", 3000, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    one_line(stderr, "interrupted (SIGINT)", "the replay stopped at a snapshot")
    resumed = run(made, out, state, "--processes", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert_reference(made, out)


def test_sigterm_without_a_state_dir_removes_the_temporary_folder(made: dict[str, Path], tmp_path: Path) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = start(made, tmp_path / "out", None, env={"TMPDIR": str(temporary)})
    while not list(temporary.glob("omnitrigger-*/parts/events.w0.jsonl")) or \
            lines_in(next(temporary.glob("omnitrigger-*/parts/events.w0.jsonl"))) < 2000:
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    one_line(stderr, "interrupted (SIGTERM)", "the temporary state folder was removed")
    assert list(temporary.iterdir()) == []


def test_a_second_process_on_the_same_state_folder_is_one_line(made: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start(made, tmp_path / "first", state)
    wait_for_lines(state / "parts" / "events.w0.jsonl", 1000, first)
    second = run(made, tmp_path / "second", state)
    assert second.returncode == 1
    one_line(second.stderr, f"state folder {state} is in use by another omnitrigger process (pid {first.pid})")
    assert not (tmp_path / "second" / "out.jsonl").exists()
    first.send_signal(signal.SIGTERM)  # the first went on undisturbed; stopped cleanly and resumed here
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr
    resumed = run(made, tmp_path / "first", state)
    assert resumed.returncode == 0, resumed.stderr
    assert_reference(made, tmp_path / "first")


def test_two_processes_setting_up_one_new_state_folder_one_wins(made: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "state"
    racers = [start(made, tmp_path / f"out-{n}", state, slow=False) for n in range(2)]
    results = [(racer.wait(timeout=300), racer.communicate()[1]) for racer in racers]
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(stderr for code, stderr in results if code == 1)
    one_line(loser, f"state folder {state} is in use by another omnitrigger process")
    assert_reference(made, tmp_path / f"out-{[code for code, _ in results].index(0)}")


def test_a_read_only_state_folder_is_called_not_writable_and_keeps_its_state(made: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    state = copy_of(made, "half", tmp_path)
    with read_only(state):
        result = run(made, tmp_path / "out", state)
    assert result.returncode == 1
    line = one_line(result.stderr, "is not writable", "its state is kept", str(state))
    assert "damaged" not in line and "fresh --state-dir" not in line
    resumed = run(made, tmp_path / "out", state)
    assert resumed.returncode == 0, resumed.stderr
    assert_reference(made, tmp_path / "out")


@pytest.mark.parametrize("case", ["not_a_folder", "a_folder", "read_only", "same_file"])
def test_an_unwritable_output_is_found_before_the_replay_runs(made: dict[str, Path], tmp_path: Path,
                                                                case: str) -> None:
    state = tmp_path / "state"
    out = tmp_path / "out"
    out.mkdir()
    extra: list[str] = []
    code = 1
    if case == "not_a_folder":
        (tmp_path / "file").write_text("")
        extra, expected = ["--visits", str(tmp_path / "file" / "visits.jsonl")], "cannot make its folder"
    elif case == "a_folder":  # the command line's own check (a usage error)
        (tmp_path / "folder.jsonl").mkdir()
        extra, expected, code = ["--visits", str(tmp_path / "folder.jsonl")], "is a directory", 2
    elif case == "same_file":
        extra, expected = ["--visits", str(out / "out.jsonl")], "--out and --visits name the same file"
    else:
        (tmp_path / "locked").mkdir()
        extra, expected = ["--visits", str(tmp_path / "locked" / "visits.jsonl")], "is not writable"
    with read_only(tmp_path / "locked") if case == "read_only" else contextlib.nullcontext():
        result = run(made, out, state, *extra)
    assert result.returncode == code
    one_line(result.stderr, expected)
    assert not state.exists(), "refused before the state folder was set up"


@needs_root
def test_too_little_free_space_at_start_is_one_line(made: dict[str, Path], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "8m") as small:
        result = run(made, tmp_path / "out", small / "state")
    assert result.returncode == 1
    one_line(result.stderr, "MiB free on the disk of", "a replay needs at least 64.0 MiB there to start")


@needs_root
def test_a_full_output_disk_is_one_line_and_leaves_the_old_outputs(made: dict[str, Path], tmp_path: Path) -> None:
    state = copy_of(made, "finished", tmp_path)
    with tmpfs(tmp_path / "small", "2m") as small:
        for flag in OUTPUTS:
            (small / f"{flag}.jsonl").write_bytes(b"old\n")
        result = run(made, small, state)
        assert result.returncode == 1
        one_line(result.stderr, f"no space left on the disk of {small} writing", "the output files were not changed")
        for flag in OUTPUTS:
            assert (small / f"{flag}.jsonl").read_bytes() == b"old\n", flag
        assert not list(small.glob(".*.tmp"))
    again = run(made, tmp_path / "out", state)
    assert again.returncode == 0, again.stderr
    assert_reference(made, tmp_path / "out")


@needs_root
@pytest.mark.parametrize("leave", [20 << 20, 0])
def test_a_state_disk_running_full_stops_at_a_snapshot_and_resumes(made: dict[str, Path], tmp_path: Path,
                                                                    leave: int) -> None:
    """Nearly full (20 MiB left): the watch stops the replay at a snapshot. Full at once (0 left): RocksDB or
    the part files fail with ENOSPC, unless the watch was first; either way one line, and it resumes."""
    with tmpfs(tmp_path / "disk", "128m") as disk:
        state = disk / "state"
        process = start(made, tmp_path / "out", state)
        wait_for_lines(state / "parts" / "events.w0.jsonl", 3000, process)
        filler = fill(disk, leave=leave)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, stderr
        if leave:
            one_line(stderr, f"the disk of state folder {state} has only", "the replay stopped at a snapshot")
        else:
            one_line(stderr, f"state folder {state}", "MiB free", "run the same command again")
        filler.unlink()
        resumed = run(made, tmp_path / "out", state)
        assert resumed.returncode == 0, resumed.stderr
    assert_reference(made, tmp_path / "out")


# -- 12: hygiene -------------------------------------------------------------------------------------------


def test_state_folders_are_0700_and_output_files_0600(tmp_path: Path) -> None:
    recording = tmp_path / "recording"
    RecordingGenerator(seed=9, customers=20).generate().write(recording)
    old = os.umask(0o022)
    try:
        _, files = replay(tmp_path, recording, state_dir=tmp_path / "state")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for path in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert files["triggers"]


def test_the_merge_holds_a_bounded_part_of_a_stream_in_memory(tmp_path: Path) -> None:
    """About 36 MB of unsorted records, some written twice and some sharing a sort key with another record,
    merged with 1 MiB chunks: the lines of a sort in memory (a repeat once; records sharing a key in the order
    written), while Python holds a few MiB at most."""
    parts_dir = tmp_path / "parts"
    sink = _PartFiles(parts_dir)
    rng = random.Random(5)
    keys = [(rng.randrange(10_000_000), rng.randrange(1 << 64)) for _ in range(25_000)]
    written = [(key, {"rule": "r", "key": list(key), "pad": "x" * 1400}) for key in keys]
    written += [(key, {"rule": "r", "key": list(key), "pad": "x" * 1400}) for key in rng.sample(keys, 500)]
    written += [(key, {"rule": "other", "key": list(key)}) for key in rng.sample(keys, 125)]
    for start_at in range(0, len(written), 1000):
        sink.write_batch([encode_outputs([Emitted(TRIGGERS, key, record)
                                          for key, record in written[start_at:start_at + 1000]])])
    sink.close()
    assert (parts_dir / "triggers.w0.jsonl").stat().st_size > 35_000_000
    expected, seen = hashlib.sha256(), set()
    for key, record in sorted(written, key=lambda item: item[0]):  # stable: the order written within a key
        line = orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"
        if (key, line) not in seen:
            seen.add((key, line))
            expected.update(line)
    del seen, written, keys
    got, count = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        for line in Parts(parts_dir, tmp_path, chunk_bytes=1 << 20).records(TRIGGERS):
            got.update(line)
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 25_125
    assert got.hexdigest() == expected.hexdigest()
    assert peak < 12 << 20, f"peak {peak / (1 << 20):.1f} MiB"  # all in memory would be over 40 MiB


def test_the_streaming_merge_writes_the_same_bytes_with_tiny_chunks(tmp_path: Path, monkeypatch: Any) -> None:
    recording = tmp_path / "recording"
    RecordingGenerator(seed=11, customers=300, products=200).generate().write(recording)
    _, whole = replay(tmp_path, recording, name="whole")
    monkeypatch.setattr(outputs, "CHUNK_BYTES", 4096)  # every stream spills to many run files
    _, chunked = replay(tmp_path, recording, name="chunked")
    assert chunked == whole
    assert whole["triggers"] and whole["events"] and whole["visits"]
