"""The product catalogue (`--catalog FILE`): `product_id,category,repurchase_days`, for replenishment rules.

A row with a product_id gives the product's category and, optionally, its own repurchase interval in
days; a row with an empty product_id gives a category's interval, for its products without one. So a
catalogue can say "every coffee every 30 days, this big pack every 60". A bad row stops the run with one
line naming it (a consumable silently dropped would silence its reminders).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnitrigger.config import Config


class CatalogError(Exception):
    """The catalogue file is missing or has a bad row; the message names it."""


@functools.lru_cache(maxsize=8)
def repurchase_days(path: str) -> dict[str, float]:
    """product_id -> days between purchases, for the products that have an interval (read once a process)."""
    file = Path(path)
    if not file.is_file():
        raise CatalogError(f"catalog file not found: {file}")
    own: dict[str, float] = {}
    category_of: dict[str, str] = {}
    by_category: dict[str, float] = {}
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"product_id", "category", "repurchase_days"} - set(reader.fieldnames or [])
        if missing:
            raise CatalogError(f"{file}: header must have product_id,category,repurchase_days; missing "
                               f"{', '.join(sorted(missing))}")
        for line_no, row in enumerate(reader, start=2):
            if row.get(None) or any(row.get(name) is None for name in ("product_id", "category", "repurchase_days")):
                raise CatalogError(f"{file} line {line_no}: expected 3 fields (a name with a comma and no quotes?)")
            product, category, days_text = (row[name].strip() for name in ("product_id", "category", "repurchase_days"))
            days = _days(days_text, file, line_no) if days_text else None
            if not product:
                if not category or days is None:
                    raise CatalogError(f"{file} line {line_no}: a category row needs a category and repurchase_days")
                by_category[category] = days
                continue
            if product in category_of or product in own:
                raise CatalogError(f"{file} line {line_no}: product_id {product!r} appears twice")
            category_of[product] = category
            if days is not None:
                own[product] = days
    intervals = {product: by_category[category] for product, category in category_of.items() if category in by_category}
    intervals.update(own)
    return intervals


def with_catalog(config: "Config", path: Path | None) -> "Config":
    """`config` with `--catalog`'s file (checked now, one line if bad); a replenishment rule without one is an
    error, named."""
    from omnitrigger.config import ConfigError
    from omnitrigger.operators.rules import configured_rules

    if path is not None:
        repurchase_days(str(Path(path).resolve()))
        config = config.with_overrides(catalog_file=str(Path(path).resolve()))
    for rule in configured_rules(config):
        if "catalog_file" in rule.run_time_settings and config.catalog_file is None:
            raise ConfigError(f"rules.{rule.name}: a rule of kind {rule.kind!r} needs the product catalogue: "
                              "give --catalog FILE (product_id,category,repurchase_days)")
    return config


def _days(text: str, file: Path, line_no: int) -> float:
    try:
        days = float(text)
    except ValueError:
        raise CatalogError(f"{file} line {line_no}: repurchase_days: expected a number of days, got {text!r}") from None
    if not 0 < days <= 3650:
        raise CatalogError(f"{file} line {line_no}: repurchase_days: expected more than 0 and at most 3650, got {text}")
    return days
