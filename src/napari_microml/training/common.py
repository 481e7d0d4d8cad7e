"""Shared training helpers: seeding, augmentation, a simple step loop with a log."""

from __future__ import annotations

import math
import time

import numpy as np


def seed_everything(seed: int):
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)


def dihedral(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """One of the 8 flips/rotations, applied to every (…, H, W) array alike."""
    out = []
    for a in arrays:
        a = np.rot90(a, k % 4, axes=(-2, -1))
        if k >= 4:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def budget_lr_factor(step: int, steps: int, elapsed_s: float, budget_s: float) -> float | None:
    """LR factor of a 5 % warm-up + cosine schedule on progress = max(step / steps, elapsed /
    budget), floored at 0.01; None once progress reaches 1 (the run ends, annealed, on time)."""
    progress = max((step - 1) / steps, elapsed_s / budget_s)
    if progress >= 1:
        return None
    if progress < 0.05:
        return max(progress / 0.05, 0.01)
    return max(0.5 * (1 + math.cos(math.pi * (progress - 0.05) / 0.95)), 0.01)


class Log:
    """Collects (step, loss) with wall time; prints every ``every`` steps."""

    def __init__(self, every: int = 100):
        self.every, self.t0 = every, time.time()
        self.rows: list[dict] = []

    def add(self, step: int, **values):
        self.rows.append({"step": step, "time_s": round(time.time() - self.t0, 1), **values})
        if step % self.every == 0:
            print(self.rows[-1], flush=True)


def lattice_for(seed: int, lattice_weights: dict | None) -> str | None:
    """A lattice drawn from ``lattice_weights`` (relative weights by name) for this seed, or None
    (the simulator's own uniform choice). Unnamed ``LATTICES`` weigh 1; an ``EXTRA_LATTICES``
    entry is drawn only when named."""
    if not lattice_weights:
        return None
    from napari_microml.synth.lattice import EXTRA_LATTICES, LATTICES

    names = LATTICES + tuple(n for n in EXTRA_LATTICES if n in lattice_weights)
    p = np.array([float(lattice_weights.get(name, 1.0)) for name in names])
    return str(np.random.default_rng([int(seed), 4_242]).choice(names, p=p / p.sum()))


def parse_weights(text: str) -> dict | None:
    """Parse ``"name=1.5,other=2"`` (a command-line option) as ``{name: 1.5, other: 2.0}``.

    None if empty.
    """
    pairs = (kv.split("=") for kv in text.split(",") if kv.strip())
    return {k.strip(): float(v) for k, v in pairs} or None
