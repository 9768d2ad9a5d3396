"""Running as a Bytewax cluster: the addresses, which process does what, and `run_cluster`.

One Bytewax worker a process (workers are threads sharing the GIL, so
processes are how the flow scales). `--addresses HOST:PORT,...` (or
`--hostfile`) lists every process of the cluster, `--process-id I` says
which one this is; `--processes N` is the one-machine shortcut that starts
N such processes on 127.0.0.1 itself (runner/local_cluster.py). The options
themselves are the CLI's (omnitrigger/cli/options.py).

Who does what. Bytewax sends a stateful key to worker
`siphash13(key) % workers` (Rust's DefaultHasher, zero keys: `worker_of`
below, checked against Bytewax in tests/test_cluster.py), so where the
sequencer lands is known before the flow starts. omnitrigger numbers the
processes so that process 0 is the sequencer's worker: Bytewax process
`(I + worker_of("sequencer", N)) % N` runs as omnitrigger process I. So
process 0 reads the input (the recording, or every Kafka input partition),
runs the sequencer (dedup, identity) and, in a replay, receives
every output record and writes the output files; the input never crosses
the network. The history stage (visits, history, the clock, the router) and the
rules shards have keys named so that, on 2 to 8 processes, none lands on
process 0 (flows/placement.py): they spread over the other processes, and
their triggers cross the network to process 0 in a replay, or go to Kafka
from the process that made them live.

Security. Bytewax's cluster channel is plain TCP carrying pickles, without
authentication or encryption: whoever can connect to a process's port can
make it run code. It cannot be changed here, so a cluster over `--addresses`
/ `--hostfile` starts only when every address (hostnames resolved) is
private: RFC 1918, loopback, link-local or IPv6 unique-local
(`check_private`). Anything else, the wildcard addresses included, needs
`--allow-public-cluster` on `run` or OMNITRIGGER_ALLOW_PUBLIC_CLUSTER=1 in
the environment (which `replay` honours too). Each process listens on its
own address only, as given (Bytewax binds exactly that address): keep the
cluster on a private network or an encrypted overlay such as WireGuard.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from omnitrigger.flows.placement import HISTORY_KEY, SEQUENCER_KEY, rules_key, worker_of

#: Set to 1 to start a cluster on addresses that are not private (the environment's form of --allow-public-cluster).
ALLOW_PUBLIC_ENV = "OMNITRIGGER_ALLOW_PUBLIC_CLUSTER"
_PRIVATE_NETWORKS = tuple(ipaddress.ip_network(network) for network in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "127.0.0.0/8", "::1/128",  # loopback
    "169.254.0.0/16", "fe80::/10",  # link-local
    "fc00::/7",  # IPv6 unique local addresses (RFC 4193)
))
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})$")


class ClusterError(Exception):
    """The cluster cannot run as asked (a bad hostfile, an address this machine cannot listen on, a process
    that left); the message is one line for the user."""


# -- addresses ---------------------------------------------------------------------------------------


def parse_address(text: str) -> str | None:
    """`HOST:PORT` (or `[IPv6]:PORT`) as given, or None when it is not one."""
    match = _ADDRESS.match(text)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        return None
    return text


def parse_addresses(text: str) -> list[str]:
    """`--addresses`: HOST:PORT,HOST:PORT,... (ValueError with the reason, one line)."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("no addresses given")
    for item in items:
        if parse_address(item) is None:
            raise ValueError(f"{item!r} is not HOST:PORT")
    _check_distinct(items)
    return items


def read_hostfile(path: Path) -> list[str]:
    """`--hostfile`: one HOST:PORT a line, in process order; `#` starts a comment, blank lines are skipped."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a text file"
        raise ClusterError(f"cannot read hostfile {path}: {reason}") from None
    addresses = []
    for number, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if parse_address(item) is None:
            raise ClusterError(f"hostfile {path} line {number}: {item!r} is not HOST:PORT")
        addresses.append(item)
    if not addresses:
        raise ClusterError(f"hostfile {path} lists no addresses")
    try:
        _check_distinct(addresses)
    except ValueError as error:
        raise ClusterError(f"hostfile {path}: {error}") from None
    return addresses


def _check_distinct(addresses: list[str]) -> None:
    seen = set()
    for address in addresses:
        if address in seen:
            raise ValueError(f"{address} is listed twice (one address a process)")
        seen.add(address)


def local_addresses(count: int) -> list[str]:
    """`count` free ports on 127.0.0.1 for a one-machine cluster."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def check_can_listen(address: str, process_id: int) -> None:
    """Fail with one line now if this process cannot listen on its address (Bytewax would panic on it)."""
    match = _ADDRESS.match(address)
    assert match is not None
    host = match["v6"] or match["host"]
    family = socket.AF_INET6 if match["v6"] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Rust's TcpListener::bind
            sock.bind((host, int(match["port"])))
    except OSError as error:
        reason = error.strerror or str(error)
        raise ClusterError(f"process {process_id} cannot listen on its address {address} ({reason}); "
                           "is it this machine's, and is the port free?") from None


