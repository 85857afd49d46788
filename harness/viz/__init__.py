"""Visualisations of what encoders learned (``harness viz``): point-similarity maps
(:mod:`~harness.viz.similarity`, drawn by :mod:`~harness.viz.plot`)."""
