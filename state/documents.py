"""One decoded document per owner (a customer), kept in memory and written once per epoch.

An operator that keeps many small facts about one owner (the rules host: views, purchases, deadlines,
caps, consents of a customer) would otherwise read, decode, encode and write a RocksDB entry, and an
undo record, per fact. Here the owner's facts are one JSON document under one key of the shard's
state: read and decoded once, changed in place as often as the epoch needs, encoded and written once
when the shard commits (`ShardState.commit` calls `flush`), and undone with the rest of the shard's
state on a rollback.

    docs = Documents(state, b"D", capacity=10_000)
    doc = docs.get("cus_1")                   # None: nothing kept for that owner
    doc = docs.open("cus_1")                  # created if absent; marked changed
    set_entry(doc, "V", key, [ts, id], expires_ms)
    docs.changed("cus_1")                     # after changing a document got with get()
    docs.delete("cus_1")

Every section of a document maps a subject (a product's JSON text, a channel, "" for a section of one
entry) to an entry, a list whose last element is its expiry in event time (0 = never). An entry stays readable until a sweep removes it, exactly as an expiring key of
`ShardState` does (reads that pass a time hide it from that time on): `sweep(cutoff)` reads the
documents that may hold an expired entry, through an index of `(expiry, owner)` keys kept beside them
(the expiry a lower bound of the document's earliest, so a write walks no entries), and drops them.

Neighbours: `shard_state.py` (the buffered, undoable key-value view underneath), `clock.py` (which
decides when to sweep), `keys.py` (the key layout of the keys that stay per fact).
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from omnitrigger.state.shard_state import ShardState

Document = dict[str, Any]
_U64 = struct.Struct(">Q")
#: The document's sweep index expiry: at most the earliest expiry of its entries (exact after a sweep; kept
#: as the lower bound between sweeps, so a write costs no walk over the entries).
INDEXED = "~"


class Documents:
    def __init__(self, state: ShardState, prefix: bytes, capacity: int) -> None:
        self.state = state
        self.prefix = prefix
        self.index_prefix = prefix + b"~"
        self.capacity = max(1, capacity)
        self._docs: dict[str, Document | None] = {}  # decoded documents (None: known absent), oldest first
        self._indexed: dict[str, int] = {}  # the expiry each cached document's index key has in the state (0: none)
        self._changed: set[str] = set()
        state.before_commit(self.flush)
        state.after_rollback(self._forget)

    def get(self, owner: str) -> Document | None:
        """The owner's document (change it in place, then call `changed`), or None."""
        docs = self._docs
        if owner in docs:
            return docs[owner]
        raw = self.state.get(self.prefix + owner.encode())
        doc = orjson.loads(raw) if raw is not None else None
        docs[owner] = doc
        self._indexed[owner] = doc.get(INDEXED, 0) if doc is not None else 0
        return doc

    def open(self, owner: str) -> Document:
        """The owner's document, created empty if there is none, marked changed."""
        doc = self.get(owner)
        if doc is None:
            doc = self._docs[owner] = {}
        self._changed.add(owner)
        return doc

    def changed(self, owner: str) -> None:
        self._changed.add(owner)

    def delete(self, owner: str) -> None:
        if self.get(owner) is not None:
            self._docs[owner] = None
            self._changed.add(owner)

    def flush(self) -> None:
        """Encode every changed document into the shard's pending writes (called before a commit)."""
        state = self.state
        indexed = self._indexed
        for owner in sorted(self._changed):  # sorted: the same writes in the same order on every run
            doc = self._docs[owner]
            owner_key = owner.encode()
            if doc:
                _drop_empty_sections(doc)
            if doc is not None and not doc.keys() - {INDEXED}:
                doc = self._docs[owner] = None
            earliest = doc.get(INDEXED, 0) if doc is not None else 0
            before = indexed.get(owner, 0)
            if earliest != before:
                if before:
                    state.delete(self.index_prefix + _U64.pack(before) + owner_key)
                if earliest:
                    state.put(self.index_prefix + _U64.pack(earliest) + owner_key, b"")
                indexed[owner] = earliest
            if doc is None:
                state.delete(self.prefix + owner_key)
            else:
                state.put(self.prefix + owner_key, orjson.dumps(doc))
        self._changed.clear()
        docs = self._docs
        if len(docs) > self.capacity:  # forget the oldest read quarter: hot owners are read back soon
            for owner in list(docs)[: len(docs) - self.capacity * 3 // 4]:
                del docs[owner]
                indexed.pop(owner, None)

    def sweep(self, cutoff_ms: int) -> int:
        """Drop every entry that expired at or before `cutoff_ms` from the documents holding one; how many."""
        start, end = self.index_prefix, self.index_prefix + _U64.pack(cutoff_ms + 1)
        dropped = 0
        owners = [key[len(start) + 8:].decode() for key, _ in self.state.scan(start, end)]
        for owner in owners:
            doc = self.get(owner)
            if doc is None:
                continue
            for section in doc.values():
                if type(section) is dict:
                    expired = [subject for subject, value in section.items() if 0 < value[-1] <= cutoff_ms]
                    for subject in expired:
                        del section[subject]
                    dropped += len(expired)
            earliest = earliest_expiry(doc)  # exact again (between sweeps it is only a lower bound)
            if earliest:
                doc[INDEXED] = earliest
            else:
                doc.pop(INDEXED, None)
            self._changed.add(owner)
        return dropped

    def _forget(self) -> None:
        self._docs.clear()
        self._indexed.clear()
        self._changed.clear()


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


def earliest_expiry(doc: Document) -> int:
    """The earliest expiry of any entry of `doc` (0: none expires)."""
    earliest = 0
    for section in doc.values():
        if type(section) is dict:
            for value in section.values():
                expires = value[-1]
                if expires and (not earliest or expires < earliest):
                    earliest = expires
    return earliest


def _drop_empty_sections(doc: Document) -> None:
    for name in [name for name, section in doc.items() if not section]:
        del doc[name]
