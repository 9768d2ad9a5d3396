"""Entry point of one process of a local replay cluster: `python -m omnitrigger.flows.cluster_worker SPEC PROC_ID ADDRESSES`.

`omnitrigger replay --processes N` starts N of these; each runs the same
dataflow with `bytewax.testing.cluster_main`, one worker per process
(Bytewax workers are threads sharing the GIL, so processes are how it scales).
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson


def main(argv: list[str]) -> int:
    from omnitrigger.replay import run_worker

    spec_file, proc_id, addresses = argv
    run_worker(orjson.loads(Path(spec_file).read_bytes()), int(proc_id), addresses.split(";"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
