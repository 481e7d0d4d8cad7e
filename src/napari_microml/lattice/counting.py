"""``count_atoms``: atoms per column from scattering cross-sections (StatSTEM's method).

The cross-section of a column is the intensity integrated over its Voronoi cell (the pixels
nearer to it than to any other column, at most one spacing away) minus a local background.
Their histogram is fitted by Gaussian mixtures of 1…G components of equal width with equally
spaced means (the constrained model for columns of 1, 2, 3 … atoms), and the number of
components is chosen by the integrated completed likelihood (ICL = BIC + 2 × the entropy of the
assignments; De Backer et al., Ultramicroscopy 2013). Each column gets the count of its most
probable component; counts are absolute when the lightest columns present hold one atom.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_microml.runtime.provenance import make_provenance
from napari_microml.runtime.validate import check_number, check_positions
from napari_microml.runtime.workers import drain, progress


@dataclass
class Mixture:
    """The chosen Gaussian mixture, in the cross-section's units.

    Weights, means and (common) sigma of its components; ``icl`` per number of components
    tried (index 0 = 1 component).
    """

    weights: np.ndarray
    means: np.ndarray
    sigma: float
    icl: np.ndarray

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """(len(x), G) density of each weighted component."""
        x = np.asarray(x, float)[:, None]
        return (
            self.weights
            * np.exp(-0.5 * ((x - self.means) / self.sigma) ** 2)
            / (np.sqrt(2 * np.pi) * self.sigma)
        )


@dataclass
class CountResult:
    """What an atom count found, per column and for the mixture.

    cross_section (N,), counts (N,) int (≥ 1; 0 = not counted: an edge column), n_components,
    mixture, background (N,), cell_area (N,) px, edge (N,) bool, provenance. With
    ``sublattice`` given, ``groups`` maps each sublattice to its own mixture (columns of
    different elements scatter differently) and ``mixture`` / ``n_components`` are those of
    sublattice 0.
    """

    positions: np.ndarray
    cross_section: np.ndarray
    counts: np.ndarray
    n_components: int
    mixture: Mixture
    background: np.ndarray
    cell_area: np.ndarray
    parameters: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)
    edge: np.ndarray | None = None


def voronoi_cells(shape, positions: np.ndarray, max_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Label each pixel with its nearest column, and give its distance to it.

    Returns the (H, W) int label map (1 + the index of the nearest column, 0 beyond
    ``max_radius`` px) and each pixel's distance to its column (px).

    A Euclidean distance transform from the columns' pixels gives each pixel its nearest column
    in one pass (~0.1 s for 1024²).
    """
    from scipy import ndimage as ndi

    h, w = shape
    rc = np.clip(np.rint(positions).astype(int), 0, [h - 1, w - 1])
    seeds = np.zeros(shape, np.int64)
    seeds[rc[:, 0], rc[:, 1]] = np.arange(1, len(rc) + 1)
    dist, (ir, ic) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[ir, ic]
    labels[dist > max_radius] = 0
    return labels, dist


