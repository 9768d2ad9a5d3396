"""Bytewax wrapper for a StageChain: one stateful step, RocksDB state consistent with recovery.

Bytewax only ever sees a fixed set of shard keys (here the stage's keys),
never a key per customer or receipt, so its recovery store stays small
(DESIGN.md section 4). The snapshot of a shard is the tuple of its state
generations; building a shard from a snapshot rolls RocksDB back to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from bytewax.operators import StatefulBatchLogic

from omnitrigger.config import Config
from omnitrigger.operators.base import StageOperator
from omnitrigger.operators.stage_chain import StageChain
from omnitrigger.records import Emitted
from omnitrigger.state import ShardState, open_store

OperatorFactory = Callable[[ShardState, Config], StageOperator]

COUNTERS_NAMESPACE = "stage"


class _StageLogic(StatefulBatchLogic):
    def __init__(self, chain: StageChain, states: list[ShardState]) -> None:
        self.chain = chain
        self.states = states

    def on_batch(self, values: list[Any]) -> tuple[list[list[Emitted]], bool]:
        out = self.chain.on_batches(values)
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[list[Emitted]], bool]:
        return [self.chain.on_eof()], StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple[int, ...]:
        return tuple(state.commit() for state in self.states)


def stage_builder(state_path: Path, shard: int, factories: list[OperatorFactory], config: Config,
                  emit_events: bool) -> Callable[[Any], _StageLogic]:
    """The builder Bytewax calls for a shard key, with its snapshot on resume (None when new)."""

    def build(resume_state: Any) -> _StageLogic:
        store = open_store(state_path)
        counter_state = ShardState(store, COUNTERS_NAMESPACE, shard, config.keep_generations)
        operator_states = [ShardState(store, factory.name, shard, config.keep_generations) for factory in factories]
        states = [counter_state, *operator_states]
        generations = resume_state if resume_state is not None else (0,) * len(states)
        for state, generation in zip(states, generations, strict=True):
            state.rollback_to(generation)
        operators = [factory(state, config) for factory, state in zip(factories, operator_states)]
        return _StageLogic(StageChain(operators, counter_state, emit_events), states)

    return build
