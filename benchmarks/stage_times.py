"""Where each process of a replay spends its time, stage by stage: the report of `bench_replay.py --stages`.

The replay runs with `stage_trace/` on its PYTHONPATH, whose `sitecustomize` times every call Bytewax makes
into the flow (the reader's `next_batch`, each stage's `on_batch`, `on_eof` and `snapshot`, the writer's
`write_batch`) in every process. This reads those times back and prints, for each process, the seconds each
stage's calls took; each step of the run, the share of it each process spent in its stages; and the epoch
ends: when each stage snapshotted (committed its state) and for how long. A cluster's stages run one after
another at an epoch's end (Bytewax snapshots a stage once the stage before it has), and the reader starts
the next epoch only once every stage has finished the last one, so what the processes wait for shows here.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

TRACE_FOLDER = Path(__file__).resolve().parent / "stage_trace"


def environment(folder: Path) -> dict[str, str]:
    """The environment a traced replay runs with: the tracer on the path, writing into `folder`."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "OMNITRIGGER_STAGE_TRACE": str(folder),
            "PYTHONPATH": str(TRACE_FOLDER) + (os.pathsep + path if path else "")}


def _read(folder: Path, started: float) -> dict[int, list[tuple[float, float, str, str]]]:
    """(start since `started`, seconds, stage, call) of each process, by its number: the reader's process is
    process 0, the others follow in the order their ids were given out."""
    calls: dict[int, list[tuple[float, float, str, str]]] = {}
    for file in folder.glob("*.txt"):
        rows = []
        for line in file.read_text().splitlines():
            at, seconds, stage, call = line.split()
            rows.append((float(at) - started, float(seconds), stage, call))
        if rows:
            calls[int(file.stem)] = sorted(rows)
    readers = [pid for pid, rows in calls.items() if any(stage == "read" for _, _, stage, _ in rows)]
    order = readers + sorted(pid for pid in calls if pid not in readers)
    return {number: calls[pid] for number, pid in enumerate(order)}


def report(folder: Path, started: float, step_s: float = 0.5) -> list[str]:
    """The lines `bench_replay.py --stages` prints for one run traced into `folder` (`started`: its wall
    clock start, time.time())."""
    by_process = _read(folder, started)
    lines = ["  each process's seconds in its stages' calls (reading is the reader's decoding too):"]
    for number, rows in by_process.items():
        totals: dict[str, float] = defaultdict(float)
        for _, seconds, stage, call in rows:
            totals[f"{stage} {call}"] += seconds
        lines.append(f"    process {number}: {sum(totals.values()):.2f} s: " + ", ".join(
            f"{name} {seconds:.2f}" for name, seconds in sorted(totals.items(), key=lambda item: -item[1])
            if seconds >= 0.005))
    end = max((at + seconds for rows in by_process.values() for at, seconds, _, _ in rows), default=0.0)
    lines.append(f"  each step of {step_s:g} s, the share each process spent in its stages "
                 "(r read, s sequencer, h history stage, u rules, w write; capitals: snapshots):")
    letters = {"read": "r", "sequencer": "s", "history": "h", "rules": "u", "write": "w"}
    steps = int(end / step_s) + 1
    for step in range(steps):
        low, high = step * step_s, (step + 1) * step_s
        parts = []
        for number, rows in by_process.items():
            shares: dict[str, float] = defaultdict(float)
            for at, seconds, stage, call in rows:
                overlap = min(high, at + seconds) - max(low, at)
                if overlap > 0:
                    letter = letters.get(stage, "?")
                    shares[letter.upper() if call == "snapshot" else letter] += overlap / step_s
            busy = sum(shares.values())
            parts.append(f"process {number} {busy:4.0%} " + (" ".join(
                f"{letter}{share:.0%}" for letter, share in sorted(shares.items()) if share >= 0.01) or "-"))
        lines.append(f"    {low:5.1f} s  " + "  |  ".join(parts))
    lines.append("  epoch ends: each stage's snapshots (the rules': all shards), from the first one's start:")
    snapshots = sorted((at, seconds, number, stage) for number, rows in by_process.items()
                       for at, seconds, stage, call in rows if call == "snapshot" and stage != "read")
    group: list[tuple[float, float, int, str]] = []
    for snapshot in [*snapshots, None]:
        if snapshot is not None and (not group or snapshot[0] - (group[-1][0] + group[-1][1]) < 0.5):
            group.append(snapshot)
            continue
        if group:
            per_stage: dict[tuple[int, str], list[float]] = {}
            for at, seconds, number, stage in group:
                first_and_total = per_stage.setdefault((number, stage), [at, 0.0])
                first_and_total[1] += seconds
            lines.append(f"    at {group[0][0]:5.2f} s: " + ", ".join(
                f"{stage} (process {number}) at +{first - group[0][0]:.2f} for {total:.2f} s"
                for (number, stage), (first, total) in sorted(per_stage.items(), key=lambda item: item[1][0])))
        group = [snapshot] if snapshot is not None else []
    return lines
