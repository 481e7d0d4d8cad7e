"""Are the atomic columns bright (HAADF/ADF/STM) or dark (ABF/BF)? Decided from the image.

Columns are small, sharp features on a broad background: after removing the slowly varying
background (a band-pass from 1 px to two lattice periods, or 16 px without a lattice), the
pixels at the columns form a long tail on the columns' side of the distribution, and the sign
of its skewness says which side that is. Measure it where the columns are resolved (the atom
finder uses its network grid: a 3 px lattice is a blur until resampled). A skewness closer to 0
than ``CLEAR_SKEW`` is reported as uncertain; the sign is still the best guess there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

CONTRASTS = ("auto", "bright", "dark")
CLEAR_SKEW = 0.1  # below this |skew| the choice is reported as uncertain
_MAX_SIDE = 1024  # a central crop of at most this size is measured


@dataclass(frozen=True)
class ContrastChoice:
    """contrast: 'bright' or 'dark' (what was used); requested: what the caller asked for
    ('auto', 'bright' or 'dark'); skew: band-passed skewness (None when not measured)."""

    contrast: str
    requested: str = "auto"
    skew: float | None = None

    @property
    def uncertain(self) -> bool:
        return self.skew is not None and abs(self.skew) < CLEAR_SKEW

    def note(self) -> str:
        """A phrase for the status line, e.g. 'dark columns (detected)'."""
        if self.skew is None:
            return f"{self.contrast} columns"
        if self.uncertain:  # the skew itself stays in provenance: a number users cannot act on
            return (
                f"{self.contrast} columns (detected, but uncertain; "
                "set 'Columns are' if that is wrong)"
            )
        return f"{self.contrast} columns (detected)"

    def record(self) -> dict:
        """The choice for provenance parameters."""
        return {
            "requested": self.requested,
            "used": self.contrast,
            "skew": None if self.skew is None else round(float(self.skew), 3),
        }


def check_contrast(contrast) -> str:
    if contrast not in CONTRASTS:
        raise ValueError(
            f"contrast must be 'auto' (decided from the image), 'bright' (HAADF/ADF/STM) "
            f"or 'dark' (ABF/BF), not {contrast!r}."
        )
    return contrast


def column_skew(frame: np.ndarray, period: float | None = None) -> float:
    """Skewness of ``frame`` band-passed between 1 px and 2 × ``period`` (16 px without one):
    positive for bright columns, negative for dark ones. A central crop of ≤ 1024² is used."""
    x = np.asarray(frame, np.float64)
    h, w = x.shape[-2:]
    r0, c0 = max(0, (h - _MAX_SIDE) // 2), max(0, (w - _MAX_SIDE) // 2)
    x = x[r0 : r0 + _MAX_SIDE, c0 : c0 + _MAX_SIDE]
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, np.median(x[finite]) if finite.any() else 0.0)
    # a few dead or hot pixels would make the tail (and its sign) theirs
    x = np.clip(x, *np.percentile(x, (0.1, 99.9)))
    wide = 2.0 * period if period else 16.0
    band = ndi.gaussian_filter(x, 1.0) - ndi.gaussian_filter(x, wide)
    m = min(8, min(band.shape) // 4)  # the filters' borders are not the image
    band = band[m : band.shape[0] - m, m : band.shape[1] - m].ravel()
    band = band - band.mean()
    sd = band.std()
    return float((band**3).mean() / sd**3) if sd > 0 else 0.0


def decide(
    frame: np.ndarray, contrast: str = "auto", *, period: float | None = None
) -> ContrastChoice:
    """The contrast to use for ``frame`` (one 2D image): ``contrast`` itself unless it is 'auto',
    then the sign of :func:`column_skew` (``period``: the lattice period in px, if known)."""
    check_contrast(contrast)
    if contrast != "auto":
        return ContrastChoice(contrast, contrast)
    skew = column_skew(frame, period)
    return ContrastChoice("bright" if skew >= 0 else "dark", "auto", skew)
