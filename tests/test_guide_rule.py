"""docs/operators.md's example rule, built exactly as the guide says (issue 16): its Python block saved as
`second_look.py` beside a config that names it in `plugins`, then run through whole replays. It fires, a
purchase cancels it, it moves to the customer a merge keeps, and it passes the conformance checks. If the
guide drifts from what works, this fails."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import records, replay, write_lines
from omnitrigger.config import load_config
from omnitrigger.schemas import ContractViolation, parse_event_time

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_764_000_000_000


def guide_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture
def guide_config(tmp_path: Path) -> Any:
    """The guide's module and its config, as a user would save them."""
    [module] = [block for block in guide_blocks("python") if "register_kind" in block]
    [toml] = [block for block in guide_blocks("toml") if "plugins" in block]
    (tmp_path / "second_look.py").write_text(module)
    (tmp_path / "omnitrigger.toml").write_text(toml + '[policy]\nquiet_hours = ""\n')
    return load_config(tmp_path / "omnitrigger.toml")


def view(n: int, ts_ms: int, product: str, cookie: str = "c1") -> dict[str, Any]:
    return {"event_id": f"w-{n}", "type": "view_item", "ts": ts_ms, "channel": "web", "ids": {"cookie_id": cookie},
            "product_id": product}


def purchase(n: int, ts_ms: int, product: str) -> dict[str, Any]:
    return {"event_id": f"w-{n}", "type": "purchase", "ts": ts_ms, "channel": "web", "ids": {"cookie_id": "c1"},
            "items": [{"product_id": product, "qty": 1, "price": 3.0}]}


def shopper(recording: Path, web: list[dict[str, Any]], links: list[dict[str, Any]] = ()) -> None:
    write_lines(recording / "consent.changes.jsonl", [
        {"event_id": f"k-{cookie}", "ts": T0 - 3 * HOUR, "ids": {"cookie_id": cookie}, "channel": "push",
         "status": "granted"} for cookie in ("c1", "c2")])
    write_lines(recording / "web.events.jsonl", [*web, view(999, T0 + 2 * 24 * HOUR, "P-tick", cookie="c-tick")])
    write_lines(recording / "identity.links.jsonl", list(links))


def second_looks(files: dict[str, bytes], stream: str) -> list[dict[str, Any]]:
    return [record for record in records(files[stream]) if record["rule"] == "second_look"]


def test_the_guides_rule_fires_two_hours_after_a_second_look(tmp_path: Path, guide_config: Any) -> None:
    shopper(tmp_path / "rec", [view(1, T0, "P1"), view(2, T0 + 30 * MINUTE, "P1"),  # a second look: reminded
                               view(3, T0, "P2"), view(4, T0 + 25 * HOUR, "P2")])  # a day apart: not
    _, files = replay(tmp_path, tmp_path / "rec", config=guide_config)
    [trigger] = second_looks(files, "triggers")
    assert trigger["products"] == ["P1"] and trigger["ts_ms"] == T0 + 30 * MINUTE + 2 * HOUR
    assert trigger["evidence"] == ["w-2"]


def test_a_purchase_cancels_the_guides_rule(tmp_path: Path, guide_config: Any) -> None:
    shopper(tmp_path / "rec", [view(1, T0, "P1"), view(2, T0 + 30 * MINUTE, "P1"), purchase(3, T0 + HOUR, "P1")])
    _, files = replay(tmp_path, tmp_path / "rec", config=guide_config)
    assert second_looks(files, "triggers") == []
    [cancelled] = second_looks(files, "suppressed")
    assert cancelled["reason"] == "purchased" and cancelled["products"] == ["P1"]


def test_the_guides_rule_moves_to_the_customer_a_merge_keeps(tmp_path: Path, guide_config: Any) -> None:
    """Cookie c2 looks twice at P1; twenty minutes later a login shows c2 is c1's (seen first): the pending
    reminder goes out once, to c1's customer."""
    shopper(tmp_path / "rec", [view(1, T0 - 2 * HOUR, "P9"), view(2, T0, "P1", cookie="c2"),
                               view(3, T0 + 10 * MINUTE, "P1", cookie="c2")],
            links=[{"event_id": "l-1", "ts": T0 + 20 * MINUTE, "ids": {"cookie_id": "c1", "auth_id": "anna"},
                    "source": "login"},
                   {"event_id": "l-2", "ts": T0 + 21 * MINUTE, "ids": {"cookie_id": "c2", "auth_id": "anna"},
                    "source": "login"}])
    _, files = replay(tmp_path, tmp_path / "rec", config=guide_config)
    kept = next(i["customer_id"] for i in records(files["identities"]) if i["value"] == "c1")
    assert next(i["customer_id"] for i in records(files["identities"]) if i["value"] == "c2") == kept
    [trigger] = second_looks(files, "triggers")
    assert trigger["customer_id"] == kept and trigger["ts_ms"] == T0 + 10 * MINUTE + 2 * HOUR


def test_the_guides_rule_passes_the_conformance_checks(tmp_path: Path, guide_config: Any) -> None:
    from test_conformance import assert_conformant, demo_recording

    recording = demo_recording(tmp_path / "demo")
    web = recording / "web.events.jsonl"
    lines = []
    for line in web.read_bytes().splitlines():  # the demo's shoppers look again 20 minutes after each view
        lines.append(line)
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict) and body.get("type") == "view_item" and "product_id" in body:
            try:
                again = parse_event_time(body["ts"]) + 20 * MINUTE
            except ContractViolation:  # the demo's broken records stay broken, and alone
                continue
            lines.append(orjson.dumps({**body, "event_id": f"{body['event_id']}-again", "ts": again}))
    web.write_bytes(b"\n".join(lines) + b"\n")
    assert_conformant("rules", recording, tmp_path, guide_config, rule="second_look")
