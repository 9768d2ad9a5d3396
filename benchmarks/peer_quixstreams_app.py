"""The peer baseline for bench_peer.py: omnitrigger's receipt dedup and cart abandonment, written with quixstreams.

Runs with the interpreter of `benchmarks/.venv-peer` (quixstreams 3.28.1 pins
confluent-kafka differently from omnitrigger, so it is not a dependency of
the project); bench_peer.py creates that venv and runs this file:

    .venv-peer/bin/python benchmarks/peer_quixstreams_app.py --brokers HOST:PORT --expect N --summary OUT.json
    .venv-peer/bin/python benchmarks/peer_quixstreams_app.py --brokers HOST:PORT --list-topics

What it computes, the way a quixstreams user would write it (each topic keyed
by its Kafka message key, state in quixstreams' RocksDB stores):

  * receipt dedup: pos.receipts (keyed by terminal_id) drops a receipt whose
    hash(terminal_id, receipt_no, ts) was seen before (ts normalised to epoch
    ms, xxh3-128 as omnitrigger's operators/dedup.py). web.events (keyed by
    device) drop a repeated event_id, as omnitrigger's default
    `[dedup] topics` does too. Keys are never expired: quixstreams' State has
    no TTL (omnitrigger forgets them after 7 days of event time).
  * cart abandonment, as operators/rules.py defines it: add_to_cart(C, P) at t
    sets a deadline t + cart_after; a later add of P moves it; a purchase of
    P (a web purchase listing P, or a receipt listing P) or a remove_from_cart
    of P at or after the add cancels it; when event time passes the deadline
    it fires. Written as quixstreams' idiom for an event-time timeout: web
    and receipt cart actions are concatenated (quixstreams then aligns the two
    topics' same-numbered partitions by timestamp), re-keyed by (customer,
    product) with `group_by` (through a repartition topic, or in place when
    the topics have one partition) into a session window with inactivity
    gap = cart_after, closed per partition (`closing_strategy="partition"`, so
    a cart fires without a later event of the same key). A session's last
    add is the pending cart; at the close it fires if no cancellation came at
    or after that add. Deadline = last add + cart_after, as omnitrigger's.
  * the customer is what the record carries: a web event's device_id (else
    cookie_id, else auth_id), a receipt's loyalty_id (else phone). No identity
    resolution: a device, a login and a loyalty card of one person are three
    customers here, so a receipt never cancels a web cart unless they carry
    the same identifier. No consent, caps or kill switch either: every fired
    deadline is a trigger.

Differences in when a deadline fires (documented in bench_peer.py): a
quixstreams session closes once the partition's watermark passes its last
event + 2 x gap + grace (one gap later than the deadline, so that an
admissible late event could still extend it), per partition of the
repartition topic; omnitrigger fires at deadline + 10 s allowed lateness on
one global clock. So the carts whose deadline falls in the last hour of the
recording fire in omnitrigger and not here. Events later than the watermark
minus gap + grace are dropped by the window (omnitrigger reports an add that
is too late as suppressed `late_event`); with multi-partition topics read
from a backlog that is most of them (bench_peer.py, "Topic layout").

With `--dedup-only` it runs the two dedup filters alone (no cart logic, no output): the floor of what
quixstreams costs on these topics.

The process stops itself once it has processed `--expect` input messages (and,
with a repartition topic, every cart action it sent through it), then commits
and flushes as quixstreams does on a stop, and writes a JSON summary (counts,
first-message, done and finish times, peak RSS) to `--summary`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

try:
    import xxhash

    def receipt_hash(terminal: Any, number: Any, ts_ms: int) -> bytes:
        return xxhash.xxh3_128_digest(f"{terminal}\x1f{number}\x1f{ts_ms}".encode())
except ImportError:  # the venv bench_peer.py makes has xxhash; blake2b is the fallback (0.58 against 0.20 us)
    def receipt_hash(terminal: Any, number: Any, ts_ms: int) -> bytes:
        return hashlib.blake2b(f"{terminal}\x1f{number}\x1f{ts_ms}".encode(), digest_size=16).digest()

from quixstreams import Application  # noqa: E402
from quixstreams.models.topics import admin as quix_admin  # noqa: E402
from quixstreams.models.topics.topic import TopicConfig  # noqa: E402

# -- Running against librdkafka's mock cluster ---------------------------------------------------------
# quixstreams 3.28 asks the broker for each topic's config with DescribeConfigs (`TopicAdmin.inspect_topics`),
# which librdkafka's mock cluster does not implement, and creates missing topics with CreateTopics, which the
# mock never answers ("waiting for controller"; docs/design.md#mock-cluster-limits). So inspect_topics is replaced by one that
# builds each TopicConfig from list_topics metadata (partitions, replication factor 1, retention.ms and
# retention.bytes unlimited, which is what derive_topic_config reads), and create_topics by one that refuses:
# bench_peer.py creates every topic this app needs (`--list-topics` names them) in the mock beforehand.
# Changelog topics are off (`use_changelog_topics=False`): they would need creating too, and the benchmark never
# restarts the app, so its RocksDB state alone is enough.

_LISTED: dict[str, int] = {}  # --list-topics: topics the app asked to create, name -> partitions
_LIST_MODE = False


def _inspect_topics(self: Any, topic_names: list[str], timeout: float = 30) -> dict[str, TopicConfig | None]:
    cluster = self.list_topics(timeout=timeout)
    configs: dict[str, TopicConfig | None] = {}
    for name in topic_names:
        if name in cluster:
            partitions = len(cluster[name].partitions)
        elif name in _LISTED:
            partitions = _LISTED[name]
        else:
            configs[name] = None
            continue
        configs[name] = TopicConfig(num_partitions=partitions, replication_factor=1,
                                    extra_config={"retention.ms": "-1", "retention.bytes": "-1"})
    return configs


def _create_topics(self: Any, topics: list[Any], timeout: float = 30, finalize_timeout: float = 60) -> None:
    existing = self.list_topics(timeout=timeout)
    missing = [topic for topic in topics if topic.name not in existing]
    if not missing:
        return
    if _LIST_MODE:
        for topic in missing:
            config = topic.create_config
            _LISTED[topic.name] = config.num_partitions if config is not None and config.num_partitions else 1
        return
    raise SystemExit(f"peer app: topics missing on the mock cluster (create them first): "
                     f"{', '.join(topic.name for topic in missing)}")


quix_admin.TopicAdmin.inspect_topics = _inspect_topics
quix_admin.TopicAdmin.create_topics = _create_topics


# -- the logic ----------------------------------------------------------------------------------------------


def event_ms(ts: Any) -> int:
    """The contract's `ts`: epoch milliseconds or RFC 3339 (as omnitrigger's parse_event_time, minus validation)."""
    if type(ts) is int:
        return ts
    return int(datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp() * 1000)


def timestamp_of(value: Any, _headers: Any, kafka_ts: int, _ts_type: Any) -> int:
    """Event time from the payload, as omnitrigger uses it (not the Kafka timestamp)."""
    try:
        return event_ms(value["ts"])
    except (KeyError, TypeError, ValueError):
        return kafka_ts


class Counts:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount


def build(app: Application, args: argparse.Namespace, counts: Counts) -> tuple[set[str], str | None]:
    """Define the dataframes; returns (input topic names, repartition topic name or None).

    With one-partition input topics `group_by` re-keys in place (quixstreams' single-partition shortcut) and
    there is no repartition topic."""
    gap_ms = int(args.cart_after_s * 1000)
    web_topic = app.topic(args.web_topic, key_deserializer="str", value_deserializer="json",
                          timestamp_extractor=timestamp_of)
    receipts_topic = app.topic(args.receipts_topic, key_deserializer="str", value_deserializer="json",
                               timestamp_extractor=timestamp_of)

    def web_new(event: dict[str, Any], state: Any) -> bool:
        counts.add("web.events")
        event_id = event.get("event_id")
        if state.get(event_id) is not None:
            counts.add("duplicates.web.events")
            return False
        state.set(event_id, 1)
        return True

    def receipt_new(receipt: dict[str, Any], state: Any) -> bool:
        counts.add("pos.receipts")
        key = receipt_hash(receipt.get("terminal_id"), receipt.get("receipt_no"), event_ms(receipt.get("ts"))).hex()
        if state.get(key) is not None:
            counts.add("duplicates.pos.receipts")
            return False
        state.set(key, 1)
        return True

    def web_actions(event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind not in ("add_to_cart", "remove_from_cart", "purchase"):
            return []
        ids = event.get("ids") or {}
        customer = ids.get("device_id") or ids.get("cookie_id") or ids.get("auth_id")
        if not customer:
            return []
        ts = event_ms(event["ts"])
        if kind == "purchase":
            products = dict.fromkeys(item["product_id"] for item in event.get("items") or [])
            return [{"c": customer, "p": product, "add": False, "ts": ts, "id": event["event_id"]}
                    for product in products]
        return [{"c": customer, "p": event["product_id"], "add": kind == "add_to_cart", "ts": ts,
                 "id": event["event_id"]}]

    def receipt_actions(receipt: dict[str, Any]) -> list[dict[str, Any]]:
        ids = receipt.get("ids") or {}
        customer = ids.get("loyalty_id") or ids.get("phone")
        if not customer:
            return []
        ts = event_ms(receipt["ts"])
        evidence = f"{receipt['terminal_id']}/{receipt['receipt_no']}"
        return [{"c": customer, "p": product, "add": False, "ts": ts, "id": evidence}
                for product in dict.fromkeys(item["product_id"] for item in receipt.get("items") or [])]

    def rekeyed(action: dict[str, Any]) -> None:
        counts.add("cart_actions_rekeyed")

    web = app.dataframe(web_topic).filter(web_new, stateful=True)
    receipts = app.dataframe(receipts_topic).filter(receipt_new, stateful=True)
    if args.dedup_only:
        return {args.web_topic, args.receipts_topic}, None
    web = web.apply(web_actions, expand=True)
    receipts = receipts.apply(receipt_actions, expand=True)
    actions = web.concat(receipts).update(rekeyed)
    carts = actions.group_by(lambda action: f"{action['c']}\x1f{action['p']}", name="cart")

    # The session's aggregate: the latest add (the pending deadline's start), the latest cancellation, evidence.
    def initializer(action: dict[str, Any]) -> dict[str, Any]:
        if action["add"]:
            return {"add": action["ts"], "cancel": None, "evidence": [action["id"]], "c": action["c"], "p": action["p"]}
        return {"add": None, "cancel": action["ts"], "evidence": [], "c": action["c"], "p": action["p"]}

    def reducer(aggregate: dict[str, Any], action: dict[str, Any]) -> dict[str, Any]:
        ts = action["ts"]
        if action["add"]:
            if aggregate["add"] is None or ts >= aggregate["add"]:
                aggregate["add"] = ts
            aggregate["evidence"] = aggregate["evidence"][-9:] + [action["id"]]
        elif aggregate["cancel"] is None or ts > aggregate["cancel"]:
            aggregate["cancel"] = ts
        return aggregate

    def merger(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
        adds = [ts for ts in (first["add"], second["add"]) if ts is not None]
        cancels = [ts for ts in (first["cancel"], second["cancel"]) if ts is not None]
        return {"add": max(adds) if adds else None, "cancel": max(cancels) if cancels else None,
                "evidence": (first["evidence"] + second["evidence"])[-10:], "c": first["c"], "p": first["p"]}

    def late(*_args: Any, **_kwargs: Any) -> bool:
        counts.add("late_cart_actions")
        return False  # counted, not logged

    def fired(window: dict[str, Any]) -> bool:
        session = window["value"]
        return session["add"] is not None and (session["cancel"] is None or session["add"] > session["cancel"])

    def trigger(window: dict[str, Any]) -> dict[str, Any]:
        session = window["value"]
        counts.add("triggers")
        return {"rule": "cart_abandoned", "customer": session["c"], "product": session["p"],
                "deadline_ms": session["add"] + gap_ms, "evidence": session["evidence"]}

    closed = (carts.session_window(inactivity_gap_ms=gap_ms, grace_ms=int(args.lateness_s * 1000), name="cart",
                                   on_late=late)
              .reduce(reducer=reducer, initializer=initializer, merger=merger)
              .final(closing_strategy="partition"))
    output_topic = app.topic(args.output_topic, key_serializer="str", value_serializer="json")
    closed.filter(fired).apply(trigger).to_topic(output_topic)
    repartition = list(app._topic_manager.repartition_topics)  # noqa: SLF001
    return {args.web_topic, args.receipts_topic}, repartition[0] if repartition else None


def peak_rss_mib() -> float:
    """VmHWM of this process (ru_maxrss would include the parent's RSS, inherited through vfork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    global _LIST_MODE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--web-topic", default="web.events")
    parser.add_argument("--receipts-topic", default="pos.receipts")
    parser.add_argument("--output-topic", default="peer.cart_abandoned")
    parser.add_argument("--consumer-group", default="peer-quixstreams")
    parser.add_argument("--state-dir", type=Path, default=Path("peer-state"))
    parser.add_argument("--cart-after-s", type=float, default=3600.0, help="omnitrigger's [rules] cart_abandoned_after")
    parser.add_argument("--lateness-s", type=float, default=10.0, help="omnitrigger's [rules] allowed_lateness")
    parser.add_argument("--expect", type=int, default=0, help="input messages to process before stopping")
    parser.add_argument("--summary", type=Path, help="write the JSON summary here")
    parser.add_argument("--dedup-only", action="store_true",
                        help="only the two dedup filters, no cart logic and no output: the peer's floor")
    parser.add_argument("--list-topics", action="store_true",
                        help="print the topics the app needs created ({name: partitions}) and exit")
    args = parser.parse_args()
    _LIST_MODE = args.list_topics
    if not args.list_topics and args.expect < 1:
        parser.error("--expect must be at least 1")
    started = time.time()

    # fetch.wait.max.ms as omnitrigger sets it ([kafka] fetch_wait); the rest are quixstreams' defaults.
    app = Application(broker_address=args.brokers, consumer_group=args.consumer_group, auto_offset_reset="earliest",
                      state_dir=str(args.state_dir), use_changelog_topics=False, loglevel="WARNING",
                      consumer_extra_config={"fetch.wait.max.ms": 5},
                      on_message_processed=lambda topic, partition, offset: on_processed(topic))
    counts = Counts()
    progress = {"inputs": 0, "repartitioned": 0, "first": 0.0, "done": 0.0}
    inputs, repartition = build(app, args, counts)
    if args.list_topics:
        print(orjson.dumps({"needs": _LISTED, "repartition": repartition, "output": args.output_topic}).decode())
        return 0

    def on_processed(topic: str) -> None:
        if topic in inputs:
            progress["inputs"] += 1
            if not progress["first"]:
                progress["first"] = time.time()
        elif topic == repartition:
            progress["repartitioned"] += 1
        if progress["inputs"] >= args.expect and (
                repartition is None or progress["repartitioned"] >= counts.values.get("cart_actions_rekeyed", 0)):
            if not progress["done"]:
                progress["done"] = time.time()
                app.stop()

    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app.run()
    finished = time.time()
    summary = {"counts": counts.values, "inputs_processed": progress["inputs"],
               "repartition_processed": progress["repartitioned"], "started": started, "first": progress["first"],
               "done": progress["done"], "finished": finished,
               "peak_rss_mib": peak_rss_mib()}
    text = orjson.dumps(summary).decode()
    if args.summary is not None:
        args.summary.write_text(text)
    print(text, flush=True)
    return 0 if progress["done"] else 1


if __name__ == "__main__":
    sys.exit(main())
