"""Event-time timers of one shard: every timer in the shard's state at each commit, the earliest also in a bounded heap.

A timer is a key `<prefix> <due: 8 bytes> <kind: 1 byte> <owner length: 1 byte> <owner> <payload>` with
an empty value, so timers are ordered by due time, then kind, then owner, then payload, and a shard
resumed from its state has them all (Bytewax's own timers are wall-clock: docs/design.md#bytewax-timers-are-wall-clock). The
owner's length is in the key, so decoding needs no knowledge of id formats.

In memory a queue keeps only the earliest timers, at most `in_memory`, in a heap: every timer key
below `_horizon` is in the heap, every later one only in the state. When the heap has fired
everything below the horizon and the clock is past it, the next timers are read from the state in
key order; when scheduling pushes the heap over its bound, its later half goes back to being state
only. So timers fire in the same order as with every timer in memory, and memory does not grow with
the number of pending timers. A timer whose reason went away (a deadline moved or cancelled) is not
removed: its owner checks, when it fires, that it is still wanted.

A timer scheduled into the heap is written to the state at the next commit (`ShardState.before_commit`),
not when it is scheduled, and only if it has not fired by then (or when the heap sheds it): most
deadlines of a replay are set and fire within one epoch, and those cost the state nothing. A resumed
shard has every timer the commit it resumes from had.
"""

from __future__ import annotations

import bisect
import heapq
import sys
from collections.abc import Iterator
from typing import NamedTuple

from omnitrigger.state.shard_state import ShardState


class Timer(NamedTuple):
    due_ms: int
    kind: int  # the byte its owner scheduled it under (a rule's state code)
    owner: str  # whose it is: a customer id
    payload: bytes  # what it is about, as the scheduler encoded it


_new_tuple = tuple.__new__  # a NamedTuple built without its Python-level __new__: one a timer fired


def timer_key(prefix: bytes, due_ms: int, kind: int, owner: str, payload: bytes) -> bytes:
    owner_bytes = owner.encode()
    return prefix + due_ms.to_bytes(8, "big") + bytes((kind, len(owner_bytes))) + owner_bytes + payload


def decode_timer(key: bytes, prefix_length: int = 1) -> Timer:
    at = prefix_length
    due_ms = int.from_bytes(key[at:at + 8], "big")
    kind, owner_length = key[at + 8], key[at + 9]
    owner_end = at + 10 + owner_length
    return _new_tuple(Timer, (due_ms, kind, key[at + 10:owner_end].decode(), key[owner_end:]))


class TimerQueue:
    def __init__(self, state: ShardState, in_memory: int, prefix: bytes = b"T") -> None:
        self.state = state
        self.prefix = prefix
        self.end = prefix[:-1] + bytes((prefix[-1] + 1,))  # the first key after every timer
        self.in_memory = in_memory
        self._heap: list[bytes] = []
        self._horizon: bytes | None = prefix  # every timer key below it is in the heap (None: every timer)
        self._unsaved: set[bytes] = set()  # timers in the heap that the state does not have yet
        state.before_commit(self._save, self._unsaved.__len__)
        state.after_rollback(self._reload)
        self._load()

    def in_memory_now(self) -> int:
        """How many timers the heap holds now (at most `in_memory` after each schedule)."""
        return len(self._heap)

    def heap_bytes(self) -> int:
        """The memory the heap takes: the list and its keys (benchmarks/bench_memory.py reports it)."""
        return sys.getsizeof(self._heap) + sum(sys.getsizeof(key) for key in self._heap)

    def schedule(self, due_ms: int, kind: int, owner: str, payload: bytes) -> None:
        key = timer_key(self.prefix, due_ms, kind, owner, payload)
        if self._horizon is None or key < self._horizon:
            self._unsaved.add(key)
            heapq.heappush(self._heap, key)
            if len(self._heap) > self.in_memory:
                self._shed()
        else:
            self.state.put(key, b"")

    def pop_due(self, up_to_ms: int) -> Iterator[Timer]:
        """Every timer due at or before `up_to_ms`, earliest first, each removed before it is handed out
        (timers scheduled meanwhile are seen if due)."""
        limit = self.prefix + max(0, up_to_ms + 1).to_bytes(8, "big")
        while self._heap and self._heap[0] < limit or self._load(limit):
            key = heapq.heappop(self._heap)
            if key in self._unsaved:
                self._unsaved.discard(key)  # never written: nothing to delete
            else:
                self.state.delete(key)
            yield decode_timer(key, len(self.prefix))

    def _load(self, limit: bytes | None = None) -> bool:
        """With the heap empty and timers below `limit` left in the state only, read the next ones into it."""
        limit = self.end if limit is None else limit
        if self._heap or self._horizon is None or self._horizon >= limit:
            return False
        batch = max(1, self.in_memory // 2)
        loaded = [key for key, _ in self.state.scan(self._horizon, self.end, limit=batch)]
        self._heap = loaded  # in key order: a heap
        self._horizon = loaded[-1] + b"\x00" if len(loaded) == batch else None
        return bool(loaded) and loaded[0] < limit

    def _shed(self) -> None:
        """Keep the earliest half of the heap; the rest stay in the state, read again when due."""
        ordered = sorted(self._heap)
        keep = max(1, self.in_memory // 2)
        horizon = self._horizon = ordered[keep]
        self._heap = [key for key in ordered[:keep] if key < horizon]
        for key in ordered[bisect.bisect_left(ordered, horizon):]:  # the shed ones (a timer set twice: each copy)
            if key in self._unsaved:
                self._unsaved.discard(key)
                self.state.put(key, b"")

    def _save(self) -> None:
        """Before a commit: the timers still waiting in the heap that the state does not have yet."""
        for key in sorted(self._unsaved):
            self.state.put(key, b"")
        self._unsaved.clear()

    def _reload(self) -> None:
        """After a rollback: the heap again from the state, which has every timer of the commit rolled back to."""
        self._heap, self._horizon = [], self.prefix
        self._unsaved.clear()
        self._load()
