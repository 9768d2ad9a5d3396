"""`omnitrigger report`: its numbers, checked by hand and against an independent pandas computation on the
real-data mix, and the page, opened as a person would in headless Chromium (issue 17).

The browser is Debian's `chromium` (.ci/run installs it), driven by Playwright through its
`executable_path`, so nothing is downloaded; the context is offline and every request other than the
report file itself is refused and counted. The browser tests skip only when no Chromium binary is found.

The small case's conversions.jsonl is written by hand; the real-data mix is replayed with a control group
(`[policy] holdout = 0.3`) and its conversions are the engine's, which `derive_conversions` (the issue's
definition, computed from the triggers, the holdout suppressions and the events) checks.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from omnitrigger.config import Config

from conftest import REPO, records, replay, write_lines
from omnitrigger.report import (
    DEFAULT_CONVERSION_WINDOW_S, compute_report, load_outputs, newcombe_interval, wilson_interval,
)

DAY_MS = 86_400_000
WINDOW_MS = int(DEFAULT_CONVERSION_WINDOW_S * 1000)
#: Set to a folder to keep a copy of each screenshot there (docs/report.png is one of them).
SCREENSHOT_DIR = os.environ.get("OMNITRIGGER_SCREENSHOT_DIR")


def omnitrigger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnitrigger", *args], capture_output=True, text=True, timeout=300)


def iso(ts_ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def report_numbers(html_file: Path) -> dict[str, Any]:
    """The numbers a page carries (<script id="report-numbers">)."""
    page = html_file.read_text()
    start = page.index('<script type="application/json" id="report-numbers">') + len(
        '<script type="application/json" id="report-numbers">')
    return orjson.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))


# -- the browser -----------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """A Chromium binary: $OMNITRIGGER_CHROMIUM, else Debian's chromium (or another name for it) on PATH."""
    named = os.environ.get("OMNITRIGGER_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (apt-get install chromium, or set OMNITRIGGER_CHROMIUM); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


#: What the page shows, read in the browser: every panel, and for each plot its traces and drawn marks.
PAGE_STATE = """() => [...document.querySelectorAll('section.panel')].map(panel => {
    const gd = panel.querySelector('.plotly-graph-div');
    const empty = panel.querySelector('.empty');
    const traces = gd && gd.data ? gd.data.map(t => {
        const numbers = [t.values, t.x, t.y].filter(a => a).flatMap(a => Array.from(a))
            .filter(v => typeof v === 'number' && isFinite(v));
        return {type: t.type, points: (t.values || t.y || t.x || []).length,
                nonzero: numbers.filter(v => v !== 0).length};
    }) : null;
    return {key: panel.dataset.panel, title: panel.querySelector('h2').textContent,
            plotted: !!gd && gd.classList.contains('js-plotly-plot'), traces: traces,
            marks: gd ? gd.querySelectorAll('g.point, path.point').length : 0,
            empty: empty ? empty.textContent : null};
})"""


def open_report(browser: Any, html_file: Path, screenshot: Path) -> list[dict[str, Any]]:
    """Open the page offline, wait for every plot, screenshot it; fail on a console error, a page error or
    any request that is not the page itself. Returns PAGE_STATE."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, offline=True)
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "assert") else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    url = html_file.resolve().as_uri()

    def route(request_route: Any) -> None:
        if request_route.request.url == url:
            request_route.continue_()
        else:
            requests.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    try:
        page.goto(url, wait_until="load")
        page.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')]"
                               ".every(gd => gd.classList.contains('js-plotly-plot') && gd._fullLayout)",
                               timeout=30_000)
        page.wait_for_timeout(300)  # the transitions of the first draw
        state = page.evaluate(PAGE_STATE)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(SCREENSHOT_DIR) / screenshot.name)
    assert not problems, problems
    assert not requests, f"the page asked for the network: {requests}"
    assert screenshot.stat().st_size > 20_000
    return state


def assert_every_plot_has_data(state: list[dict[str, Any]], empty_ok: tuple[str, ...] = ()) -> None:
    for panel in state:
        if panel["key"] in empty_ok:
            continue
        assert panel["plotted"], panel
        assert panel["traces"], panel
        assert all(trace["points"] > 0 for trace in panel["traces"]), panel
        assert sum(trace["nonzero"] for trace in panel["traces"]) > 0, panel
        assert panel["marks"] > 0, panel


# -- a small case by hand --------------------------------------------------------------------------------

T0 = 1_791_187_200_000  # 2026-10-05T08:00:00Z


def message(n: int, customer: str, ts_ms: int, rule: str = "cart_abandoned", product: str = "P1",
            reason: str | None = None) -> dict[str, Any]:
    record = {"trigger_id": f"{n:032x}", "rule": rule, "customer_id": customer, "ts": iso(ts_ms), "ts_ms": ts_ms,
              "channel": "push", "products": [product], "store_id": None, "evidence": [f"e{n}"],
              "emitted_at": iso(ts_ms)}
    if reason is None:
        record["recipient"] = {"device_id": [f"d-{customer}"]}
    else:
        record["reason"] = reason
    return record


def conversion(n: int, sent: dict[str, Any], arm: str, channel: str, delay_s: float, amount: float = 10.0,
               store: str | None = None) -> dict[str, Any]:
    ts_ms = sent["ts_ms"] + int(delay_s * 1000)
    return {"conversion_id": f"c{n}", "trigger_id": sent["trigger_id"], "rule": sent["rule"],
            "customer_id": sent["customer_id"], "product": sent["products"][0], "arm": arm,
            "purchase_channel": channel, "store_id": store if channel == "pos" else None, "amount": amount,
            "delay_s": delay_s, "purchase_ts": iso(ts_ms), "ts_ms": ts_ms}


def small_case(folder: Path, with_conversions: bool = True) -> Path:
    """cart_abandoned: 70 customers sent a trigger, 56 of whom converted; 80 held out, 48 of whom converted
    (the first example of Newcombe 1998, table II: 0.2, interval 0.0524 to 0.3339); browse_abandoned: 10
    sent, 3 converted, no holdout. Two days, three stores, 4 receipts of which 3 known, 2 ROPO customers."""
    triggers, suppressed, conversions = [], [], []
    n = 0
    for k in range(70):
        n += 1
        sent = message(n, f"cus_t{k}", T0 + (k % 2) * DAY_MS)
        triggers.append(sent)
        if k < 56:
            channel = ("web", "app", "pos")[k % 3]
            conversions.append(conversion(n, sent, "treated", channel, 3600 * (k + 1), store="S1"))
            if k < 4:  # a second purchase of the same customer: still one converted customer
                conversions.append(conversion(1000 + n, sent, "treated", "web", 7200 * (k + 1)))
    for k in range(80):
        n += 1
        held = message(n, f"cus_h{k}", T0 + (k % 2) * DAY_MS, reason="holdout")
        suppressed.append(held)
        if k < 48:
            conversions.append(conversion(n, held, "holdout", "pos" if k % 2 else "web", 600, store="S2"))
    for k in range(10):
        n += 1
        sent = message(n, f"cus_b{k}", T0 + 3600_000, rule="browse_abandoned")
        triggers.append(sent)
        if k < 3:
            conversions.append(conversion(n, sent, "treated", "pos", 86_400, store="S3"))
    for k, reason in enumerate(["purchased", "purchased", "no_consent", "customer_cap", "purchased"]):
        n += 1
        suppressed.append(message(n, f"cus_s{k}", T0 + k * 60_000, rule="browse_abandoned" if k % 2 else "cart_abandoned",
                                  reason=reason))
    visits = [{"visit_id": f"v{k}", "store_id": store, "customer_id": customer, "device_id": f"d{k}",
               "start": iso(T0), "end": iso(T0 + 600_000), "confirmed_at": iso(T0 + 120_000), "dwell_s": dwell,
               "pings": 5, "ended_by": "timeout"}
              for k, (store, customer, dwell) in enumerate([("S1", "cus_t1", 300.0), ("S1", "cus_t1", 500.0),
                                                             ("S1", None, 200.0), ("S2", "cus_t2", 120.0)])]

    def event(topic: str, customer: str | None, ts_ms: int, body: dict[str, Any]) -> dict[str, Any]:
        return {"customer_id": customer, "topic": topic, "ts_ms": ts_ms, "partition": 0, "offset": 0,
                "event": {**body, "ts": ts_ms}}

    def receipt(customer: str | None, ts_ms: int, store: str, products: list[str], kind: str = "sale",
                qty: int = 1) -> dict[str, Any]:
        return event("pos.receipts", customer, ts_ms, {"terminal_id": "T", "receipt_no": ts_ms, "store_id": store,
                                                       "type": kind, "items": [{"product_id": p, "qty": qty, "price": 2.0}
                                                                               for p in products]})

    def view(customer: str | None, ts_ms: int, product: str) -> dict[str, Any]:
        return event("web.events", customer, ts_ms, {"event_id": f"w{ts_ms}", "type": "view_item",
                                                     "product_id": product, "channel": "web"})

    events = [
        view("cus_r1", T0, "P9"), receipt("cus_r1", T0 + 2 * DAY_MS, "S1", ["P9", "P8"]),  # ROPO, 48 h
        view("cus_r2", T0, "P7"), receipt("cus_r2", T0 + 8 * DAY_MS, "S1", ["P7"]),  # too late: bought in store only
        view("cus_r3", T0, "P6"), receipt("cus_r3", T0 - 1000, "S2", ["P6"]),  # before the view: not ROPO
        view("cus_r4", T0, "P5"), view("cus_r4", T0 + DAY_MS, "P5"),
        receipt("cus_r4", T0 + DAY_MS + 3_600_000, "S2", ["P5"]),  # ROPO, 1 h after the latest view
        receipt("cus_r1", T0 + DAY_MS, "S1", ["P9"], kind="return", qty=-1),  # a return is no purchase
        receipt(None, T0 + DAY_MS, "S2", ["P9"]),  # anonymous
        view(None, T0, "P9"),  # an unknown visitor's view
        view("cus_r5", T0, "P4"),  # views, never buys
    ]
    write_lines(folder / "triggers.jsonl", triggers)
    write_lines(folder / "suppressed.jsonl", suppressed)
    write_lines(folder / "visits.jsonl", visits)
    write_lines(folder / "events.jsonl", events)
    write_lines(folder / "identities.jsonl", [{"customer_id": "cus_t1", "type": "device_id", "value": "d1"}])
    if with_conversions:
        write_lines(folder / "conversions.jsonl", conversions)
    return folder


def test_intervals_match_newcombe_1998() -> None:
    """Wilson (Newcombe 1998a, table I) and the hybrid score difference interval (1998b, table II, method 10)."""
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-5)
    difference, low, high = newcombe_interval(56, 70, 48, 80)
    assert (difference, low, high) == pytest.approx((0.2, 0.0524, 0.3339), abs=5e-5)
    assert newcombe_interval(9, 10, 3, 10)[1:] == pytest.approx((0.1705, 0.8090), abs=5e-5)
    assert newcombe_interval(1, 1, 0, 0) is None and wilson_interval(0, 0) is None


def test_small_case_numbers(tmp_path: Path) -> None:
    folder = small_case(tmp_path / "out")
    html_file = tmp_path / "report.html"
    result = omnitrigger("report", str(folder), "--html", str(html_file))
    assert result.returncode == 0, result.stderr
    assert f"report: {html_file}" in result.stdout
    numbers = report_numbers(html_file)
    assert numbers == orjson.loads(orjson.dumps(compute_report(load_outputs(folder)), option=orjson.OPT_NON_STR_KEYS))

    rates = numbers["conversion_rates"]["rules"]
    cart = rates["cart_abandoned"]
    assert cart["treated"] | {"ci_low": None, "ci_high": None} == {"customers": 70, "converted": 56, "rate": 0.8,
                                                                    "ci_low": None, "ci_high": None}
    assert cart["holdout"]["customers"] == 80 and cart["holdout"]["converted"] == 48
    assert (cart["uplift"], cart["uplift_ci_low"], cart["uplift_ci_high"]) == pytest.approx((0.2, 0.0524, 0.3339),
                                                                                          abs=5e-5)
    browse = rates["browse_abandoned"]
    assert browse["treated"]["converted"] == 3 and browse["treated"]["customers"] == 10
    assert browse["holdout"] == {"customers": 0, "converted": 0, "rate": None, "ci_low": None, "ci_high": None}
    assert browse["uplift"] is None
    assert "Newcombe" in numbers["conversion_rates"]["method"] and "Newcombe" in html_file.read_text()

    channels = numbers["conversions_by_channel"]
    treated_web = 19 + 4  # k % 3 == 0 of 0..55, and the four second purchases
    assert channels["arms"]["treated"]["channels"] == {"web": treated_web, "app": 19, "pos": 18 + 3}
    assert channels["arms"]["treated"]["online"] == treated_web + 19 and channels["arms"]["treated"]["in_store"] == 21
    assert channels["arms"]["holdout"]["channels"] == {"web": 24, "app": 0, "pos": 24}
    assert channels["treated_by_rule"]["browse_abandoned"]["channels"] == {"web": 0, "app": 0, "pos": 3}

    assert numbers["activity"]["days"] == ["2026-10-05", "2026-10-06"]
    assert numbers["activity"]["triggers"]["cart_abandoned"] == {"2026-10-05": 35, "2026-10-06": 35}
    assert numbers["activity"]["suppressed"]["cart_abandoned"] == {"2026-10-05": 43, "2026-10-06": 40}
    assert numbers["suppression_reasons"]["reasons"]["holdout"] == {"total": 80, "by_rule": {"cart_abandoned": 80}}
    assert list(numbers["suppression_reasons"]["reasons"])[:2] == ["holdout", "purchased"]
    assert numbers["visits"]["stores"] == {"S1": {"visits": 3, "customers": 1, "median_dwell_s": 300.0},
                                           "S2": {"visits": 1, "customers": 1, "median_dwell_s": 120.0}}
    match = numbers["match_rate"]
    assert (match["receipts"], match["matched"], match["rate"]) == (6, 5, 5 / 6)
    assert match["by_store"]["S2"] == {"receipts": 3, "matched": 2, "rate": 2 / 3}
    ropo = numbers["ropo"]
    assert ropo | {"rate": None} == {"recorded": True, "window_s": DEFAULT_CONVERSION_WINDOW_S, "viewers": 5,
                                     "viewers_buying_in_store": 4, "ropo_customers": 2, "rate": None, "products": 2,
                                     "median_delay_h": (48 + 1) / 2}
    assert ropo["rate"] == pytest.approx(2 / 5)
    summary = numbers["summary"]
    assert summary | {"known_customers": None} == {"triggers": 80, "customers_reached": 80, "suppressed": 85,
                                                   "holdout": 80, "visits": 4, "retractions": 0, "dead_letters": 0,
                                                   "conversions": 56 + 4 + 48 + 3, "known_customers": None}

    wider = omnitrigger("report", str(folder), "--html", str(tmp_path / "wide.html"), "--conversion-window", "9d")
    assert wider.returncode == 0, wider.stderr
    assert report_numbers(tmp_path / "wide.html")["ropo"]["ropo_customers"] == 3


def test_small_case_renders_in_chromium(tmp_path: Path, browser: Any) -> None:
    folder = small_case(tmp_path / "out")
    html_file = tmp_path / "report.html"
    assert omnitrigger("report", str(folder), "--html", str(html_file)).returncode == 0
    state = open_report(browser, html_file, tmp_path / "report-small.png")
    assert [panel["key"] for panel in state] == ["activity", "conversion_rates", "uplift", "conversions_by_channel",
                                                 "suppression_reasons", "match_rate", "ropo", "visits"]
    assert_every_plot_has_data(state)


def test_without_conversions_the_panels_say_so(tmp_path: Path, browser: Any) -> None:
    folder = small_case(tmp_path / "out", with_conversions=False)
    html_file = tmp_path / "report.html"
    assert omnitrigger("report", str(folder), "--html", str(html_file)).returncode == 0
    numbers = report_numbers(html_file)
    assert numbers["conversion_rates"]["recorded"] is False and numbers["conversions_by_channel"]["recorded"] is False
    state = open_report(browser, html_file, tmp_path / "report-no-conversions.png")
    by_key = {panel["key"]: panel for panel in state}
    for key in ("conversion_rates", "uplift", "conversions_by_channel"):
        assert not by_key[key]["plotted"] and "no conversions recorded" in by_key[key]["empty"], by_key[key]
    assert_every_plot_has_data(state, empty_ok=("conversion_rates", "uplift", "conversions_by_channel"))


def test_demo_ends_with_its_report(tmp_path: Path, browser: Any) -> None:
    result = omnitrigger("demo", "--keep", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("report: "))
    html_file = Path(line.split()[1])
    assert html_file == tmp_path / "demo" / "report.html" and html_file.is_file()
    numbers = report_numbers(html_file)
    assert numbers["match_rate"]["receipts"] > 0 and numbers["ropo"]["viewers"] > 0, "the demo replays with --events"
    state = open_report(browser, html_file, tmp_path / "report-demo.png")
    conversions = ("conversion_rates", "uplift", "conversions_by_channel")
    assert_every_plot_has_data(state, empty_ok=conversions if not numbers["conversion_rates"]["recorded"] else ())


# -- folders: names, envelopes, errors -------------------------------------------------------------------


def test_a_folder_recorded_from_the_live_topics(tmp_path: Path) -> None:
    """omnitrigger.<stream>.jsonl of kcat envelopes (any topic prefix), redeliveries once; input topic files
    such as web.events.jsonl are not the events stream."""
    bare = small_case(tmp_path / "bare")
    live = tmp_path / "live"
    for stream in ("triggers", "suppressed", "visits", "conversions"):
        lines = records((bare / f"{stream}.jsonl").read_bytes())
        lines.insert(3, lines[0])  # Kafka delivered the first record twice
        write_lines(live / f"shop.omnitrigger.{stream}.jsonl",
                    [{"topic": f"shop.omnitrigger.{stream}", "partition": 0, "offset": n, "tstype": "create", "ts": 1,
                      "broker": 0, "key": line.get("customer_id"), "payload": orjson.dumps(line).decode()}
                     for n, line in enumerate(lines)])
    identities = [{"customer_id": "cus_a", "identifiers": {"device_id": ["d1"]}},
                  {"customer_id": "cus_b", "identifiers": {"device_id": ["d2"]}}]
    write_lines(live / "omnitrigger.identities.jsonl",
                [{"topic": "omnitrigger.identities", "partition": 0, "offset": n, "key": record["customer_id"],
                  "payload": orjson.dumps(record).decode()} for n, record in enumerate(identities)]
                + [{"topic": "omnitrigger.identities", "partition": 0, "offset": 9, "key": "cus_b", "payload": None}])
    write_lines(live / "web.events.jsonl", [{"event_id": "x", "type": "view_item", "ts": 1, "ids": {"device_id": "d"}}])
    outputs = load_outputs(live)
    assert sorted(outputs.files) == ["conversions", "identities", "suppressed", "triggers", "visits"]
    found, expected = compute_report(outputs), compute_report(load_outputs(bare))
    for section in ("activity", "suppression_reasons", "conversion_rates", "conversions_by_channel", "visits"):
        assert found[section] == expected[section], section
    assert found["summary"]["known_customers"] == 1
    assert found["match_rate"]["recorded"] is False

    (bare / "triggers.jsonl").rename(bare / "trigger.jsonl")
    (bare / "suppressed.jsonl").rename(bare / "omnitrigger.suppressed.jsonl")
    assert compute_report(load_outputs(bare))["activity"] == expected["activity"]


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "nowhere", "output folder not found"),
    (lambda tmp: tmp, "no output files in"),
    (lambda tmp: write_lines(tmp / "notes.txt", [{"a": 1}]).parent, "no output files in"),
    (lambda tmp: write_lines(tmp / "triggers.jsonl", [b'{"rule": "x"', b"{}"]).parent, "triggers.jsonl line 1: not JSON"),
    (lambda tmp: write_lines(tmp / "triggers.jsonl", [b"[1]"]).parent, "expected a JSON object"),
])
def test_a_missing_or_empty_folder_is_one_line(tmp_path: Path, make: Any, fragment: str) -> None:
    folder = make(tmp_path)
    result = omnitrigger("report", str(folder), "--html", str(tmp_path / "r.html"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnitrigger: error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "r.html").exists()


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    folder = small_case(tmp_path / "out")
    for args, fragment in ((["report", str(folder)], "--html"),
                           (["report", str(folder), "--html", str(tmp_path / "r.html"), "--conversion-window", "7x"],
                            "--conversion-window")):
        result = omnitrigger(*args)
        assert result.returncode == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- the real-data mix -----------------------------------------------------------------------------------


def add_ropo_lines(recording: Path) -> int:
    """On every other receipt paid with a loyalty card, one more line: a product the card's holder viewed
    online in the 6 days before (the real bakery lines name no clickstream product, so without this no
    one could research online and buy offline). Returns the receipts changed."""
    views: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event in records((recording / "web.events.jsonl").read_bytes()):
        device = event["ids"].get("device_id", "")
        if event["type"] == "view_item" and device.startswith("dev-"):
            views[device[4:-2]].append((event["ts"], str(event["product_id"])))
    receipts = records((recording / "pos.receipts.jsonl").read_bytes())
    changed = carded = 0
    for receipt in receipts:
        loyalty = (receipt.get("ids") or {}).get("loyalty_id")
        if loyalty is None:
            continue
        carded += 1
        seen = [(ts, product) for ts, product in views.get(loyalty[1:], ()) if 0 <= receipt["ts"] - ts <= 6 * DAY_MS]
        if carded % 2 and seen:
            receipt["items"].append({"product_id": max(seen)[1], "qty": 1, "price": 4.5})
            changed += 1
    write_lines(recording / "pos.receipts.jsonl", receipts)
    return changed


def derive_conversions(messages: list[tuple[str, dict[str, Any]]], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversions stream as issue 17 defines it: each purchase line (a web purchase's item, or a till
    receipt's line of positive quantity) of a product of a message (a trigger sent, or a holdout
    suppression) of the same customer, within the window after it, converts the latest such message."""
    by_customer: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for arm, record in messages:
        by_customer[record["customer_id"]].append((record["ts_ms"], arm, record))
    found = []
    for position, event in enumerate(events):
        body, customer, ts = event["event"], event["customer_id"], event["ts_ms"]
        if customer is None:
            continue
        if event["topic"] == "web.events" and body.get("type") == "purchase":
            channel, store = body.get("channel", "web"), None
        elif event["topic"] == "pos.receipts" and body.get("type", "sale") != "return":
            channel, store = "pos", body.get("store_id")
        else:
            continue
        for line_no, item in enumerate(body.get("items") or ()):
            if item.get("qty", 1) <= 0:
                continue
            product = str(item["product_id"])
            candidates = [(sent_ts, arm, record) for sent_ts, arm, record in by_customer.get(customer, ())
                          if product in map(str, record["products"]) and 0 <= ts - sent_ts <= WINDOW_MS]
            if not candidates:
                continue
            sent_ts, arm, record = max(candidates, key=lambda candidate: (candidate[0], candidate[2]["trigger_id"]))
            found.append({"conversion_id": f"{record['trigger_id']}-{position}-{line_no}",
                          "trigger_id": record["trigger_id"], "rule": record["rule"], "customer_id": customer,
                          "product": product, "arm": arm, "purchase_channel": channel, "store_id": store,
                          "amount": float(item.get("price", 0.0)) * item.get("qty", 1),
                          "delay_s": (ts - sent_ts) / 1000, "purchase_ts": iso(ts), "ts_ms": ts})
    return found


@pytest.fixture(scope="module")
def real_mix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real-data mix replayed with every output and a control group of 30 % of each rule's customers
    (`[policy] holdout = 0.3`); the conversions are the engine's (checked against the issue's definition)."""
    from conftest import REAL_DATA
    from geolife import write_stores_csv
    from recordings import omnichannel_recording

    if not REAL_DATA.is_dir():
        if os.environ.get("OMNITRIGGER_REQUIRE_REAL_DATA"):
            pytest.fail(f"real data not found at {REAL_DATA}, and OMNITRIGGER_REQUIRE_REAL_DATA is set")
        pytest.skip(f"real data not found at {REAL_DATA} (set OMNITRIGGER_SHARED to the shared/ folder)")
    tmp_path = tmp_path_factory.mktemp("real-mix")
    recording = tmp_path / "recording"
    _, stores = omnichannel_recording(REAL_DATA, recording)
    changed = add_ropo_lines(recording)
    _, files = replay(tmp_path, recording, stores=write_stores_csv(tmp_path / "stores.csv", stores),
                      config=Config(holdout=0.3))
    folder = tmp_path / "run"
    html_file = tmp_path / "report.html"
    result = omnitrigger("report", str(folder), "--html", str(html_file))
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "html": html_file, "numbers": report_numbers(html_file), "ropo_lines": changed,
            "files": files}


def test_the_engines_conversions_follow_the_issues_definition(real_mix: dict[str, Any]) -> None:
    """Every conversion the engine wrote is one the definition finds, credited to the same message (the engine
    has fewer where a message was converted once already: it converts once per product)."""
    files = real_mix["files"]
    triggers = records(files["triggers"])
    holdouts = [s for s in records(files["suppressed"]) if s["reason"] == "holdout"]
    derived = derive_conversions([("treated", t) for t in triggers] + [("holdout", h) for h in holdouts],
                                 records(files["events"]))
    expected = {(c["customer_id"], c["product"], c["ts_ms"]): (c["trigger_id"], c["arm"]) for c in derived}
    engine = records(files["conversions"])
    assert len(engine) > 10 and {c["arm"] for c in engine} == {"treated", "holdout"}
    for conversion in engine:
        key = (conversion["customer_id"], str(conversion["product"]), conversion["ts_ms"])
        assert expected.get(key) == (conversion["trigger_id"], conversion["arm"]), conversion


def test_real_data_numbers_equal_an_independent_computation(real_mix: dict[str, Any]) -> None:
    import pandas as pd

    folder, numbers = real_mix["folder"], real_mix["numbers"]

    def frame(name: str) -> pd.DataFrame:
        return pd.read_json(folder / name, lines=True, dtype=False)

    triggers, suppressed, visits, events = frame("triggers.jsonl"), frame("suppressed.jsonl"), frame("visits.jsonl"), \
        frame("events.jsonl")
    conversions = frame("conversions.jsonl")
    for table in (triggers, suppressed):
        table["day"] = pd.to_datetime(table["ts_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    assert len(triggers) > 300 and len(conversions) > 10, (len(triggers), len(conversions))

    # triggers and suppressions per rule per day
    activity = numbers["activity"]
    for name, table in (("triggers", triggers), ("suppressed", suppressed)):
        expected = {rule: {day: int(n) for day, n in group.groupby("day").size().items()}
                    for rule, group in table.groupby("rule")}
        assert activity[name] == expected, name
    assert activity["days"] == sorted(set(triggers["day"]) | set(suppressed["day"]))

    # suppression reasons
    reasons = {reason: {"total": len(group), "by_rule": {rule: int(n) for rule, n in group.groupby("rule").size().items()}}
               for reason, group in suppressed.groupby("reason")}
    assert numbers["suppression_reasons"]["reasons"] == reasons
    assert numbers["suppression_reasons"]["reasons"]["holdout"]["total"] > 50

    # conversion rate per rule and arm, uplift, intervals (the intervals from the quadratic's roots)
    z = statistics.NormalDist().inv_cdf(0.975)

    def wilson(k: int, n: int) -> tuple[float, float]:
        import numpy as np

        p = k / n  # (p - x)^2 = z^2 x (1 - x) / n  <=>  (1 + z^2/n) x^2 - (2p + z^2/n) x + p^2 = 0
        roots = np.roots([1 + z * z / n, -(2 * p + z * z / n), p * p]).real
        return float(max(0.0, roots.min())), float(min(1.0, roots.max()))

    arms = pd.concat([triggers.assign(arm="treated"), suppressed[suppressed["reason"] == "holdout"].assign(arm="holdout")])
    arms = arms[["trigger_id", "rule", "customer_id", "arm"]]
    converted = arms.merge(conversions[["trigger_id"]].drop_duplicates(), on="trigger_id")
    sizes = arms.groupby(["rule", "arm"])["customer_id"].nunique()
    wins = converted.groupby(["rule", "arm"])["customer_id"].nunique()
    found = numbers["conversion_rates"]["rules"]
    assert set(found) == set(arms["rule"])
    for rule in found:
        rates = {}
        for arm in ("treated", "holdout"):
            n, k = int(sizes.get((rule, arm), 0)), int(wins.get((rule, arm), 0))
            assert (found[rule][arm]["customers"], found[rule][arm]["converted"]) == (n, k), (rule, arm)
            assert found[rule][arm]["rate"] == pytest.approx(k / n)
            assert (found[rule][arm]["ci_low"], found[rule][arm]["ci_high"]) == pytest.approx(wilson(k, n), abs=1e-9)
            rates[arm] = (k / n, *wilson(k, n))
        (p1, l1, u1), (p2, l2, u2) = rates["treated"], rates["holdout"]
        assert found[rule]["uplift"] == pytest.approx(p1 - p2)
        assert found[rule]["uplift_ci_low"] == pytest.approx(p1 - p2 - ((p1 - l1) ** 2 + (u2 - p2) ** 2) ** 0.5, abs=1e-9)
        assert found[rule]["uplift_ci_high"] == pytest.approx(p1 - p2 + ((u1 - p1) ** 2 + (p2 - l2) ** 2) ** 0.5, abs=1e-9)
    assert numbers["conversion_rates"]["unmatched_conversions"] == 0

    # conversions by channel
    by_channel = numbers["conversions_by_channel"]
    for arm, group in conversions.groupby("arm"):
        counts = group.groupby("purchase_channel").size()
        found_arm = by_channel["arms"][arm]
        assert {channel: n for channel, n in found_arm["channels"].items() if n} == {c: int(n) for c, n in counts.items()}
        assert found_arm["online"] == int(counts.reindex(["web", "app"]).fillna(0).sum())
        assert found_arm["in_store"] == int(counts.get("pos", 0))
        assert found_arm["amount"] == pytest.approx(round(group["amount"].sum(), 2))
    treated = conversions[conversions["arm"] == "treated"]
    assert {rule: {c: n for c, n in row["channels"].items() if n} for rule, row in by_channel["treated_by_rule"].items()} \
        == {rule: {c: int(n) for c, n in group.groupby("purchase_channel").size().items()}
            for rule, group in treated.groupby("rule")}
    assert by_channel["arms"]["treated"]["in_store"] > 0 and by_channel["arms"]["treated"]["online"] > 0

    # visits per store
    expected_visits = {store: {"visits": len(group), "customers": int(group["customer_id"].dropna().nunique()),
                               "median_dwell_s": float(group["dwell_s"].median())}
                       for store, group in visits.groupby(visits["store_id"].astype(str))}
    assert numbers["visits"]["stores"] == expected_visits

    # match rate
    receipts = events[events["topic"] == "pos.receipts"].copy()
    receipts["known"] = receipts["customer_id"].notna()
    match = numbers["match_rate"]
    assert (match["receipts"], match["matched"]) == (len(receipts), int(receipts["known"].sum()))
    assert match["rate"] == pytest.approx(receipts["known"].mean())
    receipts["day"] = pd.to_datetime(receipts["ts_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    assert {day: (row["receipts"], row["matched"]) for day, row in match["by_day"].items()} == {
        day: (len(group), int(group["known"].sum())) for day, group in receipts.groupby("day")}
    assert 0.3 < match["rate"] < 1

    # ROPO
    known = events[events["customer_id"].notna()]
    web = pd.json_normalize(known[known["topic"] == "web.events"].to_dict("records"))
    views = web[web["event.type"] == "view_item"][["customer_id", "event.product_id", "ts_ms"]]
    views.columns = ["customer_id", "product", "view_ms"]
    views = views.assign(product=views["product"].astype(str))
    till = known[known["topic"] == "pos.receipts"][["customer_id", "ts_ms", "event"]].copy()
    till = till[till["event"].map(lambda body: body.get("type", "sale") != "return")]
    till = till.assign(item=till["event"].map(lambda body: body["items"])).explode("item")
    till = till[till["item"].map(lambda item: item.get("qty", 1) > 0)]
    till = till.assign(product=till["item"].map(lambda item: str(item["product_id"])))[["customer_id", "product", "ts_ms"]]
    pairs = views.merge(till, on=["customer_id", "product"])
    pairs = pairs[(pairs["ts_ms"] >= pairs["view_ms"]) & (pairs["ts_ms"] - pairs["view_ms"] <= WINDOW_MS)]
    shortest = (pairs["ts_ms"] - pairs["view_ms"]).groupby([pairs["customer_id"], pairs["product"]]).min() / 3_600_000
    ropo = numbers["ropo"]
    assert ropo["viewers"] == views["customer_id"].nunique()
    assert ropo["viewers_buying_in_store"] == len(set(views["customer_id"]) & set(till["customer_id"]))
    assert ropo["ropo_customers"] == pairs["customer_id"].nunique() > 5
    assert ropo["rate"] == pytest.approx(pairs["customer_id"].nunique() / views["customer_id"].nunique())
    assert ropo["products"] == len(shortest)
    assert ropo["median_delay_h"] == pytest.approx(float(shortest.median()))

    assert numbers["summary"]["triggers"] == len(triggers)
    assert numbers["summary"]["customers_reached"] == triggers["customer_id"].nunique()
    assert numbers["summary"]["conversions"] == len(conversions)


def test_real_data_report_renders_in_chromium(real_mix: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    state = open_report(browser, real_mix["html"], tmp_path / "report.png")
    assert_every_plot_has_data(state)
    assert len(state) == 8


def test_docs_screenshot_is_there() -> None:
    picture = REPO / "docs" / "report.png"
    assert picture.is_file() and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
