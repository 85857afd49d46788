"""The package tests itself with the harness's conformance kit: each plugin against its
contract, smoke-tested on tiny data (`harness plugin check NAME` does the same)."""

from harness.conformance import check_plugin


def test_example_plugins_conform():
    check_plugin("example_blur", "example_blobs", "example_byol", "example_halves")
