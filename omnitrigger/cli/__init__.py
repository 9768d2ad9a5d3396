"""The `omnitrigger` command (the console script `omnitrigger.cli:main`, and `python -m omnitrigger`).

The commands on files are in cli/offline.py (replay, rules, demo, backtest, explain, report), the
live ones in cli/live.py (run, record, publish); each builds its options and calls the runner
(omnitrigger/runner/) or a tool module, and this module turns what they raise into an exit code.

Every user error (a wrong flag, a missing file, a state folder that does not
fit, an unwritable output, a full disk) ends in one line on stderr and a
non-zero exit, never a traceback: exit 2 for usage errors, 1 for the rest;
a replay stopped by Ctrl-C or SIGTERM exits 130 or 143 (128 + the signal).
The reports Bytewax's Rust core prints when a step fails (a panic, with a
backtrace under RUST_BACKTRACE) are filtered out of stderr
(cli/panics.py `rust_panics_hidden`; OMNITRIGGER_SHOW_PANICS=1 keeps them).
"""

from __future__ import annotations

import sys

import click

from omnitrigger import __version__
from omnitrigger.cli.live import COMMANDS as LIVE_COMMANDS
from omnitrigger.cli.offline import COMMANDS as OFFLINE_COMMANDS
from omnitrigger.cli.panics import rust_panics_hidden
from omnitrigger.runner.errors import USER_ERRORS
from omnitrigger.runner.replay import ReplayInterrupted


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnitrigger")
def cli() -> None:
    """Real-time omnichannel triggers from clickstream, tills and store visits."""


for _command in (*OFFLINE_COMMANDS, *LIVE_COMMANDS):
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