class PublicClusterError(click.UsageError, ClusterError):
    """A cluster address that is not private, without --allow-public-cluster (one line, exit 2)."""


def is_private_ip(text: str) -> bool:
    """Whether the IP address `text` is loopback, RFC 1918, link-local or IPv6 unique-local (never a wildcard)."""
    address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is not part of it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _PRIVATE_NETWORKS if network.version == address.version)


def _host(address: str) -> str:
    match = _ADDRESS.match(address)
    assert match is not None
    return match["v6"] or match["host"]


def allow_public_from_environment() -> bool:
    return os.environ.get(ALLOW_PUBLIC_ENV, "").strip().lower() in ("1", "true", "yes")


def check_private(addresses: list[str] | tuple[str, ...]) -> None:
    """Refuse (PublicClusterError, exit 2) an address that is, or whose host name resolves to, anything but a
    private address; ClusterError (exit 1) for a host name that does not resolve."""
    for address in addresses:
        host = _host(address)
        try:
            resolved = sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
        except (socket.gaierror, UnicodeError) as error:
            raise ClusterError(f"cluster address {address}: cannot resolve {host} to check that it is a private "
                               f"address ({getattr(error, 'strerror', None) or error})") from None
        public = [ip for ip in resolved if not is_private_ip(ip)]
        if public:
            what = host if public == [host] else f"{host} ({', '.join(public)})"
            kind = "a wildcard (every interface)" if ipaddress.ip_address(public[0].split("%")[0]).is_unspecified \
                else "not a private address (loopback, RFC 1918, link-local or IPv6 unique-local)"
            raise PublicClusterError(
                f"cluster address {address}: {what} is {kind}, and the cluster's channel is unauthenticated, "
                "unencrypted TCP carrying pickles; use a private network or an encrypted overlay such as WireGuard "
                f"(README: Running as a cluster), or if the network is protected otherwise set {ALLOW_PUBLIC_ENV}=1 "
                "(run: --allow-public-cluster)")


# -- this process's part -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """Process `process_id` of the cluster at `addresses` (process order: process I listens on addresses[I])."""

    process_id: int
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.process_id < len(self.addresses):
            raise ClusterError(f"--process-id {self.process_id} is out of range: the cluster has "
                               f"{len(self.addresses)} addresses, so 0 to {len(self.addresses) - 1}")

    @classmethod
    def of(cls, addresses: list[str] | None, process_id: int | None, processes: int,
           allow_public: bool | None = None) -> "Role | None":
        """This process's part in a cluster spread over machines (`--addresses`), or None (alone or `--processes`).

        Every address must be private (`check_private`) unless `allow_public` (None: read
        OMNITRIGGER_ALLOW_PUBLIC_CLUSTER, the form `replay` takes).
        """
        if addresses is None:
            if process_id is not None:
                raise ClusterError("--process-id needs --addresses or --hostfile")
            return None
        if processes not in (1, len(addresses)):
            raise ClusterError("--processes and --addresses exclude each other: the addresses give the process count")
        if process_id is None:
            raise ClusterError("--addresses needs --process-id (this process's place in the list, from 0)")
        role = cls(process_id, tuple(addresses))
        if not (allow_public if allow_public is not None else allow_public_from_environment()):
            check_private(addresses)
        return role

    @property
    def processes(self) -> int:
        return len(self.addresses)

    @property
    def address(self) -> str:
        return self.addresses[self.process_id]

    @property
    def reads_input(self) -> bool:
        """Process 0 reads the input, runs the sequencer and (replay) writes the outputs."""
        return self.process_id == 0

    @property
    def worker(self) -> int:
        """Bytewax's process id (and worker index) of this process."""
        return (self.process_id + worker_of(SEQUENCER_KEY, self.processes)) % self.processes

    def bytewax_addresses(self) -> list[str]:
        """The addresses in Bytewax's process order (Bytewax process w listens on item w)."""
        shift = worker_of(SEQUENCER_KEY, self.processes)
        return [self.addresses[(worker - shift) % self.processes] for worker in range(self.processes)]

    def rule_shards(self, shards: int) -> list[int]:
        """The rules shards this process runs."""
        return [shard for shard in range(shards) if worker_of(rules_key(shard), self.processes) == self.worker]

    @property
    def runs_history(self) -> bool:
        """Whether this process runs the history stage (history, the clock, the router: flows/placement.py)."""
        return worker_of(HISTORY_KEY, self.processes) == self.worker

    def describe(self, shards: int) -> str:
        """One line: what this process ran (the input and the sequencer, the history stage, its rules shards)."""
        parts = ["the input and the sequencer"] if self.reads_input else []
        parts += ["the history stage"] if self.runs_history else []
        mine = self.rule_shards(shards)
        parts.append(f"rules shards {','.join(map(str, mine))}" if mine else "no rules shard")
        return f"process {self.process_id} of {self.processes} ({self.address}): {', '.join(parts)}"

    @classmethod
    def local(cls, processes: int) -> list[Role]:
        """The processes of a one-machine cluster, on free ports of 127.0.0.1."""
        addresses = tuple(local_addresses(processes))
        return [cls(index, addresses) for index in range(processes)]


