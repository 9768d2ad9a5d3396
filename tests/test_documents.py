"""Customer documents (state/documents.py) on RocksDB: written once per commit, swept like expiring keys,
rolled back with the shard."""

from __future__ import annotations

import orjson

from omnitrigger.state import RocksDBStore, ShardState
from omnitrigger.state.documents import Documents, drop_entry, entry, set_entry


def _open(path, capacity=100):
    store = RocksDBStore(path)
    state = ShardState(store, "rules", 3)
    return store, state, Documents(state, b"D", capacity)


def _raw_document(state: ShardState, owner: str):
    raw = state.get(b"D" + owner.encode())  # (nothing is pending right after a commit: this is RocksDB)
    return orjson.loads(raw) if raw is not None else None


def _index_keys(state: ShardState) -> list[bytes]:
    start = state._data + b"D~"
    return [key[len(start):] for key, _ in state.store.scan(start, start + b"\xff")]


def test_one_write_per_owner_per_commit_and_reads_from_memory(tmp_path):
    store, state, docs = _open(tmp_path / "db")
    for n in range(50):  # fifty facts of one customer in one epoch
        set_entry(docs.open("cus_1"), "V", f'"P{n}"', [1_000 + n, f"e{n}"], 10_000 + n)
    assert _raw_document(state, "cus_1") is None  # nothing reaches RocksDB before the commit
    state.commit()
    saved = _raw_document(state, "cus_1")
    assert len(saved["V"]) == 50 and saved["V"]['"P7"'] == [1_007, "e7", 10_007]
    assert saved["~"] == 10_000  # the earliest expiry, which the sweep index is keyed by
    assert entry(docs.get("cus_1"), "V", '"P7"') == [1_007, "e7", 10_007]
    assert entry(docs.get("cus_1"), "V", '"P7"', now_ms=10_007) is None  # a read that passes a time hides it
    assert docs.get("cus_2") is None
    store.close()


def _drop_expired(model: dict[str, dict[str, dict[str, int]]], cutoff_ms: int) -> int:
    """Drop from a model ({owner: {section: {subject: expiry}}}) what a sweep at `cutoff_ms` must; how many."""
    dropped = 0
    for sections in model.values():
        for entries in sections.values():
            for subject in [subject for subject, expires in entries.items() if 0 < expires <= cutoff_ms]:
                del entries[subject]
                dropped += 1
    return dropped


def _kept_as_modelled(state: ShardState, model: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict]:
    """Each owner's stored document, checked to hold exactly the model's entries and expiries."""
    kept_by_owner = {}
    for owner, sections in model.items():
        kept = kept_by_owner[owner] = _raw_document(state, owner) or {}
        for section, entries in sections.items():
            assert {subject: value[-1] for subject, value in kept.get(section, {}).items()} == entries
    return kept_by_owner


def test_sweep_drops_expired_entries_and_empty_documents(tmp_path):
    store, state, docs = _open(tmp_path / "db")
    doc = docs.open("cus_1")
    set_entry(doc, "V", '"old"', [1, "e1"], 5_000)
    set_entry(doc, "V", '"new"', [2, "e2"], 50_000)
    set_entry(doc, "I", "", [[["auth_id", "a1"]]])  # never expires
    set_entry(docs.open("cus_2"), "P", '"x"', [3], 6_000)
    state.commit()
    assert len(_index_keys(state)) == 2
    # Until swept, an expired entry stays readable to a read that passes no time (as an expiring key does).
    assert entry(docs.get("cus_1"), "V", '"old"') is not None
    assert docs.sweep(10_000) == 2
    state.commit()
    kept = _raw_document(state, "cus_1")
    assert set(kept["V"]) == {'"new"'} and kept["I"] == {"": [[["auth_id", "a1"]], 0]} and kept["~"] == 50_000
    assert _raw_document(state, "cus_2") is None  # nothing left: the document goes, with its index key
    assert len(_index_keys(state)) == 1
    assert docs.sweep(60_000) == 1
    state.commit()
    assert "~" not in _raw_document(state, "cus_1") and _index_keys(state) == []
    store.close()


