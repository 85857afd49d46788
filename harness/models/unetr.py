"""``unetr``: a UNETR/CellViT-style decoder under a ViT encoder.

After UNETR (Hatamizadeh et al. 2022, arXiv 2103.10504, Fig. 2) as CellViT adapts it to 2-D
(Hörst et al. 2024, arXiv 2306.15350; TIO-IKIM/CellViT ``models/segmentation/cell_segmentation/
cellvit.py``): the patch tokens of 4 uniformly spaced blocks (3/6/9/12 of 12); the first three
are skips brought to 8x, 4x and 2x the token grid by 3, 2 and 1 transposed-convolution blocks,
the last is the bottleneck; the decoder upsamples x2 per stage,
concatenating each skip, and at full resolution a convolutional path from the input image
(the fine detail a 16-pixel token grid lacks). One branch (``out_channels`` logits); a head
needing several branches (HoVer) splits the channels.

For a patch size p other than 16 the decoder ends at 16/p times the input and is resized
bilinearly to it (patch 8: halved, patch 14: 14/16); logits are cropped to the unpadded input.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as nnf
from torch import nn

from harness.models.vit import ViTEncoder, trainable


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU (CellViT's ``Conv2DBlock``)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def deconv_block(cin: int, cout: int) -> nn.Sequential:
    """x2 transposed conv, then a conv block (CellViT's ``Deconv2DBlock``)."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), conv_block(cout, cout))


class UNETR(nn.Module):
    def __init__(self, encoder: ViTEncoder, out_channels: int,
                 channels: Sequence[int] = (512, 256, 128, 64), image_channels: int = 32):
        super().__init__()
        self.encoder = encoder
        d = encoder.embed_dim
        c_bottom, c2, c4, c8 = channels
        # skips of blocks 1-3, brought to 8x, 4x, 2x the token grid
        self.skips = nn.ModuleList([
            nn.Sequential(deconv_block(d, c8), deconv_block(c8, c8), deconv_block(c8, c8)),
            nn.Sequential(deconv_block(d, c4), deconv_block(c4, c4)),
            deconv_block(d, c2)])
        self.bottleneck = conv_block(d, c_bottom)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c_bottom, c2, 2, stride=2),
                                 nn.ConvTranspose2d(c2, c4, 2, stride=2),
                                 nn.ConvTranspose2d(c4, c8, 2, stride=2),
                                 nn.ConvTranspose2d(c8, image_channels, 2, stride=2)])
        self.fuse = nn.ModuleList([nn.Sequential(conv_block(2 * c, c), conv_block(c, c))
                                   for c in (c2, c4, c8)])
        self.image_path = nn.Sequential(conv_block(3, image_channels), conv_block(image_channels, image_channels))
        self.head = nn.Sequential(conv_block(2 * image_channels, image_channels),
                                  nn.Conv2d(image_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = self.encoder.pad(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable(self.encoder)):
            grids, _ = self.encoder.intermediates(padded)
        d = self.bottleneck(grids[3])
        for up, fuse, skip, z in zip(self.up, self.fuse, reversed(self.skips), reversed(grids[:3])):
            d = fuse(torch.cat([up(d), skip(z)], dim=1))
        d = self.up[3](d)
        if d.shape[-2:] != padded.shape[-2:]:
            d = nnf.interpolate(d, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(torch.cat([d, self.image_path(padded)], dim=1))
        return logits[..., :h, :w]
