"""``model="auto"`` for the atom finder: a crystal lattice or isolated atoms on a support?

The lattice model ("default") runs first, as it would anyway; only when neither its columns nor
the image show a lattice is the frame re-run with the single-atom model, so a lattice keeps the
very same points and costs no second network pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from napari_microml.atoms.finder import lattice_spacing
from napari_microml.runtime.spacing import estimate_spacing

LATTICE_MODEL = "default"
SINGLE_ATOMS_MODEL = "pt-single-atoms"
# the fraction of a period's implied columns (frame area / period²) the lattice model must find
# for the period to count as a lattice
MIN_COVER = 0.25
# evenly spaced columns are a lattice only when one neighbour vector maps at least this
# fraction of them onto other columns (a translation); scattered atoms read 0.10-0.24
MIN_TRANSLATED = 0.4


@dataclass(frozen=True)
class AtomsModelChoice:
    """What ``model="auto"`` chose and why.

    Attributes
    ----------
    chosen : str
        The model that ran: ``'default'`` (lattices) or ``'pt-single-atoms'``.
    reason : str
        One sentence for the status line and provenance.
    n_columns : int
        Columns the lattice model found on the judged frame.
    column_spacing_px : float or None
        Their spacing when they form a lattice
        (:func:`~napari_microml.atoms.finder.lattice_spacing`).
    period_px : float or None
        The frame's period when the image clearly repeats.
    """

    chosen: str
    reason: str
    n_columns: int
    column_spacing_px: float | None
    period_px: float | None

    def record(self) -> dict:
        """The choice as plain numbers and strings, for ``parameters['model_choice']``."""
        out = asdict(self)
        for key in ("column_spacing_px", "period_px"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 2)
        return out


def image_period(image: np.ndarray) -> float | None:
    """The period (px) of a frame that clearly repeats, else None.

    Parameters
    ----------
    image : numpy.ndarray, (H, W)
        The frame, any units, bright or dark columns.

    Returns
    -------
    float or None
        :func:`~napari_microml.runtime.spacing.estimate_spacing`'s period when it calls the
        frame periodic (autocorrelation peak ≥ ``MIN_STRENGTH`` of the origin, above its noise).
    """
    repeat = estimate_spacing(np.asarray(image))
    return repeat.period if repeat.periodic else None


def translated_fraction(positions: np.ndarray, spacing: float, *, sample: int = 2000) -> float:
    """The largest fraction of the columns that one neighbour vector maps onto other columns.

    A lattice is invariant under its translations, so moving every column by a lattice vector
    lands most of them (all but those at the crystal's edge in that direction) on columns;
    atoms scattered on a support, even evenly spaced ones, have no such vector.

    Parameters
    ----------
    positions : numpy.ndarray, (N, 2)
        Column positions (row, col) in px.
    spacing : float
        Their typical nearest-neighbour distance in px.
    sample : int
        At most this many columns (evenly picked) are moved: the fraction, not the count,
        matters, and a 4096² frame holds ~30,000 columns.

    Returns
    -------
    float
        0–1: over the eight most common vectors from a column to one of its six nearest
        neighbours (within 2.1 spacings, binned to a quarter spacing), the largest fraction of
        columns with a column within a quarter spacing of where that vector moves them.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(positions, float).reshape(-1, 2)
    if len(pts) < 3 or not spacing > 0:
        return 0.0
    tree = cKDTree(pts)
    probe = pts[np.linspace(0, len(pts) - 1, min(sample, len(pts))).astype(int)]
    d, idx = tree.query(probe, k=min(7, len(pts)))
    vec = (pts[idx[:, 1:]] - probe[:, None, :]).reshape(-1, 2)
    vec = vec[(d[:, 1:].ravel() >= 0.5 * spacing) & (d[:, 1:].ravel() <= 2.1 * spacing)]
    if not len(vec):
        return 0.0
    bins, inverse, counts = np.unique(
        np.rint(vec / (0.25 * spacing)), axis=0, return_inverse=True, return_counts=True
    )
    best = 0.0
    for b in np.argsort(counts)[::-1][:8]:
        t = vec[inverse.ravel() == b].mean(axis=0)
        best = max(best, float(np.mean(tree.query(probe + t)[0] <= 0.25 * spacing)))
    return best


def _length(px: float, pixel_size: float | None) -> str:
    """A distance for the status line: nm when the image is calibrated, else px."""
    return f"{px:.1f} px" if pixel_size is None else f"{px * pixel_size:.3g} nm"


def choose_atoms_model(
    *,
    positions: np.ndarray,
    period: float | None,
    pixel_size: float | None = None,
    shape: tuple[int, int] | None = None,
) -> AtomsModelChoice:
    """Decide between the lattice model and the single-atom model for one frame.

    The lattice model is kept when either piece of lattice evidence is there: the columns it
    found are evenly spaced and repeat by a translation (:func:`translated_fraction` at least
    ``MIN_TRANSLATED``: atoms scattered on a support can be evenly spaced too), or the image
    itself repeats. Misreading a lattice as single atoms costs far more F1 than the reverse, so
    one piece suffices.

    Parameters
    ----------
    positions : numpy.ndarray, (N, 2)
        (row, col) of the columns the lattice model found on the frame.
    period : float or None
        The frame's period when it clearly repeats (:func:`image_period`), else None.
    pixel_size : float, optional
        nm per px; the reason then gives distances in nm.
    shape : (int, int), optional
        The frame's size: the image's repeat then counts only when the lattice model found at
        least ``MIN_COVER`` of the columns such a period implies over the frame (a support's
        texture repeats too, with no columns on it).

    Returns
    -------
    AtomsModelChoice
    """
    positions = np.asarray(positions, float).reshape(-1, 2)
    spacing = lattice_spacing(positions)
    n = len(positions)
    if spacing is not None and translated_fraction(positions, spacing) < MIN_TRANSLATED:
        spacing = None  # evenly spaced but no translation repeats them: scattered atoms
    if n == 0:
        chosen, reason = LATTICE_MODEL, "no columns found, so nothing to choose by"
    elif spacing is not None:
        chosen, reason = (
            LATTICE_MODEL,
            f"a lattice: the columns are evenly spaced ({_length(spacing, pixel_size)})",
        )
    elif period is not None and (shape is None or n >= MIN_COVER * np.prod(shape) / period**2):
        chosen, reason = (
            LATTICE_MODEL,
            f"a lattice: the image repeats every {_length(period, pixel_size)}",
        )
    elif period is not None and shape is not None:
        implied = int(np.prod(shape) / period**2)
        chosen, reason = (
            SINGLE_ATOMS_MODEL,
            f"no lattice: the image repeats every {_length(period, pixel_size)} but shows only "
            f"{n} of the ~{implied} columns such a lattice has; isolated atoms on a support",
        )
    else:
        chosen, reason = SINGLE_ATOMS_MODEL, "no lattice: isolated atoms on an amorphous support"
    return AtomsModelChoice(chosen, reason, n, spacing, period)
