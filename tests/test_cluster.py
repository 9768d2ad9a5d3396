"""The flow as a Bytewax cluster: processes over addresses give a single process's outputs, live and replay.

- Where Bytewax puts a key is predicted (flows/placement.py `worker_of`),
  so process 0 can be the sequencer's; checked against Bytewax itself.
- A replay as two processes started like two machines would start them
  (`--addresses A,B --process-id 0|1`, each its own --state-dir), stopped
  half way and resumed, writes byte for byte what one process writes, on a
  real-data recording; the identity state is on process 0 only.
- `omnitrigger run --processes 2` through librdkafka's mock cluster publishes
  the replay's trigger ids; killed with SIGKILL before its first snapshot and
  restarted, it re-runs everything and its two sinks still send no trigger id
  twice (each reads the triggers topic's tail back).
- A replay on one machine stopped part way resumes with another --processes (1 -> 2, 2 -> 3,
  3 -> 1, and another batch size) from the same state folder and writes byte for byte what one
  uninterrupted process writes: one RocksDB store a shard key, one recovery partition that
  every process sees, so each key's snapshot and store meet wherever Bytewax now runs the key.
- Wrong cluster options and state folders of another cluster are one line.
- Bytewax's cluster channel is unauthenticated pickle: a cluster on an
  address that is not private (hostnames resolved) is refused with one line
  and exit 2, unless --allow-public-cluster (run) or
  OMNITRIGGER_ALLOW_PUBLIC_CLUSTER=1 (run and replay); a process listens
  on its own address only, never on every interface.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import STREAM_FLAGS, replay, write_stores
from geolife import write_stores_csv
from kafka_fixtures import LiveJob, create_topics, live_config, mock_kafka, read_topic  # noqa: F401  (a fixture)
from omnitrigger.runner import cluster
from omnitrigger.runner.cluster import ClusterError, PublicClusterError, Role, check_private, local_addresses
from omnitrigger.config import Config
from omnitrigger.flows.placement import (
    HISTORY_KEY, KEPT_APART_FOR, SEQUENCER_KEY, rules_key, shards_apart_from, worker_of,
)
from omnitrigger.io.kafka_tools import output_topics, publish
from omnitrigger.records import SUPPRESSED, TRIGGERS
from omnitrigger.runner.finish import _write_identities
from omnitrigger.runner.state_folder import (
    FORMAT_VERSION, StateFolderError, layout_record, prepare_run_folders, release_locks,
)
from omnitrigger.demo.generator import RecordingGenerator
from recordings import omnichannel_recording
from test_live import STREAMS, normalized, replay_streams, single_partition_recording

CONFIG = Config()


def omnitrigger(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnitrigger", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RUST_BACKTRACE": "0", **env})


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "omnitrigger", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_BACKTRACE": "0"})


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnitrigger: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- placement -----------------------------------------------------------------------------------------

_ROUTE_PROBE = """
import sys
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main

