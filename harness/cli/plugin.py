"""``harness plugin check NAME...`` (the conformance kit) and ``harness show method|dataset
NAME`` (every setting of a plugin with its type, default, description and origin)."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from harness.cli.common import out

plugin_app = typer.Typer(no_args_is_help=True, help="Check plugins against their contract.")


@plugin_app.command("check")
def plugin_check(names: Annotated[list[str], typer.Argument(help="method or dataset plugins")]) -> None:
    """Check each plugin against its contract and smoke-test it on tiny data; one FAIL line per
    problem (plugin, contract item, fix), exit 4 if any."""
    import sys

    from harness.conformance import check
    from harness.plugins import get_registry

    debug = "--debug" in sys.argv[1:]  # main() takes it off the command line it parses
    registry = get_registry()
    failed = False
    for name in names:
        report = check(name, registry, debug=debug)
        for failure in report.failures:
            out.print(str(failure), markup=False)
        if report.ok:
            out.print(f"ok {name}: {', '.join(report.passed)}", markup=False)
        failed = failed or not report.ok
    if failed:
        raise typer.Exit(4)


def show(what: Annotated[str, typer.Argument(help="method or dataset")],
         name: Annotated[str, typer.Argument(help="the plugin's name (see `harness list`)")]) -> None:
    """Every setting of a method or dataset plugin: type, default, description and where it
    comes from (the plugin's own, or inherited from the shared settings)."""
    from harness.plugins import get_registry
    from harness.settings_reference import render_text

    registry = get_registry()
    if what == "method":
        info = registry.method(name)
    elif what == "dataset":
        info = registry.dataset(name)
    else:
        raise click.BadParameter(f"'{what}': choose method or dataset", param_hint="WHAT")
    out.print(render_text(info), markup=False)
    extra = getattr(info.cls, "extra_help", None)
    if callable(extra) and extra():
        out.print(extra(), markup=False)
