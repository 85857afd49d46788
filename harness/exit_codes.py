"""One mapping from an exception to the ``error:`` line(s) on stderr and the exit code, shared
by the CLI (:func:`harness.cli.app.main`) and by a pool worker's child, which runs a stage as
``harness stage run`` would: bad input and plugin faults are one line and their documented
code (:mod:`harness.errors`), an interrupt is 130, anything else a bug (1)."""

from __future__ import annotations

INTERRUPTED = ("interrupted: finished stages are kept and the running one resumes from its "
               "last checkpoint; rerun the same command to continue")


def report_error(exc: BaseException) -> int:
    """Print what ``exc`` means on stderr; the exit code for it."""
    from harness.cli.common import err
    from harness.errors import HarnessError, SpecError
    from harness.plugin_faults import plugin_fault
    from harness.spec.problems import printable

    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, HarnessError):
        src = f"{exc.source}: " if isinstance(exc, SpecError) and exc.source else ""
        for line in getattr(exc, "problems", None) or [str(exc)]:  # SpecError, MissingInputs
            err.print(printable(f"error: {src}{line}"), markup=False)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        err.print(INTERRUPTED, markup=False)
        return 130
    if (fault := plugin_fault(exc)) is not None:  # raised inside plugin code: exit 4
        err.print(printable(f"error: {fault}"), markup=False)
        return fault.exit_code
    err.print(printable(f"error: unexpected {type(exc).__name__}: {exc} (a bug; please report "
                        f"it with the output of --debug)"), markup=False)
    return 1
