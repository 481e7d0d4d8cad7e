"""Lattices with a known displacement field, for checking strain, polarisation and atom counts.

Every column starts at an ideal site X of a square (one site), perovskite (A at the corners,
B at the centre, half as bright) or honeycomb lattice and moves to X + u(X); the exact
deformation gradient F = I + ∇u at X is returned with it, so the measured strain can be checked
against the truth. Scenarios: "flat", "step" (+2 % exx right of the middle), "gradient" (exx
rising linearly along x), "dislocation" (an edge dislocation, isotropic elasticity, b = a1,
ν = 0.3), "domains" (B columns off-centre by ±``shift`` px along x, two domains) and "counts"
(1–8 atoms per column, intensity ∝ count). Images are rendered with Poisson noise at ``dose``
counts per (single-atom or A) column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_microml.synth.render import render_gaussians

STRUCTURES = ("square", "perovskite", "honeycomb")
SCENARIOS = ("flat", "step", "gradient", "dislocation", "domains", "counts")


@dataclass
class StrainedSample:
    image: np.ndarray  # (H, W) float32 counts
    positions: np.ndarray  # (N, 2) true (row, col) px
    sublattice: np.ndarray  # (N,) 0 = brighter site
    F: np.ndarray  # (N, 2, 2) true deformation gradient in (row, col) at each column
    shift: np.ndarray  # (N, 2) (row, col) px extra offset of each column (domains)
    counts: np.ndarray  # (N,) atoms per column
    ideal: np.ndarray  # (N, 2) undeformed sites (row, col)
    params: dict = field(default_factory=dict)


def _sites(structure: str, spacing: float, shape, margin: float):
    """Ideal (row, col) sites covering the field, their sublattice and relative brightness."""
    h, w = shape
    if structure == "square":
        basis, bright, a1, a2 = [(0.0, 0.0)], [1.0], np.array([0, spacing]), np.array([spacing, 0])
    elif structure == "perovskite":
        basis, bright = [(0.0, 0.0), (0.5, 0.5)], [1.0, 0.45]
        a1, a2 = np.array([0, spacing]), np.array([spacing, 0])
    elif structure == "honeycomb":  # spacing = nearest-neighbour distance
        basis, bright = [(0.0, 0.0), (1 / 3, 1 / 3)], [1.0, 0.6]
        a1 = spacing * np.sqrt(3) * np.array([0.0, 1.0])
        a2 = spacing * np.sqrt(3) * np.array([np.sqrt(3) / 2, 0.5])
    else:
        raise ValueError(f"Unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}.")
    n = int(2 * max(h, w) / spacing) + 4
    i, j = np.meshgrid(np.arange(-n, n), np.arange(-n, n), indexing="ij")
    pts_list, lab_list = [], []
    for s, (f1, f2) in enumerate(basis):
        p = (
            (i.ravel() + f1)[:, None] * a1
            + (j.ravel() + f2)[:, None] * a2
            + np.array([margin, margin])
        )
        pts_list.append(p)
        lab_list.append(np.full(len(p), s))
    pts, lab = np.concatenate(pts_list), np.concatenate(lab_list)
    return pts, lab, np.asarray(bright)


def _edge_u(xy: np.ndarray, core: np.ndarray, b: float, nu: float = 0.3) -> np.ndarray:
    x, y = (xy - core).T
    r2 = x**2 + y**2
    ux = b / (2 * np.pi) * (np.arctan2(y, x) + x * y / (2 * (1 - nu) * r2))
    uy = (
        -b
        / (2 * np.pi)
        * ((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2) + (x**2 - y**2) / (4 * (1 - nu) * r2))
    )
    return np.column_stack([ux, uy])


def strained_lattice(
    scenario: str = "flat",
    *,
    structure: str = "square",
    shape=(256, 256),
    spacing: float = 16.0,
    sigma: float | None = None,
    dose: float = 1000.0,
    strain: float = 0.02,
    shift: float = 0.6,
    background: float = 0.1,
    seed: int = 0,
) -> StrainedSample:
    """A noisy image of a deformed lattice and the exact truth (see the module docstring)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"Unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}.")
    rng = np.random.default_rng(seed)
    h, w = shape
    sigma = 0.1 * spacing if sigma is None else sigma
    X, lab, bright = _sites(structure, spacing, shape, 0.5 * spacing)
    xy = X[:, ::-1]  # (x, y) = (col, row)
    grad = np.zeros((len(X), 2, 2))  # ∂u/∂X in (x, y)
    u = np.zeros_like(xy)
    xc = 0.5 * w
    if scenario == "step":
        right = xy[:, 0] > xc
        u[:, 0] = np.where(right, strain * (xy[:, 0] - xc), 0.0)
        grad[right, 0, 0] = strain
    elif scenario == "gradient":  # exx = strain · (x − xc) / (w / 2): −strain … +strain
        g = strain / (0.5 * w)
        u[:, 0] = 0.5 * g * (xy[:, 0] - xc) ** 2
        grad[:, 0, 0] = g * (xy[:, 0] - xc)
    elif scenario == "dislocation":
        core = np.array([xc + 0.25 * spacing, 0.5 * h + 0.25 * spacing])
        u = _edge_u(xy, core, spacing)
        eps = 1e-4
        for a in range(2):
            d = np.zeros(2)
            d[a] = eps
            grad[:, :, a] = (_edge_u(xy + d, core, spacing) - _edge_u(xy - d, core, spacing)) / (
                2 * eps
            )
    extra = np.zeros_like(xy)
    if scenario == "domains":
        extra[lab == 1, 0] = np.where(xy[lab == 1, 0] < xc, shift, -shift)
    pos_xy = xy + u + extra
    F = np.eye(2) + grad
    pos = pos_xy[:, ::-1]
    keep = (pos[:, 0] > -0.5) & (pos[:, 0] < h - 0.5) & (pos[:, 1] > -0.5) & (pos[:, 1] < w - 0.5)
    counts = np.ones(len(pos), int)
    if scenario == "counts":
        counts = rng.integers(1, 9, len(pos))
    amp = bright[lab] * counts
    pos, lab, amp, counts = pos[keep], lab[keep], amp[keep], counts[keep]
    F, extra, X = F[keep][:, ::-1, ::-1], extra[keep][:, ::-1], X[keep]
    peak = dose / (2 * np.pi * sigma**2)  # counts at the centre of a unit column
    clean = render_gaussians(shape, pos, sigma, amp * peak) + background * peak
    image = rng.poisson(np.clip(clean, 0, None)).astype(np.float32)
    return StrainedSample(
        image,
        pos,
        lab,
        F,
        extra,
        counts,
        X,
        {
            "scenario": scenario,
            "structure": structure,
            "spacing": spacing,
            "sigma": sigma,
            "dose": dose,
            "strain": strain,
            "shift": shift,
            "seed": seed,
        },
    )
