"""Times every stage call of a replay, in each of its processes, for `bench_replay.py --stages`.

Python imports this file at start-up (`sitecustomize`) in every process whose PYTHONPATH holds this folder:
the replay and a cluster's children. When OMNITRIGGER_STAGE_TRACE names a folder, it wraps the calls Bytewax
makes into the flow (the source's `next_batch`, each stage's `on_batch`, `on_eof` and `snapshot`, the sink's
`write_batch`) and appends one line a call to `<folder>/<pid>.txt`: wall-clock start, seconds, stage, call.
Nothing of the flow changes but the time the wrapper itself takes (about a microsecond a call, a few
thousand calls a run). Benchmark tooling only: the product never imports it. It stands in for any other
`sitecustomize` on the path (Debian's adds nothing a replay needs).
"""

from __future__ import annotations

import os
import time

_FOLDER = os.environ.get("OMNITRIGGER_STAGE_TRACE")


def _install(folder: str) -> None:
    from omnitrigger.flows import part_file_sink, recording_source, stage

    # Line-buffered: a cluster's processes may end without closing it; a few thousand lines a run.
    log = open(os.path.join(folder, f"{os.getpid()}.txt"), "w", buffering=1)  # noqa: SIM115 (open for the run)

    def traced(cls: type, name: str, label) -> None:
        original = getattr(cls, name)

        def wrapper(self, *args):
            started = time.time()
            try:
                return original(self, *args)
            finally:
                log.write(f"{started:.6f} {time.time() - started:.6f} {label(self)} {name}\n")

        setattr(cls, name, wrapper)

    def stage_name(logic) -> str:  # the sequencer's chain is a StageChain, the history stage's a LaterChain
        return "sequencer" if type(logic.chain).__name__ == "StageChain" else "history"

    for name in ("on_batch", "on_eof", "snapshot"):
        traced(stage._StageLogic, name, stage_name)
        if name in stage._RulesLogic.__dict__:
            traced(stage._RulesLogic, name, lambda logic: "rules")
    traced(recording_source._RecordingPartition, "next_batch", lambda part: "read")
    traced(part_file_sink._PartFiles, "write_batch", lambda part: "write")


if _FOLDER:
    _install(_FOLDER)
