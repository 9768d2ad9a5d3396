"""The RocksDB state layer: buffered writes, generations and rollback, event-time expiry, isolation.

Every test runs on a real RocksDB in tmp_path. The expected state is kept in
plain dicts and compared with full scans of the store, using the key layout
documented in state/shard_state.py (P = namespace, NUL, 2-byte shard):
    d P key -> 8-byte expiry + value;  x P expiry key -> b"";  u P gen n -> undo;  m P ... -> metadata
"""

from __future__ import annotations

import random
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from omnitrigger.state import RocksDBStore, ShardState, StateError
from omnitrigger.state.cache import forget_oldest

EVERYTHING = (b"", b"\xff")  # every key of the layout starts with d, x, u or m
U64 = struct.Struct(">Q")


@contextmanager
def opened(path: Path) -> Iterator[RocksDBStore]:
    store = RocksDBStore(path)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksDBStore]:
    with opened(tmp_path / "db") as store:
        yield store


def prefix(kind: bytes, state: ShardState) -> bytes:
    return kind + state.namespace.encode() + b"\x00" + state.shard.to_bytes(2, "big")


def scan_prefix(store: RocksDBStore, start: bytes) -> dict[bytes, bytes]:
    """Every stored key under `start`, with the prefix cut off."""
    return {key[len(start):]: value for key, value in store.scan(start, EVERYTHING[1]) if key.startswith(start)}


def stored_data(state: ShardState) -> dict[bytes, bytes]:
    """The shard's committed values as RocksDB holds them (expiry header removed)."""
    return {key: raw[8:] for key, raw in scan_prefix(state.store, prefix(b"d", state)).items()}


def stored_expiries(state: ShardState) -> dict[bytes, int]:
    """The shard's committed values' expiry times, from their 8-byte header (0 = never)."""
    return {key: U64.unpack_from(raw)[0] for key, raw in scan_prefix(state.store, prefix(b"d", state)).items()}


def stored_index(state: ShardState) -> list[tuple[int, bytes]]:
    """The shard's expiry index as (expiry, key) pairs: the entries of its expiry buckets (and of the per-key
    index of older state folders)."""
    pairs = [(U64.unpack_from(entry)[0], entry[8:]) for entry in scan_prefix(state.store, prefix(b"x", state))]
    for entries in scan_prefix(state.store, prefix(b"y", state)).values():
        at = 0
        while at < len(entries):
            expires, length = struct.unpack_from(">QI", entries, at)
            pairs.append((expires, entries[at + 12:at + 12 + length]))
            at += 12 + length
    return pairs


def bucket_keys(state: ShardState) -> int:
    return len(scan_prefix(state.store, prefix(b"y", state)))


def count_keys(store: RocksDBStore) -> int:
    return sum(1 for _ in store.scan(*EVERYTHING))


KEYS = [f"k{n:02d}".encode() for n in range(12)]


def expired(expires: int, now_ms: int) -> bool:
    """The state's expiry rule, for the models: 0 never expires; otherwise gone from `expires` on."""
    return bool(expires) and expires <= now_ms


def swept(model: dict[bytes, tuple[bytes, int]], now_ms: int) -> dict[bytes, tuple[bytes, int]]:
    """A model of (value, expiry) by key after a sweep at `now_ms`."""
    return {key: entry for key, entry in model.items() if not expired(entry[1], now_ms)}


def build_history(state: ShardState, generations: int, seed: int = 7) -> dict[int, dict[bytes, bytes]]:
    """Commit `generations` random generations of puts, overwrites and deletes; the model of each generation.

    Keys are drawn at random from KEYS, so a generation may change one key twice
    (put then delete, or two puts) before it commits: only the last change may count.
    """
    rng = random.Random(seed)
    model: dict[bytes, bytes] = dict(stored_data(state))
    history = {state.generation: dict(model)}
    for _ in range(generations):
        for _ in range(rng.randint(1, 6)):
            key = rng.choice(KEYS)
            if rng.random() < 0.3:
                state.delete(key)
                model.pop(key, None)
            else:
                value = f"{key.decode()}@{state.generation + 1}.{rng.randint(0, 999)}".encode()
                state.put(key, value)
                model[key] = value
        generation = state.commit()
        history[generation] = dict(model)
    return history


