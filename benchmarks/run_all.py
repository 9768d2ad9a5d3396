"""Run every benchmark and write one table of their headline figures.

    python benchmarks/run_all.py                    # the full set, about 40 minutes on 2 cores
    python benchmarks/run_all.py --quick            # smaller sizes, about 10 minutes
    python benchmarks/run_all.py --only replay stages --update-readme

Each benchmark runs as its own process (so peak memory is its own) with
`--json`, and prints its figures as it goes. The table goes to
benchmarks/RESULTS.md with the machine, the date and the commit it came from;
`--update-readme` also puts it in README.md between the
`<!-- benchmarks:start -->` and `<!-- benchmarks:end -->` markers. A
benchmark that fails is listed as failed, and the others still run.
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

# name -> (arguments of the full run, arguments of the quick run)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "stages": ([], []),
    "replay": (["--copies", "10", "--processes", "1", "2"], ["--copies", "2", "--processes", "1", "2"]),
    "peer": ([], ["--copies", "1"]),
    "live": (["--rate", "3000", "--duration", "60", "--steps", "2000,1000"],
             ["--rate", "2000", "--duration", "45", "--steps", ""]),
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


def table(results: list[tuple[str, dict | None, float, str]], quick: bool) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    lines = [f"Made by `python benchmarks/run_all.py{' --quick' if quick else ''}` on "
             f"{datetime.date.today().isoformat()} at commit {commit}, on: {machine()}.", "",
             "| benchmark | figure | value |", "|---|---|---|"]
    commands = []
    for name, figures, seconds, failure in results:
        if figures is None:
            lines.append(f"| {name} | failed: {failure} | |")
            continue
        commands.append(f"- `{figures['command']}` ({seconds:.0f} s)")
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
    results = []
    with tempfile.TemporaryDirectory(prefix="omnitrigger-run-all-") as temp:
        for name in names:
            full, quick = BENCHMARKS[name]
            figures, seconds, failure = run_one(name, quick if args.quick else full, Path(temp))
            results.append((name, figures, seconds, failure))
    text = table(results, args.quick)
    (HERE / "RESULTS.md").write_text("# Latest benchmark results\n\n" + text)
    print("\n" + text)
    print("written to benchmarks/RESULTS.md")
    if args.update_readme:
        print("and to README.md" if update_readme(text) else
              f"README.md has no {START} ... {END} markers: not updated", flush=True)
    return 1 if any(figures is None for _, figures, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
