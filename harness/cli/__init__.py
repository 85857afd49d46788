"""The command line (``harness``, :func:`harness.cli.app.main`): ``harness run|validate|list|show|report|compare|data|viz|stage|plugin``.

Exit codes: 0 ok, 1 failure (an unexpected error: a bug), 2 invalid spec or usage, 3 data or
weights missing or corrupt, 4 plugin problem, 130 interrupted (Ctrl-C or SIGTERM). Errors are one
line each, control characters escaped; ``--debug`` (anywhere on the command line) shows the
traceback.
"""