def assert_state_is(state: ShardState, expected: dict[bytes, bytes]) -> None:
    """Both the store and the view's reads hold exactly `expected`."""
    assert stored_data(state) == expected
    assert {key: state.get(key) for key in KEYS if state.get(key) is not None} == expected


# -- reads and writes through the pending buffer ---------------------------------------------------

def test_writes_are_buffered_until_commit(store: RocksDBStore) -> None:
    """get sees puts and deletes at once; RocksDB sees nothing until commit(), then everything."""
    state = ShardState(store, "ops", 0)
    state.put(b"a", b"1")
    state.put(b"b", b"2")
    state.delete(b"b")
    state.put_meta(b"clock", b"42")

    assert (state.get(b"a"), state.get(b"b"), state.get_meta(b"clock")) == (b"1", None, b"42")
    assert count_keys(store) == 0
    assert state.pending_changes() == 3

    state.commit()
    assert state.pending_changes() == 0
    assert stored_data(state) == {b"a": b"1"}  # the delete of a never-stored key leaves nothing
    fresh = ShardState(store, "ops", 0)
    assert (fresh.get(b"a"), fresh.get(b"b"), fresh.get_meta(b"clock")) == (b"1", None, b"42")


def test_uncommitted_writes_are_lost_with_the_view(store: RocksDBStore) -> None:
    """A view that goes away (a crash) before commit() leaves RocksDB as it was."""
    state = ShardState(store, "ops", 0)
    state.put(b"a", b"1")
    state.commit()
    state.put(b"a", b"2")
    state.delete(b"a")
    assert ShardState(store, "ops", 0).get(b"a") == b"1"


def test_commit_returns_increasing_generations(store: RocksDBStore) -> None:
    """Each commit with changes is the next generation; a commit without changes returns the same one."""
    state = ShardState(store, "ops", 0)
    assert state.commit() == 0
    generations = []
    for n in range(4):
        state.put(b"a", str(n).encode())
        generations.append(state.commit())
        assert state.commit() == generations[-1]
    assert generations == [1, 2, 3, 4]
    assert ShardState(store, "ops", 0).generation == 4


# -- generations and rollback --------------------------------------------------------------------

def test_rollback_restores_each_earlier_generation(store: RocksDBStore) -> None:
    """After overwrites and deletes over 12 generations, rollback_to(g) gives exactly the state as of g."""
    state = ShardState(store, "ops", 0)
    history = build_history(state, 12)
    assert_state_is(state, history[12])
    for generation in (11, 9, 5, 1, 0):
        undone = state.generation - generation
        assert state.rollback_to(generation) == undone
        assert state.generation == generation
        assert_state_is(state, history[generation])


def test_rollback_discards_pending_writes(store: RocksDBStore) -> None:
    """rollback_to drops what was buffered since the last commit."""
    state = ShardState(store, "ops", 0)
    history = build_history(state, 3)
    state.put(b"k00", b"pending")
    state.rollback_to(2)
    assert state.pending_changes() == 0
    assert_state_is(state, history[2])


def test_rollback_across_close_and_reopen(tmp_path: Path) -> None:
    """The generation and the undo log survive a restart: roll back after reopening, and again after going on."""
    path = tmp_path / "db"
    with opened(path) as store:
        history = build_history(ShardState(store, "ops", 3), 8)
    with opened(path) as store:
        state = ShardState(store, "ops", 3)
        assert state.generation == 8
        assert_state_is(state, history[8])
        assert state.rollback_to(5) == 3
    with opened(path) as store:
        state = ShardState(store, "ops", 3)
        assert state.generation == 5
        assert_state_is(state, history[5])
        new_timeline = build_history(state, 4, seed=99)  # generations 6..9 again, with other values
        assert sorted(new_timeline) == [5, 6, 7, 8, 9]
    with opened(path) as store:
        state = ShardState(store, "ops", 3)
        state.rollback_to(7)
        assert_state_is(state, new_timeline[7])
        state.rollback_to(5)
        assert_state_is(state, history[5])


class _CrashesInDeleteRange(RocksDBStore):
    """A real RocksDB store whose next delete_range raises, like a process killed right before it."""

    crash_next_delete_range = False

    def delete_range(self, start: bytes, end: bytes) -> None:
        if self.crash_next_delete_range:
            self.crash_next_delete_range = False
            raise RuntimeError("killed")
        super().delete_range(start, end)


