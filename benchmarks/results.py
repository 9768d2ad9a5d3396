"""Where a benchmark leaves its figures for `run_all.py`: `--json PATH` writes them as one JSON object.

Every benchmark prints its figures for people; those that take `--json` also
write the headline ones, each as {"value": number, "unit": text, "what": text},
so `run_all.py` can make one table without parsing prose.
"""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any

import orjson


class Figures:
    """The headline figures of one benchmark run, in the order they are added."""

    def __init__(self, benchmark: str, command: str) -> None:
        self.benchmark = benchmark
        self.command = command
        self.rows: list[dict[str, Any]] = []

    def add(self, what: str, value: float, unit: str) -> None:
        self.rows.append({"what": what, "value": value, "unit": unit})

    def write(self, path: Path | None) -> None:
        if path is not None:
            Path(path).write_bytes(orjson.dumps({"benchmark": self.benchmark, "command": self.command,
                                                 "rows": self.rows}, option=orjson.OPT_INDENT_2))


def machine() -> str:
    """One line naming the machine the figures came from."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def peak_rss_mib_of_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
