"""The sequencer's first step in a replay: the partitioned source's parts merged back into one order, numbered.

The replay source reads one part a stream of the recording (flows/recording_source.py); each part decodes,
checks and hashes its own lines and sends them in increasing order key (omnitrigger/io/recording.py
`StreamReader`), each batch with its frontier. Bytewax keeps order only between one sender and one receiver
(docs/design.md#bytewax-keeps-order-only-per-sender-and-receiver), so this `FrontierMerge` releases a record
only once no part can still send one before it: the released order is the recording's merged order, whatever
the interleaving of the parts' batches, their sizes or the process each part runs on. Each released record
gets the next seq and becomes the `Event` (or dead letter) the sequencer's chain reads, as
`RecordingReader.read_batch` makes them.

What arrived but is not released yet is part of the sequencer's state: `state` (the "input" namespace of the
sequencer's store) holds the next seq, the frontiers and the pending records at every commit, so a resume
finds them where the parts' positions say they were sent. Live batches (lists, already in order and
numbered by the Kafka source) pass through untouched. Nothing here imports bytewax.
"""

from __future__ import annotations

from typing import Any

import orjson

from omnitrigger.io.recording import numbered
from omnitrigger.records import Emitted, Event, PartBatch
from omnitrigger.state import ShardState
from omnitrigger.state.ordering import FINISHED, FrontierMerge

__all__ = ["InputMerge"]

_SAVED = b"merge"


class InputMerge:
    """Merges the parts' `PartBatch`es into numbered records; saves what it holds in `state` at each commit."""

    def __init__(self, state: ShardState) -> None:
        self.state = state
        self.merge: FrontierMerge | None = None  # made on the first part batch: it says how many parts there are
        self.next_seq = 0
        self._changed = False
        raw = state.get_meta(_SAVED)
        if raw is not None:
            self._load(orjson.loads(raw))
        state.before_commit(self._save)

    def on_values(self, values: list[Any]) -> list[list[Any]]:
        """The sequencer's input values as the chain's batches: part batches merged, anything else as it is."""
        batches: list[list[Any]] = []
        merged = False
        for value in values:
            if type(value) is PartBatch:
                self._push(value)
                merged = True
            else:
                batches.append(value)
        if merged:
            released = self._release()
            if released:
                batches.append(released)
        return batches

    def _push(self, batch: PartBatch) -> None:
        merge = self.merge
        if merge is None:
            merge = self.merge = FrontierMerge(range(batch.parts))
        merge.push_many(batch.part, batch.records)  # each stamped record's first element is its key
        merge.advance(batch.part, batch.frontier)
        self._changed = True

    def _release(self) -> list[Event | Emitted]:
        assert self.merge is not None
        released = numbered(self.merge.release(), self.next_seq)
        self.next_seq += len(released)
        return released

    def _save(self) -> None:
        if not self._changed or self.merge is None:
            return
        snapshot = self.merge.snapshot()
        self.state.put_meta(_SAVED, orjson.dumps({
            "next_seq": self.next_seq,
            "senders": snapshot["senders"],
            # FINISHED's infinity has no JSON form: None stands for it
            "frontiers": [None if frontier == FINISHED else frontier for frontier in snapshot["frontiers"]],
            "pending": snapshot["pending"]}))
        self._changed = False

    def _load(self, saved: dict[str, Any]) -> None:
        self.next_seq = saved["next_seq"]
        self.merge = FrontierMerge.from_snapshot({
            "senders": saved["senders"],
            "frontiers": [FINISHED if frontier is None else frontier for frontier in saved["frontiers"]],
            "pending": saved["pending"]})
