"""The ``harness`` command: its commands assembled into one typer app, and :func:`main`, which
maps every error to its exit code (:mod:`harness.exit_codes`) and one line."""

from __future__ import annotations

import signal
import sys

import click
import typer

from harness.cli import common
from harness.cli.commands import compare, list_plugins, report, run, validate
from harness.cli.common import err
from harness.cli.data import data_app
from harness.cli.plugin import plugin_app, show
from harness.cli.stage import stage_app
from harness.cli.viz import viz_app
from harness.errors import HarnessError
from harness.exit_codes import INTERRUPTED, report_error
from harness.spec.problems import printable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark harness for pretraining methods in computational pathology.")
for command in (validate, run, report, compare):
    app.command()(command)
app.command("list")(list_plugins)
app.command()(show)
app.add_typer(data_app, name="data")
app.add_typer(viz_app, name="viz")
app.add_typer(stage_app, name="stage")
app.add_typer(plugin_app, name="plugin")


def _interrupted() -> None:
    err.print(INTERRUPTED, markup=False)


# typer bundles its own copy of click: its exceptions are not click's
_CLICK = tuple({click.ClickException, typer._click.exceptions.ClickException})
_USAGE = tuple({click.UsageError, typer._click.exceptions.UsageError})
_HELP = getattr(typer._click.exceptions, "NoArgsIsHelpError", ())
_ABORT = tuple({click.exceptions.Abort, typer.Abort})
_EXIT = tuple({click.exceptions.Exit, typer.Exit})


def _usage_line(exc: Exception) -> str:
    """``error: <what> (see `harness CMD --help`)``: one line naming the option or command."""
    ctx = getattr(exc, "ctx", None)
    message = " ".join(exc.format_message().split()).rstrip(".")
    help_hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
    return f"error: {printable(message)}{help_hint}"


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt  # a scheduler's kill is an interrupt: same message, exit 130


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    common.DEBUG = debug
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # In non-standalone mode click *returns* the code of a `typer.Exit` instead of raising it.
        code = app(args=argv, prog_name="harness", standalone_mode=False)
    except HarnessError as exc:
        if debug:
            raise
        sys.exit(report_error(exc))
    except _EXIT as exc:
        if exc.exit_code == 130:  # typer turns KeyboardInterrupt into Exit(130)
            _interrupted()
        sys.exit(exc.exit_code)
    except _HELP as exc:  # `harness data` alone: its help
        exc.show()
        sys.exit(2)
    except _CLICK as exc:
        if debug:
            raise
        err.print(_usage_line(exc), markup=False)
        sys.exit(2 if isinstance(exc, _USAGE) else exc.exit_code)
    except (KeyboardInterrupt, *_ABORT):
        sys.exit(report_error(KeyboardInterrupt()))
    except Exception as exc:  # noqa: BLE001 - last resort: a bug, not bad input
        if debug:
            raise
        sys.exit(report_error(exc))
    code = code if isinstance(code, int) else 0
    if code == 130:  # typer turns KeyboardInterrupt into an exit code of 130
        _interrupted()
    sys.exit(code)

