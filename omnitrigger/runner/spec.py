"""`ProcessSpec`: everything one process of a run needs, the one thing a run hands to its processes.

`run_replay` and `run_live` build one spec a process to run (one, or one per process of a
one-machine cluster) once the state folder is prepared; `run_process` (runner/process.py) builds
the dataflow from it and runs it. A one-machine cluster's child gets its spec as JSON on stdin
(`to_json` / `from_json`): never written to disk, since the config can hold Kafka credentials.
The spec is a frozen dataclass of plain values, so it pickles too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from omnitrigger.config import Config
from omnitrigger.runner.cluster import Role


@dataclass(frozen=True)
class RecordingInput:
    """A replay's input: a recording folder, read by process 0; its outputs gather in process 0's parts/."""

    recording_dir: Path
    stop_after: int | None = None  # records, then the input ends (a snapshot to resume from)
    progress: bool = False  # a progress line on stderr


@dataclass(frozen=True)
class KafkaInput:
    """A live run's input: the input topics at `brokers`; the outputs go to the output topics."""

    brokers: str
    partitions: dict[str, int]  # partitions of each input topic found by the preflight (optional ones may lack)
    metrics_port: int = 0  # 0: no /metrics endpoint


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a run: its state folder, its config, its input and (in a cluster) its role."""

    state_dir: Path  # this process's folder, resolved (a one-machine cluster's processes share one)
    config: Config  # with the run's overrides (stores_file, and for live wall_clock, metrics_bind)
    input: RecordingInput | KafkaInput
    role: Role | None = None  # None: the process runs alone
    operators: tuple[str, ...] | None = None  # names from omnitrigger.operators.OPERATORS; None: the whole flow
    emit_events: bool = False  # the cleaned events as an output stream (replay --events)

    @property
    def mode(self) -> str:
        """"replay" or "live", as layout.json says."""
        return "live" if isinstance(self.input, KafkaInput) else "replay"

    @property
    def reads_input(self) -> bool:
        """This process reads the input and runs the sequencer (alone, or process 0 of a cluster)."""
        return self.role is None or self.role.reads_input

    @property
    def rocksdb_dir(self) -> Path:
        """The folder of the shard keys' RocksDB stores (rocksdb/sequencer, rocksdb/rules-0000, ...)."""
        return self.state_dir / "rocksdb"

    def to_json(self) -> bytes:
        source = self.input
        document: dict[str, Any] = {
            "mode": self.mode,
            "state_dir": str(self.state_dir),
            "config": dataclasses.asdict(self.config),
            "input": ({"brokers": source.brokers, "partitions": source.partitions, "metrics_port": source.metrics_port}
                      if isinstance(source, KafkaInput) else
                      {"recording_dir": str(source.recording_dir), "stop_after": source.stop_after,
                       "progress": source.progress}),
            "role": (None if self.role is None else
                     {"process_id": self.role.process_id, "addresses": list(self.role.addresses)}),
            "operators": None if self.operators is None else list(self.operators),
            "emit_events": self.emit_events,
        }
        return orjson.dumps(document)

    @classmethod
    def from_json(cls, data: bytes) -> ProcessSpec:
        document = orjson.loads(data)
        given = document["input"]
        source: RecordingInput | KafkaInput = (
            KafkaInput(given["brokers"], dict(given["partitions"]), int(given["metrics_port"]))
            if document["mode"] == "live" else
            RecordingInput(Path(given["recording_dir"]), given["stop_after"], bool(given["progress"])))
        role = document["role"]
        return cls(state_dir=Path(document["state_dir"]), config=Config.from_dict(document["config"]), input=source,
                   role=None if role is None else Role(int(role["process_id"]), tuple(role["addresses"])),
                   operators=None if document["operators"] is None else tuple(document["operators"]),
                   emit_events=bool(document["emit_events"]))
