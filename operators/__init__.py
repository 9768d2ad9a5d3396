"""Operator logic: plain classes with no bytewax import, one operator a file.

Each operator is a `StageOperator` (see base.py): it takes events in the
order the stage delivers them, keeps whatever it remembers in a `ShardState`,
and returns the events that go on plus records for named output streams.
flows/ wires operators into Bytewax; tests/test_conformance.py holds the
suite every operator passes.
"""

from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.operators.clock import EventClock
from omnitrigger.operators.dedup import Dedup
from omnitrigger.operators.history import History
from omnitrigger.operators.identity import Identity
from omnitrigger.operators.rules import Rules
from omnitrigger.operators.visits import Visits

#: Every operator by name. The conformance suite (tests/test_conformance.py) runs each one.
OPERATORS: dict[str, type[StageOperator]] = {
    operator.name: operator for operator in (Dedup, Identity, Visits, History, EventClock, Rules)}

__all__ = ["OPERATORS", "Dedup", "EventClock", "History", "Identity", "OperatorResult", "Rules", "StageOperator",
           "Visits"]