keys = sys.argv[3].split(",")
flow = Dataflow("probe")
keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda key: key)
seen = op.stateful_map("where", keyed, lambda state, key: (state, print(f"{key} {sys.argv[1]}", flush=True)))
op.inspect("end", seen, lambda *_: None)
cluster_main(flow, sys.argv[2].split(";"), int(sys.argv[1]))
"""


def test_no_key_after_the_sequencer_lands_on_its_worker_on_2_to_8_processes() -> None:
    """flows/placement.py names the history stage's and the rules shards' keys so that process 0 keeps only the
    input and the sequencer; the names do not depend on the process count (a replay resumes with another)."""
    keys = [HISTORY_KEY, *(rules_key(shard) for shard in range(64))]
    for processes in KEPT_APART_FOR:
        sequencer = worker_of(SEQUENCER_KEY, processes)
        assert all(worker_of(key, processes) != sequencer for key in keys), processes
    assert rules_key(0) == "rules-0000" and all(key.startswith(f"rules-{shard:04d}")
                                                 for shard, key in enumerate(keys[1:]))
    assert list(KEPT_APART_FOR) == [2, 3, 4, 5, 6, 7, 8]


def test_the_shards_whose_batches_cross_packed_are_those_on_another_worker() -> None:
    """flows/placement.py `shards_apart_from`: alone nothing crosses; on 2 processes every shard is on the history
    stage's worker (none on the sequencer's); on more, those on another worker than the router's."""
    shards = CONFIG.rule_shards
    assert shards_apart_from(HISTORY_KEY, shards, 1) == frozenset() == shards_apart_from(SEQUENCER_KEY, shards, 1)
    assert shards_apart_from(HISTORY_KEY, shards, 2) == frozenset()
    assert shards_apart_from(SEQUENCER_KEY, shards, 2) == frozenset(range(shards))
    for processes in (3, 4, 8):
        here = worker_of(HISTORY_KEY, processes)
        apart = shards_apart_from(HISTORY_KEY, shards, processes)
        assert apart == {shard for shard in range(shards) if worker_of(rules_key(shard), processes) != here}
    assert shards_apart_from(HISTORY_KEY, shards, 3)  # a 3-process cluster has some: the flows below exercise them


@pytest.mark.parametrize("processes", [2, 3])
def test_keys_land_where_worker_of_says(tmp_path: Path, processes: int) -> None:
    keys = [SEQUENCER_KEY, HISTORY_KEY] + [rules_key(shard) for shard in range(CONFIG.rule_shards)]
    probe = tmp_path / "probe.py"
    probe.write_text(_ROUTE_PROBE)
    addresses = ";".join(local_addresses(processes))
    children = [subprocess.Popen([sys.executable, str(probe), str(worker), addresses, ",".join(keys)],
                                 stdout=subprocess.PIPE, text=True) for worker in range(processes)]
    seen = {}
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        seen.update(line.split() for line in out.splitlines() if line.count(" ") == 1)
    assert {key: int(worker) for key, worker in seen.items()} == {key: worker_of(key, processes) for key in keys}
    role = Role(0, tuple(f"h{n}:1" for n in range(processes)))
    assert role.worker == worker_of(SEQUENCER_KEY, processes)  # process 0 runs the sequencer
    # ... and nothing else: the history stage and every rules shard run on the other processes
    assert all(int(seen[key]) != role.worker for key in keys[1:])
    everyone = [Role(n, role.addresses) for n in range(processes)]
    assert sorted(shard for member in everyone for shard in member.rule_shards(CONFIG.rule_shards)) == \
        list(range(CONFIG.rule_shards))
    assert all(member.bytewax_addresses()[member.worker] == member.address for member in everyone)


# -- replay over two "machines" --------------------------------------------------------------------------


