"""Segmentation networks beyond smp's U-Net: ViT encoders (timm models, local snapshots and the
pathology foundation models of :mod:`harness.models.foundation`) under dense heads (``dpt``,
``unetr``). Each architecture maps an image ``(B, 3, H, W)`` to logits ``(B, out_channels, H, W)``
at the input's resolution; :func:`harness.engine.model.build_model` picks one."""
