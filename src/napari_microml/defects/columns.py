"""Column-intensity check for substitutional dopants: each atom column against its own sublattice.

In a HAADF (Z-contrast) image a substitutional dopant heavier than the host is a column whose
intensity is an outlier among the columns of the SAME sublattice around it. The network sees
this too, but it misses low-contrast dopants on a dim sublattice (e.g. the B site of a
perovskite, where a dopant 1.4× its neighbours is still dimmer than the A columns). This module
measures every column's background-subtracted height, divides it by the median height of its
same-sublattice neighbours and expresses the excess in units of the image's natural
column-to-column spread; :func:`column_check` drops predicted bright dopants that are not
brighter than their sublattice and turns clear outliers the network left unlabelled into
'dopant_bright' instances.

Same-sublattice neighbours are the columns 1.2–2.1 local column spacings away (the local spacing
is the median nearest-column distance of the 12 nearest columns). For the square, rectangular,
triangular, honeycomb and perovskite (cation-column) projections these are lattice translations
of the column, never the other perovskite sublattice, which sits at 1 spacing. The rule does not
hold where light columns are visible between the cation columns (e.g. oxygen in ABF images of
SrTiO3), which is one reason the segmenter applies the check to bright-column (HAADF) images only.
A column is judged only when at least one pair of its ring neighbours sits opposite each other
(lattice translations come in ± pairs): scattered single atoms, e.g. Pt on amorphous carbon, have
no sublattice. A column is added as a dopant only when every one of its ring neighbours stands
clear of the image's noise (:func:`height_noise`): at low dose the atom finder also returns noise
peaks and barely visible columns of a dim sublattice, and a ring containing them has a median far
below the column's own sublattice, which makes an ordinary column look like an outlier.
"""

from __future__ import annotations

import numpy as np

# thresholds chosen on validation seeds (benchmarks/defects_errors.py), never the benchmark's
Z_RESCUE = 5.0  # an unlabelled column this many spreads above its sublattice is a bright dopant
Z_WEAK = 4.0  # ... or this many, where the network's dopant_bright probability reaches P_WEAK
P_WEAK = 0.2
Z_VETO = (
    2.5  # a predicted bright dopant less than this many spreads above its sublattice is dropped
)
MIN_NEIGHBOURS = 3  # same-sublattice neighbours needed to judge a column
PAIR_TOL = 0.25  # local spacings: how close a ring neighbour's opposite partner must lie
RING_MAX = 40  # at most this many nearest columns are searched for the ring (triangular has 12)
EXTENDED_CLEARANCE = 0.5  # spacings: columns this close to a predicted extended region are skipped
SMOOTH = 0.1  # spacings: Gaussian smoothing before the heights are read (about a column width)
LEVEL_BAND = 0.15  # log units: columns whose sublattice levels differ less share one spread
RESCUE_DISC = 0.35  # radius of a rescued instance, spacings (the truth disc of synth.defects)
# height noises (height_noise): maxima of pure white noise measured by column_heights stay below
# this about 999 times in 1000 (median 4.2), at every spacing from 6 to 24 px
NOISE_FLOOR = 7.0


def column_heights(image: np.ndarray, columns: np.ndarray, spacing: float) -> np.ndarray:
    """Background-subtracted height of every atom column.

    Parameters
    ----------
    image : (H, W) float image with bright columns (ABF images inverted first).
    columns : (N, 2) column positions (row, col) in px.
    spacing : float
        Typical nearest-column distance in px.

    Returns
    -------
    (N,) float64: the image smoothed by a Gaussian of 0.1 spacing (at least 0.7 px), sampled at
    the column, minus the local background (the smoothed image's minimum over a 1.5-spacing
    window, itself smoothed over one spacing), in image units.
    """
    from scipy import ndimage as ndi

    cols = np.asarray(columns, float).reshape(-1, 2)
    if not len(cols):
        return np.zeros(0)
    at = ndi.map_coordinates(height_map(image, spacing), cols.T, order=1, mode="nearest")
    return at.astype(np.float64)


def height_map(image: np.ndarray, spacing: float) -> np.ndarray:
    """The image's background-free height at every pixel, as :func:`column_heights` reads it.

    Parameters
    ----------
    image : (H, W) float image with bright columns.
    spacing : float
        Typical nearest-column distance in px.

    Returns
    -------
    (H, W) float32: the image smoothed by a Gaussian of 0.1 spacing (at least 0.7 px) minus the
    local background (the smoothed image's minimum over a 1.5-spacing window, itself smoothed
    over one spacing).
    """
    from scipy import ndimage as ndi

    from napari_microml.defects.environments import smooth_wide

    smooth = ndi.gaussian_filter(np.asarray(image, np.float32), max(0.7, SMOOTH * spacing))
    size = max(3, int(round(1.5 * spacing)) | 1)
    return smooth - smooth_wide(ndi.minimum_filter(smooth, size=size, mode="nearest"), spacing)


