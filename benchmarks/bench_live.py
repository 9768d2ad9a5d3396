"""Live-mode latency through librdkafka's mock cluster: `omnitrigger run` at a sustained input rate.

    python benchmarks/bench_live.py [--rate 10000] [--duration 60] [--steps 15000,20000,25000] [--step-seconds 20]
        [--batch-wait 10ms] [--epoch-interval 1s] [--processes N] [--config FILE]

A generator in this process sends synthetic omnichannel traffic with event
time = the wall clock at sending (customers with push consent viewing,
carting and buying products; devices dwelling in stores; receipts and
identity links), paced in 10 ms ticks, to the five input topics
(4 partitions each). The job runs as `omnitrigger run` in a subprocess with
the full flow (`--processes N`: as a one-machine cluster of N processes). A consumer here reads the triggers topic (fetch.wait.max.ms=5)
and takes, for every trigger, the time from when it became due (its
`event_time`: the deadline of an abandonment rule, the confirming ping of a
store visit) to when the consumer received it, an upper bound of its
acknowledgement on the triggers topic.

`--write-recording DIR` writes phase 1's traffic (`--rate` for `--duration` seconds of event time) as a
recording instead, with the job's config and stores beside it, and runs nothing: so what the job does with
that traffic can be measured offline (`bench_stages.py --recording DIR/recording --stores DIR/stores.csv
--config DIR/bench.toml`, `omnitrigger replay`).

Retention. librdkafka's mock finds the message set of a fetch offset by walking its partition's log from
the start ("FIXME: Maintain an index", rdkafka_mock.c `rd_kafka_mock_msgset_find`), so the longer the
input partitions grow, the more CPU the mock (in this process, on the cores the job uses) spends per fetch:
its thread went from 40 % of a core to 73 % within a 60 s run, starving the job. A broker indexes its
offsets and deletes old segments; so here, every second, each input partition's records older than
`--retention` seconds of sending are deleted (the mock's `delete_records`, as retention does), well
behind what the job has read unless it lags that far (then it stops with a retention gap, and says so).
`--retention 0` keeps everything (what this benchmark did before the option).

`--config FILE` puts a TOML file's settings over the job's config (the benchmark's own: short windows, no
quiet hours), key by key, to compare a setting live (`[state] spill_entries = 0`, say). A wrong file or
value is one line, exit 2, before the mock cluster or the job starts.

Phase 1 holds `--rate` for `--duration` seconds and prints the latency
percentiles, overall and by rule. Phase 2 steps up through `--steps` for
`--step-seconds` each and prints the highest rate whose P99 stayed under 1 s
with the job keeping up. Short windows make the rules fire within the run:
cart abandonment after 30 s, visits confirmed after 10 s of dwell, a rules
lateness of 0 (so latency is the pipeline's, not a configured wait).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import socket
import threading
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnitrigger.config import _KEYS, Config, ConfigError, load_config  # noqa: E402
from omnitrigger.demo.generator import DEMO_STORES, _offset_point, iso  # noqa: E402
from omnitrigger.io.kafka_mock import MockCluster  # noqa: E402
from omnitrigger.io.kafka_tools import input_topics, output_topics  # noqa: E402
from omnitrigger.flows.kafka_sink import due_ms  # noqa: E402
from results import Figures  # noqa: E402

PREFIX = "bench."
PARTITIONS = 4
TICK_S = 0.01


def read_overrides(path: Path) -> dict[str, dict[str, Any]]:
    """`--config`'s tables by section; ValueError with one line if the file cannot be read as TOML tables."""
    try:
        tables = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None
    for section, values in tables.items():
        if type(values) is not dict:
            raise ValueError(f"{path}: {section} is not a table")
    return tables