def commit(state: ShardState, changes: dict[bytes, bytes | None]) -> int:
    """Put (a value) or delete (None) each key, then commit."""
    for key, value in changes.items():
        if value is None:
            state.delete(key)
        else:
            state.put(key, value)
    return state.commit()


def test_rollback_interrupted_after_its_write_leaves_no_stale_undo(tmp_path: Path) -> None:
    """A crash between rollback's restore and its delete_range must not let old undo records leak into a later rollback.

    Regression test: the undo records of the undone generations were deleted only
    by the separate delete_range. Left behind by a crash, they were replayed over
    the new timeline's generations of the same numbers (here b came back as b"2").
    """
    store = _CrashesInDeleteRange(tmp_path / "db")
    try:
        state = ShardState(store, "ops", 0)
        commit(state, {b"a": b"1", b"b": b"1"})
        commit(state, {b"b": b"2"})
        commit(state, {b"z": b"9", b"b": b"3"})
        store.crash_next_delete_range = True
        with pytest.raises(RuntimeError, match="killed"):
            state.rollback_to(1)

        state = ShardState(store, "ops", 0)  # the restart
        assert state.rollback_to(1) == 0
        assert commit(state, {b"a": b"5"}) == 2
        assert commit(state, {b"c": b"7"}) == 3
        state.rollback_to(2)
        assert stored_data(state) == {b"a": b"5", b"b": b"1"}
    finally:
        store.close()


def test_a_commit_writes_nothing_for_keys_that_did_not_change(store: RocksDBStore) -> None:
    """A key put and deleted within one epoch (a timer set and fired), or put again with its committed value,
    costs no write and no undo record; the keys that did change still roll back."""
    state = ShardState(store, "ops", 0)
    commit(state, {b"kept": b"1"})
    undo = prefix(b"u", state)
    undo_before = scan_prefix(store, undo)
    state.put(b"timer", b"")
    state.delete(b"timer")
    state.put(b"kept", b"1")
    assert state.commit() == 2
    assert scan_prefix(store, undo) == undo_before  # generation 2 changed nothing: no undo chunk for it
    assert stored_data(state) == {b"kept": b"1"}

    state.put(b"timer", b"")
    state.delete(b"timer")
    state.put(b"kept", b"2")
    assert state.commit() == 3
    state.rollback_to(1)
    assert stored_data(state) == {b"kept": b"1"}


def test_rollback_past_the_undo_floor_is_refused(store: RocksDBStore) -> None:
    """With keep_generations=2, rolling back further than the kept undo records raises StateError and changes nothing."""
    state = ShardState(store, "ops", 5, keep_generations=2)
    history = build_history(state, 6)

    with pytest.raises(StateError, match=r"ops shard 5 is at generation 6 but the recovery store is at 3, "
                                         r"older than the oldest undo record \(4\)"):
        state.rollback_to(3)
    assert state.generation == 6
    assert_state_is(state, history[6])

    assert state.rollback_to(4) == 2
    assert_state_is(state, history[4])


def test_rollback_to_a_generation_the_store_never_reached_is_refused(store: RocksDBStore) -> None:
    """A recovery snapshot ahead of RocksDB means the state folder lost data: refuse, do not run on empty state."""
    state = ShardState(store, "ops", 1)
    build_history(state, 2)
    with pytest.raises(StateError, match="lost data"):
        state.rollback_to(5)
    assert state.generation == 2


def test_undo_records_are_trimmed(store: RocksDBStore) -> None:
    """Old undo records are deleted (in chunks) once they fall out of the window: the undo log stays bounded."""
    state = ShardState(store, "ops", 0, keep_generations=2)
    undo_counts = []
    for n in range(20):
        state.put(b"counter", str(n).encode())
        state.commit()
        undo_counts.append(len(scan_prefix(store, prefix(b"u", state))))
    assert max(undo_counts[4:]) <= 2 * 2 and min(undo_counts[4:]) >= 2, undo_counts


# -- event-time expiry ---------------------------------------------------------------------------