def height_noise(image: np.ndarray, spacing: float) -> float:
    """Standard deviation the image's pixel noise gives a column height (:func:`column_heights`).

    Parameters
    ----------
    image : (H, W) float image the heights are read from.
    spacing : float
        Typical nearest-column distance in px.

    Returns
    -------
    float, in image units: the pixel noise (:func:`napari_microml.runtime.noise.noise_sigma`)
    after the heights' Gaussian smoothing of width ``s`` px, ``sigma / (2 sqrt(pi) s)`` (white
    noise; the wide background adds little).
    """
    from napari_microml.runtime.noise import noise_sigma

    width = max(0.7, SMOOTH * spacing)
    return noise_sigma(image) / (2.0 * np.sqrt(np.pi) * width)


def sublattice_contrast(columns: np.ndarray, heights: np.ndarray, skip: np.ndarray | None = None):
    """Each column's height over the median height of its same-sublattice neighbours.

    Parameters
    ----------
    columns : (N, 2) positions (row, col) in px.
    heights : (N,) column heights (:func:`column_heights`).
    skip : (N,) bool, optional
        Columns that are neither judged nor used as references (e.g. inside extended regions).

    Returns
    -------
    contrast : (N,) float, NaN where a column has fewer than ``MIN_NEIGHBOURS`` such neighbours.
    z : (N,) float, ``(contrast - 1) / sigma`` with ``sigma`` the robust spread (1.4826 × MAD) of
        all finite contrasts: the excess in units of the crystal's column-to-column variation.
    """
    cols = np.asarray(columns, float).reshape(-1, 2)
    h = np.asarray(heights, float)
    n = len(cols)
    contrast, ref_level = np.full(n, np.nan), np.full(n, np.nan)
    if n < 2 * MIN_NEIGHBOURS:
        return contrast, contrast.copy()
    use = np.ones(n, bool) if skip is None else ~np.asarray(skip, bool)
    idx, ring, local = _rings(cols, use)
    judged = (ring.sum(1) >= MIN_NEIGHBOURS) & (_paired(cols, idx, ring, local) >= 2)
    vals = np.where(ring, h[idx], np.nan)[judged]
    ref_level[judged] = np.nanmedian(vals, axis=1) if len(vals) else np.zeros(0)
    good = judged & (ref_level > 0)
    contrast[good] = h[good] / ref_level[good]
    ok = np.isfinite(contrast)
    if ok.sum() < 10:
        return contrast, np.full(n, np.nan)
    return contrast, (contrast - 1.0) / _spread(contrast, ref_level)


