"""A one-machine cluster (`--processes N`): N child processes on 127.0.0.1, one ProcessSpec each.

The parent (`run_local_cluster`, called by run_replay and run_live) starts one
`python -m omnitrigger.runner.local_cluster` a spec, the spec as JSON on its stdin, and waits
for them all; each child runs the same `run_process` (runner/process.py) as a process started with
`--addresses ... --process-id I` on another machine runs in the CLI's own process. In a child a
user error is one line on stderr and exit 1, as in the CLI.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any, Callable

from omnitrigger.runner.errors import USER_ERRORS
from omnitrigger.runner.process import run_process
from omnitrigger.runner.spec import ProcessSpec


def _death_signal() -> Callable[[], None]:
    """What the child runs between fork and exec: PR_SET_PDEATHSIG, so a kill -9 of the process that started it
    takes it along (Linux; elsewhere nothing). prctl is looked up here, in the parent, not after the fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def run_local_cluster(specs: list[ProcessSpec], started: Callable[[list[subprocess.Popen]], None] | None = None,
                      forward_signals: bool = False, on_signal: Callable[[int], None] | None = None) -> list[int]:
    """Run one child process a spec (`start_children`) and wait for them all (`wait_children`); `started` is
    told the children as soon as they run. Returns their exit codes, in process order."""
    children = start_children(specs)
    if started is not None:
        started(children)
    return wait_children(children, forward_signals=forward_signals, on_signal=on_signal)


def start_children(specs: list[ProcessSpec]) -> list[subprocess.Popen]:
    """Start `python -m omnitrigger.runner.local_cluster` once a spec (given on stdin as JSON, never written to disk:
    the config can hold Kafka credentials), each in its own session so a Ctrl-C reaches them once, from us."""
    children = []
    die_with_parent = _death_signal()
    for spec in specs:
        # -P: no current folder on sys.path, so a folder named omnitrigger where the user stands (a checkout)
        # cannot shadow the installed package in the worker processes.
        child = subprocess.Popen([sys.executable, "-P", "-m", "omnitrigger.runner.local_cluster"], stdin=subprocess.PIPE,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent,
                                 start_new_session=True)
        assert child.stdin is not None
        child.stdin.write(spec.to_json())
        child.stdin.close()
        children.append(child)
    return children


def wait_children(children: list[subprocess.Popen], forward_signals: bool = False,
                  on_signal: Callable[[int], None] | None = None) -> list[int]:
    """Wait for every child; with `forward_signals`, SIGTERM and SIGINT are passed on to them as SIGTERM."""
    previous: dict[int, Any] = {}
    if forward_signals:
        def forward(signum: int, _frame: object) -> None:
            if on_signal is not None:
                on_signal(signum)
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, forward)
    try:
        return [child.wait() for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def main() -> int:
    """A child: run the spec on stdin; a user error is one line and exit 1."""
    spec = ProcessSpec.from_json(sys.stdin.buffer.read())
    try:
        run_process(spec)
    except USER_ERRORS as error:
        print(f"omnitrigger: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
