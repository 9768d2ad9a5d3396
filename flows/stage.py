"""Bytewax wrappers for the stages: RocksDB state consistent with recovery, fixed shard keys.

Bytewax only ever sees a fixed set of shard keys ("sequencer", "history", the
rules shards' keys: flows/placement.py), never a key per customer or receipt, so its recovery store
stays small (docs/design.md#bytewax-recovery-reloads-every-key). Each key keeps its own RocksDB
store, `<rocksdb folder>/<key>/`, opened by whichever process Bytewax gives the key to, so a
resume with another process count finds each key's state where it left it. The snapshot of a
shard is the tuple of its state generations; building a shard from a snapshot rolls RocksDB
back to it.

A stage's items out are tagged: `("out", [Emitted])` for the sinks,
`("next", "history", packed hand-off)` for the history stage (the sequencer's hand-off, operators/handoff.py)
and `("rules", shard key, (shard, [Item] or packed))` for a rules shard (events and control records; packed
by `operators/handoff.py` `pack` when the shard runs on another process: flows/placement.py
`shards_apart_from`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bytewax.operators import StatefulBatchLogic

from omnitrigger.config import Config
from omnitrigger.operators.base import StageOperator
from omnitrigger.flows.placement import HISTORY_KEY, rules_key
from omnitrigger.operators.clock_marks import ClockMarks
from omnitrigger.operators.handoff import Handoff, pack, unpack
from omnitrigger.operators.input_merge import InputMerge
from omnitrigger.operators.router import ShardRouter, shard_key
from omnitrigger.operators.rules import Rules, broadcast_topics, rule_topics
from omnitrigger.operators.stage_chain import ChainOperator, LaterChain, StageChain
from omnitrigger.operators.visits import Visits
from omnitrigger.records import IDENTITY_TOPIC, Emitted, Item
from omnitrigger.state import ShardState, open_store

OperatorFactory = Callable[[ShardState, Config], StageOperator]

COUNTERS_NAMESPACE = "stage"
#: The sequencer's merge of a replay's parts (operators/input_merge.py).
INPUT_NAMESPACE = "input"


class _StageLogic(StatefulBatchLogic):
    """A single-key stage (the sequencer, the history stage): its chain, then the hand-off to what follows it."""

    def __init__(self, chain: StageChain | LaterChain, states: list[ShardState], router: ShardRouter | None,
                 handoff: Handoff | None, unpack_input: bool = False,
                 remote_shards: frozenset[int] = frozenset(), spill_entries: int = 0,
                 input_merge: InputMerge | None = None) -> None:
        self.chain = chain
        self.input_merge = input_merge  # the sequencer's: a replay's parts merged back into one order
        self.states = states
        self.router = router
        self.handoff = handoff
        self.unpack_input = unpack_input  # its input is packed hand-offs from another process
        self.remote_shards = remote_shards  # the rules shards on another process: their batches cross packed
        # A state with this many changes pending after a batch writes them now (ShardState.spill); 0: never.
        self.spill_entries = spill_entries

    def on_batch(self, values: list[Any]) -> tuple[list[tuple[Any, ...]], bool]:
        if self.input_merge is not None:
            batches = self.input_merge.on_values(values)
        else:
            batches = [unpack(value) for value in values] if self.unpack_input else values
        items = self._tagged(*self.chain.on_batches(batches))
        if self.spill_entries:
            for state in self.states:
                if state.pending_changes() >= self.spill_entries:
                    state.spill()
        return items, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[Any, ...]], bool]:
        return self._tagged(*self.chain.on_eof(), final=True), StatefulBatchLogic.RETAIN

    def _tagged(self, out: list[Emitted], events: list[Item], final: bool = False) -> list[tuple[Any, ...]]:
        items: list[tuple[Any, ...]] = [("out", out)] if out else []
        if self.handoff is not None:
            items.append(("next", HISTORY_KEY, self.handoff.hand_on(events, self.chain.last_seq)))
        elif self.router is not None:
            remote = self.remote_shards
            items += [("rules", rules_key(shard), (shard, pack(batch) if shard in remote else batch))
                      for shard, batch in sorted(self.router.route(events, final).items())]
        return items

    def snapshot(self) -> tuple[int, ...]:
        return tuple(state.commit() for state in self.states)


def sequencer_builder(store_path: Path, factories: list[OperatorFactory], config: Config, emit_events: bool,
                      route_to_rules: bool, hand_on: bool = False, ping_topics: frozenset[str] = frozenset(),
                      packed: bool = False, remote_shards: frozenset[int] = frozenset()) -> Callable[[Any], _StageLogic]:
    """The builder Bytewax calls for the sequencer key, with its snapshot on resume (None when new);
    `store_path` is the sequencer key's own RocksDB folder. `hand_on`: a history stage follows (it routes
    to the rules); else the sequencer routes to them itself when `route_to_rules`. `ping_topics`: what a
    packed hand-off passes cut to a ping's fields (geo.pings, when visits runs in the history stage).
    `packed`: the history stage runs in another process (a cluster), so the hand-off crosses packed.
    `remote_shards`: when it routes to the rules itself, the shards on another process, whose batches cross
    packed (flows/placement.py `shards_apart_from`)."""

    def build(resume_state: Any) -> _StageLogic:
        store = open_store(store_path)
        counter_state = ShardState(store, COUNTERS_NAMESPACE, 0, config.keep_generations, config.state_cache_entries)
        merge_state = ShardState(store, INPUT_NAMESPACE, 0, config.keep_generations, config.state_cache_entries)
        operator_states = [ShardState(store, factory.name, 0, config.keep_generations, config.state_cache_entries)
                           for factory in factories]
        states = [counter_state, merge_state, *operator_states]
        _roll_back(states, resume_state)
        operators = [factory(state, config) for factory, state in zip(factories, operator_states)]
        handoff = Handoff(handed_on_topics(config), ping_topics, packed=packed) if hand_on else None
        router = _router(config) if route_to_rules and not hand_on else None
        return _StageLogic(StageChain(operators, counter_state, emit_events), states, router, handoff,
                           remote_shards=remote_shards, spill_entries=config.spill_entries,
                           input_merge=InputMerge(merge_state))

    return build


def history_builder(store_path: Path, factories: list[OperatorFactory], config: Config,
                    route_to_rules: bool, packed: bool = False,
                    remote_shards: frozenset[int] = frozenset()) -> Callable[[Any], _StageLogic]:
    """The builder of the history stage (visits, history, the clock: what follows the sequencer), in its own
    RocksDB folder `store_path`; `packed`: the sequencer's hand-offs come packed (a cluster); `remote_shards`:
    the rules shards on another process than this stage's, whose batches cross packed."""

    def build(resume_state: Any) -> _StageLogic:
        store = open_store(store_path)
        states = [ShardState(store, factory.name, 0, config.keep_generations, config.state_cache_entries)
                  for factory in factories]
        _roll_back(states, resume_state)
        return _StageLogic(LaterChain(history_operators(factories, states, config)), states,
                           _router(config) if route_to_rules else None, None, unpack_input=packed,
                           remote_shards=remote_shards, spill_entries=config.spill_entries)

    return build