def _rings(cols: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each column's same-sublattice ring: ``idx`` (N, k) its nearest columns, ``ring`` (N, k)
    which of them lie 1.2–2.1 local spacings away (both columns in ``use``), ``local`` (N,) the
    local spacing (median nearest-column distance of the 12 nearest columns)."""
    from scipy.spatial import cKDTree

    d, idx = cKDTree(cols).query(cols, k=min(RING_MAX + 1, len(cols)))
    local = np.median(d[:, 1][idx[:, 1:13]], axis=1)
    ring = (d > 1.2 * local[:, None]) & (d <= 2.1 * local[:, None]) & use[idx] & use[:, None]
    return idx, ring, local


def ring_above_noise(
    columns: np.ndarray, heights: np.ndarray, noise: float, skip: np.ndarray | None = None
) -> np.ndarray:
    """Whether every same-sublattice neighbour of a column (the ring of :func:`sublattice_contrast`)
    is a measured column: its height at least ``NOISE_FLOOR`` height noises.

    Parameters
    ----------
    columns : (N, 2) positions (row, col) in px.
    heights : (N,) column heights (:func:`column_heights`), image units.
    noise : float
        The heights' noise (:func:`height_noise`), image units.
    skip : (N,) bool, optional
        Columns left out of the rings, as in :func:`sublattice_contrast`.

    Returns
    -------
    (N,) bool; False where a ring neighbour could be a noise peak or a barely visible column of
    another sublattice, so the ring's median is no level of the column's own sublattice.
    """
    cols = np.asarray(columns, float).reshape(-1, 2)
    n = len(cols)
    if n < 2:
        return np.ones(n, bool)
    use = np.ones(n, bool) if skip is None else ~np.asarray(skip, bool)
    idx, ring, _ = _rings(cols, use)
    weak = np.asarray(heights, float) < NOISE_FLOOR * noise
    return ~(ring & weak[idx]).any(axis=1)


def _paired(cols: np.ndarray, idx: np.ndarray, ring: np.ndarray, local: np.ndarray) -> np.ndarray:
    """How many of each column's ring neighbours ``c + v`` have a column at ``c - v`` (within
    ``PAIR_TOL`` local spacings): in a crystal every same-sublattice neighbour is a lattice
    translation, so they come in opposite pairs; scattered single atoms (Pt on amorphous carbon)
    almost never do, and their 'sublattice' is meaningless."""
    from scipy.spatial import cKDTree

    i, k = np.nonzero(ring)
    out = np.zeros(len(cols), int)
    if not len(i):
        return out
    probe = 2 * cols[i] - cols[idx[i, k]]
    near = cKDTree(cols).query(probe)[0] <= PAIR_TOL * local[i]
    np.add.at(out, i[near], 1)
    return out


def _spread(contrast: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Robust spread (1.4826 × MAD) of the contrasts of the columns whose sublattice level (the
    median height of their same-sublattice neighbours) is within ``LEVEL_BAND`` (log units) of
    each column's own: a dim sublattice is noisier, relative to its height, than a bright one.
    Falls back to the spread of all columns where fewer than 20 columns share a level."""
    ok = np.isfinite(contrast) & (level > 0)
    c_all = contrast[ok]
    overall = max(1.4826 * float(np.median(np.abs(c_all - np.median(c_all)))), 1e-6)
    out = np.full(len(contrast), overall)
    log_level = np.log(np.where(level > 0, level, np.nan))
    lv = log_level[ok]
    centres = np.round(lv / 0.05) * 0.05
    for c in np.unique(centres):
        members = c_all[np.abs(lv - c) <= LEVEL_BAND]
        if len(members) >= 20:
            out[ok & (np.abs(np.round(log_level / 0.05) * 0.05 - c) < 1e-9)] = max(
                1.4826 * float(np.median(np.abs(members - np.median(members)))), 1e-6
            )
    return out


def rescue_confidence(z, p_network) -> np.ndarray:
    """Probability that a column the network left unlabelled is a bright dopant, from its
    sublattice z-score and the network's peak dopant_bright probability ``p_network`` there.

    Bayes with the network's probability as the prior (at least the base rate below) and the
    likelihood ratio of an outlier model: a host column's z is standard normal, a dopant's flat
    over the range seen, so the ratio grows as exp(z²/2). Its two free numbers, the scale and
    the base rate, are fixed by the check's own acceptance rules: z = ``Z_WEAK`` with
    p_network = ``P_WEAK``, and z = ``Z_RESCUE`` with no network support, each give exactly 0.5
    (base rate ≈ 0.3 % of columns). Increasing in both (z ≥ 0); 0.996 at z = Z_RESCUE + 1.
    """
    z = np.asarray(z, float)
    base = P_WEAK / (1 - P_WEAK) * np.exp(-(Z_RESCUE**2 - Z_WEAK**2) / 2)  # prior odds of a dopant
    p = np.clip(np.asarray(p_network, float), 0.0, 1.0 - 1e-9)
    log_prior = np.log(np.maximum(p / (1 - p), base))
    log_lr = (z**2 - Z_WEAK**2) / 2 + np.log((1 - P_WEAK) / P_WEAK)
    return 1.0 / (1.0 + np.exp(-np.clip(log_prior + log_lr, -700, 700)))