def cross_sections(
    image: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-section (N,), local background (N,) and cell area (N,) of each column."""
    from scipy.spatial import cKDTree

    tree = cKDTree(positions)
    d, nb = tree.query(positions, k=min(7, len(positions)))
    d0 = float(np.median(d[:, 1]))
    labels, dist = voronoi_cells(image.shape, positions, max_radius=0.75 * d0)
    flat = labels.ravel()
    n = len(positions)
    area = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    total = np.bincount(flat, weights=image.ravel(), minlength=n + 1)[1:]
    # background: the mean of the cell's outer part (beyond 0.4 of the spacing from its column),
    # then the median over the column and its nearest neighbours, so one noisy cell does not
    # move the cross-section
    ring = np.where(dist.ravel() >= 0.4 * d0, flat, 0)
    ring_n = np.bincount(ring, minlength=n + 1)[1:]
    ring_sum = np.bincount(ring, weights=image.ravel(), minlength=n + 1)[1:]
    floor = np.where(ring_n > 0, ring_sum / np.maximum(ring_n, 1), np.nan)
    bg = np.nanmedian(floor[nb], axis=1)
    bg = np.where(np.isfinite(bg), bg, np.nanmedian(floor))
    return total - area * bg, bg, area


def _em_spaced(
    x: np.ndarray, c: np.ndarray, g: int, mu1: np.ndarray, step: np.ndarray, iters: int = 150
):
    """Fit g equal-width components with means mu1 + k·step by EM.

    Values ``x`` with multiplicities ``c``, from S starts at once (``mu1``, ``step``: (S,));
    returns the best
    start's (loglik, weights, means, sigma).
    """
    n = c.sum()
    k = np.arange(g)
    mu1, step = np.asarray(mu1, float), np.asarray(step, float)
    spread = np.sqrt(np.cov(x, aweights=c))
    w = np.full((len(mu1), g), 1.0 / g)
    sigma = np.maximum(
        0.25 * (np.full_like(mu1, spread) if g == 1 else np.abs(step)), 1e-9 * spread + 1e-300
    )
    floor = 1e-6 * spread + 1e-300
    prev = np.full(len(mu1), -np.inf)
    sx, cx = (c * x).sum(), c * x
    for _ in range(iters):
        resp, ll = _responsibilities(x, c, w, mu1[:, None] + k * step[:, None], sigma)
        cr = c[None, :, None] * resp  # (S, n, G)
        tot = cr.sum(1)  # (S, G)
        w = tot / n
        if g == 1:
            mu1, step = np.full_like(mu1, sx / n), np.zeros_like(step)
        else:  # weighted regression of x on the component index, per start
            sk, skk = tot @ k, tot @ k**2
            skx = np.einsum("sng,g,n->s", resp, k.astype(float), cx)
            det = n * skk - sk**2
            mu1, step = (skk * sx - sk * skx) / det, (n * skx - sk * sx) / det
        means = mu1[:, None] + k * step[:, None]
        sigma = np.maximum(
            np.sqrt((cr * (x[None, :, None] - means[:, None, :]) ** 2).sum((1, 2)) / n), floor
        )
        if np.all(ll - prev < 1e-6 * np.abs(ll)):
            break
        prev = ll
    b = int(np.argmax(ll))
    return float(ll[b]), w[b], mu1[b] + k * step[b], float(sigma[b])


def _responsibilities(x, c, w, means, sigma):
    """Return each component's posterior for each value, and the log-likelihoods.

    Posteriors (S, len(x), G) and log-likelihoods (S,) of S mixtures (w, means: (S, G);
    sigma: (S,)).
    """
    w, means, sigma = np.atleast_2d(w), np.atleast_2d(means), np.atleast_1d(sigma)
    z = (
        -0.5 * ((x[None, :, None] - means[:, None, :]) / sigma[:, None, None]) ** 2
        + np.log(np.maximum(w, 1e-300))[:, None, :]
    )
    zmax = z.max(2, keepdims=True)
    p = np.exp(z - zmax)
    s = p.sum(2, keepdims=True)
    ll = (c * (np.log(s[..., 0]) + zmax[..., 0])).sum(1) - c.sum() * np.log(
        np.sqrt(2 * np.pi) * sigma
    )
    return p / s, ll


def _period(x: np.ndarray, c: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Find the spacing and first level of a comb of equally spaced levels in ``x``.

    The strongest peak of |Σ c·exp(2πi x / Δ)| over Δ (a start for EM, used for every number of
    components).
    """
    steps = (hi - lo) / np.linspace(1.0, 30.0, 600)
    phase = np.exp(2j * np.pi * x[None, :] / steps[:, None]) @ c
    power = np.abs(phase) * np.sqrt(steps)  # favour the fundamental over harmonics
    j = int(np.argmax(power[1:])) + 1
    step = steps[j]
    offset = (np.angle(phase[j]) / (2 * np.pi)) * step
    first = offset + step * np.ceil((lo - offset) / step - 0.5)
    return float(step), float(first)


BINS = 512  # above this many columns EM runs on a histogram this fine (bins < component width)


def fit_mixture(x: np.ndarray, max_components: int) -> tuple[Mixture, np.ndarray]:
    """Fit the best ICL mixture of 1…``max_components`` equally spaced, equal-width components.

    Returns it and the responsibilities (N, G). EM starts from the even split of the range and
    from the comb
    spacing found in the data. The ICL can be worse for every G below the true number of levels
    (a comb of the wrong spacing fits poorly), so the search runs on to 2 × the best G + 8.
    """
    x = np.asarray(x, float)
    n = len(x)
    if n > BINS:
        counts, edges = np.histogram(x, BINS)
        keep = counts > 0
        xv, cv = (0.5 * (edges[1:] + edges[:-1]))[keep], counts[keep].astype(float)
    else:
        xv, cv = x, np.ones(n)
    lo, hi = np.percentile(x, [1, 99])
    comb_step, comb_first = _period(xv, cv, lo, hi)
    icl = np.full(max_components, np.nan)
    best, g_best = None, 1
    for g in range(1, max_components + 1):
        even = (hi - lo) / max(g - 1, 1)
        ll, w, means, sigma = _em_spaced(
            xv,
            cv,
            g,
            np.array([lo, comb_first]),
            np.array([even, comb_step]) if g > 1 else np.zeros(2),
        )
        resp, _ = _responsibilities(xv, cv, w, means, sigma)
        n_par = (g - 1) + (2 if g > 1 else 1) + 1
        entropy = -float((cv[:, None] * resp[0] * np.log(np.maximum(resp[0], 1e-300))).sum())
        icl[g - 1] = -2 * ll + n_par * np.log(n) + 2 * entropy
        if best is None or icl[g - 1] < best[0]:
            best, g_best = (icl[g - 1], w, means, sigma), g
        if g >= 2 * g_best + 8:  # a finer comb repeats the best one with more parameters
            break
    assert best is not None  # g = 1 always fits
    _, w, means, sigma = best
    resp, _ = _responsibilities(x, np.ones(n), w, means, sigma)
    return Mixture(w, means, sigma, icl[np.isfinite(icl)]), resp[0]


def _count(xs: np.ndarray, max_count: int) -> tuple[Mixture, np.ndarray]:
    """Return the ICL mixture (components sorted by mean) and each value's count (1 = lowest)."""
    g_max = int(min(max_count, max(1, len(xs) // 5)))
    mixture, resp = fit_mixture(xs, g_max)
    order = np.argsort(mixture.means)
    mixture = Mixture(mixture.weights[order], mixture.means[order], mixture.sigma, mixture.icl)
    return mixture, np.argmax(resp[:, order], axis=1) + 1


def edge_cells(
    area: np.ndarray, labels: np.ndarray | None = None, tolerance: float = 0.15
) -> np.ndarray:
    """Flag the columns whose cell is not bounded by neighbours on every side.

    An image edge, a vacancy next door, the end of a particle: the cell's area is off the
    sublattice's median by more than
    ``tolerance``. Their cross-sections hold a different share of background and tails, so
    they are left out of the mixture and not counted.
    """
    labels = np.zeros(len(area), int) if labels is None else labels
    edge = np.zeros(len(area), bool)
    for lab in np.unique(labels):
        sel = labels == lab
        edge[sel] = np.abs(area[sel] / np.median(area[sel]) - 1) > tolerance
    return edge


def count_atoms_iter(
    image, positions, *, max_count=None, sublattice=None, input_name: str | None = None
):
    """Count atoms like :func:`count_atoms`, as a generator that reports progress.

    It takes the same parameters as :func:`count_atoms`, and one more (below).

    Parameters
    ----------
    input_name : str, optional
        Name of the input (file or layer) recorded in ``provenance['input_layer']``.

    Yields
    ------
    tuple
        ``("progress", done, 2, message)`` before the cross-sections, before the Gaussian
        mixtures and when done.

    Returns
    -------
    CountResult
        The generator's return value, as :func:`count_atoms` returns it.
    """
    from napari_microml.runtime.validate import as_image_stack

    frames, is_stack = as_image_stack(image)
    if is_stack:
        raise ValueError("count_atoms takes one 2D image, not a stack of frames.")
    img = np.asarray(frames[0], np.float64)
    if not np.isfinite(img).all():
        img = np.where(np.isfinite(img), img, np.nanmedian(img))
    pos, _ = check_positions(positions, img.shape)
    if len(pos) < 10:
        raise ValueError(
            f"Only {len(pos)} columns: counting atoms needs the histogram of at least 10."
        )
    labels = None
    if sublattice is not None:
        labels = np.asarray(sublattice).reshape(-1)
        if labels.shape != (len(pos),) or labels.dtype.kind not in "iu" or labels.min() < 0:
            raise ValueError("sublattice must give a label 0, 1, … for every column.")
    if max_count is None:
        max_count = 20
    max_count = check_number(max_count, "max_count", low=1, high=200, integer=True, unit="atoms")
    yield progress(0, 2, "cross-sections")
    xs, bg, area = cross_sections(img, pos)  # Voronoi cells of all columns, whatever the groups
    yield progress(1, 2, "Gaussian mixtures")
    edge = edge_cells(area, labels)
    groups, mixture = {}, None
    counts = np.zeros(len(pos), int)
    for lab in [None] if labels is None else np.unique(labels):
        sel = ~edge if lab is None else (labels == lab) & ~edge
        if sel.sum() >= 10:  # fewer columns than that make no histogram: not counted
            mixture, counts[sel] = _count(xs[sel], max_count)
            if lab is not None:
                groups[int(lab)] = mixture
    if labels is not None:
        mixture = groups.get(0) or next(iter(groups.values()), None)
    if mixture is None:
        raise ValueError(
            "No sublattice has the 10 whole (not edge) columns a cross-section histogram needs."
        )
    params = {
        "n_columns": len(pos),
        "max_count": max_count,
        "edge_columns": int(edge.sum()),
        "per_sublattice": labels is not None,
        "model": "equal width, equally spaced means; ICL",
    }
    prov = make_provenance("atom_counting", parameters=params, input_name=input_name)
    yield progress(2, 2, "done")
    return CountResult(
        pos, xs, counts, int(len(mixture.means)), mixture, bg, area, params, prov, groups, edge
    )


def count_atoms(image, positions, *, max_count=None, sublattice=None):
    """Count the atoms in each column from its scattering cross-section.

    Parameters
    ----------
    image : (H, W) grey image (HAADF: intensity grows with the number of atoms).
    positions : (N, 2) (row, col) px of the columns.
    max_count : int, optional, the most components (atoms per column) tried (default 20).
    sublattice : (N,) int, optional (e.g. ``analyze_lattice(...).sublattice``): one mixture per
        sublattice, as StatSTEM counts each column type on its own; cross-sections still use
        the Voronoi cells of all columns.

    Returns
    -------
    CountResult: cross_section (N,) in image units × px², counts (N,) int (0 for edge columns,
    whose cell is not closed by neighbours), n_components, mixture (:class:`Mixture`),
    background (N,), cell_area (N,), edge (N,) bool, provenance.
    """
    return drain(count_atoms_iter(image, positions, max_count=max_count, sublattice=sublattice))
