"""The live-mode commands: `omnitrigger run`, `record` and `publish` (registered in cli/__init__.py)."""

from __future__ import annotations

from pathlib import Path

import click

from omnitrigger.cli.options import DIR, FILE, cluster_options, resolve_cluster
from omnitrigger.config import load_config

_brokers = click.option("--brokers", required=True, help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].")
_config = click.option("--config", "config_file", type=FILE, help="TOML config file (see README: [kafka]).")


@click.command()
@_brokers
@click.option("--stores", "stores", type=FILE, required=True, help="Stores CSV: store_id,name,lat,lon[,radius_m][,timezone].")
@_config
@click.option("--catalog", type=FILE, help="Product catalogue CSV: product_id,category,repurchase_days (replenishment).")
@click.option("--state-dir", type=DIR, default=Path("omnitrigger-state"), show_default=True,
              help="State folder: offsets, snapshots and RocksDB state; a restart resumes from it.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Prometheus /metrics port (default: [kafka] metrics_port; 0: off; --processes N: port + I for process I).")
@click.option("--metrics-bind", metavar="ADDRESS",
              help="Address the /metrics endpoint listens on (default: [kafka] metrics_bind, 0.0.0.0; "
                   "127.0.0.1: this machine only).")
@cluster_options
@click.option("--allow-public-cluster", is_flag=True,
              help="Start a cluster on addresses that are not private (the cluster's channel is unauthenticated "
                   "TCP: only on a network protected otherwise). Also OMNITRIGGER_ALLOW_PUBLIC_CLUSTER=1.")
def run(brokers: str, stores: Path, config_file: Path | None, catalog: Path | None, state_dir: Path,
        metrics_port: int | None,
        metrics_bind: str | None, processes: int | None, addresses: str | None, hostfile: Path | None,
        process_id: int | None, allow_public_cluster: bool) -> None:
    """Run the flow live: the five input topics in, triggers, suppressed, visits and dead letters out."""
    from omnitrigger.io.catalog import with_catalog
    from omnitrigger.runner.live import LiveOptions, run_live

    processes, address_list, process_id = resolve_cluster(processes, addresses, hostfile, process_id)
    run_live(LiveOptions(brokers=brokers, stores=stores, state_dir=state_dir,
                         config=with_catalog(load_config(config_file), catalog),
                         metrics_port=metrics_port, metrics_bind=metrics_bind, processes=processes,
                         addresses=address_list, process_id=process_id, allow_public_cluster=allow_public_cluster))


@click.command()
@_brokers
@click.option("--out", "out_dir", type=DIR, required=True, help="Recording folder to write (<topic>.jsonl files).")
@click.option("--topics", help="Comma-separated contract topics to record (default: all five).")
@click.option("--until-offsets", is_flag=True, help="Stop at the end offsets the topics had at start (the default).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Record for this many seconds instead.")
@click.option("--outputs", is_flag=True, help="Record the output topics instead (triggers, suppressed, conversions, "
                                                "...), each file named by its topic: what `omnitrigger report` reads.")
@_config
def record(brokers: str, out_dir: Path, topics: str | None, until_offsets: bool, duration: float | None,
           outputs: bool, config_file: Path | None) -> None:
    """Record input topics (or, with --outputs, the output topics) into a folder of kcat -J envelopes."""
    from omnitrigger.io.kafka_tools import record as record_topics

    if until_offsets and duration is not None:
        raise click.UsageError("--until-offsets and --duration exclude each other")
    if outputs and topics:
        raise click.UsageError("--outputs records every output topic; --topics names input topics")
    wanted = [topic.strip() for topic in topics.split(",") if topic.strip()] if topics else None
    written = record_topics(brokers, out_dir, load_config(config_file), wanted, duration,
                            progress=lambda line: click.echo(line, err=True), outputs=outputs)
    for topic, count in written.items():
        click.echo(f"{topic}: {count:,} records -> {out_dir / (topic + '.jsonl')}")


@click.command()
@click.argument("recording_dir", type=DIR)
@_brokers
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), help="Keep the recorded gaps, divided by this factor.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Send this many records a second.")
@_config
def publish(recording_dir: Path, brokers: str, speed: float | None, rate: float | None, config_file: Path | None) -> None:
    """Replay a recording into the input topics (as fast as possible unless --speed or --rate)."""
    from omnitrigger.io.kafka_tools import publish as publish_recording

    if speed is not None and rate is not None:
        raise click.UsageError("--speed and --rate exclude each other")
    sent = publish_recording(recording_dir, brokers, load_config(config_file), speed=speed, rate=rate,
                             progress=lambda line: click.echo(line, err=True))
    for topic, count in sent.items():
        click.echo(f"{topic}: {count:,} records sent")


COMMANDS = (run, record, publish)
