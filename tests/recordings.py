"""Recordings built from the real data in shared/data/real, for tests that need whole-flow input."""

from __future__ import annotations

import csv
import random
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

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


ZERO_DEVICE = "00000000-0000-0000-0000-000000000000"


def identity_recording(real_data: Path, recording: Path, users: int = 114, receipts: int = 600) -> dict[str, Any]:
    """Real Taobao clickstream and bakery receipts, with the identity links a retailer's systems would send.

    How the links are made (deterministic, from the user's position i in the file):
      * every user browses on a phone app device; every third also on a desktop with a cookie;
      * every other user logs in after the first fifth of their events (identity.links source=login),
        and from then on that device's events carry the auth_id;
      * every fourth user has a loyalty card linked at login (source=loyalty_card); every fifth has an
        email (crm link to the auth or device) and a phone given at the till;
      * the bakery receipts, re-timed into the clickstream's days in their order, are paid with the
        loyalty card (60%), the phone (20%) or anonymously (20%);
      * noise: 5 family tablets each logged into by two accounts, 10 crm links of confidence 0.5 between
        different users, 30 events from a zeroed advertising id and an "anonymous" cookie.
    Returns counts of what it wrote.
    """
    rows: dict[str, list[tuple[int, str, str, int]]] = OrderedDict()
    with (real_data / TAOBAO_TAIL).open(newline="") as handle:
        for n, (user, item, _category, behavior, ts) in enumerate(csv.reader(handle)):
            if int(ts) < 1_500_000_000:
                continue  # the dataset's outlier timestamps
            if user not in rows and len(rows) == users:
                continue
            rows.setdefault(user, []).append((n, item, behavior, int(ts) * 1000))
    kinds = {"pv": "view_item", "cart": "add_to_cart", "buy": "purchase", "fav": "view_item"}
    web: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    auth_users: list[str] = []
    loyalty_users: list[str] = []
    phone_users: list[str] = []
    for i, (user, history) in enumerate(rows.items()):
        login_at = len(history) // 5 if i % 2 == 0 else None
        for k, (n, item, behavior, ts) in enumerate(history):
            desktop = i % 3 == 0 and n % 2 == 1
            ids: dict[str, str] = {"device_id": f"dev-{user}-{'d' if desktop else 'm'}"}
            if desktop:
                ids["cookie_id"] = f"ck-{user}"
            if login_at is not None and k == login_at:
                links.append({"event_id": f"login-{user}", "ts": ts, "source": "login",
                              "ids": {"device_id": ids["device_id"], "auth_id": f"a-{user}"}})
                if i % 4 == 0:
                    links.append({"event_id": f"card-{user}", "ts": ts + 1, "source": "loyalty_card",
                                  "ids": {"auth_id": f"a-{user}", "loyalty_id": f"L{user}"}})
            if login_at is not None and k > login_at and not desktop:
                ids["auth_id"] = f"a-{user}"
            event: dict[str, Any] = {"event_id": f"tb-{n}", "type": kinds[behavior], "ts": ts,
                                     "channel": "web" if desktop else "app", "ids": ids}
            if behavior == "buy":
                event["items"] = [{"product_id": item, "qty": 1, "price": 1.0}]
            else:
                event["product_id"] = item
            web.append(event)
        first_ts = history[0][3]
        if login_at is not None:
            auth_users.append(user)
            if i % 4 == 0:
                loyalty_users.append(user)
        if i % 5 == 0:
            anchor = {"auth_id": f"a-{user}"} if login_at is not None else {"device_id": f"dev-{user}-m"}
            links.append({"event_id": f"crm-{user}", "ts": first_ts + 5, "source": "crm",
                          "ids": {**anchor, "email": f" User.{user}@Example.com"}})
            phone_users.append(user)
    start = min(event["ts"] for event in web)
    end = max(event["ts"] for event in web)
    for t in range(5):  # family tablets: two accounts log in on one device
        first, second = auth_users[2 * t], auth_users[2 * t + 1]
        for k, user in enumerate((first, second)):
            links.append({"event_id": f"tablet-{t}-{k}", "ts": start + (t * 2 + k + 1) * 3_600_000, "source": "login",
                          "ids": {"device_id": f"family-tablet-{t}", "auth_id": f"a-{user}"}})
    users_list = list(rows)
    for c in range(10):  # weak CRM guesses between different people
        left, right = users_list[c], users_list[-1 - c]
        links.append({"event_id": f"weak-{c}", "ts": start + c * 7_200_000, "source": "crm", "confidence": 0.5,
                      "ids": {"device_id": f"dev-{left}-m", "cookie_id": f"ck-{right}"}})
    for z in range(30):  # a zeroed advertising id and an anonymous cookie, from many users
        user = users_list[z * 3 % len(users_list)]
        web.append({"event_id": f"zero-{z}", "type": "view_item", "ts": start + z * 600_000, "channel": "app",
                    "product_id": "1", "ids": {"device_id": ZERO_DEVICE, "cookie_id": "anonymous",
                                               **({"auth_id": f"a-{user}"} if user in auth_users else {})}})
    till = bakery_receipts(real_data, receipts)
    step = (end - start) // len(till)
    for r, receipt in enumerate(till):
        receipt["ts"] = start + r * step
        if r % 5 < 3 and loyalty_users:
            receipt["ids"] = {"loyalty_id": f"L{loyalty_users[r % len(loyalty_users)]}"}
        elif r % 5 == 3 and phone_users:
            user = phone_users[r % len(phone_users)]
            receipt["ids"] = {"phone": f"+358 40 {int(user) % 1000:03d} {int(user) % 10000:04d}"}
            if r % 10 == 3 and user in loyalty_users:
                receipt["ids"]["loyalty_id"] = f"L{user}"
    web.sort(key=lambda event: event["ts"])
    links.sort(key=lambda link: link["ts"])
    write_lines(recording / "web.events.jsonl", web)
    write_lines(recording / "identity.links.jsonl", links)
    write_lines(recording / "pos.receipts.jsonl", till)
    return {"web.events": len(web), "identity.links": len(links), "pos.receipts": len(till), "users": len(rows)}


