"""Identity resolution alone: events/s and memory for a graph of 1M or 10M identifiers.

    python benchmarks/bench_identity.py --identifiers 1000000
    python benchmarks/bench_identity.py --identifiers 10000000

A synthetic population (customers with one or two devices, a cookie for a
third of them, an account for half, a loyalty card for a quarter, an email
for a fifth; about 2.4 identifiers a customer) is built in two phases,
through the Identity and History operators over RocksDB, committing every
1,000 events as an epoch of the flow would:
  build:  one event per customer carrying all its identifiers (a CRM load);
  steady: random events of known customers, the way traffic looks once the
          graph exists: an app view by device, a till receipt by loyalty
          card or phone, a login on a second device that merges two
          customers.
Events are generated batch by batch outside the timed calls, so the figures
are the operators' own. Peak RSS is the process's (bounded by RocksDB's
caches, not by the number of customers); disk is the RocksDB folder.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from omnitrigger.config import Config
from omnitrigger.operators import History, Identity
from omnitrigger.operators.identity import identities
from omnitrigger.records import Event
from omnitrigger.state import RocksDBStore, ShardState

from results import Figures

T0 = 1_764_000_000_000
BATCH = 1000


def identifiers_of(customer: int) -> dict[str, str]:
    ids = {"device_id": f"dev-{customer:09d}-a"}
    if customer % 5 == 1:
        ids["device_id_2"] = f"dev-{customer:09d}-b"
    if customer % 3 == 0:
        ids["cookie_id"] = f"ck-{customer:09d}"
    if customer % 2 == 0:
        ids["auth_id"] = f"user-{customer:09d}"
    if customer % 4 == 0:
        ids["loyalty_id"] = f"L{customer:09d}"
    if customer % 5 == 0:
        ids["email"] = f"{customer * 2654435761 % 2**64:032x}"  # the shape of a hashed email
    return ids


def build_events(customers: int) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for customer in range(customers):
        ids = identifiers_of(customer)
        ids.pop("device_id_2", None)
        batch.append(Event(customer, "identity.links", 0, customer, T0 + customer,
                           {"event_id": f"crm-{customer}", "ts": T0 + customer, "source": "crm", "ids": ids}))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def steady_events(customers: int, count: int, first_seq: int, seed: int = 3) -> Iterator[list[Event]]:
    rng = random.Random(seed)
    batch: list[Event] = []
    for n in range(count):
        seq = first_seq + n
        ts = T0 + customers + n * 10
        customer = rng.randrange(customers)
        ids = identifiers_of(customer)
        kind = n % 10
        if kind < 7:
            body: dict[str, Any] = {"event_id": f"v{seq}", "type": "view_item", "ts": ts, "channel": "app",
                                    "product_id": str(rng.randrange(50_000)), "ids": {"device_id": ids["device_id"]}}
            topic = "web.events"
        elif kind < 9:
            card = {"loyalty_id": ids["loyalty_id"]} if "loyalty_id" in ids else {"device_id": ids["device_id"]}
            body = {"terminal_id": "T1", "receipt_no": str(seq), "ts": ts, "store_id": "S1",
                    "items": [{"product_id": "1", "qty": 1, "price": 1.0}], "ids": card}
            topic = "pos.receipts"
        else:
            second = ids.get("device_id_2", f"dev-new-{seq}")
            body = {"event_id": f"l{seq}", "ts": ts, "source": "login",
                    "ids": {"device_id": second, "auth_id": ids.get("auth_id", f"user-{customer:09d}")}}
            topic = "identity.links"
        batch.append(Event(seq, topic, 0, seq, ts, body))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def run(events: Iterator[list[Event]], identity: Identity, history: History,
        states: list[ShardState]) -> tuple[int, float]:
    done, seconds = 0, 0.0
    for batch in events:
        started = time.perf_counter()
        passed = identity.on_events(batch).events
        history.on_events(passed)
        for state in states:
            state.commit()
        seconds += time.perf_counter() - started
        done += len(batch)
    return done, seconds


def folder_mib(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identifiers", type=int, default=1_000_000, help="size of the graph to build")
    parser.add_argument("--steady-events", type=int, default=500_000)
    parser.add_argument("--json", type=Path, help="also write the headline figures here (run_all.py)")
    args = parser.parse_args()
    figures = Figures("bench_identity", f"python benchmarks/bench_identity.py --identifiers {args.identifiers}")
    customers = int(args.identifiers / 2.4)
    with tempfile.TemporaryDirectory(prefix="omnitrigger-bench-identity-") as work:
        store = RocksDBStore(Path(work) / "db")
        config = Config()
        states = [ShardState(store, "identity", 0), ShardState(store, "history", 0)]
        identity, history = Identity(states[0], config), History(states[1], config)
        done, seconds = run(build_events(customers), identity, history, states)
        count = store.approximate_keys()
        print(f"build: {done:,} customers in {seconds:.1f} s: {done / seconds:,.0f} events/s "
              f"({seconds / done * 1e6:.1f} µs/event); RocksDB keys (estimate) {count:,}")
        done, seconds = run(steady_events(customers, args.steady_events, customers), identity, history, states)
        figures.add(f"identity + history alone, {args.identifiers:,} identifiers, steady traffic",
                    round(done / seconds), "events/s")
        print(f"steady traffic over the graph: {done:,} events in {seconds:.1f} s: {done / seconds:,.0f} events/s "
              f"({seconds / done * 1e6:.1f} µs/event)")
        print(f"peak RSS before the end-of-input dump: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
        started = time.perf_counter()
        identifiers = sum(1 for _ in identities(states[0]))
        print(f"identities dump (streamed from RocksDB): {identifiers:,} identifiers in {time.perf_counter() - started:.1f} s")
        print(f"peak RSS after the dump: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB; "
              f"RocksDB folder: {folder_mib(Path(work) / 'db'):,.0f} MiB")
        store.close()
    figures.add(f"identity + history alone, {args.identifiers:,} identifiers: peak RSS",
                round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "MiB")
    figures.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
