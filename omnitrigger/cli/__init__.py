"""The `omnitrigger` command: replay a recording, or run the bundled demo.

Every user error (a wrong flag, a missing file, a state folder that does not
fit, an unwritable output, a full disk) ends in one line on stderr and a
non-zero exit, never a traceback: exit 2 for usage errors, 1 for the rest;
a replay stopped by Ctrl-C or SIGTERM exits 130 or 143 (128 + the signal).
The reports Bytewax's Rust core prints when a step fails (a panic, with a
backtrace under RUST_BACKTRACE) are filtered out of stderr
(`rust_panics_hidden`; OMNITRIGGER_SHOW_PANICS=1 keeps them).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from omnitrigger import __version__
from omnitrigger.catalog import CatalogError, with_catalog
from omnitrigger.runner.cluster import ClusterError, cluster_options, resolve_cluster
from omnitrigger.config import ConfigError, load_config
from omnitrigger.kafka_tools import KafkaSetupError
from omnitrigger.cli.live import COMMANDS as LIVE_COMMANDS
from omnitrigger.outputs import OutputError
from omnitrigger.pii import PiiKeyError
from omnitrigger.recording import RecordingError
from omnitrigger.runner.replay import ReplayError, ReplayInterrupted, ReplayOptions, run_replay
from omnitrigger.state import StateError
from omnitrigger.stores import StoresError

USER_ERRORS = (CatalogError, ClusterError, ConfigError, KafkaSetupError, OutputError, PiiKeyError, RecordingError, ReplayError,
               StateError, StoresError)

_file = click.Path(dir_okay=False, path_type=Path)
_dir = click.Path(file_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnitrigger")
def cli() -> None:
    """Real-time omnichannel triggers from clickstream, tills and store visits."""


@cli.command()
@click.argument("recording_dir", type=_dir)
@click.option("--stores", "stores", type=_file, required=True, help="Stores CSV: store_id,name,lat,lon[,radius_m][,timezone].")
@click.option("--out", type=_file, help="Triggers, one JSON line each (required, except on a cluster's processes 1 and up).")
@click.option("--dead-letter", type=_file, help="Records that broke their contract, with reason and source offset.")
@click.option("--visits", type=_file, help="Confirmed store visits.")
@click.option("--suppressed", type=_file, help="Triggers held back by policy, with the reason.")
@click.option("--identities", type=_file, help="At the end: each identifier with its customer id.")
@click.option("--refused-links", type=_file, help="Identity links refused by merge protection, with the reason.")
@click.option("--duplicates", type=_file, help="Redelivered records that were dropped.")
@click.option("--events", type=_file, help="The cleaned, deduplicated events.")
@click.option("--retractions", type=_file, help="Triggers sent although their products were bought before their time.")
@click.option("--conversions", type=_file, help="Purchases of messaged (or held-out) products within [metrics] conversion_window.")
@click.option("--config", "config_file", type=_file, help="TOML config file (see README).")
@click.option("--catalog", type=_file, help="Product catalogue CSV: product_id,category,repurchase_days (replenishment).")
@click.option("--state-dir", type=_dir, help="Keep state here, to resume an interrupted replay.")
@cluster_options
@click.option("--stop-after", type=click.IntRange(min=0), help="Stop after this many records (resume later with --state-dir).")
@click.option("--quiet", is_flag=True, help="No progress line.")
def replay(recording_dir: Path, stores: Path, out: Path, dead_letter: Path | None, visits: Path | None,
           suppressed: Path | None, identities: Path | None, refused_links: Path | None, duplicates: Path | None, events: Path | None,
           retractions: Path | None, conversions: Path | None, config_file: Path | None, catalog: Path | None, state_dir: Path | None,
           processes: int | None, addresses: str | None,
           hostfile: Path | None, process_id: int | None, stop_after: int | None, quiet: bool) -> None:
    """Replay RECORDING_DIR (<topic>.jsonl files: kcat -J envelopes or bare events) through the flow."""
    processes, address_list, process_id = resolve_cluster(processes, addresses, hostfile, process_id)
    if out is None and not process_id:
        raise click.UsageError("Missing option '--out'.")
    summary = run_replay(ReplayOptions(
        recording_dir=recording_dir, stores=stores, out=out, dead_letter=dead_letter, visits=visits,
        suppressed=suppressed, identities=identities, refused_links=refused_links, duplicates=duplicates, events=events,
        retractions=retractions, conversions=conversions, state_dir=state_dir, config=with_catalog(load_config(config_file), catalog),
        processes=processes, addresses=address_list,
        process_id=process_id, stop_after=stop_after, progress=not quiet))
    click.echo("\n".join(summary.lines()))


@cli.command(name="rules")
@click.option("--config", "config_file", type=_file, help="TOML config file (default: the defaults).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for tools.")
def list_rules(config_file: Path | None, as_json: bool) -> None:
    """List every rule the config runs: its kind, state code and settings (durations in seconds)."""
    import orjson

    from omnitrigger.operators.rules import configured_rules

    config = load_config(config_file)
    rules = [rule.describe() for rule in configured_rules(config)]
    for rule in rules:
        rule["disabled"] = rule["rule"] in config.disabled_rules
    if as_json:
        click.echo(orjson.dumps(rules, option=orjson.OPT_INDENT_2).decode())
        return
    for rule in rules:
        settings = {key: value for key, value in rule.items() if key not in ("rule", "kind", "state_code", "disabled")}
        click.echo(f"{rule['rule']}  kind={rule['kind']}  state_code={rule['state_code'] or '-'}"
                   + ("  (disabled)" if rule["disabled"] else ""))
        for key, value in settings.items():
            click.echo(f"    {key} = {orjson.dumps(value).decode()}")


@cli.command()
@click.option("--keep", type=_dir, help="Write the sample recording and the outputs here instead of a temp folder.")
def demo(keep: Path | None) -> None:
    """Replay a bundled sample recording through the whole flow and show what it found."""
    from omnitrigger.demo import run_demo

    if keep is not None:
        run_demo(keep)
        return
    with tempfile.TemporaryDirectory(prefix="omnitrigger-demo-") as work:
        run_demo(Path(work), kept=False)


@cli.command()
@click.argument("recording_dir", type=_dir)
@click.option("--stores", "stores", type=_file, required=True, help="Stores CSV: store_id,name,lat,lon[,radius_m][,timezone].")
@click.option("--config", "config_file", type=_file, help="The config in force, A (default: the defaults).")
@click.option("--against", "against_file", type=_file, required=True, help="The config to try, B.")
@click.option("--keep", type=_dir, help="Write each run's triggers, suppressed and retractions to DIR/a and DIR/b.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for tools.")
def backtest(recording_dir: Path, stores: Path, config_file: Path | None, against_file: Path, keep: Path | None,
             as_json: bool) -> None:
    """Replay RECORDING_DIR under two configs and show, per rule, what the change adds, removes and suppresses."""
    import orjson

    from omnitrigger.backtest import run_backtest

    config_a, config_b = load_config(config_file), load_config(against_file)  # both checked before any replay
    report = run_backtest(recording_dir, stores, config_a, config_b, keep=keep,
                          say=lambda line: click.echo(line, err=True))
    report.config_a = str(config_file) if config_file is not None else None
    report.config_b = str(against_file)
    if as_json:
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    else:
        click.echo("\n".join(report.lines()))


@cli.command()
@click.option("--state-dir", type=_dir, required=True, help="The state folder of a replay (--state-dir) or a live job.")
@click.option("--customer", help="A customer id (cus_...).")
@click.option("--identifier", help="TYPE:VALUE, e.g. email:ann@example.com (email and phone are hashed as the "
                                   "pipeline does, with OMNITRIGGER_PII_KEY) or device_id:d-123.")
@click.option("--product", help="Only this product's deadlines, caps and outputs.")
@click.option("--out-dir", type=_dir, help="A folder with the run's triggers.jsonl, suppressed.jsonl, retractions.jsonl.")
@click.option("--config", "config_file", type=_file,
              help="The job's config: the caps' limits and windows, the phone country code (default: the defaults).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for tools.")
def explain(state_dir: Path, customer: str | None, identifier: str | None, product: str | None, out_dir: Path | None,
            config_file: Path | None, as_json: bool) -> None:
    """Show one customer's identifiers, consents, pending deadlines, caps and (with --out-dir) what it was sent."""
    import orjson

    from omnitrigger.explain import ExplainError, explain as explain_customer, parse_identifier

    if (customer is None) == (identifier is None):
        raise click.UsageError("give one of --customer ID and --identifier TYPE:VALUE")
    try:
        parsed = parse_identifier(identifier) if identifier is not None else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--identifier'") from None
    config = load_config(config_file)
    try:
        result = explain_customer(state_dir, customer=customer, identifier=parsed, product=product, out_dir=out_dir,
                                  config=config)
    except ExplainError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    else:
        click.echo("\n".join(result.lines()))


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--html", "html_file", type=_file, required=True, help="Write the report here (one self-contained file).")
@click.option("--conversion-window", default="7d", show_default=True,
              help="How long after a product view a till purchase counts as ROPO (90s, 60m, 24h, 7d).")