def run_cluster(flow: Any, role: Role, **options: Any) -> None:
    """`bytewax.testing.cluster_main` (the function `python -m bytewax.run -a ... -i ...` calls) as `role`;
    ClusterError when this process loses contact with another one."""
    from bytewax.testing import cluster_main

    check_can_listen(role.address, role.process_id)
    addresses = role.bytewax_addresses()
    wait_for_listeners(addresses[:role.worker])
    try:
        cluster_main(flow, addresses, role.worker, **options)
    except BaseException as error:
        if is_lost_peer(error):
            raise ClusterError(f"process {role.process_id} of {role.processes} lost contact with the cluster: "
                               "another process stopped or cannot be reached; start every process again with "
                               "the same state folders to resume from the last snapshot") from None
        raise


#: How long a process waits for the processes before it to listen, before it leaves that to Bytewax's retries.
LISTENER_WAIT_S = 60.0
_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


def wait_for_listeners(addresses: list[str], timeout_s: float = LISTENER_WAIT_S) -> None:
    """Wait until every loopback address of `addresses` (those of the Bytewax processes before this one) has a
    listening socket, as /proc/net/tcp shows it, so that Bytewax connects at once.

    Bytewax (timely) connects each process to the ones before it and, when one is not listening yet, retries
    a second later: a one-machine cluster (`--processes N`) lost that second at every start, since its
    processes start together and each opens its state before it listens. Looking at /proc does not open a
    connection (a probe would reach Bytewax's handshake). Other addresses, other machines' or where /proc is
    not there, and a wait past `timeout_s`, are left to Bytewax's own retries."""
    ports = {int(match["port"]) for match in map(_ADDRESS.match, addresses)
             if match is not None and _is_loopback(match["v6"] or match["host"])}
    deadline = time.monotonic() + timeout_s
    while ports:
        listening = _listening_ports()
        if listening is None:
            return
        ports -= listening
        if not ports or time.monotonic() > deadline:
            return
        time.sleep(0.005)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _listening_ports() -> set[int] | None:
    """The local ports with a listening TCP socket (IPv4 and IPv6), or None where /proc/net/tcp cannot be read."""
    ports: set[int] = set()
    tables = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # a kernel without IPv6 has no tcp6
        try:
            with open(table) as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == _LISTEN_STATE:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
            tables += 1
        except (OSError, ValueError, IndexError):
            continue
    return ports if tables else None


def is_lost_peer(error: BaseException) -> bool:
    """Bytewax panics (pyo3 PanicException) in every process when one process of the cluster goes away."""
    return type(error).__name__ == "PanicException"


def roles_here(role: Role | None, processes: int) -> list[Role | None]:
    """The processes to run on this machine, in process order: `role` (one process of a cluster over
    machines), one process alone (None), or the `processes` of a one-machine cluster (`Role.local`)."""
    if role is not None:
        return [role]
    return [None] if processes == 1 else [*Role.local(processes)]
