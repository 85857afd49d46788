"""Example plugins for the pathbench harness: the ``example_blur`` method and the
``example_blobs`` dataset (see ``docs/writing-plugins.md`` in the harness repository)."""
