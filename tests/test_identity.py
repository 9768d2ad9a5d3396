"""Identity resolution: customers are the connected components of accepted links, with merge protection."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import networkx as nx
import orjson
import pytest

from conftest import records, replay
from omnitrigger.config import Config
from omnitrigger.operators import History, Identity
from omnitrigger.operators.identity import identities
from omnitrigger.pii import Pseudonymizer, key_from_environment
from omnitrigger.records import REFUSED_LINKS, Event, Merge
from omnitrigger.state import RocksDBStore, ShardState
from recordings import identity_recording

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_764_000_000_000


class IdentityAndHistory:
    """The two sequencer operators over real RocksDB, committing after every call like an epoch."""

    def __init__(self, path: Path, config: Config = Config()) -> None:
        self.store = RocksDBStore(path)
        self.identity_state = ShardState(self.store, "identity", 0)
        self.history_state = ShardState(self.store, "history", 0)
        self.identity = Identity(self.identity_state, config)
        self.history = History(self.history_state, config)
        self.seq = 0
        self.refusals: list[dict[str, Any]] = []
        self.merges: list[Merge] = []

    def send(self, topic: str, ts_ms: int, ids: dict[str, str], **body: Any) -> Event:
        event = Event(self.seq, topic, 0, self.seq, ts_ms, {"ts": ts_ms, "ids": ids, **body})
        self.seq += 1
        result = self.identity.on_events([event])
        self.refusals += [e.record for e in result.emitted if e.stream == REFUSED_LINKS]
        passed = self.history.on_events(result.events).events
        self.merges += [e for e in passed if type(e) is Merge]
        self.identity_state.commit()
        self.history_state.commit()
        return passed[-1]

    def view(self, ts_ms: int, ids: dict[str, str], product: str) -> Event:
        return self.send("web.events", ts_ms, ids, type="view_item", product_id=product, event_id=f"v{self.seq}")

    def login(self, ts_ms: int, ids: dict[str, str], **extra: Any) -> Event:
        return self.send("identity.links", ts_ms, ids, source="login", event_id=f"l{self.seq}", **extra)

    def identities(self) -> dict[tuple[str, str], str]:
        self.identity_state.commit()
        return {(r["type"], r["value"]): r["customer_id"] for r in identities(self.identity_state)}

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def ops(tmp_path: Path) -> IdentityAndHistory:
    chain = IdentityAndHistory(tmp_path / "db")
    yield chain
    chain.close()


def test_browse_then_login_then_till_is_one_customer_with_the_earlier_views(ops: IdentityAndHistory) -> None:
    first = ops.view(T0, {"device_id": "tablet-7"}, "P1")
    ops.view(T0 + 60_000, {"device_id": "tablet-7"}, "P2")
    login = ops.login(T0 + 120_000, {"device_id": "tablet-7", "auth_id": "anna"})
    ops.send("identity.links", T0 + 121_000, {"auth_id": "anna", "loyalty_id": "L-17"}, source="loyalty_card",
             event_id="card")
    receipt = ops.send("pos.receipts", T0 + 3 * HOUR, {"loyalty_id": "L-17"}, terminal_id="T1", receipt_no="9",
                       store_id="S1", items=[{"product_id": "P1", "qty": 1, "price": 3.0}])
    assert first.customer == login.customer == receipt.customer
    assert {key: customer for key, customer in ops.identities().items()} == {
        ("device_id", "tablet-7"): first.customer, ("auth_id", "anna"): first.customer,
        ("loyalty_id", "L-17"): first.customer}
    journal = ops.history.journal(first.customer)
    assert [entry[3].get("product_id") for entry in journal if entry[1] == "web.events"] == ["P1", "P2"]
    assert ops.refusals == []


def test_a_merge_moves_the_newer_customers_history_to_the_older_one(ops: IdentityAndHistory) -> None:
    account = ops.login(T0, {"device_id": "laptop", "auth_id": "anna"})  # anna is known first
    ops.view(T0 + HOUR, {"device_id": "phone"}, "P1")  # an anonymous phone: a new, younger customer
    phone = ops.view(T0 + HOUR + 1, {"device_id": "phone"}, "P2")
    assert phone.customer != account.customer
    logged_in = ops.login(T0 + 2 * HOUR, {"device_id": "phone", "auth_id": "anna"})
    assert logged_in.customer == account.customer, "the customer seen first keeps its id"
    [merge] = ops.merges
    assert merge.winner == account.customer and merge.loser == phone.customer
    assert [entry[3]["product_id"] for entry in merge.history] == ["P1", "P2"]
    assert ops.history.journal(phone.customer) == []
    moved = [entry[3].get("product_id") for entry in ops.history.journal(account.customer)]
    assert moved[:2] == ["P1", "P2"]
    assert ops.identities()[("device_id", "phone")] == account.customer


def test_a_family_tablet_does_not_merge_two_accounts_and_says_so(ops: IdentityAndHistory) -> None:
    anna = ops.login(T0, {"device_id": "family-tablet", "auth_id": "anna"})
    ben = ops.login(T0 + HOUR, {"device_id": "family-tablet", "auth_id": "ben"})
    assert anna.customer != ben.customer
    identities = ops.identities()
    assert identities[("device_id", "family-tablet")] == anna.customer
    assert identities[("auth_id", "ben")] == ben.customer
    [refusal] = ops.refusals
    assert refusal["reason"] == "limit_auth_id"
    assert refusal["identifiers"] == [["auth_id", "ben"], ["device_id", "family-tablet"]]
    assert (refusal["topic"], refusal["offset"]) == ("identity.links", 1)
    # ben's later events on his own phone stay his, and the tablet stays anna's
    ben_phone = ops.login(T0 + 2 * HOUR, {"device_id": "ben-phone", "auth_id": "ben"})
    assert ben_phone.customer == ben.customer


def test_two_loyalty_cards_in_one_receipt_history_are_refused(ops: IdentityAndHistory) -> None:
    ops.send("identity.links", T0, {"auth_id": "anna", "loyalty_id": "L1"}, source="loyalty_card", event_id="c1")
    ops.send("identity.links", T0 + 1, {"auth_id": "anna", "loyalty_id": "L2"}, source="loyalty_card", event_id="c2")
    identities = ops.identities()
    assert identities[("loyalty_id", "L1")] == identities[("auth_id", "anna")] != identities[("loyalty_id", "L2")]
    assert [refusal["reason"] for refusal in ops.refusals] == ["limit_loyalty_id"]


@pytest.mark.parametrize("blocked", ["", " ", "0", "-1", "null", "NULL", "anonymous", "Anonymous", "undefined",
                                     "0000", "00000000-0000-0000-0000-000000000000", "!invalid"])
def test_blocked_values_never_link(ops: IdentityAndHistory, blocked: str) -> None:
    anna = ops.view(T0, {"device_id": blocked, "auth_id": "anna"}, "P1")
    ben = ops.view(T0 + 1, {"device_id": blocked, "auth_id": "ben"}, "P1")
    assert anna.customer != ben.customer
    assert ("device_id", blocked) not in ops.identities()
    assert [refusal["reason"] for refusal in ops.refusals] == ["blocked_value", "blocked_value"]


def test_the_blocked_check_without_its_regex_agrees_with_the_definition(tmp_path: Path) -> None:
    """`is_blocked` skips the all-zeros pattern for values that cannot match it and memoises only the blocked:
    on values of every first character (letters, digits, zeros, underscores, punctuation, Unicode digits and
    letters, spaces) it says what the definition says, the second time as the first."""
    import random
    import re

    chain = IdentityAndHistory(tmp_path / "db", Config(blocked_identifiers=("guest",)))
    identity = chain.identity
    all_zeros = re.compile(r"^[0\W_]+$")
    rng = random.Random(7)
    alphabet = "0019aZ_-.:/ \t\u0660\u0661\u00e9\u4e2d!?~"
    values = ["", " ", "0", "00", "_", "__0", "-0-", "\u0660", "\u0660\u0660", "guest", " GUEST ", "null", "0a", "a0",
              *("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(5000))]
    for _ in range(2):
        for value in values:
            lowered = value.strip().lower()
            expected = lowered in identity.blocked or bool(all_zeros.match(lowered))
            assert identity.is_blocked(value) is expected, value
    chain.close()


def test_a_configured_blocked_value_never_links(tmp_path: Path) -> None:
    chain = IdentityAndHistory(tmp_path / "db", Config(blocked_identifiers=("guest",)))
    first = chain.view(T0, {"cookie_id": "GUEST", "device_id": "d1"}, "P1")
    second = chain.view(T0, {"cookie_id": "guest", "device_id": "d2"}, "P1")
    assert first.customer != second.customer
    chain.close()


def test_a_weak_link_never_merges_and_a_configured_threshold_applies(tmp_path: Path) -> None:
    chain = IdentityAndHistory(tmp_path / "db")
    chain.view(T0, {"device_id": "d1"}, "P1")
    chain.view(T0, {"device_id": "d2"}, "P1")
    chain.send("identity.links", T0 + 1, {"device_id": "d1", "cookie_id": "c2"}, source="crm", confidence=0.89,
               event_id="w")
    identities = chain.identities()
    assert identities[("device_id", "d1")] != identities[("cookie_id", "c2")]
    assert [(r["reason"], r["confidence"]) for r in chain.refusals] == [("low_confidence", 0.89)]
    chain.close()
    lenient = IdentityAndHistory(tmp_path / "db2", Config(min_link_confidence=0.5))
    lenient.send("identity.links", T0 + 1, {"device_id": "d1", "cookie_id": "c2"}, source="crm", confidence=0.89,
                 event_id="w")
    identities = lenient.identities()
    assert identities[("device_id", "d1")] == identities[("cookie_id", "c2")]
    lenient.close()


def test_limits_are_configurable(tmp_path: Path) -> None:
    chain = IdentityAndHistory(tmp_path / "db", Config(identifier_limits=(("auth_id", 2), ("loyalty_id", 1))))
    anna = chain.login(T0, {"device_id": "family-tablet", "auth_id": "anna"})
    ben = chain.login(T0 + 1, {"device_id": "family-tablet", "auth_id": "ben"})
    assert anna.customer == ben.customer and chain.refusals == []
    chain.close()


def test_identifiers_unseen_for_the_retention_are_forgotten_and_deleted(tmp_path: Path) -> None:
    config = Config(identifier_retention_s=30 * 86_400)
    chain = IdentityAndHistory(tmp_path / "db", config)
    for n in range(300):
        chain.view(T0 + n, {"device_id": f"old-{n}"}, "P1")
    kept = chain.view(T0, {"device_id": "regular"}, "P1")
    for day in range(1, 40, 5):
        chain.view(T0 + day * DAY, {"device_id": "regular"}, "P1")
    after_ts = T0 + 41 * DAY
    later = chain.view(after_ts, {"device_id": "old-1"}, "P1")
    assert later.customer != chain.identities().get(("device_id", "old-2"), "gone")
    assert ("device_id", "old-2") not in chain.identities()
    assert chain.identities()[("device_id", "regular")] == kept.customer
    chain.identity_state.sweep(after_ts)
    chain.identity_state.commit()
    live = chain.identity_state.scan(b"", b"\xff")
    assert len(live) < 20, "300 expired identifiers and their customers were deleted"
    chain.close()


def test_a_merge_keeps_limits_of_expired_identifiers_out(tmp_path: Path) -> None:
    """An auth_id that expired no longer counts against the limit."""
    chain = IdentityAndHistory(tmp_path / "db", Config(identifier_retention_s=10 * 86_400))
    anna = chain.login(T0, {"device_id": "tablet", "auth_id": "anna"})
    for day in (8, 16):  # the tablet is seen again, anna is not
        chain.view(T0 + day * DAY, {"device_id": "tablet"}, "P1")
    ben = chain.login(T0 + 21 * DAY, {"device_id": "tablet", "auth_id": "ben"})
    assert chain.refusals == [] and ben.customer == anna.customer
    chain.close()


# -- the real-data cross-check ----------------------------------------------------

PRIORITY = ("auth_id", "loyalty_id", "email", "phone", "cookie_id", "device_id")  # docs/semantics.md, Identity: strongest first


def independent_components(recording: Path, refused: list[dict[str, Any]]) -> list[set[tuple[str, str]]]:
    """networkx over the recording's links (identifiers together in one event), minus the refused ones."""
    pseudonymizer = Pseudonymizer(key_from_environment(), Config().default_country_code)
    blocked = {"", "0", "-1", "null", "anonymous"}
    graph = nx.Graph()
    for path in sorted(recording.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            body = copy.deepcopy(orjson.loads(line))
            pseudonymizer.protect(body)
            ids = body.get("ids") or {}
            present = [(kind, str(ids[kind])) for kind in PRIORITY if kind in ids]
            present = [(kind, value) for kind, value in present
                       if value.strip().lower() not in blocked and set(value) - set("0-")]
            graph.add_nodes_from(present)
            graph.add_edges_from((present[0], other) for other in present[1:])
    for refusal in refused:
        if len(refusal["identifiers"]) == 2:
            left, right = (tuple(identifier) for identifier in refusal["identifiers"])
            graph.remove_edge(left, right)
    return [set(component) for component in nx.connected_components(graph)]


def test_customers_equal_the_connected_components_of_accepted_links(tmp_path: Path, real_data: Path) -> None:
    recording = tmp_path / "recording"
    written = identity_recording(real_data, recording)
    summary, files = replay(tmp_path, recording)
    identities = records(files["identities"])
    refused = records(files["refused_links"])
    found: dict[str, set[tuple[str, str]]] = {}
    for record in identities:
        found.setdefault(record["customer_id"], set()).add((record["type"], record["value"]))
    expected = independent_components(recording, refused)
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, expected))
    assert summary.customers == len(expected) and len(expected) > written["users"]
    reasons = {record["reason"] for record in refused}
    assert reasons == {"blocked_value", "limit_auth_id", "low_confidence"}
    assert sum(record["reason"] == "limit_auth_id" for record in refused) == 5, "one per family tablet"
    for members in found.values():  # merge protection holds in every customer
        assert sum(kind == "auth_id" for kind, _ in members) <= 1
        assert sum(kind == "loyalty_id" for kind, _ in members) <= 1
    merged = [members for members in found.values() if {kind for kind, _ in members} >= {"device_id", "auth_id",
                                                                                             "loyalty_id", "email"}]
    assert merged, "some customers join a device, an account, a loyalty card and an email"
    events = records(files["events"])
    by_identifier = {(r["type"], r["value"]): r["customer_id"] for r in identities}
    for event in events[-500:]:  # late events are attributed to the customer their anchor ends in
        ids = event["event"].get("ids") or {}
        anchor = next(((kind, str(ids[kind])) for kind in PRIORITY if kind in ids), None)
        if anchor in by_identifier and event["topic"] != "identity.links":
            assert event["customer_id"] == by_identifier[anchor]