def test_expired_value_is_invisible_from_its_expiry_on(store: RocksDBStore) -> None:
    """A value put with expires_at_ms is seen before that event time and not from it on, committed or not."""
    state = ShardState(store, "ttl", 0)
    state.put(b"short", b"v", expires_at_ms=1_000)
    state.put(b"forever", b"v")

    def visible_at(now_ms: int) -> tuple[bytes | None, bytes | None]:
        return state.get(b"short", now_ms), state.get(b"forever", now_ms)

    expected = [(b"v", b"v"), (None, b"v"), (None, b"v"), (None, b"v")]
    assert [visible_at(now) for now in (999, 1_000, 5_000, 10**15)] == expected  # still pending
    state.commit()
    assert [visible_at(now) for now in (999, 1_000, 5_000, 10**15)] == expected  # from RocksDB


def fill_for_sweep(state: ShardState) -> None:
    """Generation 1: 100 short-lived, 100 long-lived, 50 eternal and 50 short-lived keys; generation 2 renews the last 50."""
    for n in range(100):
        state.put(b"short-%d" % n, b"s", expires_at_ms=1_000)
        state.put(b"long-%d" % n, b"l", expires_at_ms=50_000)
    for n in range(50):
        state.put(b"forever-%d" % n, b"f")
        state.put(b"renewed-%d" % n, b"old", expires_at_ms=1_000)
    state.commit()
    for n in range(50):
        state.put(b"renewed-%d" % n, b"new", expires_at_ms=90_000)
    state.commit()


def test_sweep_deletes_expired_values_and_their_index_entries(store: RocksDBStore) -> None:
    """sweep(now) deletes what expired by now; unexpired and renewed keys stay. The index is one value per
    generation and minute of expiry (two here, not 300 keys): a bucket goes once its whole minute has passed."""
    state = ShardState(store, "ttl", 0)
    fill_for_sweep(state)
    assert len(stored_data(state)) == 300 and len(stored_index(state)) == 300 and bucket_keys(state) == 2

    assert state.sweep(1_000) == 100
    state.commit()

    expiries = stored_expiries(state)
    assert sorted(expiries) == sorted([b"long-%d" % n for n in range(100)] + [b"forever-%d" % n for n in range(50)]
                                      + [b"renewed-%d" % n for n in range(50)])
    assert all(expiries[b"renewed-%d" % n] == 90_000 and state.get(b"renewed-%d" % n, 1_000) == b"new"
               for n in range(50))
    assert len(stored_index(state)) == 300  # the first minute (expiries 0 to 59,999) is not over: its bucket stays
    assert state.sweep(1_000) == 0

    assert state.sweep(59_999) == 100  # the long-lived keys; the renewed ones' old entries find them renewed
    state.commit()
    assert sorted(stored_expiries(state)) == sorted([b"forever-%d" % n for n in range(50)]
                                                    + [b"renewed-%d" % n for n in range(50)])
    assert sorted(stored_index(state)) == sorted((90_000, b"renewed-%d" % n) for n in range(50))
    assert bucket_keys(state) == 1


def test_sweep_sees_uncommitted_puts(store: RocksDBStore) -> None:
    """Values put in the current epoch are swept too, and a sweep before their expiry keeps them."""
    state = ShardState(store, "ttl", 0)
    state.put(b"a", b"1", expires_at_ms=500)
    state.put(b"b", b"2", expires_at_ms=1_500)
    assert state.sweep(1_000) == 1
    state.commit()
    assert stored_data(state) == {b"b": b"2"}
    assert stored_index(state) == [(1_500, b"b")]


def test_many_sweeps_of_one_epoch_take_its_expired_puts_in_any_order(store: RocksDBStore) -> None:
    """A replay's epoch can span days of event time: sweep after sweep finds puts of that epoch expired. Each
    takes exactly those expired by its time (puts made after an earlier sweep included), and a key put again
    with a later expiry stays, whatever order the puts came in."""
    state = ShardState(store, "ttl", 0)
    for n in (7, 3, 9, 1, 5):
        state.put(b"k%d" % n, b"v", expires_at_ms=n * 1_000)
    state.put(b"k3", b"renewed", expires_at_ms=20_000)
    assert state.sweep(1_000) == 1  # k1
    state.put(b"k2", b"v", expires_at_ms=2_000)  # after the first sweep of the epoch
    state.put(b"k0", b"v", expires_at_ms=500)  # already past it
    assert state.sweep(2_000) == 2  # k0, k2
    assert state.sweep(4_000) == 0  # k3 was renewed
    assert state.sweep(9_000) == 3  # k5, k7, k9
    assert state.sweep(9_000) == 0
    state.commit()
    assert stored_data(state) == {b"k3": b"renewed"}
    assert stored_index(state) == [(20_000, b"k3")]
    state.put(b"k4", b"v", expires_at_ms=30_000)  # the next epoch starts with a plain list again
    assert state.sweep(29_999) == 1  # k3
    assert state.sweep(30_000) == 1