def test_two_processes_over_addresses_write_the_single_process_outputs(tmp_path: Path, real_data: Path) -> None:
    recording = tmp_path / "recording"
    _, stores = omnichannel_recording(real_data, recording, users=40, receipts=200, trace_days=1)
    stores_file = write_stores_csv(tmp_path / "stores.csv", stores)
    _, alone = replay(tmp_path, recording, name="alone", stores=stores_file, config=CONFIG)
    assert alone["triggers"] and alone["suppressed"] and alone["visits"]

    addresses = ",".join(local_addresses(2))
    out = tmp_path / "cluster"
    flags = [arg for flag in STREAM_FLAGS for arg in (f"--{flag.replace('_', '-')}", str(out / f"{flag}.jsonl"))]

    def process(process_id: int, *extra: str) -> list[str]:
        outputs = ["--out", str(out / "triggers.jsonl"), *flags] if process_id == 0 else []
        return ["replay", str(recording), "--stores", str(stores_file), *outputs, "--quiet",
                "--addresses", addresses, "--process-id", str(process_id),
                "--state-dir", str(tmp_path / f"state-{process_id}"), *extra]

    for extra in (["--stop-after", "7000"], []):  # stopped half way, then resumed from both state folders
        children = [start(*process(process_id, *extra)) for process_id in (0, 1)]
        results = [child.communicate(timeout=120) for child in children]
        for child, (stdout, stderr) in zip(children, results):
            assert child.returncode == 0, stderr
    summary, last = results[0][0], results[1][0]
    assert "records read:" in summary and "triggers:" in summary
    assert last.startswith("process 1 of 2 (") and "process 0 writes the outputs" in last

    for flag in ("triggers", *STREAM_FLAGS):
        assert (out / f"{flag}.jsonl").read_bytes() == alone[flag], flag
    # The sequencer (identity state) ran in process 0; process 1 ran the history stage and every rules shard
    # (their keys are placed off the sequencer's worker), and kept one recovery partition.
    assert "the history stage, rules shards 0,1,2," in last
    assert sorted(path.name for path in (tmp_path / "state-0" / "rocksdb").iterdir()) == ["sequencer"]
    assert sorted(path.name for path in (tmp_path / "state-1" / "rocksdb").iterdir()) == \
        ["history", *(f"rules-{shard:04d}" for shard in range(CONFIG.rule_shards))]
    assert _write_identities(tmp_path / "state-0" / "rocksdb", None)[0] == len(alone["identities"].splitlines())
    assert _write_identities(tmp_path / "state-1" / "rocksdb", None) == (0, 0)
    assert [path.name for path in (tmp_path / "state-1" / "recovery").glob("*.sqlite3")] == ["part-1.sqlite3"]
    layout = orjson.loads((tmp_path / "state-1" / "layout.json").read_bytes())
    assert layout["processes"] == 2 and layout["process_id"] == 1

    # Reused as another process, in a cluster of another size, or alone: one line, nothing started.
    swapped = process(0)
    swapped[swapped.index("--state-dir") + 1] = str(tmp_path / "state-1")
    assert_one_line_error(omnitrigger(*swapped), 1, "was made for process 1 of a cluster of 2",
                          "not for process 0 of a cluster of 2")
    bigger = process(1)
    bigger[bigger.index("--addresses") + 1] = addresses + ",127.0.0.1:1"
    assert_one_line_error(omnitrigger(*bigger), 1, "was made with a cluster of 2 processes, not 3")
    alone_again = ["replay", str(recording), "--stores", str(stores_file), "--out", str(tmp_path / "x.jsonl"),
                   "--state-dir", str(tmp_path / "state-0")]
    assert_one_line_error(omnitrigger(*alone_again), 1, "was made with a cluster of 2 processes, not 1")
    local = [*alone_again, "--processes", "2"]
    assert_one_line_error(omnitrigger(*local), 1, "was made for process 0 of a cluster of 2",
                          "not for a one-machine cluster")


def test_a_one_machine_cluster_shares_one_folder_and_refuses_an_older_format(tmp_path: Path) -> None:
    layout = layout_record("replay", 2, 16, ["dedup"], b"k" * 32, recording="/r")
    state = tmp_path / "state"
    try:
        assert prepare_run_folders(state, layout, 2, None) == [state, state]  # every process, the one folder
        assert sorted(path.name for path in (state / "recovery").iterdir()) == ["part-0.sqlite3"]
        release_locks()
        assert prepare_run_folders(state, {**layout, "processes": 3}, 3, None) == [state] * 3  # another count
        release_locks()
        made = orjson.loads((state / "layout.json").read_bytes())
        assert made["processes"] == 3 and "process_id" not in made and "cluster" not in made
        (state / "layout.json").write_bytes(orjson.dumps({**made, "layout_version": 4, "cluster": "local"}))
        with pytest.raises(StateFolderError, match=f"was made with state format 4, and this omnitrigger uses state "
                                                   f"format {FORMAT_VERSION}; use a fresh --state-dir"):
            prepare_run_folders(state, layout, 2, None)
    finally:
        release_locks()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's generator (150 customers, 2,038 records) and what one uninterrupted process writes."""
    folder = tmp_path_factory.mktemp("rescale")
    generator = RecordingGenerator(seed=7, customers=150).generate()
    generator.write(folder / "recording")
    stores = folder / "stores.csv"
    generator.write_stores(stores)
    summary, alone = replay(folder, folder / "recording", name="alone", stores=stores, config=CONFIG)
    assert alone["triggers"] and alone["suppressed"] and alone["visits"] and alone["identities"]
    return {"recording": folder / "recording", "stores": stores, "alone": alone, "records": summary.records_this_run,
            "summary": summary}


