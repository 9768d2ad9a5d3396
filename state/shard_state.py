"""One stateful shard's view of the store: buffered writes, an undo log, event-time expiry.

Why buffered: Bytewax recovers a shard from its last *committed* snapshot.
RocksDB must therefore hold, for that shard, exactly the state as of that
snapshot, never anything newer (docs/design.md#state-never-runs-ahead-of-bytewax: ignoring this left 4,453
of 5,000 keys wrong after a kill -9). So writes collect in memory during an
epoch; `commit()` (called from the Bytewax `snapshot()`) writes them in one
atomic batch as generation `g`, together with the values they replace, and
returns `g` as the shard's snapshot. On resume, `rollback_to(g)` undoes every
generation after `g`. A stage others wait for at an epoch's end (the sequencer, the history
stage) may `spill()` its writes while the epoch runs: they go into the store as part of generation
`g` before the commit closes it, each with its undo record, and a rollback undoes such an unclosed
generation too. A generation's undo records are packed into a few values of up to 1 MiB (one
RocksDB entry per key changed, not two); those of old generations are trimmed, in chunks, once they
are `keep_generations` behind.

Expiry is in event time, so it is deterministic: a value put with
`expires_at_ms` is invisible to `get(key, now_ms)` once `now_ms` reaches it,
whenever it is physically deleted. `sweep(now_ms)` deletes expired values
through an index of expiry buckets: each commit writes, per minute of expiry
its changes fall in, one value listing those keys (one RocksDB entry for a
minute's keys, not one per key: about a third of a flow's entries were index
entries); a sweep reads the buckets up to its time, deletes what has expired,
and drops each bucket once its whole minute has passed.

Key layout (P = namespace, NUL, 2-byte shard):
    d P key              -> 8-byte expiry (0 = never) + value
    y P minute gen [part] -> (8-byte expiry, 4-byte key length, key) of each key the generation put expiring then
                            (a spill's or a bulk write's part number after the generation)
    x P expiry key       -> b""           (the per-key expiry index of older state folders, still swept)
    u P gen chunk        -> undo records   (old values of the keys a generation changed, packed)
    m P name             -> shard metadata (current generation, undo floor)
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterable, Iterator

from omnitrigger.state.cache import forget_oldest
from omnitrigger.state.store import KeyValueStore

_U64 = struct.Struct(">Q")
_BUCKET_ENTRY = struct.Struct(">QI")  # expiry, key length
#: The span of expiry times one index bucket covers.
EXPIRY_BUCKET_MS = 60_000
_UNDO_HEADER = struct.Struct(">IBI")  # key length, has-old-value flag, old value length
_UNDO_CHUNK_BYTES = 1 << 20
_GEN = b"gen"
_UNDO_FLOOR = b"undo_floor"
_EMPTY = b""
_NEVER = bytes(8)  # the expiry of a value that does not expire
_NO_EXPIRY = 1 << 64  # later than every expiry


class StateError(Exception):
    """The state folder cannot be brought back to the committed snapshot."""


class ShardState:
    def __init__(self, store: KeyValueStore, namespace: str, shard: int, keep_generations: int = 64,
                 cache_entries: int = 50_000) -> None:
        prefix = namespace.encode() + b"\x00" + shard.to_bytes(2, "big")
        self.store = store
        self.namespace = namespace
        self.shard = shard
        self.keep_generations = keep_generations
        self._data = b"d" + prefix
        self._index = b"x" + prefix
        self._buckets = b"y" + prefix
        self._undo = b"u" + prefix
        self._meta = b"m" + prefix
        self._pending: dict[bytes, bytes | None] = {}
        # (expiry, data key) of each put with an expiry since the last commit, for the sweep, and their
        # earliest expiry: a sweep before it (most of them) need not look at the list. The first sweep that
        # finds one expired turns the list into a heap (`_pending_heaped`), so that sweep and the later ones
        # of the epoch take the expired entries off its top, not walk the epoch's every put each time.
        self._pending_expiring: list[tuple[int, bytes]] = []
        self._pending_earliest = _NO_EXPIRY
        self._pending_heaped = False
        # The pending data keys grouped by their bytes up to the first zero byte past the data prefix (an
        # owner's keys, state/keys.py): a scan of one owner's keys walks its group, not the epoch's every write.
        self._pending_groups: dict[bytes, set[bytes]] = {}
        # Committed values read or written lately (None = known absent). This shard is the only writer of
        # its keys, so the cache is exact; it spares RocksDB reads of hot keys and the undo log's reads of
        # old values at commit. Trimmed, oldest first, when full; cleared on rollback.
        self._cache: dict[bytes, bytes | None] = {}
        self.cache_entries = cache_entries
        self.generation = self._read_meta(_GEN)
        self._before_commit: list[Callable[[], None]] = []
        self._held: list[Callable[[], int]] = []
        # Writes so far that number their expiry buckets (bulk writes, spills): each keeps its own bucket keys.
        self._parts = 0
        self._spilled = False  # whether a spill since the last commit wrote part of the generation it closes
        self._undo_chunks = 0  # undo chunks written so far for that generation
        self._after_rollback: list[Callable[[], None]] = []

    def before_commit(self, flush: Callable[[], None], held: Callable[[], int] | None = None) -> None:
        """Have `flush` called at the start of every commit and spill (a layer above that buffers decoded
        values); `held`, if given, says how many changes that layer holds (`pending_changes` counts them)."""
        self._before_commit.append(flush)
        if held is not None:
            self._held.append(held)

    def after_rollback(self, forget: Callable[[], None]) -> None:
        """Have `forget` called after every rollback (such a layer drops what it holds)."""
        self._after_rollback.append(forget)

    # -- reads and writes -------------------------------------------------

    def get(self, key: bytes, now_ms: int = 0) -> bytes | None:
        """The value under `key`, or None if absent or expired at event time `now_ms`."""
        raw = self._raw(self._data + key)
        if raw is None:
            return None
        expires = _U64.unpack_from(raw)[0]
        if expires and expires <= now_ms:
            return None
        return raw[8:]

    def get_with_expiry(self, key: bytes, now_ms: int = 0) -> tuple[bytes, int] | None:
        """(value, expiry: 0 = never) under `key`, or None if absent or expired at `now_ms` (as `get`)."""
        value = self.get(key, now_ms)
        return None if value is None else (value, self.expiry_of(key) or 0)

    def expiry_of(self, key: bytes) -> int | None:
        """When the value under `key` expires (0 = never), or None if there is no value."""
        raw = self._raw(self._data + key)
        return _U64.unpack_from(raw)[0] if raw is not None else None

    def put(self, key: bytes, value: bytes, expires_at_ms: int = 0) -> None:
        full_key = self._data + key
        if full_key not in self._pending:
            self._group(full_key)
        self._pending[full_key] = _U64.pack(expires_at_ms) + value
        if expires_at_ms:
            if self._pending_heaped:
                heapq.heappush(self._pending_expiring, (expires_at_ms, full_key))
            else:
                self._pending_expiring.append((expires_at_ms, full_key))
            if expires_at_ms < self._pending_earliest:
                self._pending_earliest = expires_at_ms

    def delete(self, key: bytes) -> None:
        full_key = self._data + key
        if full_key not in self._pending:
            self._group(full_key)
        self._pending[full_key] = None

    def _group(self, full_key: bytes) -> None:
        """File a data key newly pending under its group (see `_pending_groups`)."""
        cut = full_key.find(b"\x00", len(self._data)) + 1
        if cut:
            group = full_key[:cut]
            keys = self._pending_groups.get(group)
            if keys is None:
                self._pending_groups[group] = {full_key}
            else:
                keys.add(full_key)

    def scan(self, start: bytes, end: bytes, now_ms: int = 0, limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Live (key, value) pairs with start <= key < end in key order, buffered writes included.

        Ordered keys are how timers are kept: a key that starts with a big-endian
        due time makes "everything due by now" one range scan.
        """
        low, high = self._data + start, self._data + end
        merged: dict[bytes, bytes | None] = {}
        for full_key, raw in self.store.scan(low, high):
            merged[full_key] = raw
            if limit is not None and len(merged) >= limit + len(self._pending):
                break
        pending = self._pending
        cut = low.find(b"\x00", len(self._data)) + 1
        if cut and high.startswith(low[:cut]):  # every key in range starts with that group's bytes
            candidates: Iterable[bytes] = self._pending_groups.get(low[:cut], ())
        else:
            candidates = pending
        for full_key in candidates:
            if low <= full_key < high:
                merged[full_key] = pending[full_key]
        out: list[tuple[bytes, bytes]] = []
        skip = len(self._data)
        for full_key in sorted(merged):
            raw = merged[full_key]
            if raw is None:
                continue
            expires = _U64.unpack_from(raw)[0]
            if expires and expires <= now_ms:
                continue
            out.append((full_key[skip:], raw[8:]))
            if limit is not None and len(out) >= limit:
                break
        return out

    def iter_committed(self, start: bytes, end: bytes, now_ms: int = 0) -> Iterator[tuple[bytes, bytes]]:
        """Like `scan`, lazily and over committed state only: for reading a finished run's state."""
        skip = len(self._data)
        for full_key, raw in self.store.scan(self._data + start, self._data + end):
            expires = _U64.unpack_from(raw)[0]
            if not expires or expires > now_ms:
                yield full_key[skip:], raw[8:]

    def get_meta(self, name: bytes) -> bytes | None:
        return self._raw(self._meta + b"~" + name)

    def put_meta(self, name: bytes, value: bytes) -> None:
        """Shard-level values (a clock, a counter) that roll back with the data."""
        self._pending[self._meta + b"~" + name] = value

    def _raw(self, full_key: bytes) -> bytes | None:
        if full_key in self._pending:
            return self._pending[full_key]
        cache = self._cache
        if full_key in cache:
            return cache[full_key]
        value = self.store.get(full_key)
        if len(cache) >= self.cache_entries:
            forget_oldest(cache, self.cache_entries)
        cache[full_key] = value
        return value

    # -- expiry -------------------------------------------------------------

    def sweep(self, now_ms: int, limit: int = 10_000) -> int:
        """Delete the values whose expiry is at or before `now_ms`, reading about `limit` index entries at most
        (whole buckets: the rest waits for the next sweep); returns how many values it deleted."""
        pending = self._pending
        deleted = 0
        read = 0
        # Buckets up to now's, oldest first; one whose minute has wholly passed goes, once read.
        end = self._buckets + _U64.pack(now_ms // EXPIRY_BUCKET_MS + 1)
        for bucket_key, entries in self.store.scan(self._buckets, end):
            if read >= limit:
                break
            if pending.get(bucket_key, _EMPTY) is None:  # read by an earlier sweep of this epoch
                continue
            at, size = 0, len(entries)
            while at < size:
                expires, key_length = _BUCKET_ENTRY.unpack_from(entries, at)
                at += _BUCKET_ENTRY.size
                if expires <= now_ms:
                    deleted += self._delete_if_expired(self._data + entries[at:at + key_length], now_ms)
                at += key_length
                read += 1
            bucket = _U64.unpack_from(bucket_key, len(self._buckets))[0]
            if (bucket + 1) * EXPIRY_BUCKET_MS - 1 <= now_ms:
                pending[bucket_key] = None
        # The per-key index of state folders written before the buckets.
        index_end = self._index + _U64.pack(now_ms + 1)
        for index_key, _ in _take(self.store.scan(self._index, index_end), max(0, limit - read)):
            if pending.get(index_key, _EMPTY) is None:
                continue
            deleted += self._delete_if_expired(self._data + index_key[len(self._index) + 8:], now_ms)
            pending[index_key] = None
        # This epoch's puts, not in a bucket yet.
        if self._pending_earliest <= now_ms:
            expiring = self._pending_expiring
            if not self._pending_heaped:
                heapq.heapify(expiring)
                self._pending_heaped = True
            while expiring and expiring[0][0] <= now_ms:
                deleted += self._delete_if_expired(heapq.heappop(expiring)[1], now_ms)
            self._pending_earliest = expiring[0][0] if expiring else _NO_EXPIRY
        return deleted

    def _delete_if_expired(self, full_key: bytes, now_ms: int) -> int:
        """Delete the data key if its value has expired by `now_ms` (1), else leave it (0)."""
        raw = self._raw(full_key)
        if raw is None:
            return 0
        expires = _U64.unpack_from(raw)[0]
        if not expires or expires > now_ms:
            return 0
        if full_key not in self._pending:
            self._group(full_key)
        self._pending[full_key] = None
        return 1

    # -- generations, snapshot and rollback ---------------------------------

    def commit(self) -> int:
        """Write the buffered changes as the next generation; returns the generation to snapshot.

        What `spill` wrote since the last commit is part of that generation: this closes it."""
        for flush in self._before_commit:
            flush()
        if not self._pending and not self._spilled:
            return self.generation
        generation = self.generation + 1
        batch = self._changes_with_undo(generation, part=0)
        batch[self._meta + _GEN] = _U64.pack(generation)
        floor = self._read_meta(_UNDO_FLOOR)
        trim_below = generation - self.keep_generations
        # Trim in chunks of keep_generations: every range delete leaves a range tombstone that each
        # later read must check until compaction, and one per commit made reads 100x slower.
        if trim_below - floor < self.keep_generations:
            trim_below = floor
        if trim_below > floor:
            batch[self._meta + _UNDO_FLOOR] = _U64.pack(trim_below)
        self.store.write(batch)
        if trim_below > floor:
            self.store.delete_range(self._undo + _U64.pack(floor), self._undo + _U64.pack(trim_below))
        self._written()
        self.generation = generation
        self._spilled = False
        self._undo_chunks = 0
        return generation

    def spill(self) -> None:
        """Write the buffered changes into the store now, as part of the generation the next `commit` closes.

        For a stage those after it wait on at an epoch's end (the sequencer, the history stage): its writes
        happen while the epoch runs, on its own process, and its snapshot has little left to write. Until that
        commit the store holds changes newer than the committed generation, each with its undo record;
        `rollback_to` undoes them as it undoes a committed generation (a crash before the commit)."""
        for flush in self._before_commit:
            flush()
        if not self._pending:
            return
        self._spilled = True
        self._parts += 1
        batch = self._changes_with_undo(self.generation + 1, part=self._parts)
        if batch:
            self.store.write(batch)
        self._written()

    def _changes_with_undo(self, generation: int, part: int) -> dict[bytes, bytes | None]:
        """The pending changes as a write batch for `generation`: the changed values, their undo records (in
        chunks numbered on from the generation's earlier spills) and their expiry buckets (with a write's `part`
        number after the generation, so no write overwrites another's; 0, none: the commit's)."""
        undo_prefix = self._undo + _U64.pack(generation)
        batch: dict[bytes, bytes | None] = {}
        cache = self._cache
        unknown = [key for key in self._pending if key not in cache]
        read = dict(zip(unknown, self.store.get_many(unknown)))
        pack = _UNDO_HEADER.pack
        chunks: list[bytes] = []
        undo: list[bytes] = []
        size = 0
        for full_key, value in self._pending.items():
            old = cache[full_key] if full_key in cache else read[full_key]
            if old == value:  # unchanged, or put and deleted within the epoch (a timer set and fired): no write
                continue
            record = (pack(len(full_key), 0, 0) + full_key if old is None
                      else pack(len(full_key), 1, len(old)) + full_key + old)
            undo.append(record)
            size += len(record)
            if size >= _UNDO_CHUNK_BYTES:
                chunks.append(b"".join(undo))
                undo, size = [], 0
            batch[full_key] = value
        buckets = self._expiry_buckets(batch.items())  # the batch holds only the changed values so far
        suffix = _U64.pack(generation) + (part.to_bytes(4, "big") if part else _EMPTY)
        for bucket, entries in buckets.items():  # new keys (this generation's): their undo is the key alone
            bucket_key = self._buckets + _U64.pack(bucket) + suffix
            batch[bucket_key] = b"".join(entries)
            undo.append(pack(len(bucket_key), 0, 0) + bucket_key)
        if undo:
            chunks.append(b"".join(undo))
        for chunk in chunks:
            batch[undo_prefix + self._undo_chunks.to_bytes(4, "big")] = chunk
            self._undo_chunks += 1
        return batch

    def bulk_write(self) -> None:
        """Write the buffered changes into the store as part of the committed generation: no new generation and
        no undo records. For a benchmark building a large state fast (bench_memory.py, bench_restart.py), never
        for the flow: a crash in the middle leaves the state half written."""
        for flush in self._before_commit:
            flush()
        buckets = self._expiry_buckets(self._pending.items())
        self._parts += 1
        batch = dict(self._pending)
        for bucket, entries in buckets.items():  # a part number after the generation keeps each write's own
            batch[self._buckets + _U64.pack(bucket) + _U64.pack(self.generation)
                  + self._parts.to_bytes(4, "big")] = b"".join(entries)
        self.store.write(batch)
        self._written()

    def _expiry_buckets(self, written: Iterable[tuple[bytes, bytes | None]]) -> dict[int, list[bytes]]:
        """The index entries of the data keys among `written` that carry an expiry, by minute of expiry (a
        write's buckets). One call a write, not one a key: a commit passes a few keys a record through here."""
        buckets: dict[int, list[bytes]] = {}
        data = self._data
        skip = len(data)
        unpack_from, pack_entry = _U64.unpack_from, _BUCKET_ENTRY.pack
        for full_key, value in written:
            if value is None or value.startswith(_NEVER) or not full_key.startswith(data):
                continue
            expires = unpack_from(value)[0]
            minute = expires // EXPIRY_BUCKET_MS
            entries = buckets.get(minute)
            if entries is None:
                entries = buckets[minute] = []
            entries.append(pack_entry(expires, len(full_key) - skip) + full_key[skip:])
        return buckets

    def _written(self) -> None:
        """The buffered writes are in the store: they become cached committed values, and the buffers empty."""
        self._cache.update(self._pending)
        if len(self._cache) > self.cache_entries:
            forget_oldest(self._cache, self.cache_entries)
        self._clear_pending()

    def _clear_pending(self) -> None:
        self._pending.clear()
        self._pending_expiring.clear()
        self._pending_earliest = _NO_EXPIRY
        self._pending_heaped = False
        self._pending_groups.clear()

    def rollback_to(self, generation: int) -> int:
        """Undo every committed generation after `generation` (Bytewax's committed snapshot).

        Returns how many generations were undone. Raises StateError when the
        undo records needed were already trimmed: the state folder is then
        further ahead of the recovery store than it can be wound back.
        """
        self._clear_pending()
        self._cache.clear()
        for forget in self._after_rollback:
            forget()
        self._spilled = False
        self._undo_chunks = 0
        current = self.generation
        if current < generation:
            raise StateError(
                f"state for {self.namespace} shard {self.shard} is at generation {current} but the recovery "
                f"store expects {generation}: the state folder lost data (deleted or replaced RocksDB files?)")
        floor = self._read_meta(_UNDO_FLOOR)
        if generation < floor:
            raise StateError(
                f"state for {self.namespace} shard {self.shard} is at generation {current} but the recovery "
                f"store is at {generation}, older than the oldest undo record ({floor}); "
                "the state folder and the recovery store do not belong together")
        # Up to the generation after the current one: what spills wrote of it before a crash (`spill`).
        start = self._undo + _U64.pack(generation + 1)
        end = self._undo + _U64.pack(current + 2)
        restore: dict[bytes, bytes | None] = {}
        undone: list[bytes] = []
        header = _UNDO_HEADER.size
        # Newest chunk first, so a key's oldest old value is the one restored: one write of a generation
        # changes a key once, but each spill of it is another write with chunks numbered after the last's.
        for undo_key, chunk in self.store.scan(start, end, reverse=True):
            at = 0
            while at < len(chunk):
                key_length, has_old, old_length = _UNDO_HEADER.unpack_from(chunk, at)
                at += header
                full_key = chunk[at:at + key_length]
                at += key_length
                restore[full_key] = chunk[at:at + old_length] if has_old else None
                at += old_length
            undone.append(undo_key)
        if current == generation and not undone:
            return 0
        # The undo records go in the same atomic batch as the values they restore: if they
        # outlived it (a crash before the delete_range below), a later rollback would
        # replay them on top of the new timeline's generations of the same numbers.
        restore.update(dict.fromkeys(undone))
        restore[self._meta + _GEN] = _U64.pack(generation)
        self.store.write(restore)
        self.store.delete_range(start, end)
        self.generation = generation
        return current - generation

    def _read_meta(self, name: bytes) -> int:
        raw = self.store.get(self._meta + name)
        return _U64.unpack(raw)[0] if raw else 0

    def pending_changes(self) -> int:
        """The changes not in the store yet: the buffered writes and those the layers above hold."""
        return len(self._pending) + sum(held() for held in self._held)


def _take(iterator, limit: int):
    for n, item in enumerate(iterator):
        if n >= limit:
            return
        yield item