def column_check(
    image: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    stats: dict,
    columns: np.ndarray,
    spacing: float | None,
    threshold: float = 0.5,
):
    """Check the network's bright dopants against the column intensities and add the ones it missed.

    Every column gets a sublattice z-score (:func:`sublattice_contrast`; columns closer than
    ``EXTENDED_CLEARANCE`` spacings to predicted extended pixels are not judged). Then

    * veto: a predicted 'dopant_bright' instance whose column (the nearest one, within 0.4
      spacing) is judged and is less than ``Z_VETO`` spreads above its sublattice is removed;
    * rescue: a judged column not within half a spacing of a predicted point defect becomes a
      'dopant_bright' instance (a disc of ``RESCUE_DISC`` spacings) when its z-score is at least
      ``Z_RESCUE``, or at least ``Z_WEAK`` where the network's dopant_bright probability
      somewhere in that disc reaches ``P_WEAK``, and every column of its ring stands clear of
      the image's noise (:func:`ring_above_noise`).

    Parameters
    ----------
    image : (H, W) float image with bright columns (what the network saw).
    probs : (6, H, W) class probabilities.
    labels, stats : the output of :func:`napari_microml.defects.instances.instances`
        (consecutive labels; ``stats`` arrays indexed by label - 1).
    columns : (N, 2) atom columns (row, col) px.
    spacing : float or None
        Column spacing in px; without it (or with fewer than 10 columns) nothing changes.
    threshold : float
        Minimum :func:`rescue_confidence` of an added dopant (the segmenter's ``threshold``).

    Returns
    -------
    labels, stats : updated the same way (rescued instances last: their confidence is
        :func:`rescue_confidence` of their z-score and the network's peak dopant_bright
        probability in the disc, and only those reaching ``threshold`` are added; their
        class_confidence is the mean dopant_bright probability over the disc and ``column_z``
        their z-score), and ``z`` : (N,) the columns' z-scores (NaN where not judged).
    """
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    from napari_microml.defects.classes import CLASS_NAMES, class_id
    from napari_microml.defects.instances import keep_instances

    cols = np.asarray(columns, float).reshape(-1, 2)
    z = np.full(len(cols), np.nan)
    if not spacing or not np.isfinite(spacing) or len(cols) < 10:
        return labels, stats, z
    h, w = labels.shape
    ext_id, bright = len(CLASS_NAMES), class_id("dopant_bright")
    ext_labels = np.nonzero(stats["class_id"] == ext_id)[0] + 1
    ip = np.clip(np.rint(cols).astype(int), 0, [h - 1, w - 1])
    d_ext = np.full(len(cols), np.inf)
    if len(ext_labels):
        d_ext = ndi.distance_transform_edt(~np.isin(labels, ext_labels))[ip[:, 0], ip[:, 1]]
    skip = d_ext < EXTENDED_CLEARANCE * spacing
    heights = column_heights(image, cols, spacing)
    _, z = sublattice_contrast(cols, heights, skip=skip)
    tree = cKDTree(cols)
    # veto
    is_b = np.nonzero(stats["class_id"] == bright)[0]
    if len(is_b):
        d, j = tree.query(np.column_stack([stats["row"][is_b], stats["col"][is_b]]))
        zb = np.where(d < 0.4 * spacing, z[j], np.nan)
        drop = is_b[np.isfinite(zb) & (zb < Z_VETO)]
        if len(drop):
            keep = np.ones(len(stats["row"]), bool)
            keep[drop] = False
            labels, stats = keep_instances(labels, stats, keep)
    # rescue
    cand = np.nonzero(np.isfinite(z) & (z >= Z_WEAK))[0]
    if len(cand):  # a ring with noise-level members has no sublattice level to stand out from
        measured = ring_above_noise(cols, heights, height_noise(image, spacing), skip=skip)
        cand = cand[measured[cand]]
    point = stats["class_id"] != ext_id
    if len(cand) and point.any():
        taken = (
            cKDTree(np.column_stack([stats["row"][point], stats["col"][point]])).query(cols[cand])[
                0
            ]
            < 0.5 * spacing
        )
        cand = cand[~taken]
    cand = cand[labels[ip[cand, 0], ip[cand, 1]] == 0] if len(cand) else cand
    if not len(cand):
        return labels, stats, z
    rad = max(RESCUE_DISC * spacing, 1.5)
    r = int(np.ceil(rad))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    pb = probs[bright]
    out = labels.copy()
    new: dict[str, list] = {k: [] for k in stats}
    nxt = int(labels.max()) + 1
    for i in cand:
        rr, cc = np.rint(cols[i, 0]).astype(int) + yy, np.rint(cols[i, 1]).astype(int) + xx
        disc = (
            ((rr - cols[i, 0]) ** 2 + (cc - cols[i, 1]) ** 2 <= rad**2)
            & (rr >= 0)
            & (rr < h)
            & (cc >= 0)
            & (cc < w)
        )
        rr, cc = rr[disc], cc[disc]
        free = out[rr, cc] == 0
        p_net = float(pb[rr, cc].max())
        conf = float(rescue_confidence(z[i], p_net))
        if not free.any() or (z[i] < Z_RESCUE and p_net < P_WEAK) or conf < threshold:
            continue
        out[rr[free], cc[free]] = nxt
        nxt += 1
        for key, val in (
            ("class_id", bright),
            ("row", cols[i, 0]),
            ("col", cols[i, 1]),
            ("area_px", int(free.sum())),
            ("confidence", conf),
            ("class_confidence", pb[rr[free], cc[free]].mean()),
            ("column_z", z[i]),
        ):
            if key in new:
                new[key].append(val)
    if not new["row"]:
        return labels, stats, z
    merged = {
        k: np.concatenate([stats[k], np.asarray(new[k], dtype=stats[k].dtype)]) for k in stats
    }
    return out.astype(np.int32), merged, z
