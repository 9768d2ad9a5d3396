"""The commands on files: `omnitrigger replay`, `rules`, `demo`, `backtest`, `explain` and `report`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from omnitrigger.io.catalog import with_catalog
from omnitrigger.cli.options import DIR, FILE, cluster_options, resolve_cluster
from omnitrigger.config import ConfigError, load_config
from omnitrigger.runner.replay import ReplayOptions, run_replay


@click.command()
@click.argument("recording_dir", type=DIR)
@click.option("--stores", "stores", type=FILE, required=True, help="Stores CSV: store_id,name,lat,lon[,radius_m][,timezone].")
@click.option("--out", type=FILE, help="Triggers, one JSON line each (required, except on a cluster's processes 1 and up).")
@click.option("--dead-letter", type=FILE, help="Records that broke their contract, with reason and source offset.")
@click.option("--visits", type=FILE, help="Confirmed store visits.")
@click.option("--suppressed", type=FILE, help="Triggers held back by policy, with the reason.")
@click.option("--identities", type=FILE, help="At the end: each identifier with its customer id.")
@click.option("--refused-links", type=FILE, help="Identity links refused by merge protection, with the reason.")
@click.option("--duplicates", type=FILE, help="Redelivered records that were dropped.")
@click.option("--events", type=FILE, help="The cleaned, deduplicated events.")
@click.option("--retractions", type=FILE, help="Triggers sent although their products were bought before their time.")
@click.option("--conversions", type=FILE, help="Purchases of messaged (or held-out) products within [metrics] conversion_window.")
@click.option("--config", "config_file", type=FILE, help="TOML config file (see README).")
@click.option("--catalog", type=FILE, help="Product catalogue CSV: product_id,category,repurchase_days (replenishment).")
@click.option("--state-dir", type=DIR, help="Keep state here, to resume an interrupted replay.")
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


@click.command(name="rules")
@click.option("--config", "config_file", type=FILE, help="TOML config file (default: the defaults).")
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


@click.command()
@click.option("--keep", type=DIR, help="Write the sample recording and the outputs here instead of a temp folder.")
def demo(keep: Path | None) -> None:
    """Replay a bundled sample recording through the whole flow and show what it found."""
    from omnitrigger.demo import run_demo

    if keep is not None:
        run_demo(keep)
        return
    with tempfile.TemporaryDirectory(prefix="omnitrigger-demo-") as work:
        run_demo(Path(work), kept=False)


@click.command()
@click.argument("recording_dir", type=DIR)
@click.option("--stores", "stores", type=FILE, required=True, help="Stores CSV: store_id,name,lat,lon[,radius_m][,timezone].")
@click.option("--config", "config_file", type=FILE, help="The config in force, A (default: the defaults).")
@click.option("--against", "against_file", type=FILE, required=True, help="The config to try, B.")
@click.option("--keep", type=DIR, help="Write each run's triggers, suppressed and retractions to DIR/a and DIR/b.")
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


@click.command()
@click.option("--state-dir", type=DIR, required=True, help="The state folder of a replay (--state-dir) or a live job.")
@click.option("--customer", help="A customer id (cus_...).")
@click.option("--identifier", help="TYPE:VALUE, e.g. email:ann@example.com (email and phone are hashed as the "
                                   "pipeline does, with OMNITRIGGER_PII_KEY) or device_id:d-123.")
@click.option("--product", help="Only this product's deadlines, caps and outputs.")
@click.option("--out-dir", type=DIR, help="A folder with the run's triggers.jsonl, suppressed.jsonl, retractions.jsonl.")
@click.option("--config", "config_file", type=FILE,
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


@click.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--html", "html_file", type=FILE, required=True, help="Write the report here (one self-contained file).")
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


COMMANDS = (replay, list_rules, demo, backtest, explain, report)