def job_config(path: Path, metrics_port: int, batch_wait: str | None = None, epoch_interval: str | None = None,
               overrides: dict[str, dict[str, Any]] | None = None) -> None:
    """The job's config file: the benchmark's settings, then `overrides` (`--config`) over them; ConfigError (one
    line) if the job would refuse it, so a wrong `--config` is refused before anything starts."""
    own: dict[str, dict[str, Any]] = {
        "kafka": {"topic_prefix": PREFIX, "metrics_port": metrics_port, "heartbeat_interval": "0.2s",
                  **({"batch_wait": batch_wait} if batch_wait is not None else {})},
        "visits": {"min_dwell": "10s", "max_gap": "30s", "allowed_lateness": "2s"},
        # No purchase grace and no quiet hours: a 30 s cart is due 30 s after its add, day or night, so the
        # latency measured is the engine's, not the 5-minute grace's or the night's.
        "rules": {"cart_abandoned_after": "30s", "allowed_lateness": "0s", "purchase_grace": "0s"},
        "policy": {"max_triggers_per_customer": 1000, "quiet_hours": "", "max_delay": "0"},
        "replay": {"epoch_interval": epoch_interval} if epoch_interval is not None else {},
    }
    # The benchmark's own keys only where this version knows them (an older checkout measured beside this one);
    # an override always, so that a wrong one is refused by the job's config check.
    tables = {section: {key: value for key, value in values.items() if (section, key) in _KEYS}
              for section, values in own.items()}
    for section, values in (overrides or {}).items():
        tables.setdefault(section, {}).update(values)
    path.write_text(tomli_w.dumps({section: values for section, values in tables.items() if values}))
    load_config(path)


class Traffic:
    """Synthetic traffic; every record's event time is `now_ms`."""

    def __init__(self, seed: int = 1, customers: int = 100_000, visitors: int = 2000) -> None:
        self.rng = random.Random(seed)
        self.customers = customers
        self.consented: set[int] = set()
        self.products = [f"P{n:05d}" for n in range(2000)]
        self.visitors: list[list[Any]] = []  # [customer, store, until_ms, next_ping_ms]
        self.visitor_target = visitors
        self.event_no = 0

    def _id(self, prefix: str) -> str:
        self.event_no += 1
        return f"{prefix}-{self.event_no}"

    def batch(self, now_ms: int, count: int) -> list[tuple[str, bytes, bytes]]:
        """About `count` records: (contract topic, key, value)."""
        out: list[tuple[str, bytes, bytes]] = []
        rng = self.rng
        ts = iso(now_ms)
        # Store visitors ping every 0.5 s: about 40% of the traffic at the default rate.
        while len(self.visitors) < self.visitor_target:
            self.visitors.append([rng.randrange(self.customers), rng.choice(DEMO_STORES), now_ms + rng.randrange(12_000, 20_000), now_ms])
        pings = 0
        for visitor in self.visitors:
            if visitor[3] <= now_ms and pings < count * 0.45:
                customer, store = visitor[0], visitor[1]
                lat, lon = _offset_point(store[2], store[3], rng.uniform(0, store[4] * 0.4), rng.uniform(0, 360))
                out.append(("geo.pings", f"d-{customer}".encode(), orjson.dumps({
                    "event_id": self._id("ping"), "ts": ts, "ids": {"device_id": f"d-{customer}"}, "lat": lat, "lon": lon,
                    "accuracy_m": 10, "source": "gps"})))
                visitor[3] = now_ms + 500
                pings += 1
        self.visitors = [visitor for visitor in self.visitors if visitor[2] > now_ms]
        while len(out) < count:
            customer = rng.randrange(self.customers)
            device = f"d-{customer}"
            if customer not in self.consented:
                self.consented.add(customer)
                out.append(("consent.changes", device.encode(), orjson.dumps({
                    "event_id": self._id("cons"), "ts": ts, "ids": {"device_id": device, "auth_id": f"u-{customer}"},
                    "channel": "push", "status": "granted"})))
                continue
            roll = rng.random()
            product = self.products[int(rng.paretovariate(1.2)) % len(self.products)]
            ids = {"device_id": device, "auth_id": f"u-{customer}"}
            if roll < 0.80:
                kind = "view_item" if roll < 0.65 else "add_to_cart" if roll < 0.76 else "purchase"
                record: dict[str, Any] = {"event_id": self._id("web"), "type": kind, "ts": ts, "channel": "app",
                                          "ids": ids}
                if kind == "purchase":
                    record["items"] = [{"product_id": product, "qty": 1, "price": 9.9}]
                else:
                    record["product_id"] = product
                out.append(("web.events", device.encode(), orjson.dumps(record)))
            elif roll < 0.92:
                store = rng.choice(DEMO_STORES)[0]
                out.append(("pos.receipts", f"{store}-T1".encode(), orjson.dumps({
                    "terminal_id": f"{store}-T1", "receipt_no": self.event_no, "ts": now_ms, "store_id": store,
                    "ids": {"loyalty_id": f"L{customer}"}, "items": [{"product_id": product, "qty": 1, "price": 9.5}]})))
                self.event_no += 1
            else:
                out.append(("identity.links", device.encode(), orjson.dumps({
                    "event_id": self._id("link"), "ts": ts, "source": "loyalty_card",
                    "ids": {"loyalty_id": f"L{customer}", "auth_id": f"u-{customer}"}})))
        return out


