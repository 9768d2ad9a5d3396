"""The stores file: `store_id,name,lat,lon[,radius_m][,timezone]`, checked against schemas/stores.schema.json.

`timezone` (an IANA name) is the store's zone for the quiet hours of in-store rules; empty or absent:
`[policy] timezone`."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

from omnitrigger.schemas import ContractViolation
from omnitrigger.schemas.validator import SchemaCompiler

DEFAULT_RADIUS_M = 500.0


class StoresError(Exception):
    """The stores file is missing or has a bad row; the message names it."""


@dataclass(frozen=True)
class Store:
    store_id: str
    name: str
    lat: float
    lon: float
    radius_m: float
    timezone: str | None = None  # IANA zone of in-store quiet hours; None: [policy] timezone


def load_stores(path: Path) -> list[Store]:
    path = Path(path)
    if not path.is_file():
        raise StoresError(f"stores file not found: {path}")
    check = SchemaCompiler().compile_file("stores.schema.json")
    stores: list[Store] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"store_id", "name", "lat", "lon"} - set(reader.fieldnames or [])
        if missing:
            raise StoresError(f"{path}: header must have store_id,name,lat,lon[,radius_m][,timezone]; missing {', '.join(sorted(missing))}")
        for line_no, row in enumerate(reader, start=2):
            header = reader.fieldnames or []
            extra = row.get(None) or []  # type: ignore[call-overload]
            fields = len(header) - sum(1 for name in header if row.get(name) is None) + len(extra)
            if extra or any(row.get(name) is None for name in ("store_id", "name", "lat", "lon")):
                raise StoresError(f"{path} line {line_no}: {fields} fields, the header has {len(header)}"
                                  " (a decimal comma, or a name with a comma and no quotes?)")
            try:
                record = {"store_id": row["store_id"], "name": row["name"],
                          "lat": _number(row["lat"], "lat"), "lon": _number(row["lon"], "lon")}
                if row.get("radius_m"):
                    record["radius_m"] = _number(row["radius_m"], "radius_m")
                if row.get("timezone"):
                    record["timezone"] = row["timezone"].strip()
                check(record)
                if "timezone" in record:
                    _check_zone(record["timezone"])
            except ContractViolation as violation:
                raise StoresError(f"{path} line {line_no}: {violation.detail}") from None
            if record["store_id"] in seen:
                raise StoresError(f"{path} line {line_no}: store_id {record['store_id']!r} appears twice")
            seen.add(record["store_id"])
            stores.append(Store(record["store_id"], record["name"], record["lat"], record["lon"],
                                record.get("radius_m", DEFAULT_RADIUS_M), record.get("timezone")))
    if not stores:
        raise StoresError(f"{path}: no stores (the file has a header and no rows): visits need at least one store")
    return stores


@functools.lru_cache(maxsize=8)
def store_zones(path: str) -> dict[str, str]:
    """store_id -> its own time zone, for the stores that name one (read once per file and process)."""
    return {store.store_id: store.timezone for store in load_stores(Path(path)) if store.timezone}


def _check_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ContractViolation("wrong_type", f"timezone: expected an IANA time zone such as "
                                f"\"Europe/Helsinki\", got {name!r}") from None


def _number(text: str | None, name: str) -> float | str | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return text  # the schema check reports it as a wrong type, with the field name