def report(out_dir: Path, html_file: Path, conversion_window: str) -> None:
    """Write an HTML report of OUT_DIR (a replay's output files, or the live output topics recorded to files)."""
    from omnitrigger.config import parse_duration_s
    from omnitrigger.report import ReportError, write_report

    try:
        window_s = parse_duration_s(conversion_window, "--conversion-window")
    except ConfigError as error:
        raise click.BadParameter(str(error).split(": ", 1)[-1], param_hint="'--conversion-window'") from None
    try:
        numbers = write_report(out_dir, html_file, window_s)
    except ReportError as error:
        raise click.ClickException(str(error)) from None
    s = numbers["summary"]
    click.echo(f"report: {html_file} ({s['triggers']:,} triggers, {s['suppressed']:,} suppressed, "
               f"{s['conversions']:,} conversions, {len(numbers['files'])} files read from {out_dir})")


for _command in LIVE_COMMANDS:  # run, record, publish: omnitrigger/live_cli.py
    cli.add_command(_command)


def main() -> None:
    command = " ".join(sys.argv[1:2])
    with rust_panics_hidden(command in ("replay", "demo", "backtest")):
        code = _run(command)
    sys.exit(code)


def _run(command: str) -> int:
    """The command's exit code; every error is one line on stderr."""
    try:
        code = cli.main(standalone_mode=False, prog_name="omnitrigger")
    except click.UsageError as error:
        hint = f" (see: omnitrigger {command} --help)" if command and not command.startswith("-") else ""
        click.echo(f"omnitrigger: error: {error.format_message()}{hint}", err=True)
        return 2
    except click.ClickException as error:
        click.echo(f"omnitrigger: error: {error.format_message()}", err=True)
        return error.exit_code
    except ReplayInterrupted as error:
        click.echo(f"omnitrigger: error: {error}", err=True)
        return error.exit_code
    except USER_ERRORS as error:
        click.echo(f"omnitrigger: error: {error}", err=True)
        return 1
    except (click.Abort, KeyboardInterrupt):
        click.echo("omnitrigger: error: interrupted (SIGINT)", err=True)
        return 130
    return code if isinstance(code, int) else 0


