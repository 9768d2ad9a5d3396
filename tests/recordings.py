"""Recordings built from the real data in shared/data/real, for tests that need whole-flow input."""

from __future__ import annotations

import csv
import random
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conftest import kcat_envelope, write_lines

BAKERY = Path("pos") / "breadbasket_dms_bakery_pos.csv"
TAOBAO_TAIL = Path("clickstream") / "taobao_userbehavior_usersorted_tail10k.csv"


def bakery_receipts(real_data: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` receipts of the Bread Basket bakery till (real; local time read as UTC)."""
    receipts: OrderedDict[str, dict[str, Any]] = OrderedDict()
    with (real_data / BAKERY).open(newline="") as handle:
        for row in csv.DictReader(handle):
            number = row["Transaction"]
            if number not in receipts:
                if len(receipts) == count:
                    break
                ts = datetime.fromisoformat(f"{row['Date']}T{row['Time']}").replace(tzinfo=timezone.utc)
                receipts[number] = {"terminal_id": "bakery-1", "receipt_no": int(number),
                                    "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "store_id": "S1", "items": []}
            if row["Item"] != "NONE":
                receipts[number]["items"].append({"product_id": row["Item"], "qty": 1, "price": 0.0})
    for receipt in receipts.values():
        if not receipt["items"]:
            receipt["items"].append({"product_id": "NONE", "qty": 1, "price": 0.0})
    return list(receipts.values())


def receipts_with_redeliveries(real_data: Path, recording: Path, count: int = 1000, redelivered: int = 100,
                               seed: int = 11) -> list[dict[str, Any]]:
    """pos.receipts.jsonl of `count` real receipts plus `redelivered` copies, some far apart in the file.

    Written as kcat envelopes over two partitions, the way a CDC topic is recorded.
    Returns the unique receipts.
    """
    rng = random.Random(seed)
    receipts = bakery_receipts(real_data, count)
    deliveries = list(receipts)
    for receipt in rng.sample(receipts, redelivered):
        position = deliveries.index(receipt)
        deliveries.insert(min(len(deliveries), position + rng.choice([1, 5, 50, 400, 900])), receipt)
    offsets = [0, 0]
    lines = []
    for receipt in deliveries:
        partition = receipt["receipt_no"] % 2
        lines.append(kcat_envelope("pos.receipts", partition, offsets[partition], receipt))
        offsets[partition] += 1
    write_lines(recording / "pos.receipts.jsonl", lines)
    return receipts


def taobao_web_events(real_data: Path, limit: int = 3000) -> list[dict[str, Any]]:
    """Real Taobao clickstream rows as web.events (pv -> view_item, cart -> add_to_cart, buy -> purchase)."""
    kinds = {"pv": "view_item", "cart": "add_to_cart", "buy": "purchase"}
    events = []
    with (real_data / TAOBAO_TAIL).open(newline="") as handle:
        for n, (user, item, _category, behavior, ts) in enumerate(csv.reader(handle)):
            if len(events) == limit:
                break
            if behavior not in kinds:
                continue
            event: dict[str, Any] = {"event_id": f"tb-{n}", "type": kinds[behavior], "ts": int(ts) * 1000,
                                     "channel": "app", "ids": {"device_id": f"tb-dev-{user}"}}
            if behavior == "buy":
                event["items"] = [{"product_id": item, "qty": 1, "price": 1.0}]
            else:
                event["product_id"] = item
            events.append(event)
    return events