def test_history_keeps_events_for_its_retention_only_and_deletes_the_rest(tmp_path: Path) -> None:
    chain = IdentityAndHistory(tmp_path / "db", Config(history_retention_s=2 * 86_400))
    first = chain.view(T0, {"device_id": "d1"}, "P0")
    for n in range(1, 300):
        chain.view(T0 + n * 1000, {"device_id": "d1"}, f"P{n}")
    assert len(chain.history.journal(first.customer)) == 300
    chain.view(T0 + 3 * DAY, {"device_id": "d1"}, "late")  # the sweep runs as event time moves on
    journal = chain.history.journal(first.customer)
    assert [entry[3]["product_id"] for entry in journal] == ["late"]
    stored = chain.history_state.scan(b"h", b"i", now_ms=0)  # what is physically left, expired or not
    assert len(stored) == 1, "expired journal entries are deleted, not just hidden"
    chain.close()


def test_a_full_cache_of_decoded_identifiers_drops_its_oldest_not_everything(ops: IdentityAndHistory,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its size the cache trims its oldest quarter (state/cache.py): the identifiers seen last stay decoded,
    where a cache that cleared itself would send every one of them back to RocksDB."""
    monkeypatch.setattr("omnitrigger.operators.identity._ENTRIES_KEPT", 8)
    for n in range(20):
        ops.view(T0 + n, {"device_id": f"dev-{n}"}, "P1")
    kept = [value for _, value in ops.identity._entries]
    assert 6 <= len(kept) <= 8
    assert kept == [f"dev-{n}" for n in range(20 - len(kept), 20)]
    # What was dropped is read back from the state: the same customer as before.
    first = ops.view(T0 + 100, {"device_id": "dev-0"}, "P2")
    assert first.customer == ops.identities()[("device_id", "dev-0")]


def test_a_replay_resolves_the_same_customers_whatever_the_identity_cache_holds(
        tmp_path: Path, real_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-data identity recording through the whole flow with the default cache and with one of 16
    identifiers (trimmed all the time): every output the same, byte for byte."""
    recording = tmp_path / "recording"
    identity_recording(real_data, recording)
    _, default = replay(tmp_path, recording, name="default")
    monkeypatch.setattr("omnitrigger.operators.identity._ENTRIES_KEPT", 16)
    _, small = replay(tmp_path, recording, name="small")
    assert records(default["identities"]) and default == small


def _without_the_new_customer_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event through the general path: its identifiers resolved, created and attached one at a time."""
    monkeypatch.setattr(Identity, "_all_new", lambda self, identifiers: False)


def test_an_event_of_new_identifiers_makes_the_customer_the_general_path_makes(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Random events over a small pool of identifiers (new ones, known ones, merges, a blocked value, weak links):
    with the new-customer path and without it, the same events out, the same refusals and the same state."""
    import random

    rng = random.Random(19)
    kinds = ["auth_id", "loyalty_id", "email", "phone", "cookie_id", "device_id"]
    events = []
    for seq in range(1500):
        chosen = rng.sample(kinds, rng.choice([1, 2, 2, 3]))
        ids = {kind: ("" if rng.random() < 0.03 else f"{kind[:2]}-{rng.randrange(400)}") for kind in chosen}
        topic = rng.choice(["consent.changes", "web.events", "identity.links"])
        body: dict[str, Any] = {"ts": T0 + seq * 1000, "ids": ids, "event_id": f"e{seq}"}
        if topic == "identity.links":
            body["confidence"] = rng.choice([1.0, 1.0, 0.2])
        events.append(Event(seq, topic, 0, seq, T0 + seq * 1000, body))

    def run(name: str) -> tuple[list[Any], dict[bytes, bytes]]:
        store = RocksDBStore(tmp_path / name)
        state = ShardState(store, "identity", 0)
        identity = Identity(state, Config())
        out: list[Any] = []
        for start in range(0, len(events), 50):
            result = identity.on_events(copy.deepcopy(events[start:start + 50]))
            out += [result.events, result.emitted]
            state.commit()
        data = {key: value for key, value in store.scan(b"d", b"e")}
        store.close()
        return out, data

    fast = run("fast")
    with monkeypatch.context() as patch:
        _without_the_new_customer_path(patch)
        general = run("general")
    changes = [event for batch in fast[0][::2] for event in batch
               if type(event) is Event and event.topic == "omnitrigger.identity"]
    merges = [event for batch in fast[0][::2] for event in batch if type(event) is Merge]
    first_seen = [change.body["known_types"] for change in changes if "known_types" in change.body]
    assert len(changes) > 300 and merges
    assert [] in first_seen and any(first_seen), "both kinds of change: all identifiers new, and some known"
    assert fast == general


def test_a_replay_with_the_new_customer_path_gives_every_output_the_general_path_gives(
        tmp_path: Path, real_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-data identity recording through the whole flow, with and without the path: byte for byte."""
    recording = tmp_path / "recording"
    identity_recording(real_data, recording)
    _, fast = replay(tmp_path, recording, name="fast")
    _without_the_new_customer_path(monkeypatch)
    _, general = replay(tmp_path, recording, name="general")
    assert records(fast["identities"]) and fast == general
