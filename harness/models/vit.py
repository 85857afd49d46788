"""A timm ViT as the harness's encoder (:class:`ViTEncoder`).

The encoder artifact of a ViT is this module's state dict: the timm model under ``model.``
(a foundation model's checkpoint loads into ``.model``). Like an smp encoder, its forward
returns a list of feature maps whose last is un-pooled: here the last block's patch tokens
(after the final norm) as a ``(B, D, H/p, W/p)`` grid, so pretraining methods pool it (SimCLR,
SimSiam) or use it as dense features (PRICon), and the ``linear`` protocol probes it.

Input sizes: models are built with ``dynamic_img_size=True`` (timm interpolates the position
embedding to the token grid), and an input whose sides are not multiples of the patch size is
zero-padded on the right and bottom to the next multiple (after normalisation, i.e. with the
mean colour; timm's own ``dynamic_img_pad`` pads the same way); the dense heads crop their logits
back to the input's size, so predictions are always at the dataset's resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from harness.errors import SpecError
from harness.models.names import FM_PREFIX, LOCAL_PREFIX, timm_name


class ViTEncoder(nn.Module):
    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.embed_dim = int(getattr(model, "embed_dim", model.num_features))
        self.out_channels = [self.embed_dim]
        self.num_blocks = len(model.blocks)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        return nnf.pad(x, (0, -w % p, 0, -h % p)) if (h % p or w % p) else x

    def block_indices(self, n: int = 4) -> list[int]:
        """``n`` uniformly spaced blocks, the last included (blocks 3/6/9/12 of 12 for n=4: the
        UNETR and CellViT choice, and smp's DPT's)."""
        return [int(self.num_blocks / n * k) - 1 for k in range(1, n + 1)]

    def intermediates(self, x: torch.Tensor, n: int = 4
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Patch-token grids ``(B, D, h, w)`` of ``n`` blocks of the padded input, and their
        prefix (class/register) tokens ``(B, T, D)`` (None without prefix tokens)."""
        outs = self.model.forward_intermediates(
            self.pad(x), indices=self.block_indices(n), intermediates_only=True,
            return_prefix_tokens=self.num_prefix_tokens > 0)
        if self.num_prefix_tokens > 0:
            return [o[0] for o in outs], [o[1] for o in outs]
        return list(outs), [None] * len(outs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        grid = self.model.forward_intermediates(self.pad(x), indices=[self.num_blocks - 1],
                                                norm=True, intermediates_only=True)[-1]
        return [grid]


def trainable(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` trains (a frozen encoder runs under no_grad; one
    with LoRA adapters does not)."""
    return any(p.requires_grad for p in module.parameters())


def timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Registry/spec kwargs as timm takes them: ``mlp_layer`` names a timm layer class
    (``SwiGLUPacked``); ``act_layer``/``norm_layer`` names timm resolves itself."""
    out = dict(kwargs)
    if isinstance(out.get("mlp_layer"), str):
        import timm.layers

        out["mlp_layer"] = getattr(timm.layers, out["mlp_layer"])
    return out


def build_vit_encoder(encoder: str, encoder_args: dict[str, Any] | None = None) -> ViTEncoder:
    """A randomly initialised ViT encoder for a ``fm:``, ``local-dir:``, ``tu-`` or timm name;
    nothing is downloaded (``pretrained=False``; a snapshot's config.json gives the
    architecture)."""
    import timm

    args = {"num_classes": 0, "dynamic_img_size": True, **(encoder_args or {})}
    if encoder.startswith(FM_PREFIX):
        from harness.models.foundation import foundation_model

        entry = foundation_model(encoder[len(FM_PREFIX):])
        arch, args = entry.timm, {**entry.kwargs, **args}
    elif encoder.startswith(LOCAL_PREFIX):
        arch = encoder
    else:
        arch = timm_name(encoder)
    try:
        model = timm.create_model(arch, pretrained=False, **timm_kwargs(args))
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise SpecError(f"finetune.encoder '{encoder}': timm cannot build it: "
                          f"{str(exc).strip().splitlines()[0][:200]}") from None
    return ViTEncoder(model, encoder)