def test_a_sweep_does_not_depend_on_where_the_commits_fell(tmp_path):
    """The index is written at commits: a sweep between two must still find an entry set since the last one,
    so that what a sweep drops (and so the state) does not depend on the epochs' wall-clock boundaries."""
    dropped = []
    for commit_between in (True, False):
        store, state, docs = _open(tmp_path / f"db-{commit_between}")
        set_entry(docs.open("cus_1"), "V", '"a"', [1, "e1"], 90_000)
        state.commit()
        set_entry(docs.open("cus_1"), "V", '"b"', [2, "e2"], 5_000)  # lowers the document's earliest expiry
        set_entry(docs.open("cus_2"), "V", '"c"', [3, "e3"], 6_000)  # a document new since the commit
        if commit_between:
            state.commit()
        dropped.append(docs.sweep(10_000))
        state.commit()
        assert set(_raw_document(state, "cus_1")["V"]) == {'"a"'} and _raw_document(state, "cus_2") is None
        assert [key[:8] for key in _index_keys(state)] == [(90_000).to_bytes(8, "big")]
        store.close()
    assert dropped == [2, 2]


def test_rollback_restores_documents_and_forgets_the_cached_ones(tmp_path):
    store, state, docs = _open(tmp_path / "db")
    set_entry(docs.open("cus_1"), "P", '"x"', [1], 0)
    first = state.commit()
    doc = docs.open("cus_1")
    set_entry(doc, "P", '"y"', [2], 0)
    drop_entry(doc, "P", '"x"')
    docs.delete("cus_9")  # absent: nothing to write
    state.commit()
    assert set(docs.get("cus_1")["P"]) == {'"y"'}
    state.rollback_to(first)
    assert set(docs.get("cus_1")["P"]) == {'"x"'}  # read back from RocksDB, not the changed copy in memory
    docs.delete("cus_1")
    state.commit()
    assert _raw_document(state, "cus_1") is None and docs.get("cus_1") is None
    store.close()


def test_documents_beyond_the_capacity_are_read_back(tmp_path):
    store, state, docs = _open(tmp_path / "db", capacity=8)
    for n in range(40):
        set_entry(docs.open(f"cus_{n:02d}"), "P", '"x"', [n], 0)
    state.commit()
    assert docs.in_memory() <= 8
    assert all(entry(docs.get(f"cus_{n:02d}"), "P", '"x"')[0] == n for n in range(40))
    store.close()


def test_a_sweep_drops_what_a_plain_walk_would_and_keeps_the_exact_earliest(tmp_path):
    """Random documents, sections mixing entries that never expire (0), that expired and that did not: a sweep
    drops exactly the expired ones and leaves the document's index at the earliest expiry kept (or none)."""
    import random

    generator = random.Random(19)
    store, state, docs = _open(tmp_path / "db", capacity=1_000)
    model: dict[str, dict[str, dict[str, int]]] = {}
    for owner_number in range(200):
        owner = f"cus_{owner_number}"
        doc = docs.open(owner)
        for section in generator.sample(["V", "P", "R", "I", "Mx"], generator.randint(1, 4)):
            for subject_number in range(generator.randint(1, 12)):
                expires = generator.choice([0, 0, generator.randint(1, 20_000), generator.randint(1, 100_000)])
                set_entry(doc, section, f'"s{subject_number}"', [subject_number], expires)
                model.setdefault(owner, {}).setdefault(section, {})[f'"s{subject_number}"'] = expires
    state.commit()
    for cutoff in (5_000, 20_000, 60_000):
        assert docs.sweep(cutoff) == _drop_expired(model, cutoff)
        state.commit()
        kept_by_owner = _kept_as_modelled(state, model)
        for owner, sections in model.items():
            kept = kept_by_owner[owner]
            earliest = min((expires for entries in sections.values() for expires in entries.values() if expires),
                           default=None)
            assert kept.get("~") == earliest
    store.close()


