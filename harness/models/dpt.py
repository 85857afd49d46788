"""``dpt``: the Dense Prediction Transformer decoder (Ranftl et al. 2021, arXiv 2103.13413) as
segmentation-models-pytorch implements it (``smp.decoders.dpt``: reassemble 4 blocks' tokens at
1/4..1/32 of the input, fuse, upsample), under the harness's :class:`ViTEncoder` (so its
encoder artifact is the same as under ``unetr``). smp's reassembly needs a power-of-two patch
size (8, 16); patch-14 models (DINOv2-style FMs) go under ``unetr``."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from harness.errors import SpecError
from harness.models.vit import ViTEncoder, trainable


class DPT(nn.Module):
    def __init__(self, encoder: ViTEncoder, out_channels: int):
        super().__init__()
        from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder, DPTSegmentationHead

        p = encoder.patch_size
        if p & (p - 1):
            raise SpecError(f"finetune.architecture 'dpt' needs a power-of-two patch size; encoder "
                            f"'{encoder.name}' has patch {p}: use 'unetr'")
        self.encoder = encoder
        prefix = encoder.num_prefix_tokens > 0
        self.decoder = DPTDecoder(encoder_out_channels=[encoder.embed_dim] * 4,
                                  encoder_output_strides=[p] * 4, encoder_has_prefix_tokens=prefix,
                                  readout="cat" if prefix else "ignore",
                                  intermediate_channels=(256, 512, 1024, 1024), fusion_channels=256)
        self.head = DPTSegmentationHead(in_channels=256, out_channels=out_channels, kernel_size=3,
                                        upsampling=2)
        self._multiple = max(32, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self._multiple  # smp's reassembly halves 4 times down to 1/32 of the input
        padded = nnf.pad(x, (0, -w % m, 0, -h % m))
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable(self.encoder)):
            grids, prefix = self.encoder.intermediates(padded)
        logits = self.head(self.decoder(grids, prefix))
        if logits.shape[-2:] != padded.shape[-2:]:
            logits = nnf.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