@pytest.mark.cluster
@pytest.mark.parametrize("first, then, batch_size, spill_entries",
                         [(1, 2, 1000, 10_000), (2, 3, 1000, 10_000), (3, 1, 1000, 10_000), (2, 1, 37, 1)])
def test_a_replay_resumes_with_another_process_count(tmp_path: Path, generated: dict[str, Any], first: int,
                                                     then: int, batch_size: int, spill_entries: int) -> None:
    """`spill_entries = 1`: the sequencer and the history stage write every batch's changes as it goes
    (ShardState.spill), which must change no output either."""
    state = tmp_path / "state"
    common = {"stores": generated["stores"], "state_dir": state}
    stopped, _ = replay(tmp_path, generated["recording"], name="out", processes=first, stop_after=900,
                        config=Config(batch_size=100, spill_entries=spill_entries), **common)
    assert stopped.records_this_run == 900
    resumed, files = replay(tmp_path, generated["recording"], name="out", processes=then,
                            config=Config(batch_size=batch_size, spill_entries=spill_entries), **common)
    assert resumed.records_this_run == generated["records"] - 900  # resumed at the snapshot, not replayed again
    # The run totals of both stages that keep them (the sequencer's, the history stage's visits) add up over the
    # stop, whichever processes ran them.
    alone_summary = generated["summary"]
    for total in ("read_by_topic", "duplicates_by_topic", "ignored_identifiers", "late_pings",
                  "visits_without_location_consent", "returns"):
        assert getattr(resumed, total) == getattr(alone_summary, total), total
    assert alone_summary.visits_without_location_consent > 0 or alone_summary.late_pings > 0
    for flag in ("triggers", *STREAM_FLAGS):
        assert files[flag] == generated["alone"][flag], flag
    assert orjson.loads((state / "layout.json").read_bytes())["processes"] == then
    assert sorted(path.name for path in (state / "rocksdb").iterdir()) == \
        ["history", *(f"rules-{shard:04d}" for shard in range(CONFIG.rule_shards)), "sequencer"]


