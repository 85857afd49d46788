"""The linear probe used by the learning checks scores informative features high and noise low."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probes import probe_r2


def test_probe_separates_informative_features_from_noise():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, size=(12, 4, 4)).repeat(4, 1).repeat(4, 2)  # 16x16, blocks of 4
    informative = F.one_hot(torch.from_numpy(classes[:, ::4, ::4]).long(), 3).permute(0, 3, 1, 2).float()
    informative = torch.cat([informative, torch.randn(12, 5, 4, 4)], 1)  # plus nuisance channels
    noise = torch.randn(12, 8, 4, 4)
    train, test = np.arange(8), np.arange(8, 12)
    assert probe_r2(informative, classes, 3, train, test) > 0.95
    assert probe_r2(noise, classes, 3, train, test) < 0.1