def history_operators(factories: list[OperatorFactory], states: list[ShardState],
                      config: Config) -> list[ChainOperator]:
    """The history stage's chain: each operator on its state; after visits, only clock marks of the pings go
    on (no stage after it reads a ping but the clock: operators/clock_marks.py)."""
    operators: list[ChainOperator] = [factory(state, config) for factory, state in zip(factories, states, strict=True)]
    if Visits in factories:
        operators.insert(factories.index(Visits) + 1, ClockMarks(handed_on_topics(config)))
    return operators


def handed_on_topics(config: Config) -> frozenset[str]:
    """What the history stage and the rules read in full: the rules' topics (the journal's too), the broadcast
    ones, identity changes and consent."""
    return rule_topics(config) | broadcast_topics(config) | {IDENTITY_TOPIC, "consent.changes"}


def _router(config: Config) -> ShardRouter:
    return ShardRouter(config.rule_shards, rule_topics(config), broadcast_topics(config))


class _RulesLogic(StatefulBatchLogic):
    """One rules shard. Bytewax's builder is not told the key, so the shard number travels with
    every routed batch and in the snapshot `(shard, generation)`; a new shard opens on its first batch.
    `state_path` is the folder of every shard key's store: this shard's is `state_path / shard_key(shard)`."""

    def __init__(self, state_path: Path, config: Config, resume_state: tuple[int, int] | None) -> None:
        self.state_path = state_path
        self.config = config
        self.rules: Rules | None = None
        if resume_state is not None:
            shard, generation = resume_state
            self._open(shard, generation)

    def _open(self, shard: int, generation: int) -> Rules:
        state = ShardState(open_store(self.state_path / shard_key(shard)), Rules.name, shard, self.config.keep_generations,
                           self.config.state_cache_entries)
        state.rollback_to(generation)
        self.rules = Rules(state, self.config)
        return self.rules

    def on_batch(self, values: list[tuple[int, list[Item]]]) -> tuple[list[list[Emitted]], bool]:
        rules = self.rules or self._open(values[0][0], 0)
        emitted = rules.on_events([event for _, batch in values
                                   for event in (unpack(batch) if type(batch) is bytes else batch)]).emitted
        return ([emitted] if emitted else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple[int, int]:
        assert self.rules is not None
        return self.rules.state.shard, self.rules.state.commit()


def rules_builder(state_path: Path, config: Config) -> Callable[[Any], _RulesLogic]:
    def build(resume_state: Any) -> _RulesLogic:
        return _RulesLogic(state_path, config, resume_state)

    return build


def _roll_back(states: list[ShardState], resume_state: Any) -> None:
    generations = resume_state if resume_state is not None else (0,) * len(states)
    for state, generation in zip(states, generations, strict=True):
        state.rollback_to(generation)
