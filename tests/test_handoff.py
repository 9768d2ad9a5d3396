"""The sequencer's hand-off to the history stage (operators/handoff.py) loses nothing a later stage reads.

- What it hands on: the topics a later stage reads in full, control records in full, and of the other
  records (pings) only the one that moved the latest event time, stripped; a `Progress` mark at the end.
- It crosses processes as plain tuples (`pack`), and unpacks to the same records.
- Exactness: the rules shards get the same items, watermarks included, whether the history stage sees
  everything or only the hand-off (packed, pickled and unpacked), for random topics, event times and batch cuts (a property test), and
  on real data through the whole chain (dedup, identity, visits | history, clock, router).
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from omnitrigger.config import Config
from omnitrigger.flows.stage import handed_on_topics
from omnitrigger.operators import EventClock, History, OPERATORS
from omnitrigger.operators.handoff import Handoff, pack, unpack
from omnitrigger.operators.router import ShardRouter
from omnitrigger.operators.rules import broadcast_topics, rule_topics
from omnitrigger.operators.stage_chain import LaterChain
from omnitrigger.records import IDENTITY_TOPIC, VISIT_CONFIRMED, Emitted, Event, Heartbeat, Item, Merge, Progress
from omnitrigger.state import RocksDBStore, ShardState
from geolife import write_stores_csv
from recordings import omnichannel_recording
from test_conformance import read_all

CONFIG = Config()
FULL = handed_on_topics(CONFIG)


def ping(seq: int, ts_ms: int) -> Event:
    return Event(seq, "geo.pings", 0, seq, ts_ms, {"device_id": "d1", "lat": 1.0, "lon": 2.0}, "c-1")


def view(seq: int, ts_ms: int, customer: str = "c-1") -> Event:
    return Event(seq, "web.events", 0, seq, ts_ms, {"event_type": "view"}, customer)


def test_the_topics_a_later_stage_reads_are_the_rules_the_journal_identity_and_consent() -> None:
    assert {"web.events", "pos.receipts", "consent.changes", VISIT_CONFIRMED, IDENTITY_TOPIC} <= FULL
    assert "geo.pings" not in FULL


def test_pings_become_one_stripped_mark_of_the_latest_time_before_the_next_event_handed_on() -> None:
    handoff = Handoff(FULL)
    events: list[Item] = [ping(0, 1_000), ping(1, 3_000), ping(2, 2_000), view(3, 2_500),
                          ping(4, 2_900), ping(5, 3_500), Heartbeat(9_000, 5), ping(6, 3_400)]
    out = handoff.items(events, last_seq=6)
    assert out == [Event(1, "geo.pings", 0, 1, 3_000, {}), view(3, 2_500),
                   Event(5, "geo.pings", 0, 5, 3_500, {}), Heartbeat(9_000, 5), Progress(6)]
    # The next delivery remembers the latest time handed on: a ping that does not move it stays behind.
    assert handoff.items([ping(7, 3_500), ping(8, 3_200)], last_seq=8) == [Progress(8)]
    assert handoff.items([view(9, 100), ping(10, 3_600)], last_seq=10) == \
        [view(9, 100), Event(10, "geo.pings", 0, 10, 3_600, {}), Progress(10)]


def test_an_event_handed_on_in_full_moves_the_latest_time_too() -> None:
    handoff = Handoff(FULL)
    assert handoff.items([view(0, 5_000), ping(1, 4_000)], last_seq=1) == [view(0, 5_000), Progress(1)]


def test_a_packed_hand_off_crosses_as_plain_tuples_and_unpacks_to_the_same_records() -> None:
    items: list[Item] = [view(0, 1_000), Event(1, "geo.pings", 0, 1, 2_000, {}),
                         Merge(2, 2_500, "c-1", "c-2", [[0, "web.events", 1_000, {}]], {"push": ["granted", 9]}),
                         Heartbeat(9_000, 2), Progress(2)]
    codes, fields = pack(items)
    assert all(type(values) is tuple for values in fields)  # no NamedTuple: pickling calls no Python per record
    unpacked = unpack(pickle.loads(pickle.dumps((codes, fields))))
    assert unpacked == items and [type(item) for item in unpacked] == [type(item) for item in items]


def _routed(batches: list[list[Item]], *, hand_off: bool, store_path: Path,
            config: Config = CONFIG) -> tuple[list[dict[int, list[Item]]], list[Emitted]]:
    """What the rules shards get, batch by batch, when history and the clock see all of each batch or only
    its hand-off; and what they emit. Commits after each batch, as an epoch does."""
    store = RocksDBStore(store_path)
    states = [ShardState(store, factory.name, 0) for factory in (History, EventClock)]
    chain = LaterChain([History(states[0], config), EventClock(states[1], config)])
    router = ShardRouter(config.rule_shards, rule_topics(config), broadcast_topics(config))
    handoff = Handoff(handed_on_topics(config))
    routed, emitted = [], []
    for batch in batches:
        last_seq = batch[-1].seq
        # All of the batch, and where it ended (which a single stage knows by itself), or the hand-off.
        items = unpack(pickle.loads(pickle.dumps(pack(handoff.items(batch, last_seq))))) if hand_off \
            else [*batch, Progress(last_seq)]
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
#: A body of each topic, as its contract admits it (history reads a consent change's channel and status).
_BODIES = {
    "geo.pings": {"ids": {"device_id": "d1"}, "lat": 52.5, "lon": 13.4, "accuracy_m": 10.0},
    "web.events": {"type": "view_item", "channel": "web", "product_id": "p1", "ids": {"cookie_id": "k1"}},
    "pos.receipts": {"store_id": "s1", "terminal_id": "t1", "receipt_no": "r1",
                     "items": [{"product_id": "p1", "qty": 1, "price": 2.5}], "ids": {"loyalty_id": "l1"}},
    "consent.changes": {"channel": "push", "status": "revoked", "ids": {"device_id": "d1"}},
}


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_TOPICS), st.integers(0, 400_000), st.sampled_from(["c-1", "c-2", "c-3"])),
                min_size=1, max_size=80),
       st.lists(st.integers(1, 12), min_size=1, max_size=20))
def test_the_rules_shards_get_the_same_items_from_the_hand_off(records: list[tuple[str, int, str]],
                                                               cuts: list[int]) -> None:
    events = [Event(seq, topic, 0, seq, 1_500_000_000_000 + ts, dict(_BODIES[topic]), customer)
              for seq, (topic, ts, customer) in enumerate(records)]
    batches, position, turn = [], 0, 0
    while position < len(events):
        size = cuts[turn % len(cuts)]
        batches.append(events[position:position + size])
        position, turn = position + size, turn + 1
    with tempfile.TemporaryDirectory() as folder:
        whole = _routed(batches, hand_off=False, store_path=Path(folder) / "whole")
        handed = _routed(batches, hand_off=True, store_path=Path(folder) / "handed")
    assert handed == whole


def test_on_real_data_the_rules_get_the_same_items_from_the_hand_off(tmp_path: Path, real_data: Path) -> None:
    """Clickstream, receipts, links, consents and GPS traces of 40 shoppers: most of the input is pings."""
    recording = tmp_path / "recording"
    _, stores = omnichannel_recording(real_data, recording, users=40, receipts=200, trace_days=1)
    stores_csv = tmp_path / "stores.csv"
    write_stores_csv(stores_csv, stores)
    config = CONFIG.with_overrides(stores_file=str(stores_csv))
    events = read_all(recording)
    store = RocksDBStore(tmp_path / "sequencer")
    names = ("dedup", "identity", "visits")
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
    assert handed == whole