def test_section_bounds_keep_a_sweep_exact_through_replaced_dropped_and_older_entries(tmp_path):
    """Each section's bound (`~V` for `V`) lets a sweep skip it; it must stay a lower bound whatever happens to
    the entries: replaced by a later expiry, dropped, or written by a version before the bounds (no `~V` at
    all). A model of plain dicts says what every sweep must drop and keep."""
    import random

    generator = random.Random(7)
    store, state, docs = _open(tmp_path / "db", capacity=50)
    model: dict[str, dict[str, dict[str, int]]] = {}
    for owner_number in range(30):  # documents as the code before the bounds wrote them: the index, no bounds
        owner = f"old_{owner_number}"
        sections = {section: {f'"s{n}"': generator.choice([0, generator.randint(1, 50_000)]) for n in range(5)}
                    for section in generator.sample(["V", "P", "R"], 2)}
        model[owner] = {section: dict(entries) for section, entries in sections.items()}
        raw = {section: {subject: [1, expires] for subject, expires in entries.items()}
               for section, entries in sections.items()}
        least = min((e for entries in sections.values() for e in entries.values() if e), default=0)
        if least:
            raw["~"] = least
            state.put(b"D~" + least.to_bytes(8, "big") + owner.encode(), b"")
        state.put(b"D" + owner.encode(), orjson.dumps(raw))
    state.commit()
    now = 0
    for _round in range(12):
        for _ in range(150):
            owner = f"{generator.choice(['old', 'new'])}_{generator.randrange(30)}"
            section = generator.choice(["V", "P", "R", "I"])
            subject = f'"s{generator.randrange(8)}"'
            if generator.random() < 0.25:
                dropped = drop_entry(docs.get(owner), section, subject)
                assert dropped == (subject in model.get(owner, {}).get(section, {}))
                if dropped:
                    docs.changed(owner)
                    del model[owner][section][subject]
                continue
            expires = generator.choice([0, now + generator.randint(1, 20_000), now + generator.randint(1, 80_000)])
            set_entry(docs.open(owner), section, subject, [2], expires)
            model.setdefault(owner, {}).setdefault(section, {})[subject] = expires
        if generator.random() < 0.5:
            state.commit()
        now += 10_000
        assert docs.sweep(now) == _drop_expired(model, now)
        state.commit()
        kept_by_owner = _kept_as_modelled(state, model)
        for owner, sections in model.items():
            kept = kept_by_owner[owner]
            for section, entries in sections.items():
                expiring = [expires for expires in entries.values() if expires]
                if entries and f"~{section}" in kept:  # a lower bound of what the section holds
                    assert kept[f"~{section}"] <= min(expiring, default=0) or not expiring
                    assert kept[f"~{section}"] == 0 or kept[f"~{section}"] > now  # nothing due is left
            earliest = min((e for entries in sections.values() for e in entries.values() if e), default=None)
            # The document's index: a lower bound of its expiries (one dropped since may leave it lower), never due
            assert earliest is None or kept["~"] <= earliest
            assert kept.get("~") is None or kept["~"] > now
    store.close()


def test_changed_documents_count_as_pending_and_a_spill_writes_them_undoably(tmp_path):
    """What a stage counts to decide a spill includes the documents changed in memory; a spill encodes and
    writes them (and their sweep index) before the commit, and a crash before it restores the documents."""
    store, state, docs = _open(tmp_path / "db")
    set_entry(docs.open("cus_1"), "V", '"a"', [1, "e1"], 90_000)
    first = state.commit()
    set_entry(docs.open("cus_1"), "V", '"b"', [2, "e2"], 5_000)
    set_entry(docs.open("cus_2"), "V", '"c"', [3, "e3"], 6_000)
    assert state.pending_changes() == 2, "two documents changed in memory, none encoded yet"
    state.spill()
    assert state.pending_changes() == 0 and state.generation == first
    assert set(_raw_document(state, "cus_1")["V"]) == {'"a"', '"b"'} and _raw_document(state, "cus_2") is not None
    assert [key[:8] for key in _index_keys(state)] == [(5_000).to_bytes(8, "big"), (6_000).to_bytes(8, "big")]
    store.close()
    store, state, docs = _open(tmp_path / "db")  # a crash before the commit
    state.rollback_to(first)
    assert set(docs.get("cus_1")["V"]) == {'"a"'} and docs.get("cus_2") is None
    assert [key[:8] for key in _index_keys(state)] == [(90_000).to_bytes(8, "big")]
    assert docs.sweep(10_000) == 0
    store.close()
