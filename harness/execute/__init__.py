"""Executors: how a plan's stages get computed. ``local`` runs them in this process, one at a
time (``harness run``, ``harness stage run``)."""
