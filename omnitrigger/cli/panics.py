"""Bytewax's Rust panic reports, filtered out of stderr (`rust_panics_hidden`; OMNITRIGGER_SHOW_PANICS=1 keeps them)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


#: Set to 1 to see Bytewax's Rust panic messages and backtraces on stderr (hidden by default).
SHOW_PANICS_ENV = "OMNITRIGGER_SHOW_PANICS"

#: The filter stderr goes through: it drops Rust's panic reports, passes everything else on at once.
_PANIC_FILTER = r"""
import os, re
panic = re.compile(rb"thread '[^']*' panicked at ")
noise = re.compile(rb"(Box<dyn Any>|stack backtrace:|\s+\d+: |\s+at |note: (Some details are omitted|run with "
                   rb"`RUST_BACKTRACE)|panic in a destructor during cleanup|thread caused non-unwinding panic)")
start = b"thread '"
ours = (b"omnitrigger", b"{")  # our error line and our JSON log lines: never part of a panic's report
# in_panic: inside a report; in_message: between its "panicked at" line and its backtrace or note, where
# the panic's message is (any text: a failed unwrap of a disk-full error, say)
buffer, in_panic, in_message, mid_line = b"", False, False, False
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
            in_panic = in_message = True
        elif in_message and not line.startswith(ours):
            if line.startswith((b"stack backtrace:", b"note: ")):
                in_message = False
        elif (in_panic and (noise.match(line) or not line.strip())) or line.startswith(b"note: run with `RUST_"):
            pass
        else:
            in_panic = in_message = False
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