def test_sweep_is_undone_by_rollback(store: RocksDBStore) -> None:
    """A sweep is an ordinary generation: rolling it back brings the expired values back (still invisible to get)."""
    state = ShardState(store, "ttl", 0)
    fill_for_sweep(state)
    before = stored_data(state)
    state.sweep(1_000)
    state.commit()
    state.rollback_to(2)
    assert stored_data(state) == before
    assert state.get(b"short-0", 1_000) is None and state.get(b"short-0", 999) == b"s"


def test_store_shrinks_after_sweep(store: RocksDBStore) -> None:
    """The swept keys leave RocksDB: the live keys at once, the whole store once the sweep leaves the undo window.

    Right after the sweep the store as a whole does not shrink: the sweep's undo
    records keep the deleted values so that it can be rolled back. They go when
    their generation is trimmed, keep_generations commits later.
    """
    keep = 2
    state = ShardState(store, "ttl", 0, keep_generations=keep)
    fill_for_sweep(state)
    live_before = len(stored_data(state)) + len(stored_index(state))
    total_before = count_keys(store)

    state.sweep(59_999)
    sweep_generation = state.commit()
    # 200 values, and the spent bucket with its 250 entries (short, long and the renewed keys' old expiry)
    assert len(stored_data(state)) + len(stored_index(state)) == live_before - 450

    for tick in range(keep + 1):
        state.put_meta(b"tick", b"%d" % tick)
        state.commit()
    total_after = count_keys(store)
    undo_generations = {int.from_bytes(key[len(state._undo):len(state._undo) + 8], "big")
                        for key, _ in store.scan(state._undo, state._undo + b"\xff")}
    assert undo_generations and min(undo_generations) > sweep_generation  # the sweep's undo records are trimmed
    assert total_after < total_before - 190  # the 200 swept keys are gone (a few metadata keys came)
    store.compact()
    assert count_keys(store) == total_after
    # store.approximate_keys() is not asserted on: RocksDB's estimate-num-keys is not
    # reliable here (it reported 0 for a store holding 500 live keys right after compact()).


# -- isolation -----------------------------------------------------------------------------------

def test_namespaces_and_shards_do_not_see_each_other(store: RocksDBStore) -> None:
    """Views with another namespace (also one that extends the name) or shard share a store but no keys."""
    views = [ShardState(store, "dedup", 0), ShardState(store, "dedup", 1), ShardState(store, "dedup2", 0),
             ShardState(store, "stage", 256)]
    for n, view in enumerate(views):
        view.put(b"shared-key", b"view-%d" % n, expires_at_ms=1_000 * (n + 1))
        view.put(b"own-%d" % n, b"x")
        view.put_meta(b"clock", b"%d" % n)
        view.commit()
        view.put(b"shared-key", b"view-%d-v2" % n, expires_at_ms=1_000 * (n + 1))
        view.commit()

    views[0].rollback_to(1)
    assert views[1].sweep(10**9) == 1
    views[1].commit()

    reopened = [ShardState(store, view.namespace, view.shard) for view in views]
    assert [view.generation for view in reopened] == [1, 3, 2, 2]
    assert [view.get(b"shared-key") for view in reopened] == [b"view-0", None, b"view-2-v2", b"view-3-v2"]
    assert [view.get_meta(b"clock") for view in reopened] == [b"0", b"1", b"2", b"3"]
    for n, view in enumerate(reopened):
        assert set(stored_data(view)) == ({b"own-%d" % n} if n == 1 else {b"shared-key", b"own-%d" % n})


