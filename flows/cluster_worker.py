"""One process of a cluster, and the Bytewax wiring that places the input and the outputs on process 0.

`omnitrigger replay --processes N` and `omnitrigger run --processes N` start N
of `python -m omnitrigger.flows.cluster_worker`, each reading its spec (JSON)
on stdin: the same run, as process I of a cluster on 127.0.0.1. A process
started by `--addresses ... --process-id I` on another machine runs the same
code in the CLI's own process (omnitrigger/replay.py `run_worker`,
omnitrigger/live.py `run_process`).

Placement (omnitrigger/cluster.py says why process 0 is the sequencer's):
- `PinnedSource` lists the source's one partition on process 0 only, so
  Bytewax builds it there (otherwise it picks worker 0, which need not be the
  sequencer's, and every input batch would cross the network);
- a replay's `PartFileSink` (flows/part_file_sink.py) is one sink partition,
  on process 0: every process's output records travel to it through Bytewax
  and land in process 0's parts/, so no folder is shared between machines and
  process 0 merges them as a single process would.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
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


def main() -> int:
    from omnitrigger.cli import USER_ERRORS

    spec = orjson.loads(sys.stdin.buffer.read())
    try:
        if spec["mode"] == "live":
            from omnitrigger.runner.live import run_process

            run_process(spec)
        else:
            from omnitrigger.runner.replay import run_worker

            run_worker(spec)
    except USER_ERRORS as error:
        print(f"omnitrigger: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