class TriggerReader(threading.Thread):
    def __init__(self, brokers: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": brokers, "group.id": "bench", "fetch.wait.max.ms": 5,
                                  "enable.auto.commit": False, "enable.partition.eof": False})
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.samples: list[tuple[float, float, str]] = []  # (received wall s, latency s, rule)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(1000, 0.05):
                if message.error() is not None and message.error().code() != KafkaError._PARTITION_EOF:
                    continue
                if message.error() is not None:
                    continue
                now = time.time()
                record = orjson.loads(message.value())
                due = due_ms(record)
                if due is None:
                    continue
                self.samples.append((now, now - due / 1000, record.get("rule", "?")))
        self.consumer.close()


class Retention(threading.Thread):
    """Every second, deletes each input partition's records sent more than `seconds` ago (see the docstring)."""

    def __init__(self, cluster: MockCluster, topics: list[str], seconds: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.topics, self.seconds = cluster, topics, seconds
        self.consumer = Consumer({"bootstrap.servers": cluster.bootstrap_servers, "group.id": "bench-retention"})
        self.ends: list[tuple[float, dict[tuple[str, int], int]]] = []  # (when, end offset per partition)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            now = time.time()
            ends = {}
            for topic in self.topics:
                for partition in range(PARTITIONS):
                    try:
                        ends[(topic, partition)] = self.consumer.get_watermark_offsets(
                            TopicPartition(topic, partition), timeout=2.0)[1]
                    except Exception:
                        continue
            self.ends.append((now, ends))
            while len(self.ends) > 1 and self.ends[1][0] <= now - self.seconds:
                self.ends.pop(0)
            when, old = self.ends[0]
            if when > now - self.seconds:
                continue
            for (topic, partition), offset in old.items():
                if offset > 0:
                    self.cluster.delete_records(topic, partition, offset)
        self.consumer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its descendants (a one-machine cluster's
    processes), from /proc: a cost per record that a busy, shared machine disturbs far less than latency."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(used.get(member, 0.0) for member in tree)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_rate(producer: Producer, traffic: Traffic, names: dict[str, str], rate: float, seconds: float) -> tuple[int, float]:
    """Send `rate` records/s for `seconds`; returns (records sent, achieved rate)."""
    sent = 0
    started = time.time()
    tick = 0
    carry = 0.0
    while time.time() - started < seconds:
        tick += 1
        carry += rate * TICK_S
        count = int(carry)
        carry -= count
        now_ms = int(time.time() * 1000)
        for topic, key, value in traffic.batch(now_ms, count):
            while True:
                try:
                    producer.produce(names[topic], value, key, timestamp=now_ms)
                    break
                except BufferError:
                    producer.poll(0.01)
            sent += 1
        producer.poll(0)
        delay = started + tick * TICK_S - time.time()
        if delay > 0:
            time.sleep(delay)
    producer.flush(30)
    return sent, sent / (time.time() - started)




def input_lag(port: int) -> float:
    """The job's consumer lag summed over the input partitions (its Prometheus endpoint)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return float("inf")
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("omnitrigger_consumer_lag_messages{"))


def wait_caught_up(port: int, timeout: float = 120.0) -> float:
    deadline = time.time() + timeout
    time.sleep(6)  # the lag gauge comes from librdkafka's statistics, every 5 s
    while time.time() < deadline:
        lag = input_lag(port)
        if lag < 1000:
            return lag
        time.sleep(2)
    return input_lag(port)


def report(label: str, samples: list[tuple[float, float, str]], since: float, until: float) -> tuple[float, float]:
    """Prints the latency percentiles of the triggers received in [since, until); returns (P50, P99) in s."""
    window = [latency for received, latency, _ in samples if since <= received < until]
    by_rule: dict[str, list[float]] = {}
    for received, latency, rule in samples:
        if since <= received < until:
            by_rule.setdefault(rule, []).append(latency)
    p99 = percentile(window, 0.99)
    print(f"{label}: {len(window):,} triggers; latency P50 {percentile(window, 0.5) * 1000:,.0f} ms, "
          f"P95 {percentile(window, 0.95) * 1000:,.0f} ms, P99 {p99 * 1000:,.0f} ms, "
          f"max {max(window, default=float('nan')) * 1000:,.0f} ms", flush=True)
    for rule, values in sorted(by_rule.items()):
        print(f"    {rule}: {len(values):,}, P50 {percentile(values, 0.5) * 1000:,.0f} ms, "
              f"P99 {percentile(values, 0.99) * 1000:,.0f} ms", flush=True)
    return percentile(window, 0.5), p99


def write_stores(path: Path) -> None:
    path.write_text("store_id,name,lat,lon,radius_m\n"
                    + "".join(f"{s},{n},{la},{lo},{r}\n" for s, n, la, lo, r in DEMO_STORES))


def write_recording(folder: Path, rate: float, seconds: float,
                    overrides: dict[str, dict[str, Any]] | None = None) -> int:
    """Phase 1's traffic as bare JSON lines per contract topic, in sending order, 10 ms ticks of event time."""
    folder.mkdir(parents=True, exist_ok=True)
    job_config(folder / "bench.toml", 0, overrides=overrides)  # first: a wrong --config writes no traffic
    (folder / "recording").mkdir(exist_ok=True)
    write_stores(folder / "stores.csv")
    traffic, files, sent, carry = Traffic(), {}, 0, 0.0
    now_ms = int(time.time() * 1000)
    try:
        for _ in range(int(seconds / TICK_S)):
            carry += rate * TICK_S
            count = int(carry)
            carry -= count
            for topic, _key, value in traffic.batch(now_ms, count):
                if topic not in files:
                    files[topic] = (folder / "recording" / f"{topic}.jsonl").open("wb")
                files[topic].write(value + b"\n")
                sent += 1
            now_ms += int(TICK_S * 1000)
    finally:
        for file in files.values():
            file.close()
    print(f"wrote {sent:,} records ({seconds:.0f} s at {rate:,.0f}/s) to {folder / 'recording'}; "
          f"stores {folder / 'stores.csv'}, config {folder / 'bench.toml'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--steps", default="8000,6000,4000,2000",
                        help="rates tried after phase 1, highest first; the first whose P99 < 1 s is reported")
    parser.add_argument("--step-seconds", type=float, default=20)
    parser.add_argument("--batch-wait", metavar="DURATION",
                        help="the job's [kafka] batch_wait (default: the config's, 10ms), to compare settings")
    parser.add_argument("--epoch-interval", metavar="DURATION",
                        help="the job's [replay] epoch_interval (default: the config's, 1s), to compare settings")
    parser.add_argument("--processes", type=int, default=1, help="the job's --processes (default 1)")
    parser.add_argument("--retention", type=float, default=10, metavar="SECONDS",
                        help="delete input records sent longer ago than this, every second (default 10; 0: keep all)")
    parser.add_argument("--write-recording", type=Path, metavar="DIR",
                        help="write phase 1's traffic as a recording in DIR instead of running the job")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="a TOML file whose settings go over the job's config (to compare a setting)")
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    args = parser.parse_args()
    if args.processes < 1:
        print("bench_live: --processes must be at least 1", file=sys.stderr)
        return 2
    overrides = None
    if args.config is not None:
        try:
            overrides = read_overrides(args.config)
        except ValueError as error:
            print(f"bench_live: {error}", file=sys.stderr)
            return 2
    if args.write_recording is not None:
        try:
            return write_recording(args.write_recording, args.rate, args.duration, overrides)
        except ConfigError as error:
            print(f"bench_live: --config: {error}", file=sys.stderr)
            return 2
    figures = Figures("bench_live", f"python benchmarks/bench_live.py --rate {args.rate:.0f} --duration {args.duration:.0f} "
                                    f"--steps {args.steps}" + (f" --processes {args.processes}" if args.processes > 1 else "")
                                    + (f" --retention {args.retention:g}" if args.retention != 10 else "")
                                    + (f" --config {args.config}" if args.config is not None else ""))
    os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-benchmark-key-0123456789")

    work = Path(tempfile.mkdtemp(prefix="omnitrigger-bench-live-"))
    metrics_port = free_port()
    try:
        job_config(work / "bench.toml", metrics_port, args.batch_wait, args.epoch_interval, overrides)
    except ConfigError as error:
        print(f"bench_live: --config: {error}", file=sys.stderr)
        return 2
    cluster = MockCluster()
    config = Config(kafka_topic_prefix=PREFIX)
    names = input_topics(config)
    for topic in [*names.values(), *output_topics(config).values()]:
        cluster.create_topic(topic, PARTITIONS)
    stores = work / "stores.csv"
    write_stores(stores)
    log = (work / "job.log").open("wb")
    job = subprocess.Popen([sys.executable, "-m", "omnitrigger", "run", "--brokers", cluster.bootstrap_servers,
                            "--stores", str(stores), "--state-dir", str(work / "state"), "--config",
                            str(work / "bench.toml"), "--processes", str(args.processes)],
                           stdout=log, stderr=subprocess.STDOUT)
    reader = TriggerReader(cluster.bootstrap_servers, output_topics(config)["triggers"])
    reader.start()
    retention = Retention(cluster, list(names.values()), args.retention) if args.retention > 0 else None
    if retention is not None:
        retention.start()
    producer = Producer({"bootstrap.servers": cluster.bootstrap_servers, "linger.ms": 5,
                         "queue.buffering.max.messages": 1_000_000})
    traffic = Traffic()
    try:
        time.sleep(3)  # the job's start-up (preflight, RocksDB, Bytewax)
        print(f"phase 1: {args.rate:,.0f} records/s for {args.duration:.0f} s (job log: {work / 'job.log'})", flush=True)
        started = time.time()
        cpu_before = tree_cpu_seconds(job.pid)
        sent, achieved = run_rate(producer, traffic, names, args.rate, args.duration)
        time.sleep(2)
        lag = input_lag(metrics_port)
        cpu_us = (tree_cpu_seconds(job.pid) - cpu_before) / max(sent - lag, 1) * 1e6
        print(f"  sent {sent:,} records, {achieved:,.0f}/s; job's input lag at the end: {lag:,.0f} records; "
              f"job's CPU {cpu_us:,.1f} µs a record read", flush=True)
        p50, p99 = report("  sustained", reader.samples, started + 35, time.time())  # after the first cart deadlines
        if p50 == p50:  # no triggers in the window (the job far behind): no latency to report
            figures.add(f"live, {args.rate:,.0f} records/s in: trigger latency P50", round(p50 * 1000), "ms")
            figures.add(f"live, {args.rate:,.0f} records/s in: trigger latency P99", round(p99 * 1000), "ms")
        figures.add(f"live, {args.rate:,.0f} records/s in: input lag at the end", round(lag), "records")
        figures.add(f"live, {args.rate:,.0f} records/s in: the job's CPU a record", round(cpu_us, 1), "µs")
        best = args.rate if p99 == p99 and p99 < 1.0 and lag < args.rate else None
        for rate in [float(step) for step in args.steps.split(",") if step] if best is None else []:
            if job.poll() is not None:
                break
            print(f"  (waiting for the job to catch up: lag {wait_caught_up(metrics_port):,.0f})", flush=True)
            started = time.time()
            sent, achieved = run_rate(producer, traffic, names, rate, args.step_seconds)
            time.sleep(1)
            lag = input_lag(metrics_port)
            _, p99 = report(f"step {rate:,.0f}/s (achieved {achieved:,.0f}/s, lag {lag:,.0f})", reader.samples,
                         started + 5, time.time())
            if p99 < 1.0 and achieved >= rate * 0.95 and lag < rate:
                best = rate
                break
        print(f"highest sustained input rate with trigger P99 < 1 s: "
              f"{'none of those tried' if best is None else f'{best:,.0f} records/s'}", flush=True)
        figures.add("live: highest input rate tried with trigger P99 < 1 s (0: none)", best or 0, "records/s")
        figures.write(args.json)
    finally:
        reader.stop.set()
        if retention is not None:
            retention.stop.set()
            retention.join(5)
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            job.kill()
        reader.join(5)
        log.close()
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