#: Set to 1 to see Bytewax's Rust panic messages and backtraces on stderr (hidden by default).
SHOW_PANICS_ENV = "OMNITRIGGER_SHOW_PANICS"

#: The filter stderr goes through: it drops Rust's panic reports, passes everything else on at once.
_PANIC_FILTER = r"""
import os, re
panic = re.compile(rb"thread '[^']*' panicked at ")
noise = re.compile(rb"(Box<dyn Any>|stack backtrace:|\s+\d+: |\s+at |note: (Some details are omitted|run with "
                   rb"`RUST_BACKTRACE)|panic in a destructor during cleanup|thread caused non-unwinding panic)")
start = b"thread '"
buffer, in_panic, mid_line = b"", False, False
def out(data):
    while data:
        data = data[os.write(1, data):]
while True:
    chunk = os.read(0, 1 << 16)
    buffer += chunk
    while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        line += b"\n"
        if mid_line:
            out(line)
            mid_line = False
        elif panic.match(line):
            in_panic = True
        elif (in_panic and (noise.match(line) or not line.strip())) or line.startswith(b"note: run with `RUST_"):
            pass
        else:
            in_panic = False
            out(line)
    if buffer and not chunk:
        if not (in_panic or panic.match(buffer)):
            out(buffer)
        break
    if buffer and (mid_line or not (in_panic or buffer.startswith(start) or start.startswith(buffer))):
        out(buffer)
        buffer, mid_line = b"", True
    if not chunk:
        break
"""


@contextmanager
def rust_panics_hidden(enabled: bool) -> Iterator[None]:
    """Pass this process's stderr (and its children's) through a filter that drops Rust's panic reports.

    Bytewax turns an exception in a step into a Rust panic, whose report (and, with RUST_BACKTRACE, a
    backtrace) goes straight to the file descriptor; the error itself comes back as an exception that
    becomes one `omnitrigger: error:` line. The filter is a separate process reading a pipe, so no lock of
    ours can stall it, and it gets every byte written before an abrupt exit.
    """
    if not enabled or os.environ.get(SHOW_PANICS_ENV, "").strip() not in ("", "0"):
        yield
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:
        yield
        return
    try:
        fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ: room for a burst while the filter catches up
    except OSError:
        pass
    saved = os.dup(2)
    try:
        filter_process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _PANIC_FILTER], stdin=read_end,
                                          stdout=saved, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        os.close(read_end)
        os.close(write_end)
        os.close(saved)
        yield
        return
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        try:
            filter_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            filter_process.kill()
