"""The Bytewax wiring that places a cluster's input and outputs on process 0.

A cluster's processes (omnitrigger/runner/cluster.py says which does what, and
omnitrigger/runner/process.py runs each one) build the same dataflow; this places
its ends on process 0, the sequencer's:
- `PinnedSource` lists the source's one partition on process 0 only, so
  Bytewax builds it there (otherwise it picks worker 0, which need not be the
  sequencer's, and every input batch would cross the network);
- a replay's `PartFileSink` (flows/part_file_sink.py) is one sink partition,
  on process 0: every process's output records travel to it through Bytewax
  and land in process 0's parts/, so no folder is shared between machines and
  process 0 merges them as a single process would.
"""

from __future__ import annotations

from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition


class PinnedSource(FixedPartitionedSource):
    """`source`'s partitions, listed (so built) only where `here` is true."""

    def __init__(self, source: FixedPartitionedSource, here: bool) -> None:
        self.source = source
        self.here = here

    def list_parts(self) -> list[str]:
        return self.source.list_parts() if self.here else []

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSourcePartition:
        return self.source.build_part(step_id, for_part, resume_state)
