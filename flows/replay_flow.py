"""The dataflow: recorded (or live) records in; cleaned streams, visits and triggers out.

    read ─► sequencer ─┬──────────────────────────────► part files (dead letters, duplicates, visits, ...)
            (dedup,    │
            identity,  └─► rules-0000 .. rules-NNNN ──► part files (triggers, suppressed)
            visits,        (rules + policy; customers
            history,        spread by a hash of their id)
            clock)

Built by a function so tests and the CLI run the same wiring with any source
and sink. The sequencer is a single shard key on purpose: every record
reaches it from the source in order, and it alone owns the identity graph,
so customer ids and the event-time clock are the same whatever the batch
size or number of worker processes. The rules shards are fed by the
sequencer alone, in order (operators/router.py says how their watermark
stays exact), so they can spread over a cluster without changing a trigger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from omnitrigger.config import Config
from omnitrigger.flows.stage import OperatorFactory, rules_builder, sequencer_builder
from omnitrigger.operators import Dedup, EventClock, History, Identity, Rules, Visits

SEQUENCER_KEY = "sequencer"

#: The whole flow, in order. Everything before Rules runs in the sequencer; Rules runs sharded.
DEFAULT_OPERATORS: list[OperatorFactory] = [Dedup, Identity, Visits, History, EventClock, Rules]


def build_flow(source: Source, sink: Sink, config: Config, state_path: Path, *,
               operators: list[OperatorFactory] | None = None, emit_events: bool = False,
               flow_id: str = "omnitrigger") -> Dataflow:
    """`state_path`: the folder holding one RocksDB store per shard key (`state_path/sequencer`,
    `state_path/rules-0000`, ...; a state folder's rocksdb/)."""
    factories = list(operators if operators is not None else DEFAULT_OPERATORS)
    with_rules = Rules in factories
    if with_rules and factories[-1] is not Rules:
        raise ValueError("the rules operator runs last, in its own sharded stage")
    sequencer_operators = [factory for factory in factories if factory is not Rules]
    state_path = Path(state_path)

    flow = Dataflow(flow_id)
    batches = op.input("read", flow, source)
    keyed = op.key_on("to_sequencer", batches, _sequencer_key)
    tagged = op.key_rm("unkey_sequencer", op.stateful_batch(
        "sequencer", keyed,
        sequencer_builder(state_path / SEQUENCER_KEY, sequencer_operators, config, emit_events, with_rules)))
    split = op.branch("split", tagged, _is_output)
    outputs = op.map("untag", split.trues, _untag)
    if with_rules:
        to_rules = op.map("to_rules", split.falses, _rules_item)
        triggers = op.stateful_batch("rules", to_rules, rules_builder(state_path, config))
        outputs = op.merge("all_outputs", outputs, op.key_rm("unkey_rules", triggers))
    if isinstance(sink, FixedPartitionedSink):  # a cluster's process 0 gathers every output (flows/cluster_worker.py)
        outputs = op.key_on("to_writer", outputs, _writer_key)
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


def _rules_item(item: tuple[Any, ...]) -> tuple[str, Any]:
    return item[1], item[2]
