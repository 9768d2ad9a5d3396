"""Memory with a large state: 10M customers, 20M identifiers and 1M pending deadlines in under 2 GiB.

    python benchmarks/bench_memory.py                                    # quick: 1M / 2M / 100k
    python benchmarks/bench_memory.py --customers 10000000 --identifiers 20000000 --deadlines 1000000 \\
        --tmp DIR                 # about 15 min to populate (2.6 GiB of RocksDB), 4 min to measure

Three processes, so that each figure belongs to what it says:

1. **populate** (a child process; its memory is not the one measured). The state is bulk-loaded
   into a new RocksDB folder in exactly the format the flow keeps, written through the production
   code so it cannot drift: the operators' `ShardState` (key layout, 8-byte expiry, expiry index),
   `Identity._point` for each identifier (`i` + type code + value -> [customer, last seen],
   expiring after `[identity] retention`), the customer id formula and the `c` + customer record
   `{"first", "ids"}` of `Identity._customer_of`/`_save` (the load checks that Identity resolves a
   loaded device to the expected customer, and the count at the end reads everything back through
   `ShardState`); the deadlines are
   real events (a consent, then a view or an add-to-cart) run through `History.on_events`
   (journals, `h` keys) and the `Rules` operator of the customer's shard
   (`router.shard_of` over `[rules] shards`), which writes the `A`/`B` pending records, the `V`
   views, the `C` consents and the `T` timer keys itself; finally one event at the load's "now"
   goes through Dedup, Identity, Visits, History and the clock, and the watermark through every
   rules shard, so every operator's clock metadata is its own. Writes go straight to RocksDB as
   part of the committed state (no generation, as `bench_restart.py` does; the flow would take
   about 17 minutes for 10M customers at its 10k events/s), with automatic compaction off, then
   one full compaction: the state the measured process opens is a compacted LSM tree.
   Customer n has a device id and, in rotation, more identifiers (account, cookie, loyalty card,
   hashed email or phone) so that the identifiers add up to `--identifiers`; its last-seen time is
   spread over the 300 days before "now". Deadline j belongs to customer j * customers / deadlines
   (30% carts due within the next hour, 70% browses due within the next 24 hours; 70% of those
   customers granted push consent).
2. **measure** (a fresh process): opens the state the way the flow does, through
   `flows.stage.sequencer_builder` (Dedup, Identity, Visits, History, EventClock on one shard) and
   `rules_builder` for the 16 rules shards, resumed at the committed generation (so each rules
   shard rebuilds its timer queue from the `T` keys, as after a restart), with the production
   `Config` and `RocksDBStore`. Then steady traffic of known and new customers, generated outside
   the timed calls, through the sequencer and, routed, the rules shards, committing every batch as
   an epoch would (`snapshot()` of every shard): views, add-to-carts, online and till purchases
   (half of them of a loaded pending deadline, so they cancel it), removes, logins that link or
   merge two customers, consents, store pings, and event time moving `--steady-hours` so the
   watermark fires the deadlines due meanwhile (by default 3 h: the loaded carts and an eighth of
   the browses, about two trigger decisions an event, far more than live traffic has, so the
   events/s is a floor; its split says where the time goes). It prints the state sizes, the time to open,
   RSS after the open, events/s of the steady phase, peak RSS (`ru_maxrss` and `VmHWM`), what is
   held in memory (timers, state caches, RocksDB's own usage) and the RocksDB options, then
   counts the state by scanning it (a check that the operators read what was loaded).
3. this process runs both, checks disk space first and removes the folder afterwards unless
   `--work DIR` is given (then an existing populated folder with the same sizes is reused). The
   measured process works on a copy of the populated folder (table files hard-linked), so a kept
   folder measures the same state every time.

Bytewax itself is not in the measured process: it snapshots only the fixed shard keys (a tuple of
generations each), so its memory does not depend on the state (see `bench_restart.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import orjson

REPO = Path(__file__).resolve().parents[1]
STORES_CSV = REPO / "deploy" / "stores.csv"
T_LOAD = 1_764_000_000_000  # the loaded state's "now" (2025-11-24T16:00Z)
HOUR = 3_600_000
DAY = 24 * HOUR
PRODUCTS = 50_000
TARGET_BYTES = 2 << 30
OTHER_KINDS = ("auth_id", "cookie_id", "loyalty_id", "email", "phone")
MANIFEST = "bench_memory.json"


# -- the synthetic population (both child processes derive it from the sizes) -------------------------

def identifiers_of(n: int, ratio: float) -> list[tuple[str, str]]:
    """Customer n's identifiers: a device id, then more in rotation so the total is `ratio` a customer."""
    count = min(1 + len(OTHER_KINDS), int((n + 1) * ratio) - int(n * ratio))
    ids = [("device_id", f"d{n:010d}")]
    for k in range(count - 1):
        kind = OTHER_KINDS[(n + k) % len(OTHER_KINDS)]
        if kind in ("email", "phone"):
            value = f"{(n * 2654435761 + (kind == 'phone')) % 2**128:032x}"  # the shape of a hashed value
        else:
            value = f"{kind[0]}{n:010d}"
        ids.append((kind, value))
    return ids


