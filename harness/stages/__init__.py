"""Stage kinds: one module per kind, each a class registered by name through the
``harness_register_stage_kinds`` hook (built-in kinds register as a plugin's would). A kind
runs a stage from its data (:class:`harness.plan.Stage`: config and params), its inputs (the
committed folders of its dependencies) and a context; see :mod:`harness.stages.base`."""
