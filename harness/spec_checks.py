"""Deprecated location of the spec checks, kept so that ``harness.cli``'s import keeps working
until it imports :mod:`harness.spec` directly; everything lives in the :mod:`harness.spec`
package now."""

from harness.spec.problems import printable, where  # noqa: F401
from harness.spec.values import output_problems  # noqa: F401
