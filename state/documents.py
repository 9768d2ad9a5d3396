"""One decoded document per owner (a customer), kept in memory and written once per epoch.

An operator that keeps many small facts about one owner (the rules host: views, purchases, deadlines,
caps, consents of a customer) would otherwise read, decode, encode and write a RocksDB entry, and an
undo record, per fact. Here the owner's facts are one JSON document under one key of the shard's
state: read and decoded once, changed in place as often as the epoch needs, encoded and written once
when the shard commits (`ShardState.commit` calls `flush`; so does `ShardState.spill`, in a stage that
writes as the epoch goes), and undone with the rest of the shard's state on a rollback.

    docs = Documents(state, b"D", capacity=10_000)
    doc = docs.get("cus_1")                   # None: nothing kept for that owner
    doc = docs.open("cus_1")                  # created if absent; marked changed
    set_entry(doc, "V", key, [ts, id], expires_ms)
    docs.changed("cus_1")                     # after changing a document got with get()
    docs.delete("cus_1")

Every section of a document maps a subject (a product's JSON text, a channel, "" for a section of one
entry) to an entry, a list whose last element is its expiry in event time (0 = never). An entry stays
readable until a sweep removes it, exactly as an expiring key of `ShardState` does (reads that pass a
time hide it from that time on): `sweep(cutoff)` reads the documents that may hold an expired entry,
through an index of `(expiry, owner)` keys kept beside them (the expiry a lower bound of the document's
earliest, so a write walks no entries), and drops those entries. Each section has such a lower bound too,
under `~` and its name (`~V` for section `V`; 0: nothing in it expires), so a sweep walks only the sections
that may hold an expired entry: a due document's other sections (most of them) cost a lookup, not a walk.
A section without one (a document written before the bounds) is walked once and learns it.

`DecodedValues` is the part without sections: any JSON value per name, kept decoded and written once per
commit (the visits operator's device records).

Neighbours: `shard_state.py` (the buffered, undoable key-value view underneath), `clock.py` (which
decides when to sweep), `keys.py` (the key layout of the keys that stay per fact).
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from omnitrigger.state.cache import forget_oldest
from omnitrigger.state.shard_state import ShardState

Document = dict[str, Any]
_U64 = struct.Struct(">Q")
#: The document's sweep index expiry: at most the earliest expiry of its entries (the least of its sections'
#: bounds after a sweep; kept as the lower bound between sweeps, so a write costs no walk over the entries).
#: A section's own lower bound is under INDEXED and the section's name (`~V` for `V`).
INDEXED = "~"


class DecodedValues:
    """JSON values under `prefix + name` keys of one shard's state, kept decoded: read once, changed in place
    (then `changed(name)`) or replaced (`put`), encoded and written once per commit, forgotten on a rollback.

    At most about `capacity` values stay in memory; the oldest read go first (hot names are read back soon).
    """

    def __init__(self, state: ShardState, prefix: bytes, capacity: int) -> None:
        self.state = state
        self.prefix = prefix
        self.capacity = max(1, capacity)
        self._values: dict[str, Any] = {}  # decoded values (None: known absent), oldest read first
        self._changed: set[str] = set()
        state.before_commit(self.flush, self._changed.__len__)
        state.after_rollback(self._forget)

    def get(self, name: str) -> Any:
        """The value (None: absent). Change it in place and call `changed`, or `put` another."""
        values = self._values
        if name in values:
            return values[name]
        raw = self.state.get(self.prefix + name.encode())
        value = orjson.loads(raw) if raw is not None else None
        values[name] = value
        self._loaded(name, value)
        return value

    def put(self, name: str, value: Any) -> None:
        if name not in self._values:
            self.get(name)  # (what a subclass learns when a value is read)
        self._values[name] = value
        self._changed.add(name)

    def changed(self, name: str) -> None:
        self._changed.add(name)

    def in_memory(self) -> int:
        """How many values are held decoded now (about `capacity` at most after a flush)."""
        return len(self._values)

    def delete(self, name: str) -> None:
        if self.get(name) is not None:
            self._values[name] = None
            self._changed.add(name)

    def flush(self) -> None:
        """Encode every changed value into the shard's pending writes (called before a commit)."""
        for name in sorted(self._changed):  # sorted: the same writes in the same order on every run
            self._write(name, self._values[name])
        self._changed.clear()
        values = self._values
        if len(values) > self.capacity:  # the oldest read go, down to three quarters (not a copy of them all)
            for name in forget_oldest(values, self.capacity):
                self._evicted(name)

    def _write(self, name: str, value: Any) -> None:
        if value is None:
            self.state.delete(self.prefix + name.encode())
        else:
            self.state.put(self.prefix + name.encode(), orjson.dumps(value))

    def _loaded(self, name: str, value: Any) -> None:
        """A value was read from the state (a hook for subclasses)."""

    def _evicted(self, name: str) -> None:
        """A value left the memory (a hook for subclasses)."""

    def _forget(self) -> None:
        self._values.clear()
        self._changed.clear()


