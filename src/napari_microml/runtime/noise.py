"""How noisy an image is: its pixel noise level, and that level relative to the image's contrast."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise level of an image (Immerkær 1996, fast noise variance estimation).

    The 3×3 Laplacian-difference kernel is the outer product of [1, −2, 1] with itself, so it
    is applied as two second differences on the interior pixels (no padding, no 2D convolution).
    """
    img = np.asarray(image, np.float32)
    if min(img.shape) < 3:
        return float(np.std(img))
    d2 = img[:-2] - 2 * img[1:-1] + img[2:]
    conv = d2[:, :-2] - 2 * d2[:, 1:-1] + d2[:, 2:]
    return float(np.sqrt(np.pi / 2) * np.abs(conv).mean(dtype=np.float64) / 6.0)


def noise_fraction(image: np.ndarray) -> float:
    """Pixel noise (:func:`noise_sigma`) over the image's contrast: the 0.5–99.5 percentile range
    of the image smoothed by a Gaussian of σ = 1 px. About 0.007 for a simulated crystal at 5,000
    counts per column peak, 0.02 at 500, 0.07 at 50, 0.13–0.22 at 10; inf for a flat image."""
    img = np.asarray(image, np.float64)
    lo, hi = np.percentile(ndi.gaussian_filter(img, 1.0), [0.5, 99.5])
    return noise_sigma(img) / (hi - lo) if hi > lo else float("inf")
