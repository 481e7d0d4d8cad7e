"""The one U-Net every image tool uses (atoms, defects, scan completion)."""

from __future__ import annotations

import itertools

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
        for c_hi, c_lo in itertools.pairwise(chans[::-1]):
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
        for up, dec, skip in zip(self.up, self.dec, skips[::-1], strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """An inference copy of ``net`` with every BatchNorm folded into the convolution before it
    (same outputs to ~1e-6, about a third less time on a CPU). ``net`` itself is unchanged."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return net


def batch_predictor(net: nn.Module, device, transform=None):
    """``predict(batch) -> array``: numpy (B, C, h, w) float32 in, ``transform(net(x))`` out as
    float32 numpy, run under ``torch.inference_mode`` on a BatchNorm-folded copy of ``net``,
    channels-last on CPUs (markedly faster convolutions with oneDNN). Every image tool's tiled
    inference goes through this."""
    net = fuse_batchnorm(net).to(device)
    cpu = torch.device(device).type == "cpu"
    fmt = torch.channels_last if cpu else torch.contiguous_format
    net = net.to(memory_format=fmt)  # type: ignore[call-overload]  # torch's stub omits it

    def predict(batch):
        import numpy as np

        with torch.inference_mode():
            x = (
                torch.from_numpy(np.ascontiguousarray(batch))
                .to(device)
                .contiguous(memory_format=fmt)
            )
            out = net(x).float()
            if transform is not None:
                out = transform(out)
            return out.cpu().contiguous().numpy()

    return predict
