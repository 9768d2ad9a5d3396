"""Peer baseline: `omnitrigger run` against the same logic written with quixstreams, same recording, same mock Kafka.

    python benchmarks/bench_peer.py [--copies 8] [--inputs all|peer] [--peer-partitions 1] [--partitions 8]
                                    [--keep DIR] [--json FILE]

The peer is quixstreams 3.28.1 (the Python Kafka stream processor with
RocksDB state a user would otherwise pick) running receipt dedup and cart
abandonment; benchmarks/peer_quixstreams_app.py says exactly how, and where
it differs (no identity resolution, no consent or caps). It is not a
dependency of the project (it pins confluent-kafka differently): this script
creates `benchmarks/.venv-peer` with `pip install quixstreams==3.28.1 orjson
xxhash` the first time and runs the app with that interpreter.

The recording is the real-data mix of the other benchmarks (real_mix.py:
Taobao clickstream, bakery receipts, GeoLife pings, links and consents;
52,780 records a copy) times `--copies`, each copy a separate population
(8 copies: 422,720 records). So that the topics look like production ones
and the dedup has work, it is rewritten as kcat envelopes keyed the way
producers key them (web events and pings by device, receipts by till, links
and consents by their first identifier), partition crc32(key) mod the
topic's partitions, Kafka timestamp = event time, and 10% of the receipts
redelivered 1 to 900 records later (as tests/recordings.py
`receipts_with_redeliveries` does). It is published once, lz4-compressed
(omnitrigger's `publish`, as fast as it goes), into one librdkafka mock
cluster held by this process, before either engine starts; the mock keeps
only ~5 MB of batches a partition, so the script checks nothing was dropped.

Topic layout: web.events and pos.receipts, the two topics both engines read,
have one partition (`--peer-partitions`), the others 8. One partition is
quixstreams' best case, and the only layout where it computes the carts
right from a backlog: with N partitions its consumer, aligning only
same-numbered partitions of web.events and pos.receipts, works through one
partition's buffered backlog after another, so the re-keyed cart actions
reach the session windows days out of event-time order and most are dropped
as late (`--copies 1 --peer-partitions 16`: 1,539 of 1,675, and 72 carts fire instead of 512). With one
partition, group_by re-keys in place and no repartition topic is needed.
omnitrigger merges every partition in event time, so the layout changes
nothing for it.

Then, one after the other on the same topics:

  1. `omnitrigger run`, the whole flow (contracts, dedup, identity, visits,
     history, the three rules, policy) reading all five topics, default
     config except the metrics port and `[kafka] heartbeat_interval = 0`: no
     wall-clock heartbeats, so, as in a replay and in the peer, deadlines
     fire on the data's event time only (a heartbeat at the end of the
     backlog would move the clock to today and fire every pending deadline).
     Done when its metrics endpoint shows every published record read, no
     output pending, and no counter has moved for 3 s; the end is the last
     moment a counter moved (polled every 0.2 s; `events_in` is published
     once a second, so the first-record time is +-1 s).
  2. the quixstreams app (consumer group `peer-quixstreams`,
     fetch.wait.max.ms 5 as omnitrigger's, otherwise quixstreams' defaults)
     reading the two topics its logic needs. It stops itself once it has
     processed every message of both (and every re-keyed cart action, when
     there is a repartition topic), then commits and flushes; it reports
     its first-message and end times.
  3. the same app with `--dedup-only` (its own consumer group): the two dedup
     filters alone, no cart logic, no output. The floor of what quixstreams
     costs on those records, to show how much of the peer's time is its
     session windows.

The mock's consumer-group initial rebalance delay (3 s, as a broker's
default) is set to 0, so the peer's start-up is not padded by it.

With `--inputs peer` only web.events and pos.receipts are published, so both
engines consume exactly the same records (omnitrigger still runs its whole
flow: identity, history, policy, the cart and browse rules; visits idle).

Printed for each: records consumed, seconds from process start to done
(start-up included) and from the first record to done, records/s, peak RSS
(VmHWM from /proc: os.wait4's ru_maxrss would include this process's RSS,
which a child started by vfork + exec keeps as its maximum), and the command
line; then omnitrigger's records/s as a ratio to quixstreams', and the
cart-abandonment and dedup counts of both. A setup error (no real data, the
peer venv cannot be made, records dropped by the mock, an engine that fails
or stalls) prints one line, `bench_peer: error: ...`, and exits 1.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from real_mix import REPO, build_scaled_mix  # noqa: E402
from results import Figures, machine  # noqa: E402

sys.path.insert(0, str(REPO))
from omnitrigger.config import Config  # noqa: E402
from omnitrigger.io.kafka_mock import MockCluster  # noqa: E402
from omnitrigger.io.kafka_tools import KafkaSetupError, input_topics, output_topics, publish  # noqa: E402
from omnitrigger.schemas import parse_event_time  # noqa: E402

PEER_VENV = HERE / ".venv-peer"
PEER_APP = HERE / "peer_quixstreams_app.py"
PEER_PACKAGES = ["quixstreams==3.28.1", "orjson", "xxhash"]
PEER_TOPICS = ("web.events", "pos.receipts")
OUTPUT_PARTITIONS = 4
CART = "cart_abandoned"
CANCELLATIONS = ("purchased", "removed_from_cart")


class SetupError(Exception):
    """Something the benchmark needs is missing or broke; printed as one line."""


# -- the peer's venv ------------------------------------------------------------------------------


def peer_python() -> Path:
    """benchmarks/.venv-peer/bin/python with quixstreams 3.28.1, created on first use."""
    python = PEER_VENV / "bin" / "python"
    probe = "import quixstreams, orjson, xxhash; print(quixstreams.__version__)"
    if python.exists():
        result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip() == "3.28.1":
            return python
    print(f"creating {PEER_VENV.relative_to(REPO)} (pip install {' '.join(PEER_PACKAGES)}) ...", flush=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
             [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in (result.stderr + result.stdout).splitlines()
                     if line.strip() and not line.startswith("WARNING")]
            raise SetupError(f"cannot create the peer venv ({' '.join(step[:4])} ...): "
                             f"{lines[-1] if lines else f'exit code {result.returncode}'}")
    return python


# -- the recording ----------------------------------------------------------------------------------


def producer_key(topic: str, body: dict[str, Any]) -> str:
    """The Kafka key a producer of `topic` would use."""
    if topic == "pos.receipts":
        return str(body.get("terminal_id"))
    ids = body.get("ids") or {}
    for kind in ("device_id", "cookie_id", "auth_id", "loyalty_id", "email", "phone"):
        if ids.get(kind):
            return str(ids[kind])
    return str(body.get("event_id"))


def keyed_recording(mix: Path, out: Path, partitions: dict[str, int], redelivered: float = 0.10,
                    seed: int = 11) -> tuple[dict[str, int], int]:
    """Rewrite real_mix's bare lines of the topics in `partitions` as keyed kcat envelopes, receipts with
    redeliveries. Returns (records per topic, receipts redelivered)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    redeliveries = 0
    for path in sorted(mix.glob("*.jsonl")):
        topic = path.stem
        if topic not in partitions:
            continue
        bodies = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        if topic == "pos.receipts":
            chosen = set(rng.sample(range(len(bodies)), int(len(bodies) * redelivered)))
            redeliveries = len(chosen)
            delayed: dict[int, list[dict[str, Any]]] = {}
            for index in sorted(chosen):
                delayed.setdefault(index + rng.choice([1, 5, 50, 400, 900]), []).append(bodies[index])
            with_copies = []
            for index, body in enumerate(bodies):
                with_copies.append(body)
                with_copies.extend(delayed.pop(index, []))
            for rest in delayed.values():
                with_copies.extend(rest)
            bodies = with_copies
        offsets = [0] * partitions[topic]
        with (out / path.name).open("wb") as handle:
            for body in bodies:
                key = producer_key(topic, body)
                partition = zlib.crc32(key.encode()) % partitions[topic]
                handle.write(orjson.dumps({"topic": topic, "partition": partition, "offset": offsets[partition],
                                           "tstype": "create", "ts": parse_event_time(body["ts"]), "key": key,
                                           "payload": body}) + b"\n")
                offsets[partition] += 1
        counts[topic] = len(bodies)
    return counts, redeliveries