def test_scan_merges_buffered_writes_deletes_and_expiry(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    state = ShardState(store, "timers", 3)
    for n in range(5):
        state.put(b"t" + n.to_bytes(8, "big"), str(n).encode())
    state.commit()
    state.delete(b"t" + (1).to_bytes(8, "big"))
    state.put(b"t" + (7).to_bytes(8, "big"), b"7")
    state.put(b"t" + (9).to_bytes(8, "big"), b"9", expires_at_ms=100)
    state.put(b"u-other", b"x")
    keys = [key for key, _ in state.scan(b"t", b"u", now_ms=50)]
    assert keys == [b"t" + n.to_bytes(8, "big") for n in (0, 2, 3, 4, 7, 9)]
    assert [value for _, value in state.scan(b"t", b"u", now_ms=100)] == [b"0", b"2", b"3", b"4", b"7"]
    assert [value for _, value in state.scan(b"t", b"u", limit=2)] == [b"0", b"2"]
    other = ShardState(store, "timers", 4)
    assert other.scan(b"t", b"u") == []
    store.close()


def test_the_read_cache_follows_commits_rollbacks_and_its_bound(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    state = ShardState(store, "cached", 0, cache_entries=3)
    state.put(b"k", b"v1")
    state.commit()
    assert state.get(b"k") == b"v1"
    state.put(b"k", b"v2")
    assert state.get(b"k") == b"v2"
    generation = state.commit()
    state.put(b"k", b"v3")
    state.commit()
    assert state.get(b"k") == b"v3"
    state.rollback_to(generation)
    assert state.get(b"k") == b"v2", "a rollback is not hidden by the cache"
    for n in range(10):  # more keys than the cache holds
        state.put(b"n%d" % n, b"%d" % n)
        state.commit()
    assert [state.get(b"n%d" % n) for n in range(10)] == [b"%d" % n for n in range(10)]
    assert len(state._cache) <= 3 + 1
    other = ShardState(store, "cached", 0)
    assert other.get(b"k") == b"v2" and other.get(b"n9") == b"9"
    store.close()


def test_scans_of_an_owners_keys_match_a_plain_model_through_commits_sweeps_and_rollbacks(tmp_path: Path) -> None:
    """A scan that stays inside one owner's keys (state/keys.py: owner, zero byte, subject) reads only that
    owner's buffered writes; whatever the mix of puts, deletes, expiries, sweeps, commits and rollbacks, every
    scan (an owner's, a range across owners, one whose bounds share no zero byte) gives what a model gives."""
    store = RocksDBStore(tmp_path / "db")
    state = ShardState(store, "journal", 1)
    rng = random.Random(11)
    owners = [b"h", b"hx", b"h\x00", b"cus_1", b"cus_12", b"cus_2", b"\x00"]
    committed: dict[int, dict[bytes, tuple[bytes, int]]] = {0: {}}
    model: dict[bytes, tuple[bytes, int]] = {}

    def random_key() -> bytes:
        owner = rng.choice(owners)
        return b"h" + owner + b"\x00" + rng.randbytes(rng.randrange(0, 3)) if rng.random() < 0.8 else rng.randbytes(3)

    def expected(start: bytes, end: bytes, now_ms: int) -> list[tuple[bytes, bytes]]:
        return sorted((key, value) for key, (value, expires) in model.items()
                      if start <= key < end and not expired(expires, now_ms))

    for step in range(3000):
        roll = rng.random()
        if roll < 0.45:
            key, value = random_key(), rng.randbytes(4)
            expires = rng.choice([0, 0, rng.randrange(1, 1000)])
            state.put(key, value, expires)
            model[key] = (value, expires)
        elif roll < 0.6:
            key = random_key()
            state.delete(key)
            model.pop(key, None)
        elif roll < 0.65:
            now_ms = rng.randrange(0, 1000)
            state.sweep(now_ms)
            model = swept(model, now_ms)
        elif roll < 0.7:
            committed[state.commit()] = dict(model)
        elif roll < 0.72:
            generation = rng.choice([g for g in committed if g >= state.generation - 10])
            state.rollback_to(generation)
            model = dict(committed[generation])
            committed = {g: saved for g, saved in committed.items() if g <= generation}
        now_ms = rng.randrange(0, 1000)
        owner_prefix = b"h" + rng.choice(owners) + b"\x00"
        for start, end in [(owner_prefix, owner_prefix + b"\xff" * 3), (b"h", b"i"), (b"hcus_1", b"hcus_2"),
                           (b"h\x00", b"h\x00\xff")]:
            assert state.scan(start, end, now_ms) == expected(start, end, now_ms), (step, start, end)
    store.close()


def test_sweep_still_reads_the_per_key_index_of_an_older_state_folder(store: RocksDBStore) -> None:
    """State written before the expiry buckets has one index key per value (x P expiry key): a sweep deletes
    those values and their index keys as before, beside the buckets' values."""
    state = ShardState(store, "ttl", 0)
    data, index = prefix(b"d", state), prefix(b"x", state)
    store.write({data + b"old-%d" % n: U64.pack(500) + b"v" for n in range(20)}
                | {index + U64.pack(500) + b"old-%d" % n: b"" for n in range(20)})
    state.put(b"new", b"v", expires_at_ms=700)
    state.commit()
    assert state.sweep(1_000) == 21
    state.commit()
    assert stored_data(state) == {} and scan_prefix(store, index) == {}
    assert stored_index(state) == [(700, b"new")]  # its bucket's minute is not over yet


def test_a_sweep_reads_about_limit_entries_and_the_next_one_goes_on(store: RocksDBStore) -> None:
    """A sweep reads whole buckets until it has read `limit` entries; what is left waits for the next sweep."""
    state = ShardState(store, "ttl", 0)
    for minute in range(10):
        for n in range(100):
            state.put(b"k-%d-%d" % (minute, n), b"v", expires_at_ms=minute * 60_000 + n + 1)
        state.commit()
    assert state.sweep(10 * 60_000, limit=250) == 300  # three buckets of 100
    state.commit()
    assert len(stored_data(state)) == 700 and bucket_keys(state) == 7
    while state.sweep(10 * 60_000, limit=250):
        state.commit()
    state.commit()
    assert stored_data(state) == {} and bucket_keys(state) == 0


def test_bulk_write_stores_the_buffer_as_committed_with_its_expiry_buckets(store: RocksDBStore) -> None:
    """What a benchmark builds with bulk_write reads back, resumes at the same generation, and sweeps."""
    state = ShardState(store, "ttl", 0)
    for part in range(3):
        for n in range(10):
            state.put(b"k-%d-%d" % (part, n), b"v", expires_at_ms=1_000 + n)
        state.bulk_write()
    assert state.generation == 0 and len(stored_data(state)) == 30 and bucket_keys(state) == 3
    reopened = ShardState(store, "ttl", 0)
    assert reopened.rollback_to(0) == 0 and reopened.get(b"k-2-9", 1_000) == b"v"
    assert reopened.sweep(59_999) == 30  # the end of the first minute: the buckets go too
    reopened.commit()
    assert stored_data(reopened) == {} and bucket_keys(reopened) == 0


# -- spills: an epoch's writes in the store before its commit ---------------------------------------

def test_a_spill_writes_now_but_the_commit_closes_the_generation(tmp_path: Path) -> None:
    """Spilled writes are in the store while the generation stays; the commit after them makes one generation
    of them; a crash before it (a reopened store, rolled back to the committed generation) undoes them all, and
    a key spilled twice gets its value from before the first spill back."""
    with opened(tmp_path / "db") as store:
        state = ShardState(store, "spilled", 0)
        state.put(b"k01", b"k01.1")
        state.put(b"k02", b"k02.1")
        assert state.commit() == 1
        state.put(b"k01", b"k01.2")
        state.delete(b"k02")
        state.put(b"k03", b"k03.2", expires_at_ms=5_000)
        state.spill()
        assert state.generation == 1 and state.pending_changes() == 0
        assert stored_data(state) == {b"k01": b"k01.2", b"k03": b"k03.2"}, "spilled: in the store before the commit"
        state.put(b"k01", b"k01.3")
        state.put(b"k02", b"k02.3")
        state.spill()
        assert stored_data(state) == {b"k01": b"k01.3", b"k02": b"k02.3", b"k03": b"k03.2"}
    with opened(tmp_path / "db") as store:  # a crash before the commit: the committed snapshot is generation 1
        state = ShardState(store, "spilled", 0)
        assert state.rollback_to(1) == 0
        assert_state_is(state, {b"k01": b"k01.1", b"k02": b"k02.1"})
        assert stored_index(state) == [] and state.sweep(10_000) == 0
        state.put(b"k01", b"k01.4")
        state.spill()
        state.put(b"k04", b"k04.4")
        assert state.commit() == 2
        assert state.commit() == 2, "nothing since: no new generation"
        assert_state_is(state, {b"k01": b"k01.4", b"k02": b"k02.1", b"k04": b"k04.4"})
        assert state.rollback_to(1) == 1, "the spill and the commit after it are one generation"
        assert_state_is(state, {b"k01": b"k01.1", b"k02": b"k02.1"})


def test_a_spill_and_no_change_after_it_still_closes_its_generation(store: RocksDBStore) -> None:
    state = ShardState(store, "spilled", 0)
    state.put(b"k", b"v", expires_at_ms=70_000)
    state.spill()
    assert state.commit() == 1
    assert state.rollback_to(1) == 0 and state.get(b"k") == b"v" and stored_index(state) == [(70_000, b"k")]


def test_spills_commits_sweeps_and_crashes_match_a_model_of_the_committed_state(tmp_path: Path) -> None:
    """Whatever the mix of puts, deletes, expiries, sweeps, spills and commits, a crash (the store reopened,
    rolled back to the last committed generation, or to an earlier one) leaves exactly that generation's state:
    the values, their expiries and the expiry index; and reads before the crash see every change, spilled or
    buffered."""
    rng = random.Random(23)
    committed: dict[int, dict[bytes, tuple[bytes, int]]] = {0: {}}
    model: dict[bytes, tuple[bytes, int]] = {}
    store = RocksDBStore(tmp_path / "db")
    state = ShardState(store, "spilled", 3, keep_generations=8, cache_entries=5)
    spills = crashes = 0
    for step in range(4000):
        roll = rng.random()
        key = rng.choice(KEYS)
        if roll < 0.4:
            value, expires = rng.randbytes(3), rng.choice([0, 0, rng.randrange(1, 300_000)])
            state.put(key, value, expires)
            model[key] = (value, expires)
        elif roll < 0.55:
            state.delete(key)
            model.pop(key, None)
        elif roll < 0.6:
            now_ms = rng.randrange(0, 300_000)
            state.sweep(now_ms)
            model = swept(model, now_ms)
        elif roll < 0.75:
            state.spill()
            spills += 1
        elif roll < 0.82:
            committed[state.commit()] = dict(model)
        elif roll < 0.85:
            store.close()
            crashes += 1
            store = RocksDBStore(tmp_path / "db")
            state = ShardState(store, "spilled", 3, keep_generations=8, cache_entries=5)
            # Mostly the last committed generation (Bytewax's snapshot at a crash); else an earlier one the undo
            # log still reaches (trimming keeps the last keep_generations at least).
            floor = state._read_meta(b"undo_floor")
            generation = state.generation if rng.random() < 0.7 else rng.choice(
                [g for g in committed if g >= floor])
            state.rollback_to(generation)
            model = dict(committed[generation])
            committed = {g: saved for g, saved in committed.items() if g <= generation}
            assert stored_data(state) == {k: value for k, (value, _) in model.items()}, step
            assert stored_expiries(state) == {k: expires for k, (_, expires) in model.items()}, step
            # Every value with an expiry is in the index (an index may keep entries a sweep has not dropped yet).
            assert {(expires, k) for k, (_, expires) in model.items() if expires} <= set(stored_index(state)), step
        now_ms = rng.randrange(0, 300_000)
        assert {k: state.get(k, now_ms) for k in KEYS} == {
            k: (model[k][0] if k in model and not expired(model[k][1], now_ms) else None) for k in KEYS}, step
    assert spills > 500 and crashes > 50
    store.close()


def test_a_bulk_write_after_a_spilled_generation_keeps_the_spills_expiry_buckets(store: RocksDBStore) -> None:
    """Spills and bulk writes both number their bucket keys; one counter keeps them apart, so a bulk write into
    the generation a spill wrote into (the next commit's) overwrites none of its index entries."""
    state = ShardState(store, "spilled", 0)
    state.put(b"k01", b"v", expires_at_ms=1_000)
    state.spill()
    state.commit()
    state.put(b"k02", b"v", expires_at_ms=2_000)
    state.bulk_write()
    assert sorted(stored_index(state)) == [(1_000, b"k01"), (2_000, b"k02")]


def test_forget_oldest_trims_a_full_cache_to_three_quarters_oldest_first() -> None:
    cache = {n: str(n) for n in range(10)}
    cache[3] = "updated"  # an update keeps the key's place: it was read long ago
    assert forget_oldest(cache, 8) == [0, 1, 2, 3]
    assert list(cache) == [4, 5, 6, 7, 8, 9]
    assert forget_oldest(cache, 8) == []  # at or under three quarters: nothing goes
    assert list(cache) == [4, 5, 6, 7, 8, 9]