def omnichannel_recording(real_data: Path, recording: Path, users: int = 114, receipts: int = 600,
                          trace_days: int = 2) -> tuple[dict[str, Any], list[tuple[str, str, float, float, float]]]:
    """identity_recording, plus consent changes and real GPS traces carried by shoppers' phones; returns
    (counts, stores).

      * consent: every shopper grants push (two in three) or email (the rest) an hour before their first
        event, and four in five grant location too; every seventh revokes the channel half-way through
        their history;
      * GPS: the first `trace_days` days of each GeoLife user's real traces (Beijing) are moved, time of
        day kept, onto consecutive days of the clickstream's window and carried by the phone of a shopper
        who logs in (GeoLife user k -> the k-th such shopper); positions are unchanged;
      * stores: where those traces dwell (tests/geolife.py `place_stores`), so visits and in-store offers
        happen on real movement.
    """
    from geolife import load_rows, ping_bodies, place_stores

    counts = identity_recording(real_data, recording, users=users, receipts=receipts)
    web = [orjson.loads(line) for line in (recording / "web.events.jsonl").read_bytes().splitlines()]
    first_seen: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    for event in web:
        device = event["ids"]["device_id"]
        if device.startswith("dev-") and device.endswith("-m"):
            user = device[4:-2]
            first_seen.setdefault(user, event["ts"])
            last_seen[user] = event["ts"]
    consents = []
    for i, user in enumerate(sorted(first_seen)):
        channel = "email" if i % 3 == 2 else "push"
        consents.append({"event_id": f"consent-{user}", "ts": first_seen[user] - 3_600_000, "channel": channel,
                         "status": "granted", "ids": {"device_id": f"dev-{user}-m"}})
        if i % 5 != 4:  # four in five also let the app use where they are (in-store offers need it)
            consents.append({"event_id": f"location-{user}", "ts": first_seen[user] - 3_600_000, "channel": "location",
                             "status": "granted", "ids": {"device_id": f"dev-{user}-m"}})
        if i % 7 == 0:
            consents.append({"event_id": f"revoke-{user}", "ts": (first_seen[user] + last_seen[user]) // 2,
                             "channel": channel, "status": "revoked", "ids": {"device_id": f"dev-{user}-m"}})
    consents.sort(key=lambda consent: consent["ts"])
    write_lines(recording / "consent.changes.jsonl", consents)
    logged_in = sorted({link["ids"]["device_id"][4:-2] for link in
                        (orjson.loads(line) for line in (recording / "identity.links.jsonl").read_bytes().splitlines())
                        if link["source"] == "login" and link["ids"]["device_id"].startswith("dev-")})
    window_start_day = min(first_seen.values()) // 86_400_000 + 1
    traces: dict[str, list[tuple[str, int, float, float]]] = {}
    for row in load_rows(real_data):
        traces.setdefault(row[0], []).append(row)
    rows = []
    for k, geolife_user in enumerate(sorted(traces)):
        trace = traces[geolife_user]
        days = sorted({ts // 86_400_000 for _, ts, _, _ in trace})[:trace_days]
        shopper = logged_in[k % len(logged_in)]
        for n, day in enumerate(days):
            shift = (window_start_day + (k + n) % 8 - day) * 86_400_000
            rows += [(shopper, ts + shift, lat, lon) for _, ts, lat, lon in trace if ts // 86_400_000 == day]
    rows.sort(key=lambda row: (row[1], row[0]))
    pings = ping_bodies(rows)
    for ping in pings:
        ping["ids"] = {"device_id": f"dev-{ping['ids']['device_id'][len('geolife-'):]}-m"}
    write_lines(recording / "geo.pings.jsonl", pings)
    counts.update({"consent.changes": len(consents), "geo.pings": len(pings)})
    return counts, place_stores(rows)
