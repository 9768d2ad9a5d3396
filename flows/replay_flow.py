"""The dataflow: recorded (or live) records in; cleaned streams, visits and triggers out.

    read ─► sequencer ─┬──────────────────────────────────────────────────► part files (dead letters,
            (dedup,    │                                                      duplicates, ...)
            identity)  └─► history ──► rules-0000 .. rules-NNNN ──────────► part files (visits, triggers,
                           (visits,    (rules + policy; customers              suppressed)
                           history,     spread by a hash of their id)
                           clock,
                           router)

Built by a function so tests and the CLI run the same wiring with any source
and sink. The sequencer is a single shard key on purpose: every record
reaches it from the source in order, and it alone owns the identity graph,
so customer ids are the same whatever the batch size or number of worker
processes. The history stage is a single key too, fed by the sequencer
alone and so in order (Bytewax keeps order between one sender and one
receiver): it detects store visits, journals each customer's facts, keeps
the event-time clock and routes to the rules shards. Split from the
sequencer so that a cluster runs the two on different processes
(flows/placement.py); the sequencer hands it only what it reads
(operators/handoff.py): pings cut to what visits reads. The rules shards are
fed by the history stage alone, in order (operators/router.py says how their
watermark stays exact), so they can spread over a cluster without changing
a trigger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from omnitrigger.config import Config
from omnitrigger.flows.part_file_sink import encode_outputs
from omnitrigger.flows.placement import HISTORY_KEY, SEQUENCER_KEY, shards_apart_from
from omnitrigger.flows.stage import OperatorFactory, history_builder, rules_builder, sequencer_builder
from omnitrigger.operators import Dedup, EventClock, History, Identity, Rules, Visits
from omnitrigger.operators.visits import GEO_PINGS

__all__ = ["DEFAULT_OPERATORS", "HISTORY_KEY", "SEQUENCER_KEY", "build_flow"]

#: The whole flow, in order. Visits, History and EventClock run in the history stage, Rules sharded, the rest
#: in the sequencer.
DEFAULT_OPERATORS: list[OperatorFactory] = [Dedup, Identity, Visits, History, EventClock, Rules]
#: The operators of the history stage: what follows the sequencer, before the rules.
HISTORY_STAGE: tuple[OperatorFactory, ...] = (Visits, History, EventClock)


def build_flow(source: Source, sink: Sink, config: Config, state_path: Path, *,
               operators: list[OperatorFactory] | None = None, emit_events: bool = False,
               flow_id: str = "omnitrigger", processes: int = 1) -> Dataflow:
    """`state_path`: the folder holding one RocksDB store per shard key (`state_path/sequencer`,
    `state_path/history`, `state_path/rules-0000`, ...; a state folder's rocksdb/). `processes`: the flow runs
    on that many processes (one worker each), so the sequencer's hand-off crosses to another packed
    (operators/handoff.py), and so does a routed batch to a rules shard on another process; the outputs are
    the same either way."""
    cluster = processes > 1
    factories = list(operators if operators is not None else DEFAULT_OPERATORS)
    with_rules = Rules in factories
    if with_rules and factories[-1] is not Rules:
        raise ValueError("the rules operator runs last, in its own sharded stage")
    history_operators = [factory for factory in factories if factory in HISTORY_STAGE]
    sequencer_operators = [factory for factory in factories if factory is not Rules and factory not in HISTORY_STAGE]
    if history_operators and factories.index(history_operators[0]) < len(sequencer_operators):
        raise ValueError("visits, history and the clock run after the sequencer's operators, in their own stage")
    state_path = Path(state_path)

    flow = Dataflow(flow_id)
    batches = op.input("read", flow, source)
    keyed = op.key_on("to_sequencer", batches, _sequencer_key)
    tagged = op.key_rm("unkey_sequencer", op.stateful_batch(
        "sequencer", keyed,
        sequencer_builder(state_path / SEQUENCER_KEY, sequencer_operators, config, emit_events, with_rules,
                          hand_on=bool(history_operators),
                          ping_topics=frozenset({GEO_PINGS}) if Visits in history_operators else frozenset(),
                          packed=cluster, remote_shards=shards_apart_from(SEQUENCER_KEY, config.rule_shards, processes))))
    split = op.branch("split", tagged, _is_output)
    outputs = op.map("untag", split.trues, _untag)
    onward = split.falses
    if history_operators:
        to_history = op.map("to_history", onward, _keyed_item)
        history_tagged = op.key_rm("unkey_history", op.stateful_batch(
            "history", to_history,
            history_builder(state_path / HISTORY_KEY, history_operators, config, with_rules, packed=cluster,
                            remote_shards=shards_apart_from(HISTORY_KEY, config.rule_shards, processes))))
        history_split = op.branch("split_history", history_tagged, _is_output)
        outputs = op.merge("sequencer_and_history_outputs", outputs, op.map("untag_history", history_split.trues, _untag))
        onward = history_split.falses
    if with_rules:
        to_rules = op.map("to_rules", onward, _keyed_item)
        triggers = op.stateful_batch("rules", to_rules, rules_builder(state_path, config))
        outputs = op.merge("all_outputs", outputs, op.key_rm("unkey_rules", triggers))
    if isinstance(sink, FixedPartitionedSink):  # a cluster's process 0 gathers every output (flows/cluster_worker.py)
        # Encoded where each stage made them: what travels to the writer is bytes (flows/part_file_sink.py).
        outputs = op.key_on("to_writer", op.map("encode_outputs", outputs, encode_outputs), _writer_key)
    op.output("write", outputs, sink)
    return flow


def _sequencer_key(_batch: Any) -> str:
    return SEQUENCER_KEY


def _writer_key(_batch: Any) -> str:
    return "outputs"


def _is_output(item: tuple[Any, ...]) -> bool:
    return item[0] == "out"


def _untag(item: tuple[Any, ...]) -> Any:
    return item[1]


def _keyed_item(item: tuple[Any, ...]) -> tuple[str, Any]:
    return item[1], item[2]