class Documents(DecodedValues):
    """Owners' documents of sections of expiring entries (see the module docstring), with their sweep index."""

    def __init__(self, state: ShardState, prefix: bytes, capacity: int) -> None:
        super().__init__(state, prefix, capacity)
        self.index_prefix = prefix + b"~"
        self._indexed: dict[str, int] = {}  # the expiry each cached document's index key has in the state (0: none)

    def open(self, owner: str) -> Document:
        """The owner's document, created empty if there is none, marked changed."""
        doc = self.get(owner)
        if doc is None:
            doc = self._values[owner] = {}
        self._changed.add(owner)
        return doc

    def sweep(self, cutoff_ms: int) -> int:
        """Drop every entry that expired at or before `cutoff_ms` from the documents holding one; how many.

        The documents are those the index names and those held in memory whose own lower bound is due: the
        index is written at commits, so without the second a sweep would depend on where the epochs fell."""
        start, end = self.index_prefix, self.index_prefix + _U64.pack(cutoff_ms + 1)
        dropped = 0
        owners = {key[len(start) + 8:].decode() for key, _ in self.state.scan(start, end)}
        owners.update([owner for owner, doc in self._values.items() if doc and 0 < doc.get(INDEXED, 0) <= cutoff_ms])
        for owner in sorted(owners):
            doc = self.get(owner)
            if doc is None:
                continue
            earliest = 0  # the least of the sections' bounds: the document's index from here
            for name, section in list(doc.items()):
                if type(section) is not dict or not section:
                    continue
                bound_key = INDEXED + name
                bound = doc.get(bound_key)
                if bound is not None and (not bound or bound > cutoff_ms):  # nothing in it has expired
                    if bound and (not earliest or bound < earliest):
                        earliest = bound
                    continue
                expired = []
                least = 0
                for subject, value in section.items():  # one walk: what expired, and the earliest of the rest
                    expires = value[-1]
                    if expires:
                        if expires <= cutoff_ms:
                            expired.append(subject)
                        elif not least or expires < least:
                            least = expires
                for subject in expired:
                    del section[subject]
                dropped += len(expired)
                doc[bound_key] = least  # exact again
                if least and (not earliest or least < earliest):
                    earliest = least
            if earliest:
                doc[INDEXED] = earliest
            else:
                doc.pop(INDEXED, None)
            self._changed.add(owner)
        return dropped

    def _write(self, owner: str, doc: Document | None) -> None:
        if doc is not None and not _drop_empty_sections(doc):  # bounds only: nothing kept
            doc = self._values[owner] = None
        earliest = doc.get(INDEXED, 0) if doc is not None else 0
        before = self._indexed.get(owner, 0)
        if earliest != before:
            owner_key = owner.encode()
            if before:
                self.state.delete(self.index_prefix + _U64.pack(before) + owner_key)
            if earliest:
                self.state.put(self.index_prefix + _U64.pack(earliest) + owner_key, b"")
            self._indexed[owner] = earliest
        super()._write(owner, doc)

    def _loaded(self, owner: str, doc: Document | None) -> None:
        self._indexed[owner] = doc.get(INDEXED, 0) if doc is not None else 0

    def _evicted(self, owner: str) -> None:
        self._indexed.pop(owner, None)

    def _forget(self) -> None:
        super()._forget()
        self._indexed.clear()


# -- entries of a section: {subject: [..., expires_ms]} ---------------------------------------------------------

def entry(doc: Document | None, section: str, subject: str, now_ms: int = 0) -> list[Any] | None:
    """The entry under `subject` (its expiry last), or None; `now_ms` hides one expired by then."""
    if doc is None:
        return None
    found = doc.get(section)
    if found is None:
        return None
    value = found.get(subject)
    if value is None or (now_ms and 0 < value[-1] <= now_ms):
        return None
    return value


def set_entry(doc: Document, section: str, subject: str, value: list[Any], expires_ms: int = 0) -> None:
    """Put `value` (a list; its expiry is appended) under `subject`."""
    value.append(expires_ms)
    if expires_ms and not 0 < doc.get(INDEXED, 0) <= expires_ms:  # the sweep index: a lower bound of the expiries
        doc[INDEXED] = expires_ms
    found = doc.get(section)
    bound_key = INDEXED + section
    bound = doc.get(bound_key)
    if not found:  # a new (or emptied) section: its bound starts here, or stays the lower one
        if bound is None or (expires_ms and (not bound or expires_ms < bound)):
            doc[bound_key] = expires_ms
    elif expires_ms and bound is not None and (not bound or expires_ms < bound):
        doc[bound_key] = expires_ms  # (no bound: a section of an older document, unknown until swept)
    if found is None:
        doc[section] = {subject: value}
    else:
        found[subject] = value


def drop_entry(doc: Document | None, section: str, subject: str) -> bool:
    """Remove the entry under `subject`; whether there was one."""
    if doc is None:
        return False
    found = doc.get(section)
    return found is not None and found.pop(subject, None) is not None


def _drop_empty_sections(doc: Document) -> bool:
    """Drop the empty sections, with their bounds (a bound itself is kept: 0 says nothing in a section expires);
    whether any section is left. One pass over the document: this runs for every document a commit writes."""
    empty: list[str] = []
    kept = False
    for name, section in doc.items():
        if name.startswith(INDEXED):
            continue
        if section:
            kept = True
        else:
            empty.append(name)
    for name in empty:
        del doc[name]
        doc.pop(INDEXED + name, None)
    return kept