def deadline_of(j: int, customers: int, deadlines: int) -> tuple[int, str, bool, int]:
    """(customer n, product, is a cart, set time) of loaded deadline j."""
    if deadlines <= customers:
        n, product = j * (customers // deadlines), str(j % PRODUCTS)
    else:
        n, product = j % customers, str(PRODUCTS + j // customers)
    rng = random.Random(j)
    cart = j % 10 < 3
    set_ms = T_LOAD - (rng.randrange(1, HOUR) if cart else rng.randrange(1, DAY))
    return n, product, cart, set_ms


# -- memory -------------------------------------------------------------------------------------------

def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in MiB."""
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0]) / 1024
    return out


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder_mib(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 2**20


# -- phase 1: populate --------------------------------------------------------------------------------

def populate(db: Path, customers: int, identifiers: int, deadlines: int) -> None:
    import orjson
    import xxhash

    from omnitrigger.config import Config
    from omnitrigger.operators import Dedup, EventClock, History, Identity, Rules, Visits
    from omnitrigger.operators.clock import watermark_event
    from omnitrigger.operators.identity import IDENTIFIER_TYPES
    from omnitrigger.operators.router import shard_key, shard_of
    from omnitrigger.records import Event
    from omnitrigger.state import RocksDBStore, ShardState

    config = Config(stores_file=str(STORES_CSV))
    ratio = identifiers / customers
    started = time.perf_counter()
    # One store a shard key, as the flow keeps them (db/sequencer, db/rules-0000, ...).
    store = RocksDBStore(db / "sequencer", bulk_load=True)
    rules_stores = [RocksDBStore(db / shard_key(shard), bulk_load=True) for shard in range(config.rule_shards)]
    lateness_ms = int(config.rules_lateness_s * 1000)

    def flush(*states: ShardState) -> None:
        for state in states:
            state.bulk_write()  # part of the committed state, no new generation

    # Rules and history first: their operators read as they write, cheaper while the store is small.
    history_state = ShardState(store, History.name, 0)
    history = History(history_state, config)
    rules_states = [ShardState(rules_stores[shard], Rules.name, shard) for shard in range(config.rule_shards)]
    rules = [Rules(state, config) for state in rules_states]
    start_watermark = T_LOAD - DAY - HOUR
    for shard_rules in rules:
        shard_rules.on_events([watermark_event(0, start_watermark)])
    routed: dict[int, list[Event]] = {}
    seq = 0
    for j in range(deadlines):
        n, product, cart, set_ms = deadline_of(j, customers, deadlines)
        customer = customer_id(n, identifiers_of(n, ratio), xxhash)
        device = f"d{n:010d}"
        events = []
        if j % 10 < 7:
            events.append(Event(seq, "consent.changes", 0, seq, set_ms - 2, {
                "event_id": f"c{j}", "ts": set_ms - 2, "channel": "push", "status": "granted",
                "ids": {"device_id": device}}, customer))
        events.append(Event(seq + 1, "web.events", 0, seq + 1, set_ms, {
            "event_id": f"v{j}", "ts": set_ms, "type": "add_to_cart" if cart else "view_item", "channel": "app",
            "product_id": product, "ids": {"device_id": device}}, customer))
        seq += 2
        history.on_events(events)
        routed.setdefault(shard_of(customer, config.rule_shards), []).extend(events)
        if (j + 1) % 50_000 == 0 or j + 1 == deadlines:
            for shard, batch in routed.items():
                rules[shard].on_events(batch)
            routed.clear()
            flush(history_state, *rules_states)
    print(f"  deadlines: {deadlines:,} written in {time.perf_counter() - started:.0f} s", flush=True)

    # Identity: every identifier and customer record, in the operator's format, without reads.
    identity_state = ShardState(store, Identity.name, 0)
    identity = Identity(identity_state, config)
    strength = {kind: rank for rank, kind in enumerate(IDENTIFIER_TYPES)}
    rng = random.Random(1)
    for n in range(customers):
        ids = sorted(identifiers_of(n, ratio), key=lambda identifier: strength[identifier[0]])
        customer = customer_id(n, ids, xxhash)
        seen = T_LOAD - rng.randrange(300 * DAY)
        for identifier in ids:
            identity._point(identifier, customer, seen)  # i <code> <value> -> [customer, last seen]
        # What Identity._customer_of and _save write for a customer first seen at input position n.
        identity_state.put(b"c" + customer.encode(), orjson.dumps({"first": n, "ids": [list(i) for i in ids]}),
                           seen + identity.retention_ms)
        if (n + 1) % 200_000 == 0:
            flush(identity_state)
            if (n + 1) % 2_000_000 == 0:
                print(f"  customers: {n + 1:,} written ({time.perf_counter() - started:.0f} s)", flush=True)
    flush(identity_state)

    # One event at "now" through the sequencer's operators and the watermark through every rules shard:
    # each operator stores its own clock.
    sequencer = [Dedup(ShardState(store, Dedup.name, 0), config), identity,
                 Visits(ShardState(store, Visits.name, 0), config), history,
                 EventClock(ShardState(store, EventClock.name, 0), config)]
    events = [Event(seq, "web.events", 0, seq, T_LOAD, {"event_id": "load", "ts": T_LOAD, "type": "view_item",
                                                          "channel": "app", "product_id": "0",
                                                          "ids": {"device_id": f"d{0:010d}"}})]
    for operator in sequencer:
        events = operator.on_events(events).events
    assert events[-1].customer == customer_id(0, identifiers_of(0, ratio), xxhash), "identity format drifted"
    flush(*(operator.state for operator in sequencer))
    for shard_rules in rules:
        shard_rules.on_events([watermark_event(seq, T_LOAD - lateness_ms)])
    flush(*rules_states)
    loaded = time.perf_counter() - started
    for each in (store, *rules_stores):
        each.compact()
        each.close()
    print(f"  populated in {loaded:.0f} s, compacted in {time.perf_counter() - started - loaded:.0f} s; "
          f"RocksDB folder {folder_mib(db):,.0f} MiB; populate peak RSS {maxrss_mib():,.0f} MiB", flush=True)


def customer_id(n: int, ids: list[tuple[str, str]], xxhash: Any) -> str:
    """Identity._customer_of's id for a customer created by its strongest identifier at input position n."""
    from omnitrigger.operators.identity import IDENTIFIER_TYPES

    anchor = min(ids, key=lambda identifier: IDENTIFIER_TYPES.index(identifier[0]))
    return "cus_" + xxhash.xxh3_128_hexdigest(f"{anchor[0]}\x1f{anchor[1]}\x1f{n}".encode())[:24]


# -- phase 2: measure ---------------------------------------------------------------------------------

def steady_batches(customers: int, identifiers: int, deadlines: int, count: int, hours: float, batch_size: int,
                   seed: int = 5) -> Iterator[list[Any]]:
    from omnitrigger.records import Event

    ratio = identifiers / customers
    rng = random.Random(seed)
    step = hours * HOUR / count
    seq0 = 10 * (customers + deadlines)
    batch: list[Any] = []
    for i in range(count):
        seq = seq0 + i
        ts = T_LOAD + 1 + int(i * step)
        roll = rng.random()
        n = rng.randrange(customers)
        ids = dict(identifiers_of(n, ratio))
        device = {"device_id": ids["device_id"]}
        web = {"event_id": f"s{seq}", "ts": ts, "channel": "app"}
        if roll < 0.45:  # a known customer views a product
            body = {**web, "type": "view_item", "product_id": str(rng.randrange(PRODUCTS)), "ids": device}
            topic = "web.events"
        elif roll < 0.57:
            body = {**web, "type": "add_to_cart", "product_id": str(rng.randrange(PRODUCTS)), "ids": device}
            topic = "web.events"
        elif roll < 0.67:  # a purchase, half of them of a loaded pending deadline's product
            product = str(rng.randrange(PRODUCTS))
            if roll < 0.62 and deadlines:
                n, product, _, _ = deadline_of(rng.randrange(deadlines), customers, deadlines)
                ids = dict(identifiers_of(n, ratio))
            items = [{"product_id": product, "qty": 1, "price": 9.9}]
            if "loyalty_id" in ids and roll < 0.645:
                body = {"terminal_id": "T1", "receipt_no": str(seq), "ts": ts, "store_id": "S001", "items": items,
                        "ids": {"loyalty_id": ids["loyalty_id"]}}
                topic = "pos.receipts"
            else:
                body = {**web, "type": "purchase", "items": items, "ids": {"device_id": ids["device_id"]}}
                topic = "web.events"
        elif roll < 0.70 and deadlines:  # remove a loaded cart's product
            n, product, _, _ = deadline_of(rng.randrange(deadlines), customers, deadlines)
            body = {**web, "type": "remove_from_cart", "product_id": product,
                    "ids": {"device_id": f"d{n:010d}"}}
            topic = "web.events"
        elif roll < 0.80:  # a new visitor
            body = {**web, "type": "view_item", "product_id": str(rng.randrange(PRODUCTS)),
                    "ids": {"device_id": f"new-{seq}"}}
            topic = "web.events"
        elif roll < 0.85:  # a login: a second device, or another customer's device (a merge, or refused)
            other = f"new-{seq}" if roll < 0.83 else f"d{rng.randrange(customers):010d}"
            body = {"event_id": f"l{seq}", "ts": ts, "source": "login", "confidence": 1.0,
                    "ids": {"auth_id": ids.get("auth_id", f"u{n:010d}"), "device_id": other}}
            topic = "identity.links"
        elif roll < 0.88:
            body = {"event_id": f"c{seq}", "ts": ts, "channel": rng.choice(("push", "email")),
                    "status": "granted" if roll < 0.87 else "revoked", "ids": device}
            topic = "consent.changes"
        else:  # store pings: a few shoppers at a time dwell at Kamppi
            shopper = (ts // (10 * 60_000)) * 20 + rng.randrange(20)
            body = {"event_id": f"g{seq}", "ts": ts, "lat": 60.1690 + rng.uniform(-5e-4, 5e-4),
                    "lon": 24.9320 + rng.uniform(-5e-4, 5e-4), "accuracy_m": 20.0, "source": "gps",
                    "ids": {"device_id": f"d{shopper % customers:010d}"}}
            topic = "geo.pings"
        batch.append(Event(seq, topic, 0, seq, ts, body))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def measure(db: Path, customers: int, identifiers: int, deadlines: int, args: argparse.Namespace) -> int:
    from omnitrigger.config import Config
    from omnitrigger.flows.stage import rules_builder, sequencer_builder
    from omnitrigger.operators import Dedup, EventClock, History, Identity, Visits
    from omnitrigger.records import SUPPRESSED, TRIGGERS, Merge
    from omnitrigger.state import close_all_stores, open_store

    base = proc_status()
    config = Config(stores_file=str(STORES_CSV))
    factories = [Dedup, Identity, Visits, History, EventClock]
    started = time.perf_counter()
    store = open_store(db / "sequencer")
    sequencer = sequencer_builder(db / "sequencer", factories, config, False, True)(None)
    shards = [rules_builder(db, config)((shard, 0)) for shard in range(config.rule_shards)]
    open_s = time.perf_counter() - started
    after_open = proc_status()
    rules = [logic.rules for logic in shards]
    timers = sum(r.timers.in_memory_now() for r in rules)
    print(f"state: {customers:,} customers, {identifiers:,} identifiers, {deadlines:,} pending deadlines "
          f"over {config.rule_shards} rules shards; RocksDB folder {folder_mib(db):,.0f} MiB")
    print(f"open (RocksDB, sequencer and {config.rule_shards} rules shards resumed, timer queues rebuilt): "
          f"{open_s:.2f} s; RSS {base['VmRSS']:,.0f} MiB after imports, {after_open['VmRSS']:,.0f} MiB after the open "
          f"(peak so far {after_open['VmHWM']:,.0f} MiB); timers in memory: {timers:,} "
          f"({timer_bytes(rules) / 2**20:,.1f} MiB)", flush=True)

    counts: dict[str, int] = {"events": 0, "triggers": 0, "suppressed": 0, "merges": 0, "fired": 0}
    reasons: dict[str, int] = {}
    seconds = 0.0
    split = {"sequencer": 0.0, "rules": 0.0, "commits": 0.0}
    most_timers = 0
    for batch in steady_batches(customers, identifiers, deadlines, args.steady_events, args.steady_hours,
                                args.batch_size):
        began = time.perf_counter()
        items, _ = sequencer.on_batch([batch])
        routed = time.perf_counter()
        for item in items:
            if item[0] != "rules":
                continue
            shard, events = item[2]
            counts["merges"] += sum(1 for event in events if type(event) is Merge)
            for emitted in (shards[shard].on_batch([(shard, events)])[0] or [[]])[0]:
                if emitted.stream == TRIGGERS:
                    counts["triggers"] += 1
                elif emitted.stream == SUPPRESSED:
                    counts["suppressed"] += 1
                    reasons[emitted.record["reason"]] = reasons.get(emitted.record["reason"], 0) + 1
        ruled = time.perf_counter()
        sequencer.snapshot()
        for logic in shards:
            logic.snapshot()
        done = time.perf_counter()
        split["sequencer"] += routed - began
        split["rules"] += ruled - routed
        split["commits"] += done - ruled
        seconds += done - began
        counts["events"] += len(batch)
        most_timers = max(most_timers, sum(r.timers.in_memory_now() for r in rules))
    steady = proc_status()
    peak = max(maxrss_mib(), steady["VmHWM"])
    print(f"steady traffic: {counts['events']:,} events over {args.steady_hours:g} h of event time in {seconds:.1f} s: "
          f"{counts['events'] / seconds:,.0f} events/s ({seconds / counts['events'] * 1e6:.0f} µs/event); "
          f"{counts['triggers']:,} triggers, {counts['suppressed']:,} suppressed "
          f"({', '.join(f'{k} {v:,}' for k, v in sorted(reasons.items()))}), {counts['merges']:,} merges routed")
    decisions = counts["triggers"] + sum(n for reason, n in reasons.items()
                                         if reason not in ("purchased", "removed_from_cart", "late_event"))
    print("  µs per event: " + ", ".join(f"{name} {value / counts['events'] * 1e6:.0f}" for name, value in split.items())
          + f" (the rules' share includes {decisions:,} trigger decisions: deadlines fired and offers)")
    print(f"memory: RSS now {steady['VmRSS']:,.0f} MiB (anon {steady['RssAnon']:,.0f}, file {steady['RssFile']:,.0f}); "
          f"peak ru_maxrss {maxrss_mib():,.0f} MiB, VmHWM {steady['VmHWM']:,.0f} MiB")
    timers = sum(r.timers.in_memory_now() for r in rules)
    states = [*sequencer.states, *(r.state for r in rules)]
    cached = sum(len(state._cache) for state in states)
    cache_mib = sum(dict_bytes(state._cache) for state in states) / 2**20
    full_mib = cache_mib / max(cached, 1) * config.state_cache_entries * len(states)
    print(f"  held in memory: timers {timers:,} ({timer_bytes(rules) / 2**20:,.1f} MiB; at most {most_timers:,} "
          f"at a batch end, bound {getattr(rules[0], 'timers_in_memory', 'none')} a shard); state caches {cached:,} entries, "
          f"{cache_mib:,.0f} MiB, over {len(states)} shard states (at most {config.state_cache_entries:,} each: about "
          f"{full_mib:,.0f} MiB if all were full)")
    print(f"  RocksDB: {rocksdb_memory(store)}")
    print(f"  RocksDB options: {rocksdb_options(store)}")
    verdict = "MET" if peak * 2**20 < TARGET_BYTES else "NOT MET"
    print(f"target < 2 GiB resident: {verdict} (peak {peak:,.0f} MiB = {peak / 1024:.2f} GiB)", flush=True)
    from results import Figures

    figures = Figures("bench_memory", f"python benchmarks/bench_memory.py --customers {customers} "
                                      f"--identifiers {identifiers} --deadlines {deadlines}")
    state_size = f"{customers:,} customers, {identifiers:,} identifiers, {deadlines:,} pending deadlines"
    figures.add(f"peak RSS with {state_size} in state (target < 2 GiB)", round(peak), "MiB")
    figures.add(f"steady traffic over that state ({seconds / counts['events'] * 1e6:.0f} µs an event)",
                round(counts["events"] / seconds), "events/s")
    figures.write(args.json)
    if not args.no_count:
        count_state(store, config, customers, identifiers)
    close_all_stores()
    return 0 if verdict == "MET" else 1


def timer_bytes(rules: list[Any]) -> int:
    return sum(r.timers.heap_bytes() for r in rules)


def dict_bytes(cache: dict[bytes, bytes | None]) -> int:
    """A dict of bytes to bytes: the table and every key and value object."""
    return sys.getsizeof(cache) + sum(sys.getsizeof(key) + sys.getsizeof(value) for key, value in cache.items())


def rocksdb_memory(store: Any) -> str:
    db = store._db
    names = {"block cache capacity": "rocksdb.block-cache-capacity", "block cache used": "rocksdb.block-cache-usage",
             "pinned": "rocksdb.block-cache-pinned-usage", "memtables": "rocksdb.size-all-mem-tables",
             "table readers (index and filters outside the cache)": "rocksdb.estimate-table-readers-mem"}
    parts = []
    for label, name in names.items():
        value = db.property_int_value(name)
        parts.append(f"{label} {value / 2**20:,.1f} MiB" if value is not None else f"{label} n/a")
    return ", ".join(parts)


def rocksdb_options(store: Any) -> str:
    from omnitrigger.state import rocksdb

    described = getattr(rocksdb, "describe_options", None)
    if described is not None:
        return described()
    return "rocksdict defaults except a 10-bit bloom filter and 1 background job"


def count_state(store: Any, config: Any, customers: int, identifiers: int) -> None:
    """Count what the operators' state holds, through ShardState (a scan of committed state)."""
    from omnitrigger.operators import Identity, Rules
    from omnitrigger.operators.router import shard_key
    from omnitrigger.state import ShardState, open_store

    started = time.perf_counter()
    identity = ShardState(store, Identity.name, 0)
    ids = sum(1 for _ in identity.iter_committed(b"i", b"j", T_LOAD))
    records = sum(1 for _ in identity.iter_committed(b"c", b"d", T_LOAD))
    pending = timers = 0
    for shard in range(config.rule_shards):
        state = ShardState(open_store(store.path.parent / shard_key(shard)), Rules.name, shard)  # the shard's own
        for _, raw in state.iter_committed(b"D", b"D~"):  # the customers' documents (operators/rules/host.py)
            pending += sum(len(section) for name, section in orjson.loads(raw).items() if name in ("A", "B"))
        timers += sum(1 for _ in state.iter_committed(b"T", b"U"))
    print(f"state after the steady phase (counted in {time.perf_counter() - started:.0f} s): {records:,} customers, "
          f"{ids:,} identifiers, {pending:,} pending deadlines, {timers:,} timer keys; peak RSS now "
          f"{maxrss_mib():,.0f} MiB", flush=True)


# -- phase 3: both ------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--identifiers", type=int, default=2_000_000)
    parser.add_argument("--deadlines", type=int, default=100_000)
    parser.add_argument("--steady-events", type=int, default=200_000)
    parser.add_argument("--steady-hours", type=float, default=3.0,
                        help="event time the steady phase covers: carts loaded pending fire within the hour")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the temporary folder goes")
    parser.add_argument("--work", type=Path, help="keep the populated state here, and reuse it if it matches")
    parser.add_argument("--no-count", action="store_true", help="skip the final count of the state")
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    parser.add_argument("--phase", choices=("populate", "measure"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.identifiers / args.customers <= 1 + len(OTHER_KINDS):
        parser.error("--identifiers must be 1 to 6 times --customers")
    sizes = {"customers": args.customers, "identifiers": args.identifiers, "deadlines": args.deadlines}
    if args.phase == "populate":
        populate(args.work / "db", **sizes)
        (args.work / MANIFEST).write_text(json.dumps(sizes))
        return 0
    if args.phase == "measure":
        return measure(args.work / "run", **sizes, args=args)

    work = args.work or Path(tempfile.mkdtemp(prefix="omnitrigger-bench-memory-", dir=args.tmp))
    work.mkdir(parents=True, exist_ok=True)
    try:
        manifest = work / MANIFEST
        child = [sys.executable, __file__, "--work", str(work), *(f"--{k}={v}" for k, v in sizes.items())]
        if manifest.is_file() and json.loads(manifest.read_text()) == sizes:
            print(f"reusing the populated state in {work}", flush=True)
        else:
            shutil.rmtree(work / "db", ignore_errors=True)
            manifest.unlink(missing_ok=True)
            need = 200 * args.customers + 60 * args.identifiers + 1500 * args.deadlines
            free = shutil.disk_usage(work).free
            print(f"populating {work / 'db'} (about {need / 2**30:.1f} GiB needed, {free / 2**30:.0f} GiB free)", flush=True)
            if free < 2 * need:
                raise SystemExit(f"bench_memory: not enough free disk in {work}")
            started = time.perf_counter()
            subprocess.run([*child, "--phase", "populate"], check=True)
            print(f"populate: {time.perf_counter() - started:.0f} s", flush=True)
        # The steady phase changes the state: it runs on a copy (table files hard-linked, RocksDB never
        # rewrites one), so a kept folder can be measured again from the same state.
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        for store in (work / "db").iterdir():  # one RocksDB folder a shard key: sequencer, rules-0000, ...
            (run / store.name).mkdir()
            for file in store.iterdir():
                (os.link if file.suffix == ".sst" else shutil.copy2)(file, run / store.name / file.name)
        measure_args = [f"--steady-events={args.steady_events}", f"--steady-hours={args.steady_hours}",
                        f"--batch-size={args.batch_size}", *(["--no-count"] if args.no_count else []),
                        *([f"--json={args.json.resolve()}"] if args.json else [])]
        return subprocess.run([*child, "--phase", "measure", *measure_args]).returncode
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-bench-key-0123456789")
    sys.exit(main())