@pytest.mark.cluster
def test_a_one_machine_cluster_starts_without_bytewaxs_connection_retry(tmp_path: Path,
                                                                       generated: dict[str, Any]) -> None:
    """Each process waits for those before it to listen (`cluster.wait_for_listeners`), so Bytewax never
    prints "error connecting to worker ...; retrying" (and sleeps a second) at a start, and the outputs
    stay the single process's."""
    out = tmp_path / "triggers.jsonl"
    result = omnitrigger("replay", str(generated["recording"]), "--stores", str(generated["stores"]),
                         "--out", str(out), "--state-dir", str(tmp_path / "state"), "--processes", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "error connecting" not in result.stderr + result.stdout
    assert out.read_bytes() == generated["alone"]["triggers"]


def test_waiting_for_listeners_returns_once_the_port_listens() -> None:
    with socket.socket() as probe:  # a free port, not listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_later() -> None:
        time.sleep(0.3)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    starter = threading.Thread(target=listen_later)
    starter.start()
    try:
        cluster.wait_for_listeners([f"127.0.0.1:{port}"], timeout_s=30)
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # it listens by the time the wait ends
            pass
    finally:
        starter.join()
        listener.close()
    # Nothing listens: the wait gives up at its timeout and leaves the rest to Bytewax; other machines' are not waited for.
    cluster.wait_for_listeners([f"127.0.0.1:{port}"], timeout_s=0.05)
    cluster.wait_for_listeners(["10.255.255.1:9"], timeout_s=30)


# -- live, two processes, through the mock cluster -------------------------------------------------------


class ClusterJob(LiveJob):
    """`omnitrigger run --processes 2`: one parent, two processes; their JSON log lines go to `log_path`."""

    def __init__(self, brokers: str, stores: Path, state_dir: Path, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omnitrigger", "run", "--brokers", brokers, "--stores", str(stores),
             "--state-dir", str(state_dir), "--config", str(config_path), "--processes", "2"],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def messages(self, text: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("msg", "").startswith(text)]


def job_config(path: Path, config: Config, epoch: str) -> Path:
    path.write_text("\n".join([
        "[replay]", "batch_size = 50", f'epoch_interval = "{epoch}"',
        "[kafka]", f'topic_prefix = "{config.kafka_topic_prefix}"', "metrics_port = 0", "heartbeat_interval = 0.0",
        f"merge_wait = {config.kafka_merge_wait_s}", "[policy]", 'max_delay = "0"']) + "\n")
    return path


def wait_until(condition: Any, job: LiveJob, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.process.poll() is None, job.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, job.log_path.read_text()[-3000:]
        time.sleep(0.3)


def test_live_cluster_publishes_the_replays_trigger_ids_once_across_a_restart(tmp_path: Path,
                                                                             mock_kafka: Any) -> None:  # noqa: F811
    recording, stores = single_partition_recording(tmp_path, customers=200)
    config = live_config("cluster.")
    create_topics(mock_kafka, config)
    brokers = mock_kafka.bootstrap_servers
    publish(recording, brokers, config)
    replayed = replay_streams(tmp_path, recording, stores)
    want_ids = sorted(record["trigger_id"] for record in replayed[TRIGGERS])
    assert len(want_ids) >= 100
    outputs = output_topics(config)
    state = tmp_path / "state"

    def count(stream: str) -> int:
        return len(read_topic(brokers, outputs[stream], timeout=5.0))

    # First run: a 10-minute epoch, so nothing is snapshot; SIGKILL of the parent once every trigger is out
    # takes its two processes with it, and the restart re-runs the whole backlog.
    first = ClusterJob(brokers, stores, state, job_config(tmp_path / "slow.toml", config, "10m"), tmp_path / "1.log")
    try:
        wait_until(lambda: count(TRIGGERS) >= len(want_ids) and count(SUPPRESSED) >= len(replayed[SUPPRESSED]), first)
    finally:
        first.kill()
    time.sleep(1.0)  # its processes die with it (PR_SET_PDEATHSIG); let them release the RocksDB locks
    starting = [line for line in first.messages("starting") if "process_id" in line]
    assert sorted(line["process_id"] for line in starting) == [0, 1]
    assert [line["reads_input"] for line in sorted(starting, key=lambda line: line["process_id"])] == [True, False]
    assert sorted(shard for line in starting for shard in line["rule_shards"]) == list(range(CONFIG.rule_shards))

    second = ClusterJob(brokers, stores, state, job_config(tmp_path / "fast.toml", config, "0.2s"), tmp_path / "2.log")
    try:
        # The re-run sends the suppressed records again (at-least-once) but none of the triggers.
        wait_until(lambda: count(SUPPRESSED) >= 2 * len(replayed[SUPPRESSED]), second)
        time.sleep(1.5)
        live = {stream: read_topic(brokers, topic, timeout=5.0) for stream, topic in outputs.items()}
    finally:
        second.process.send_signal(signal.SIGTERM)
        code = second.process.wait(60)
        second._log.close()
    assert code == 0, second.log_path.read_text()[-3000:]
    read_back = second.messages("read back the triggers topic's tail")
    assert [line["trigger_ids"] for line in read_back] == [len(want_ids)] * 2  # each process's sink
    assert len(second.messages("shutdown complete")) == 2

    got_ids = sorted(message["value"]["trigger_id"] for message in live[TRIGGERS])
    assert got_ids == want_ids, f"{len(got_ids)} trigger messages, {len(set(got_ids))} ids, replay {len(want_ids)}"
    for stream in STREAMS:
        got = {normalized(stream, message["value"], config.kafka_topic_prefix) for message in live[stream]}
        want = {normalized(stream, record, config.kafka_topic_prefix) for record in replayed[stream]}
        assert got == want, stream
    layout = orjson.loads((state / "layout.json").read_bytes())
    assert layout["mode"] == "live" and layout["processes"] == 2 and "process_id" not in layout
    assert not (state / "process-1").exists() and (state / "rocksdb" / "sequencer" / "CURRENT").is_file()


# -- one line for what cannot run -----------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    recording = tmp_path / "recording"
    recording.mkdir()
    (recording / "consent.changes.jsonl").write_text(
        '{"event_id": "c1", "ts": "2026-11-02T10:00:00.000Z", "ids": {"device_id": "d1"}, "channel": "push", '
        '"status": "granted"}\n')
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\n127.0.0.1:2101  # process 0\n\n127.0.0.1:2102\n")
    bad_hostfile = tmp_path / "bad-hosts"
    bad_hostfile.write_text("127.0.0.1:2101\n# comment\nmachine-b\n")
    empty_hostfile = tmp_path / "empty-hosts"
    empty_hostfile.write_text("# nobody yet\n\n")
    binary_hostfile = tmp_path / "binary-hosts"
    binary_hostfile.write_bytes(b"\xff\xfe\x00\x01")
    return {"rec": recording, "stores": write_stores(tmp_path / "stores.csv"), "tmp": tmp_path, "hosts": hostfile,
            "bad_hosts": bad_hostfile, "empty_hosts": empty_hostfile, "binary_hosts": binary_hostfile}


@pytest.mark.parametrize("args, code, fragments", [
    (["--addresses", "127.0.0.1:2101,127.0.0.1:2102", "--hostfile", "{hosts}", "--process-id", "0"], 2,
     ["--addresses and --hostfile exclude each other"]),
    (["--process-id", "0"], 2, ["--process-id needs --addresses or --hostfile"]),
    (["--addresses", "127.0.0.1:2101,127.0.0.1:2102"], 2, ["--addresses needs --process-id"]),
    (["--processes", "2", "--hostfile", "{hosts}", "--process-id", "0"], 2, ["--processes and --hostfile exclude"]),
    (["--addresses", "127.0.0.1:2101,127.0.0.1:2102", "--process-id", "2"], 2,
     ["--process-id 2 is out of range", "0 to 1"]),
    (["--hostfile", "{hosts}", "--process-id", "-1"], 2, ["--process-id -1 is out of range"]),
    (["--addresses", "127.0.0.1:2101,machine-b", "--process-id", "0"], 2, ["--addresses: 'machine-b' is not HOST:PORT"]),
    (["--addresses", "127.0.0.1:99999", "--process-id", "0"], 2, ["'127.0.0.1:99999' is not HOST:PORT"]),
    (["--addresses", "127.0.0.1:2101,127.0.0.1:2101", "--process-id", "0"], 2, ["127.0.0.1:2101 is listed twice"]),
    (["--hostfile", "{tmp}/nowhere", "--process-id", "0"], 1, ["cannot read hostfile", "No such file"]),
    (["--hostfile", "{bad_hosts}", "--process-id", "0"], 1, ["hostfile", "line 3: 'machine-b' is not HOST:PORT"]),
    (["--hostfile", "{empty_hosts}", "--process-id", "0"], 1, ["lists no addresses"]),
])
def test_cluster_option_errors_are_one_line(small: dict[str, Path], args: list[str], code: int,
                                            fragments: list[str]) -> None:
    result = omnitrigger("replay", str(small["rec"]), "--stores", str(small["stores"]), "--out",
                         str(small["tmp"] / "t.jsonl"), *[arg.format(**small) for arg in args])
    assert_one_line_error(result, code, *fragments)


@pytest.mark.parametrize("args, code, fragments", [
    (["--processes", "2", "--addresses", "127.0.0.1:2101,127.0.0.1:2102", "--process-id", "1"], 2,
     ["--processes and --addresses exclude"]),
    (["--hostfile", "{hosts}", "--process-id", "2"], 2, ["--process-id 2 is out of range", "0 to 1"]),
    (["--addresses", "127.0.0.1:2101,:2102", "--process-id", "0"], 2, ["--addresses: ':2102' is not HOST:PORT"]),
    (["--hostfile", "{binary_hosts}", "--process-id", "0"], 1, ["cannot read hostfile", "not a text file"]),
])
def test_run_takes_the_same_cluster_options(small: dict[str, Path], args: list[str], code: int,
                                            fragments: list[str]) -> None:
    result = omnitrigger("run", "--brokers", "127.0.0.1:1", "--stores", str(small["stores"]), "--state-dir",
                         str(small["tmp"] / "s"), *[arg.format(**small) for arg in args])
    assert_one_line_error(result, code, *fragments)


def test_an_address_this_process_cannot_listen_on_is_one_line(small: dict[str, Path]) -> None:
    def replay_as_process_0(first: str) -> subprocess.CompletedProcess:
        return omnitrigger("replay", str(small["rec"]), "--stores", str(small["stores"]), "--out",
                           str(small["tmp"] / "t.jsonl"), "--addresses", f"{first},127.0.0.1:1", "--process-id", "0")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert_one_line_error(replay_as_process_0(address), 1, f"cannot listen on its address {address}", "in use")
    assert_one_line_error(replay_as_process_0("10.255.255.254:2101"), 1,  # private, but not this machine's
                          "process 0 cannot listen on its address 10.255.255.254:2101")


# -- the cluster's channel is unauthenticated: private addresses only -----------------------------------


@pytest.mark.parametrize("first, fragment", [
    ("192.0.2.1:2101", "192.0.2.1 is not a private address"),  # TEST-NET-1, like any routable address
    ("0.0.0.0:2101", "0.0.0.0 is a wildcard (every interface)"),
    ("[::]:2101", ":: is a wildcard"),
    ("[2001:db8::1]:2101", "2001:db8::1 is not a private address"),
])
def test_a_cluster_on_an_address_that_is_not_private_is_refused(small: dict[str, Path], first: str,
                                                                 fragment: str) -> None:
    addresses = ["--addresses", f"{first},127.0.0.1:2102", "--process-id", "1"]
    replayed = omnitrigger("replay", str(small["rec"]), "--stores", str(small["stores"]), *addresses)
    assert_one_line_error(replayed, 2, f"cluster address {first}: {fragment}", "WireGuard",
                          "OMNITRIGGER_ALLOW_PUBLIC_CLUSTER=1")
    run = omnitrigger("run", "--brokers", "127.0.0.1:1", "--stores", str(small["stores"]), "--state-dir",
                      str(small["tmp"] / "s"), *addresses)
    assert_one_line_error(run, 2, f"cluster address {first}: {fragment}", "--allow-public-cluster")


def test_allowing_a_public_cluster_takes_the_flag_or_the_environment(small: dict[str, Path]) -> None:
    addresses = ["--addresses", "127.0.0.1:2101,192.0.2.1:2102", "--process-id", "1"]
    run = ["run", "--brokers", "127.0.0.1:1", "--stores", str(small["stores"]), "--state-dir",
           str(small["tmp"] / "s"), *addresses]
    # Past the address check, each stops at the next thing it cannot do (the brokers; listening on TEST-NET-1).
    assert_one_line_error(omnitrigger(*run, "--allow-public-cluster"), 1, "cannot reach Kafka brokers")
    assert_one_line_error(omnitrigger(*run, OMNITRIGGER_ALLOW_PUBLIC_CLUSTER="1"), 1, "cannot reach Kafka brokers")
    replayed = omnitrigger("replay", str(small["rec"]), "--stores", str(small["stores"]), *addresses,
                           OMNITRIGGER_ALLOW_PUBLIC_CLUSTER="1")
    assert_one_line_error(replayed, 1, "process 1 cannot listen on its address 192.0.2.1:2102")


def test_host_names_are_resolved_before_they_are_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"machine-a": ["10.0.0.11"], "machine-b": ["10.0.0.12", "203.0.113.7"], "wg-c": ["fd42::3"],
             "edge": ["198.51.100.4"], "lan-v6": ["fe80::1%eth0"]}

    def getaddrinfo(host: str, *_args: Any, **_kwargs: Any) -> list[tuple[Any, ...]]:
        if host[:1].isdigit() or ":" in host:  # an IP address resolves to itself
            table[host] = [host]
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0))
                for ip in table[host]]

    monkeypatch.setattr(cluster.socket, "getaddrinfo", getaddrinfo)
    check_private(["machine-a:2101", "wg-c:2101", "lan-v6:2101", "127.0.0.1:2101", "[fd00::1]:2101"])
    with pytest.raises(PublicClusterError, match=r"machine-b \(203\.0\.113\.7\) is not a private address"):
        check_private(["machine-a:2101", "machine-b:2101"])  # one public address among its names is enough
    with pytest.raises(PublicClusterError, match="edge .198.51.100.4. is not a private"):
        Role.of(["machine-a:2101", "edge:2101"], 0, 1, allow_public=False)
    assert Role.of(["machine-a:2101", "edge:2101"], 0, 1, allow_public=True) is not None
    monkeypatch.setenv("OMNITRIGGER_ALLOW_PUBLIC_CLUSTER", "1")
    assert Role.of(["machine-a:2101", "edge:2101"], 0, 1) is not None  # how replay takes it
    monkeypatch.delenv("OMNITRIGGER_ALLOW_PUBLIC_CLUSTER")
    with pytest.raises(ClusterError, match="cannot resolve nowhere"):
        Role.of(["machine-a:2101", "nowhere:2101"], 0, 1)
    # 172.32/12 is outside RFC 1918's 172.16.0.0/12; 100.64/10 (shared address space) is not private either.
    for address in ("172.32.0.1:1", "100.64.0.1:1", "[::ffff:8.8.8.8]:1"):
        with pytest.raises(PublicClusterError):
            check_private([address])
    check_private(["172.31.255.254:1", "192.168.1.1:1", "169.254.1.1:1", "[::ffff:10.0.0.1]:1"])


def _listening(port: int) -> list[str]:
    """The local addresses of the IPv4 sockets listening on `port` (from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(":")
        if fields[3] == "0A" and int(port_hex, 16) == port:
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_a_process_listens_on_its_own_address_only(small: dict[str, Path]) -> None:
    ports = [int(address.rsplit(":", 1)[1]) for address in local_addresses(2)]
    addresses = (f"127.0.0.2:{ports[0]}", f"127.0.0.3:{ports[1]}")
    # The process Bytewax numbers 0 is the one that listens (the others connect to it).
    listener = next(index for index in range(2) if Role(index, addresses).worker == 0)
    address = addresses[listener]
    child = start("replay", str(small["rec"]), "--stores", str(small["stores"]), "--out", str(small["tmp"] / "t.jsonl"),
                  "--quiet", "--addresses", ",".join(addresses), "--process-id", str(listener),
                  "--state-dir", str(small["tmp"] / "state"))
    try:
        port = int(address.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while not _listening(port) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
        assert _listening(port) == [address.rsplit(":", 1)[0]], child.stderr.read() if child.poll() is not None else ""
    finally:
        child.kill()
        child.communicate()
