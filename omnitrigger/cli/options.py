"""What the commands share: the path types, and the cluster options of `replay` and `run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from omnitrigger.runner.cluster import parse_addresses, read_hostfile

#: A file argument or option (a folder there is refused).
FILE = click.Path(dir_okay=False, path_type=Path)
#: A folder argument or option (a file there is refused).
DIR = click.Path(file_okay=False, path_type=Path)


def cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--processes, --addresses, --hostfile, --process-id (resolved by `resolve_cluster`)."""
    options = [
        click.option("--processes", type=click.IntRange(min=1),
                     help="Run as a cluster of this many processes on this machine (default 1), one worker each."),
        click.option("--addresses", help="Run as one process of a cluster over machines: every process's "
                                         "HOST:PORT, in process order, comma-separated."),
        click.option("--hostfile", type=click.Path(dir_okay=False, path_type=Path),
                     help="The same as --addresses from a file: one HOST:PORT a line, # comments."),
        click.option("--process-id", type=int, help="With --addresses or --hostfile: which process this is, from 0."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_cluster(processes: int | None, addresses: str | None, hostfile: Path | None,
                    process_id: int | None) -> tuple[int, list[str] | None, int | None]:
    """(processes, addresses, process_id) from the options; click.UsageError (exit 2) for a wrong combination or
    value on the command line, ClusterError (exit 1) for a hostfile that cannot be read or is malformed."""
    if addresses is not None and hostfile is not None:
        raise click.UsageError("--addresses and --hostfile exclude each other")
    if addresses is None and hostfile is None:
        if process_id is not None:
            raise click.UsageError("--process-id needs --addresses or --hostfile (the addresses of every process)")
        return processes or 1, None, None
    given = "--addresses" if addresses is not None else "--hostfile"
    if processes is not None:
        raise click.UsageError(f"--processes and {given} exclude each other: --processes starts a cluster on this "
                               f"machine, {given} lists the processes of a cluster over machines")
    if process_id is None:
        raise click.UsageError(f"{given} needs --process-id (which of the listed processes this one is, from 0)")
    if addresses is not None:
        try:
            listed = parse_addresses(addresses)
        except ValueError as error:
            raise click.UsageError(f"--addresses: {error}") from None
    else:
        assert hostfile is not None
        listed = read_hostfile(hostfile)
    if not 0 <= process_id < len(listed):
        raise click.UsageError(f"--process-id {process_id} is out of range: {given} lists {len(listed)} "
                               f"process{'es' if len(listed) != 1 else ''}, so 0 to {len(listed) - 1}")
    return len(listed), listed, process_id
