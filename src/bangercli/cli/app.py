"""The `banger` app: its commands, and the one place where errors become an exit.

Only the cli package prints or exits. Results go to stdout, progress and messages to stderr.
torch is imported inside the commands that need it, so `banger --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from .. import __version__
from ..errors import BangerError
from .data import instruments, preprocess
from .evaluate import evaluate
from .generate import generate
from .train import train
from .web import web

try:  # typer 0.2x carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors

app = typer.Typer(
    name="banger",
    help="Write multitrack music as MIDI with a transformer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(*, value: bool) -> None:  # typer passes `value` by keyword
    if value:
        print(f"banger {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    *,  # typer passes every argument and option by keyword
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Write multitrack music as MIDI with a transformer."""


for command in (generate, instruments, preprocess, train, evaluate, web):  # the order of --help
    app.command()(command)


def main() -> None:
    """Console entry point: a BangerError or a command line click cannot parse becomes one
    `error:` line on stderr and an exit code; anything else keeps its traceback (a bug)."""
    try:
        code = app(prog_name="banger", standalone_mode=False)  # also under `python -m`
    except BangerError as err:
        _fail(err.message, err.hint, err.exit_code)
    except click_errors.ClickException as err:
        if isinstance(err, getattr(click_errors, "NoArgsIsHelpError", ())):  # plain `banger`
            err.show()  # the help, as click shows it
            sys.exit(err.exit_code)
        _fail(_click_message(err), _click_hint(err), err.exit_code)
    except typer.Abort:
        _fail("aborted", None, 1)
    except KeyboardInterrupt:
        _fail("interrupted", None, 130)
    except BrokenPipeError:  # `banger instruments | head -1`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(n) comes back as n


def _fail(message: str, hint: str | None, exit_code: int) -> None:
    """Print ``error: MESSAGE (hint: HINT)`` as exactly one line on stderr and exit."""
    line = f"error: {message}" + (f" (hint: {hint})" if hint else "")
    print(" ".join(line.splitlines()), file=sys.stderr)  # a path or OS message may hold one
    sys.exit(exit_code)


def _click_message(err: click_errors.ClickException) -> str:
    """click's message in the house form: "Missing option '--out'." -> "missing option '--out'"."""
    message = " ".join(err.format_message().splitlines()).rstrip(".")
    return message[:1].lower() + message[1:]


def _click_hint(err: click_errors.ClickException) -> str | None:
    ctx = getattr(err, "ctx", None)
    return f"see `{ctx.command_path} --help`" if ctx is not None else None
