"""The one U-Net every image tool uses (atoms, defects, scan completion)."""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """A compact U-Net.

    Parameters
    ----------
    in_channels, out_channels : int
        Input planes (e.g. 1 image, or 2 for sparse values + mask) and output planes (logits).
    base : int
        Feature maps at full resolution; doubled at every level.
    depth : int
        Number of 2× down-samplings; input sizes must be multiples of ``2**depth``.
    dropout : float
        Channel dropout after each decoder block (kept on at inference for MC-dropout).
    """

    def __init__(self, in_channels=1, out_channels=1, base=16, depth=3, dropout=0.0):
        super().__init__()
        self.depth = depth
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_block(cin, c, 0.0))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_hi, c_lo in zip(chans[::-1][:-1], chans[::-1][1:]):
            self.up.append(nn.ConvTranspose2d(c_hi, c_lo, 2, stride=2))
            self.dec.append(_block(2 * c_lo, c_lo, dropout))
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.up, self.dec, skips[::-1]):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