def no_rebalance_delay(cluster: MockCluster) -> None:
    """rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0), through the handle kafka_mock.py keeps."""
    import ctypes

    function = cluster._lib.rd_kafka_mock_group_initial_rebalance_delay_ms  # noqa: SLF001
    function.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    function.restype = None
    function(cluster._cluster, 0)  # noqa: SLF001


def check_retained(brokers: str, partitions: dict[str, int], sent: int) -> None:
    """The mock keeps ~5 MB a partition: fail if it dropped the start of any partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "bench-peer-check"})
    try:
        total, dropped = 0, 0
        for topic, count in partitions.items():
            for partition in range(count):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                total += high
                dropped += low
    finally:
        consumer.close()
    if dropped or total != sent:
        raise SetupError(f"the mock cluster kept {total - dropped:,} of {sent:,} records (it keeps ~5 MB of "
                         f"compressed batches a partition): use fewer --copies or more partitions")


# -- omnitrigger ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, float] | None:
    """The job's Prometheus samples, `name{labels}` -> value (None while the endpoint is not up)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    samples = {}
    for line in text.splitlines():
        if line.startswith("omnitrigger_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(value for name, value in samples.items() if name.startswith(prefix))


class Run:
    """One engine's figures."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.command = command
        self.records = 0
        self.spawned = 0.0
        self.first = 0.0
        self.end = 0.0
        self.peak_rss_mib = 0.0
        self.counts: dict[str, float] = {}
        self.log: Path | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.spawned

    @property
    def processing_seconds(self) -> float:
        return self.end - self.first


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a running process, 0 once it is gone. Not os.wait4's ru_maxrss: a child started by vfork + exec
    keeps this (large) process's RSS as its maximum from before the exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reap(process: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """(exit code, peak RSS MiB sampled from /proc every 0.1 s) of `process`, killing it after `timeout` s."""
    deadline = time.time() + timeout
    peak = 0.0
    while time.time() < deadline:
        peak = max(peak, peak_rss_mib(process.pid))
        if process.poll() is not None:
            return process.returncode, peak
        time.sleep(0.1)
    process.kill()
    return process.wait(), peak


def tail(path: Path, lines: int = 3) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) if path.exists() else ""


def run_omnitrigger(work: Path, brokers: str, stores: Path, expected: int, quiet_s: float = 3.0,
                    stall_s: float = 120.0) -> Run:
    port = free_port()
    config = work / "omnitrigger.toml"
    config.write_text(f'[kafka]\nmetrics_port = {port}\nheartbeat_interval = "0s"\n')
    command = [sys.executable, "-m", "omnitrigger", "run", "--brokers", brokers, "--stores", str(stores),
               "--state-dir", str(work / "omnitrigger-state"), "--config", str(config)]
    run = Run("omnitrigger", command)
    run.records = expected
    run.log = work / "omnitrigger.log"
    environment = {**os.environ, "OMNITRIGGER_PII_KEY": os.environ.get("OMNITRIGGER_PII_KEY")
                   or "omnitrigger-benchmark-key-0123456789"}
    with run.log.open("wb") as log:
        run.spawned = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=environment)
    last: tuple[float, ...] = ()
    last_change = time.time()
    try:
        while True:
            time.sleep(0.2)
            if process.poll() is not None:
                raise SetupError(f"omnitrigger run exited with {process.returncode}: {tail(run.log)}")
            samples = scrape(port)
            now = time.time()
            run.peak_rss_mib = max(run.peak_rss_mib, peak_rss_mib(process.pid))
            if samples is None:
                if now - run.spawned > stall_s:
                    raise SetupError(f"omnitrigger's metrics endpoint never came up: {tail(run.log)}")
                continue
            read = total(samples, "omnitrigger_events_in_total")
            if read and not run.first:
                run.first = now
            state = (read, total(samples, "omnitrigger_triggers_total"), total(samples, "omnitrigger_suppressed_total"),
                     total(samples, "omnitrigger_visits_total"), total(samples, "omnitrigger_dead_letters_total"))
            if state != last:
                last, last_change = state, now
            pending = samples.get("omnitrigger_output_pending_messages", 0.0)
            if read >= expected and pending == 0 and now - last_change >= quiet_s:
                run.end = last_change
                run.counts = samples
                break
            if now - last_change > stall_s:
                raise SetupError(f"omnitrigger stopped at {read:,.0f} of {expected:,} records for {stall_s:.0f} s: "
                                 f"{tail(run.log)}")
    finally:
        process.send_signal(signal.SIGTERM)
        code, _ = reap(process, 60)
    if code != 0:
        print(f"  (omnitrigger exited with {code} after SIGTERM; log {run.log})", flush=True)
    return run


def omnitrigger_carts(samples: dict[str, float]) -> dict[str, float]:
    """cart_abandoned from the job's counters: fired deadlines (sent or held back by policy), cancellations."""
    sent = samples.get(f'omnitrigger_triggers_total{{rule="{CART}"}}', 0.0)
    held: dict[str, float] = {}
    for name, value in samples.items():
        if name.startswith("omnitrigger_suppressed_total{") and f'rule="{CART}"' in name:
            reason = name.split('reason="', 1)[1].split('"', 1)[0]
            held[reason] = held.get(reason, 0.0) + value
    policy = sum(value for reason, value in held.items() if reason not in CANCELLATIONS and reason != "late_event")
    return {"sent": sent, "held_by_policy": policy, "fired": sent + policy,
            "cancelled": sum(held.get(reason, 0.0) for reason in CANCELLATIONS),
            "late_event": held.get("late_event", 0.0), **{f"held:{reason}": value for reason, value in held.items()}}


# -- quixstreams ------------------------------------------------------------------------------------


def peer_topics(python: Path, brokers: str, work: Path) -> dict[str, Any]:
    """The topics the app needs created (its repartition and output topics), from its --list-topics."""
    result = subprocess.run([str(python), str(PEER_APP), "--brokers", brokers, "--list-topics",
                             "--state-dir", str(work / "peer-list-state")], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SetupError(f"the quixstreams app failed to list its topics: {result.stderr.strip().splitlines()[-1:]}")
    return orjson.loads(result.stdout.strip().splitlines()[-1])


def run_quixstreams(python: Path, work: Path, brokers: str, expected: int, dedup_only: bool = False,
                    timeout_s: float = 1800.0) -> Run:
    label = "quixstreams-dedup-only" if dedup_only else "quixstreams"
    summary_path = work / f"{label}-summary.json"
    command = [str(python), str(PEER_APP), "--brokers", brokers, "--expect", str(expected),
               "--consumer-group", f"peer-{label}", "--state-dir", str(work / f"{label}-state"),
               "--summary", str(summary_path)] + (["--dedup-only"] if dedup_only else [])
    run = Run(label, command)
    run.records = expected
    run.log = work / f"{label}.log"
    with run.log.open("wb") as log:
        run.spawned = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    code, sampled = reap(process, timeout_s)
    if code != 0 or not summary_path.exists():
        raise SetupError(f"the quixstreams app exited with {code}: {tail(run.log)}")
    summary = orjson.loads(summary_path.read_bytes())
    run.peak_rss_mib = max(sampled, summary["peak_rss_mib"])
    run.first, run.end = summary["first"], summary["finished"]
    run.counts = {**summary["counts"], "repartition_processed": summary["repartition_processed"],
                  "stopped_at": summary["done"]}
    return run


# -- main -----------------------------------------------------------------------------------------------


def show(run: Run) -> None:
    print(f"{run.name}: {run.records:,} records in {run.seconds:.1f} s = {run.records / run.seconds:,.0f} records/s "
          f"(start-up included); first record to done {run.processing_seconds:.1f} s = "
          f"{run.records / run.processing_seconds:,.0f} records/s; peak RSS {run.peak_rss_mib:,.0f} MiB", flush=True)
    print(f"    command: {' '.join(run.command)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="copies of the real-data mix (1 to 99)")
    parser.add_argument("--peer-partitions", type=int, default=1,
                        help="partitions of web.events and pos.receipts (the topics both engines read)")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of the other three input topics")
    parser.add_argument("--inputs", choices=("all", "peer"), default="all",
                        help="all: the five topics (omnitrigger reads all, the peer two); peer: only "
                             "web.events and pos.receipts, so both consume the same records")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder (real data)")
    parser.add_argument("--keep", type=Path, help="keep the work folder (recording, logs, state) here")
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    args = parser.parse_args()
    line = (f"python benchmarks/bench_peer.py --copies {args.copies} --peer-partitions {args.peer_partitions} "
            f"--partitions {args.partitions} --inputs {args.inputs}")
    try:
        return bench(args, line)
    except (SetupError, KafkaSetupError) as error:
        print(f"bench_peer: error: {error}", file=sys.stderr)
        return 1


def bench(args: argparse.Namespace, line: str) -> int:
    real_data = args.shared / "data" / "real"
    if not real_data.is_dir():
        raise SetupError(f"real data not found at {real_data} (use --shared)")
    if not 1 <= args.copies <= 99 or min(args.partitions, args.peer_partitions) < 1:
        raise SetupError("--copies must be 1 to 99 and partitions at least 1")
    python = peer_python()
    print(f"$ {line}", flush=True)
    print(f"machine: {machine()}", flush=True)
    if args.keep is not None:
        shutil.rmtree(args.keep, ignore_errors=True)
        args.keep.mkdir(parents=True)
        work = args.keep
    else:
        work = Path(tempfile.mkdtemp(prefix="omnitrigger-bench-peer-"))
    cluster = None
    try:
        build_scaled_mix(real_data, work / "mix", args.copies)
        partitions = {topic: args.peer_partitions if topic in PEER_TOPICS else args.partitions
                      for topic in input_topics(Config())}
        published = {topic: count for topic, count in partitions.items()
                     if args.inputs == "all" or topic in PEER_TOPICS}
        counts, redeliveries = keyed_recording(work / "mix" / "recording", work / "recording", published)
        records = sum(counts.values())
        peer_records = sum(counts.get(topic, 0) for topic in PEER_TOPICS)
        print(f"recording: {records:,} records ({args.copies} copies of the real-data mix: "
              + ", ".join(f"{topic} {count:,}" for topic, count in counts.items())
              + f"; {redeliveries:,} receipts redelivered); partitions: "
              + ", ".join(f"{topic} {count}" for topic, count in partitions.items()), flush=True)

        cluster = MockCluster()
        # The mock's consumer groups wait 3 s before the first assignment (as a broker's default
        # group.initial.rebalance.delay.ms); 0 spares the peer, which uses a group, that wait.
        no_rebalance_delay(cluster)
        config = Config()
        for topic, count in partitions.items():
            cluster.create_topic(input_topics(config)[topic], count)
        for topic in output_topics(config).values():
            cluster.create_topic(topic, OUTPUT_PARTITIONS)
        needs = peer_topics(python, cluster.bootstrap_servers, work)
        for topic, count in needs["needs"].items():
            cluster.create_topic(topic, count)
        started = time.time()
        # lz4 batches, as production topics often are: the mock keeps ~5 MB of batches a partition.
        sent = publish(work / "recording", cluster.bootstrap_servers,
                       config.with_overrides(kafka_client_properties=(("compression.type", "lz4"),)))
        print(f"published {sum(sent.values()):,} records (lz4) in {time.time() - started:.1f} s to the mock cluster "
              f"at {cluster.bootstrap_servers}", flush=True)
        check_retained(cluster.bootstrap_servers, {input_topics(config)[topic]: count
                                                   for topic, count in published.items()}, records)
        shutil.move(work / "mix" / "stores.csv", work / "stores.csv")
        shutil.rmtree(work / "mix", ignore_errors=True)

        print("running omnitrigger (the whole flow) ...", flush=True)
        omni = run_omnitrigger(work, cluster.bootstrap_servers, work / "stores.csv", records)
        show(omni)
        print("running quixstreams (receipt dedup + cart abandonment) ...", flush=True)
        quix = run_quixstreams(python, work, cluster.bootstrap_servers, peer_records)
        show(quix)
        print("running quixstreams with the dedup alone (the peer's floor) ...", flush=True)
        floor = run_quixstreams(python, work, cluster.bootstrap_servers, peer_records, dedup_only=True)
        show(floor)
        report(args, line, omni, quix, floor, records, peer_records, redeliveries, needs.get("repartition"))
    finally:
        if cluster is not None:
            cluster.close()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, line: str, omni: Run, quix: Run, floor: Run, records: int, peer_records: int,
           redeliveries: int, repartition: str | None) -> None:
    omni_rate, quix_rate = omni.records / omni.seconds, quix.records / quix.seconds
    omni_steady, quix_steady = omni.records / omni.processing_seconds, quix.records / quix.processing_seconds
    floor_rate = floor.records / floor.seconds
    print(f"omnitrigger / quixstreams records/s: {omni_rate / quix_rate:.2f}x start-up included, "
          f"{omni_steady / quix_steady:.2f}x first record to done; against quixstreams' dedup alone "
          f"{omni_rate / floor_rate:.2f}x", flush=True)
    print(f"to get through the same recording ({records:,} records; the peer reads {peer_records:,} of them): "
          f"omnitrigger {omni.seconds:.1f} s, quixstreams {quix.seconds:.1f} s", flush=True)
    carts = omnitrigger_carts(omni.counts)
    q = quix.counts
    print(f"cart_abandoned: omnitrigger {carts['fired']:,.0f} deadlines fired ({carts['sent']:,.0f} sent, "
          f"{carts['held_by_policy']:,.0f} held back by consent and caps), {carts['cancelled']:,.0f} cancelled by a "
          f"purchase or removal, {carts['late_event']:,.0f} too late; quixstreams {q.get('triggers', 0):,} fired "
          f"(no identity resolution, no policy), {q.get('late_cart_actions', 0):,} late cart actions dropped",
          flush=True)
    held = {name[5:]: value for name, value in carts.items() if name.startswith("held:")}
    print("    omnitrigger cart_abandoned suppressed by reason: "
          + ", ".join(f"{reason} {value:,.0f}" for reason, value in sorted(held.items())), flush=True)
    print(f"receipt dedup: {redeliveries:,} redeliveries in the recording; quixstreams dropped "
          f"{q.get('duplicates.pos.receipts', 0):,} receipts and {q.get('duplicates.web.events', 0):,} web events "
          f"(omnitrigger's duplicates stream is not published to Kafka)", flush=True)
    through = (f"through its repartition topic {repartition}" if repartition else
               "in place (one-partition topics: quixstreams' group_by needs no repartition topic)")
    print(f"quixstreams re-keyed {q.get('cart_actions_rekeyed', 0):,} cart actions by (customer, product) {through}",
          flush=True)
    figures = Figures("bench_peer", line)
    figures.add(f"omnitrigger run, whole flow: records/s ({omni.records:,} records, start-up included)",
                round(omni_rate), "records/s")
    figures.add(f"quixstreams dedup + cart abandonment: records/s ({quix.records:,} records, start-up included)",
                round(quix_rate), "records/s")
    figures.add("omnitrigger / quixstreams records/s", round(omni_rate / quix_rate, 2), "x")
    figures.add("quixstreams dedup alone: records/s", round(floor_rate), "records/s")
    figures.add("omnitrigger peak RSS", round(omni.peak_rss_mib), "MiB")
    figures.add("quixstreams peak RSS", round(quix.peak_rss_mib), "MiB")
    figures.write(args.json)


if __name__ == "__main__":
    sys.exit(main())
