"""Run every benchmark and write one table of their headline figures.

    python benchmarks/run_all.py                    # the full set, about 40 minutes on 2 cores
    python benchmarks/run_all.py --quick            # smaller sizes, about 10 minutes
    python benchmarks/run_all.py --only replay stages --update-readme

Each benchmark runs as its own process (so peak memory is its own) with
`--json`, and prints its figures as it goes. Each benchmark's figures are
kept in benchmarks/results.json with the date, commit and machine of its
run, so `--only` re-runs some and keeps the others' last figures. The table
goes to benchmarks/RESULTS.md; `--update-readme` also puts it in README.md
between the `<!-- benchmarks:start -->` and `<!-- benchmarks:end -->`
markers. A benchmark that fails is listed as failed, and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from results import machine  # noqa: E402

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
RESULTS_JSON = HERE / "results.json"

# name -> (arguments of the full run, arguments of the quick run)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    # Committed every 30,000 records, about a replay's 1 s epoch (every 1,000 would overstate commits).
    "stages": (["--copies", "10", "--commit-every", "30000"], ["--commit-every", "30000"]),
    "replay": (["--copies", "10", "--processes", "1", "2", "3", "4"], ["--copies", "2", "--processes", "1", "2"]),
    "peer": ([], ["--copies", "1"]),
    # A fresh job at a rate it sustains here; steps down after an overload measure the overload's backlog.
    "live": (["--rate", "8000", "--duration", "60", "--steps", ""],
             ["--rate", "4000", "--duration", "45", "--steps", ""]),
    "restart": (["--customers", "1000000", "--trials", "3"], ["--customers", "100000", "--trials", "1"]),
    "memory": (["--customers", "10000000", "--identifiers", "20000000", "--deadlines", "1000000"], []),
    "identity": (["--identifiers", "1000000"], ["--identifiers", "200000", "--steady-events", "100000"]),
    "visits": ([], ["--devices", "20000"]),
}


def run_one(name: str, arguments: list[str], out_dir: Path) -> tuple[dict | None, float, str]:
    """(figures or None, seconds, one line on a failure) of `python benchmarks/bench_<name>.py`."""
    script = HERE / f"bench_{name}.py"
    if not script.is_file():
        return None, 0.0, f"{script.name} not found"
    json_file = out_dir / f"{name}.json"
    command = [sys.executable, str(script), *arguments, "--json", str(json_file)]
    print(f"\n=== {' '.join(['python', f'benchmarks/{script.name}', *arguments])}", flush=True)
    started = time.perf_counter()
    code = subprocess.call(command, cwd=REPO)
    seconds = time.perf_counter() - started
    if code != 0 or not json_file.is_file():
        return None, seconds, f"exit code {code}" if code else "it wrote no figures"
    return orjson.loads(json_file.read_bytes()), seconds, ""


def current_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip() or "unknown"


def table(kept: dict[str, dict]) -> str:
    """The Markdown table of every benchmark's last run, in BENCHMARKS order."""
    runs = {(entry["date"], entry["commit"], entry["machine"]) for entry in kept.values()}
    if len(runs) == 1:
        (date, commit, on), = runs
        header = [f"Made by `python benchmarks/run_all.py` on {date} at commit {commit}, on: {on}.", ""]
    else:
        header = ["Made by `python benchmarks/run_all.py`; each benchmark's date and commit are listed below it.", ""]
    lines = [*header, "| benchmark | figure | value |", "|---|---|---|"]
    commands = []
    for name in [name for name in BENCHMARKS if name in kept]:
        entry = kept[name]
        if entry.get("failure"):
            lines.append(f"| {name} | failed: {entry['failure']} | |")
            continue
        figures = entry["figures"]
        when = "" if len(runs) == 1 else f", {entry['date']} at {entry['commit']} on {entry['machine']}"
        commands.append(f"- `{figures['command']}` ({entry['seconds']:.0f} s{when})")
        for row in figures["rows"]:
            value = row["value"]
            shown = f"{value:,}" if isinstance(value, int) else f"{value:,.2f}".rstrip("0").rstrip(".")
            lines.append(f"| {name} | {row['what']} | {shown} {row['unit']} |")
    return "\n".join([*lines, "", "Each benchmark alone:", "", *commands, ""])


def update_readme(text: str) -> bool:
    readme = REPO / "README.md"
    content = readme.read_text()
    if START not in content or END not in content:
        return False
    before, rest = content.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{START}\n{text}{END}{after}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not half an hour)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument("--update-readme", action="store_true", help="also put the table in README.md")
    args = parser.parse_args()
    names = [name for name in BENCHMARKS if not args.only or name in args.only]
    kept: dict[str, dict] = orjson.loads(RESULTS_JSON.read_bytes()) if RESULTS_JSON.is_file() and args.only else {}
    stamp = {"date": datetime.date.today().isoformat(), "commit": current_commit(), "machine": machine()}
    failed = False
    with tempfile.TemporaryDirectory(prefix="omnitrigger-run-all-") as temp:
        for name in names:
            full, quick = BENCHMARKS[name]
            figures, seconds, failure = run_one(name, quick if args.quick else full, Path(temp))
            kept[name] = {**stamp, "figures": figures, "seconds": seconds, "failure": failure}
            failed = failed or figures is None
            RESULTS_JSON.write_bytes(orjson.dumps(kept, option=orjson.OPT_INDENT_2))  # a kill keeps what ran
    text = table(kept)
    (HERE / "RESULTS.md").write_text("# Latest benchmark results\n\n" + text)
    print("\n" + text)
    print("written to benchmarks/RESULTS.md")
    if args.update_readme:
        print("and to README.md" if update_readme(text) else
              f"README.md has no {START} ... {END} markers: not updated", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
