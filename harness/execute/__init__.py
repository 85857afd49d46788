"""Executors: how a plan's stages get computed, as plugins (``harness_register_executors``):
``local`` in this process one at a time (the default), ``pool`` worker processes on this
machine, ``slurm`` cluster jobs through submitit. See :mod:`harness.execute.base`."""
