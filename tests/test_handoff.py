"""The sequencer's hand-off to the history stage (operators/handoff.py) loses nothing a later stage reads.

- What it hands on: the topics a later stage reads in full, control records in full, pings cut to what
  visits reads, and of the other records only the one that moved the latest event time, stripped; a
  `Progress` mark at the end.
- It crosses processes as one bytes value (`Handoff.packed`, `pack`), and unpacks to the same records.
- Exactness: visits, the rules shards and the journal get the same items and emit the same records,
  watermarks included, whether the history stage sees everything or only the hand-off (packed, pickled and
  unpacked), for random topics, event times and batch cuts (a property test), and on real data through the
  whole chain (dedup, identity | visits, history, clock, router).
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from omnitrigger.config import Config
from omnitrigger.flows.stage import handed_on_topics, history_operators
from omnitrigger.operators import EventClock, History, OPERATORS, Visits
from omnitrigger.operators.handoff import Handoff, pack, unpack
from omnitrigger.operators.router import ShardRouter
from omnitrigger.operators.rules import broadcast_topics, rule_topics
from omnitrigger.operators.stage_chain import LaterChain
from omnitrigger.operators.visits import GEO_PINGS
from omnitrigger.records import (
    IDENTITY_TOPIC, VISIT_CONFIRMED, Emitted, Event, Heartbeat, Item, Merge, Ping, Progress, Watermark,
)
from omnitrigger.state import RocksDBStore, ShardState
from geolife import write_stores_csv
from recordings import omnichannel_recording
from test_conformance import read_all

CONFIG = Config()
FULL = handed_on_topics(CONFIG)


def ping(seq: int, ts_ms: int) -> Event:
    return Event(seq, "geo.pings", 0, seq, ts_ms, {"event_id": f"e{seq}", "ts": "...", "ids": {"device_id": "d1"},
                                                   "lat": 1.0, "lon": 2.0, "accuracy_m": 5.0, "source": "gps"}, "c-1")


def cut(event: Event) -> Ping:
    """A ping as the hand-off passes it: what visits reads."""
    body = event.body
    return Ping(event.seq, event.topic, event.partition, event.offset, event.ts_ms, body["ids"]["device_id"],
                body["source"], body["accuracy_m"], body["lat"], body["lon"], event.customer)


def handed(handoff: Handoff, events: list[Item], last_seq: int) -> list[Item]:
    return unpack(pickle.loads(pickle.dumps(handoff.packed(events, last_seq))))


def view(seq: int, ts_ms: int, customer: str = "c-1") -> Event:
    return Event(seq, "web.events", 0, seq, ts_ms, {"event_type": "view"}, customer)


def test_the_topics_a_later_stage_reads_are_the_rules_the_journal_identity_and_consent() -> None:
    assert {"web.events", "pos.receipts", "consent.changes", VISIT_CONFIRMED, IDENTITY_TOPIC} <= FULL
    assert "geo.pings" not in FULL


def test_pings_go_on_cut_to_what_visits_reads() -> None:
    handoff = Handoff(FULL, ping_topics={GEO_PINGS})
    events: list[Item] = [ping(0, 1_000), view(1, 500), ping(2, 900), Heartbeat(9_000, 2)]
    assert handed(handoff, events, last_seq=2) == [cut(ping(0, 1_000)), view(1, 500), cut(ping(2, 900)),
                                                   Heartbeat(9_000, 2), Progress(2)]
    # A rule reading the pings gets them whole.
    assert handed(Handoff(FULL | {GEO_PINGS}, ping_topics={GEO_PINGS}), [ping(3, 1_000)], last_seq=3) == \
        [ping(3, 1_000), Progress(3)]


def test_records_no_later_stage_reads_become_one_stripped_mark_of_the_latest_time_before_the_next_handed_on() \
        -> None:
    handoff = Handoff(FULL)  # visits does not run later: the pings are such records
    events: list[Item] = [ping(0, 1_000), ping(1, 3_000), ping(2, 2_000), view(3, 2_500),
                          ping(4, 2_900), ping(5, 3_500), Heartbeat(9_000, 5), ping(6, 3_400)]
    out = handed(handoff, events, last_seq=6)
    assert out == [Event(1, "geo.pings", 0, 1, 3_000, {}), view(3, 2_500),
                   Event(5, "geo.pings", 0, 5, 3_500, {}), Heartbeat(9_000, 5), Progress(6)]
    # The next delivery remembers the latest time handed on: a ping that does not move it stays behind.
    assert handed(handoff, [ping(7, 3_500), ping(8, 3_200)], last_seq=8) == [Progress(8)]
    assert handed(handoff, [view(9, 100), ping(10, 3_600)], last_seq=10) == \
        [view(9, 100), Event(10, "geo.pings", 0, 10, 3_600, {}), Progress(10)]


def test_an_event_handed_on_moves_the_latest_time_too() -> None:
    handoff = Handoff(FULL)
    assert handed(handoff, [view(0, 5_000), ping(1, 4_000)], last_seq=1) == [view(0, 5_000), Progress(1)]
    handoff = Handoff(FULL - {"web.events"}, ping_topics={GEO_PINGS})
    assert handed(handoff, [ping(0, 5_000), view(1, 4_000)], last_seq=1) == [cut(ping(0, 5_000)), Progress(1)]


def test_a_hand_off_crosses_as_one_bytes_value() -> None:
    """Bytewax pickles one bytes object, not a record at a time."""
    packed = Handoff(FULL, ping_topics={GEO_PINGS}).packed(
        [ping(0, 1_000), view(1, 2_000), Merge(2, 2_500, "c-1", "c-2")], last_seq=2)
    assert type(packed) is bytes
    assert unpack(packed) == [cut(ping(0, 1_000)), view(1, 2_000), Merge(2, 2_500, "c-1", "c-2", [], None),
                              Progress(2)]


def test_packed_records_unpack_to_the_same_records() -> None:
    items: list[Item] = [view(0, 1_000), Event(1, "geo.pings", 0, 1, 2_000, {}),
                         Merge(2, 2_500, "c-1", "c-2", [[0, "web.events", 1_000, {"price": 2.5, "ok": True}]],
                               {"push": ["granted", 9]}),
                         Heartbeat(9_000, 2), Progress(2), Watermark(3, 1_999_999_999_999)]
    unpacked = unpack(pickle.loads(pickle.dumps(pack(items))))
    assert unpacked == items and [type(item) for item in unpacked] == [type(item) for item in items]


def _routed(batches: list[list[Item]], *, hand_off: bool, store_path: Path, config: Config,
            packed: bool = True) -> tuple[list[dict[int, list[Item]]], list[Emitted]]:
    """What the rules shards get, batch by batch, when visits, history and the clock see all of each batch
    or only its hand-off (the flow's history stage: flows/stage.py), packed and pickled as in a cluster or
    as records as in one process; and what they emit (visits, stats). Commits after each batch, as an epoch
    does."""
    store = RocksDBStore(store_path)
    factories = [Visits, History, EventClock]
    states = [ShardState(store, factory.name, 0) for factory in factories]
    if hand_off:
        chain = LaterChain(history_operators(factories, states, config))
    else:  # one stage that sees everything, as the sequencer did before the split
        chain = LaterChain([factory(state, config) for factory, state in zip(factories, states)])
    router = ShardRouter(config.rule_shards, rule_topics(config), broadcast_topics(config))
    handoff = Handoff(handed_on_topics(config), ping_topics={GEO_PINGS})
    routed, emitted = [], []
    for batch in batches:
        last_seq = batch[-1].seq
        # All of the batch, and where it ended (which a single stage knows by itself), or the hand-off.
        if not hand_off:
            items = [*batch, Progress(last_seq)]
        else:
            items = handed(handoff, batch, last_seq) if packed else handoff.items(batch, last_seq)
        out, events = chain.on_batches([items])
        routed.append(router.route(events))
        emitted += out
        for state in states:
            state.commit()
    out, events = chain.on_eof()
    routed.append(router.route(events, final=True))
    emitted += out
    store.close()
    return routed, emitted


_TOPICS = ["geo.pings", "geo.pings", "geo.pings", "web.events", "pos.receipts", "consent.changes"]
#: One store; pings in it, 1 km north or far off (a whole degree, as an integer), from two devices, none or a blank.
_STORES = [("s1", "Store 1", 52.5, 13.4, 100.0)]
_PINGS = [{"event_id": "e", "ts": "t", "ids": {"device_id": device, "cookie_id": "k"}, "lat": lat, "lon": 13.4,
           "accuracy_m": accuracy, "source": source}
          for device in ("d1", "d2", None, " ") for lat in (52.5, 52.509, 52)
          for accuracy, source in ((10.0, "gps"), (300.0, "wifi"), (5, "cell"))]
#: A body of each topic, as its contract admits it (history reads a consent change's channel and status).
_BODIES = {
    "web.events": {"type": "view_item", "channel": "web", "product_id": "p1", "ids": {"cookie_id": "k1"}},
    "pos.receipts": {"store_id": "s1", "terminal_id": "t1", "receipt_no": "r1",
                     "items": [{"product_id": "p1", "qty": 1, "price": 2.5}], "ids": {"loyalty_id": "l1"}},
    "consent.changes": {"channel": "push", "status": "revoked", "ids": {"device_id": "d1"}},
}


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_TOPICS), st.integers(0, 400_000), st.sampled_from(["c-1", "c-2", "c-3", None]),
                          st.sampled_from(_PINGS)), min_size=1, max_size=80),
       st.lists(st.integers(1, 12), min_size=1, max_size=20))
def test_the_rules_shards_get_the_same_items_from_the_hand_off(records: list[tuple[str, int, str, dict]],
                                                               cuts: list[int]) -> None:
    events = [Event(seq, topic, 0, seq, 1_500_000_000_000 + ts,
                    dict(ping_body if topic == GEO_PINGS else _BODIES[topic]), customer)
              for seq, (topic, ts, customer, ping_body) in enumerate(records)]
    batches, position, turn = [], 0, 0
    while position < len(events):
        size = cuts[turn % len(cuts)]
        batches.append(events[position:position + size])
        position, turn = position + size, turn + 1
    with tempfile.TemporaryDirectory() as folder:
        config = CONFIG.with_overrides(stores_file=str(write_stores_csv(Path(folder) / "stores.csv", _STORES)))
        whole = _routed(batches, hand_off=False, store_path=Path(folder) / "whole", config=config)
        handed = _routed(batches, hand_off=True, store_path=Path(folder) / "handed", config=config)
        in_one_process = _routed(batches, hand_off=True, store_path=Path(folder) / "one", config=config, packed=False)
    assert handed == whole
    assert in_one_process == whole


def test_on_real_data_the_rules_get_the_same_items_from_the_hand_off(tmp_path: Path, real_data: Path) -> None:
    """Clickstream, receipts, links, consents and GPS traces of 40 shoppers: most of the input is pings."""
    recording = tmp_path / "recording"
    _, stores = omnichannel_recording(real_data, recording, users=40, receipts=200, trace_days=1)
    stores_csv = tmp_path / "stores.csv"
    write_stores_csv(stores_csv, stores)
    config = CONFIG.with_overrides(stores_file=str(stores_csv))
    events = read_all(recording)
    store = RocksDBStore(tmp_path / "sequencer")
    names = ("dedup", "identity")
    states = [ShardState(store, OPERATORS[name].name, 0) for name in names]
    operators = [OPERATORS[name](state, config) for name, state in zip(names, states)]
    batches: list[list[Item]] = []
    for position in range(0, len(events), 250):
        batch: list[Item] = events[position:position + 250]
        for operator in operators:
            batch = operator.on_events(batch).events
        for state in states:
            state.commit()
        if batch:
            batches.append(batch)
    store.close()
    assert sum(1 for batch in batches for item in batch if getattr(item, "topic", "") == "geo.pings") > len(events) // 2
    whole = _routed(batches, hand_off=False, store_path=tmp_path / "whole", config=config)
    handed = _routed(batches, hand_off=True, store_path=tmp_path / "handed", config=config)
    assert sum(len(items) for batch in whole[0] for items in batch.values()) > 100
    assert sum(1 for emitted in whole[1] if emitted.stream == "visits") > 0
    assert handed == whole
