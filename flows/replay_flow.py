"""The dataflow: recorded (or live) records in, cleaned and deduplicated streams out.

    read ──► sequencer stage (dedup, identity, history; visits and rules join here) ──► part files
               one shard key: the merged input order is kept end to end

Built by a function so tests and the CLI run the same wiring with any source
and sink. The sequencer is a single shard key on purpose: every record
reaches it from the one source partition in order, which is what makes the
output identical whatever the batch size or the number of worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from omnitrigger.config import Config
from omnitrigger.flows.stage import OperatorFactory, stage_builder
from omnitrigger.operators import Dedup, History, Identity

SEQUENCER_KEY = "sequencer"

#: The sequencer's operators, in order. Visits (issue 4) go between Identity and History.
DEFAULT_OPERATORS: list[OperatorFactory] = [Dedup, Identity, History]


def build_flow(source: Source, sink: Sink, config: Config, state_path: Path, *,
               operators: list[OperatorFactory] | None = None, emit_events: bool = False,
               flow_id: str = "omnitrigger") -> Dataflow:
    flow = Dataflow(flow_id)
    batches = op.input("read", flow, source)
    keyed = op.key_on("to_sequencer", batches, _sequencer_key)
    builder = stage_builder(Path(state_path), 0, operators if operators is not None else DEFAULT_OPERATORS,
                            config, emit_events)
    outputs = op.stateful_batch("sequencer", keyed, builder)
    op.output("write", op.key_rm("unkey", outputs), sink)
    return flow


def _sequencer_key(_batch: Any) -> str:
    return SEQUENCER_KEY
