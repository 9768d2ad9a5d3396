"""Shared fixtures: where the real data lives, and helpers to build recordings and run replays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import orjson
import pytest

from omnitrigger.runner.replay import ReplayOptions, ReplaySummary, run_replay

# A fixed test key for hashing email and phone (the replay refuses to start without one).
os.environ.setdefault("OMNITRIGGER_PII_KEY", "omnitrigger-test-key-0123456789")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OMNITRIGGER_SHARED", REPO.parent / "shared"))
REAL_DATA = SHARED / "data" / "real"

STREAM_FLAGS = ("dead_letter", "visits", "suppressed", "identities", "refused_links", "duplicates", "events", "retractions",
                "conversions")


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        if os.environ.get("OMNITRIGGER_REQUIRE_REAL_DATA"):
            pytest.fail(f"real data not found at {REAL_DATA}, and OMNITRIGGER_REQUIRE_REAL_DATA is set")
        pytest.skip(f"real data not found at {REAL_DATA} (set OMNITRIGGER_SHARED to the shared/ folder)")
    return REAL_DATA


def write_lines(path: Path, records: Iterable[Any]) -> Path:
    """Write records as JSON lines; bytes are written as they are (for broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for record in records:
            handle.write((record if isinstance(record, bytes) else orjson.dumps(record)) + b"\n")
    return path


def kcat_envelope(topic: str, partition: int, offset: int, payload: Any, ts_ms: int | None = None) -> dict[str, Any]:
    """The JSON envelope `kcat -C -J` writes for one record: an object payload as a JSON string, like kcat.

    A string or None payload is kept as it is (to write a broken or a null payload).
    """
    return {"topic": topic, "partition": partition, "offset": offset, "tstype": "create",
            "ts": ts_ms if ts_ms is not None else -1, "broker": 0, "key": None,
            "payload": orjson.dumps(payload).decode() if isinstance(payload, (dict, list)) else payload}


def write_stores(path: Path) -> Path:
    path.write_text("store_id,name,lat,lon,radius_m\nS1,Kamppi,60.1690,24.9320,300\nS2,Kallio,60.1840,24.9500,\n")
    return path


def replay(tmp_path: Path, recording: Path, name: str = "run", **options: Any) -> tuple[ReplaySummary, dict[str, bytes]]:
    """Run a replay writing every output stream under tmp_path/name; returns the summary and each file's bytes.

    `stores=` a stores CSV to use instead of the two Helsinki stores of `write_stores`.
    """
    out_dir = tmp_path / name
    out_dir.mkdir(parents=True, exist_ok=True)
    stores = options.pop("stores", None) or write_stores(tmp_path / "stores.csv")
    paths = {flag: out_dir / f"{flag}.jsonl" for flag in STREAM_FLAGS}
    summary = run_replay(ReplayOptions(recording_dir=recording, stores=stores, out=out_dir / "triggers.jsonl",
                                       **paths, **options))
    files = {flag: path.read_bytes() for flag, path in paths.items()}
    files["triggers"] = (out_dir / "triggers.jsonl").read_bytes()
    return summary, files


def records(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]
