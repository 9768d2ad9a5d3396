"""The shape every operator has: events in, events and emitted records out, state in a ShardState.

"Events" here are `Item`s: events and the control records among them (omnitrigger/records.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from omnitrigger.records import Emitted, Item
from omnitrigger.state import ShardState


class OperatorResult(NamedTuple):
    events: list[Item]  # what continues to the next operator
    emitted: list[Emitted]  # records for output streams (duplicates, visits, triggers, ...)


class StageOperator(ABC):
    """Per-shard logic of one operator.

    The flow builds one instance per shard with that shard's `ShardState` and
    calls `on_events` with events in input order. It must be a pure function
    of (state, events): the conformance suite replays the same input through
    different batch sizes, runs and worker counts and expects the same output.
    """

    #: Namespace of this operator's keys in the state store.
    name: str = ""

    def __init__(self, state: ShardState, config: Any) -> None:
        self.state = state
        self.config = config

    @abstractmethod
    def on_events(self, events: list[Item]) -> OperatorResult:
        """Process events in order; pass on the control records it does not handle."""

    def on_eof(self, end_seq: int) -> OperatorResult:
        """The input has ended (a replay's last record): emit what is due at the end.

        Records emitted here sort after every input record with `(end_seq, n)`.
        """
        return OperatorResult([], [])
