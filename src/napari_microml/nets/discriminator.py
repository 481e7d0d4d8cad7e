"""Multi-scale PatchGAN discriminator (least-squares GAN) for adversarial training.

Used only during training (``training/completion.py``); nothing here ships as weights.
"""

from __future__ import annotations

import functools
import operator

import torch
from torch import nn
from torch.nn import functional as F


class PatchDiscriminator(nn.Module):
    """One PatchGAN: strided 4×4 convolutions, one realism score per ~(2**n_layers·3)-px patch.

    Parameters
    ----------
    in_channels : int
        Image planes plus conditioning planes (e.g. image + scan mask).
    base : int
        Feature maps of the first layer, doubled per layer (capped at 8×base).
    n_layers : int
        Strided layers.
    """

    def __init__(self, in_channels: int = 2, base: int = 32, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, base, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        c = base
        for i in range(1, n_layers):
            c_out = min(base * 2**i, base * 8)
            layers += [
                nn.Conv2d(c, c_out, 4, stride=2, padding=1),
                nn.InstanceNorm2d(c_out, affine=True),
                nn.LeakyReLU(0.2, True),
            ]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """``n_scales`` PatchGANs on the input at full, 1/2, 1/4 … resolution (average pooling).

    ``forward`` returns a list of score maps, one per scale.
    """

    def __init__(self, in_channels: int = 2, base: int = 32, n_layers: int = 3, n_scales: int = 2):
        super().__init__()
        self.heads = nn.ModuleList(
            PatchDiscriminator(in_channels, base, n_layers) for _ in range(n_scales)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, head in enumerate(self.heads):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(head(x))
        return out


def lsgan_loss(scores: list[torch.Tensor], real: bool) -> torch.Tensor:
    """Least-squares GAN loss averaged over scales: ``mean((s - 1)^2)`` or ``mean(s^2)``."""
    target = 1.0 if real else 0.0
    losses = [((s - target) ** 2).mean() for s in scores]
    return functools.reduce(operator.add, losses) / len(losses)
